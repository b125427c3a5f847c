"""Telemetry contracts: strict payloads, exact JSON round trips, no torch downstream."""

from __future__ import annotations

import dataclasses
import enum
import json
import math
import subprocess
import sys
import types
import typing
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from esper.morpho.actions import HEAD_NAMES
from esper.telemetry.contracts import (
    EVENT_KEYS,
    PAYLOAD_TYPES,
    ContractError,
    EventType,
    Payload,
    PPOUpdatePayload,
    RatioExplosion,
    SeedLifecycle,
    TelemetryEvent,
    TrainingFailed,
    TrainingStarted,
    event_from_dict,
    event_from_json_line,
    event_to_dict,
    event_to_json_line,
)
from esper.telemetry.heads import UPDATE_SCALARS, ExplosionReport, HeadStats, UpdateStats

# ----------------------------------------------------------------------------- strategies

json_scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text()
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(), inner, max_size=3),
    max_leaves=8,
)


def strategy_for(tp: Any) -> st.SearchStrategy[Any]:
    """Values of a payload annotation, NaN and infinities included for floats."""
    simple: dict[Any, st.SearchStrategy[Any]] = {
        float: st.floats(),
        int: st.integers(),
        bool: st.booleans(),
        str: st.text(),
        dict: st.dictionaries(st.text(), json_values, max_size=4),
    }
    if tp in simple:
        return simple[tp]
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is types.UnionType:
        return st.one_of([st.none() if a is type(None) else strategy_for(a) for a in args])
    if origin is dict:
        return st.dictionaries(strategy_for(args[0]), strategy_for(args[1]), max_size=4)
    if origin is list:
        return st.lists(strategy_for(args[0]), max_size=4)
    raise AssertionError(f"no strategy for {tp!r}")


head_names = st.lists(
    st.from_regex(r"[a-z_][a-z0-9_]{0,12}", fullmatch=True), min_size=1, max_size=5, unique=True
)
head_stats = st.builds(
    HeadStats, **{name: strategy_for(tp) for name, tp in typing.get_type_hints(HeadStats).items()}
)
update_stats = head_names.flatmap(
    lambda names: st.builds(
        UpdateStats,
        heads=st.fixed_dictionaries({name: head_stats for name in names}),
        **{
            name: strategy_for(tp)
            for name, tp in typing.get_type_hints(UpdateStats).items()
            if name in UPDATE_SCALARS
        },
    )
)
explosion_reports = head_names.flatmap(
    lambda names: st.builds(
        ExplosionReport,
        joint_ratio_max=st.floats(),
        worst_log_ratios=st.fixed_dictionaries({n: st.floats() for n in names}),
        shares=st.fixed_dictionaries({n: st.floats() for n in names}),
        driver=st.none() | st.sampled_from(names),
        hidden_by_heads=st.booleans(),
    )
)
started = head_names.flatmap(
    lambda names: st.builds(
        TrainingStarted,
        config=strategy_for(dict),
        task=st.text(),
        head_names=st.just(names),
        head_sizes=st.fixed_dictionaries({n: st.integers(1, 99) for n in names}),
        episodes_total=st.integers(),
        n_envs=st.integers(),
        device=st.text(),
        esper_version=st.text(),
        resumed_from_update=st.none() | st.integers(),
        clip_eps=st.none() | st.floats(0.0, 1.0, exclude_min=True, exclude_max=True),
    )
)
#: Payloads whose fields constrain each other (heads named alike throughout).
CUSTOM: dict[type[Payload], st.SearchStrategy[Any]] = {
    TrainingStarted: started,
    PPOUpdatePayload: st.builds(
        PPOUpdatePayload,
        update_index=st.integers(),
        stats=update_stats,
        mean_return=st.none() | st.floats(),
        host_accuracy=st.none() | st.floats(),
    ),
    RatioExplosion: st.builds(RatioExplosion, update_index=st.integers(), report=explosion_reports),
}


def payload_strategy(cls: type[Payload]) -> st.SearchStrategy[Payload]:
    if cls in CUSTOM:
        return CUSTOM[cls]
    return st.builds(cls, **{spec.name: strategy_for(spec.tp) for spec in cls._specs()})


payloads = st.one_of(
    [st.tuples(st.just(et), payload_strategy(cls)) for et, cls in PAYLOAD_TYPES.items()]
)
optional_ints = st.none() | st.integers(min_value=0)
events = st.builds(
    lambda pair, **kw: TelemetryEvent(event_type=pair[0], payload=pair[1], **kw),
    payloads,
    timestamp=st.floats(allow_nan=False),
    run_id=st.text(),
    seq=st.integers(min_value=0),
    episode=optional_ints,
    batch=optional_ints,
    severity=st.sampled_from(["info", "warning", "error"]),
    message=st.text(),
)


def same_floats(a: Any, b: Any) -> bool:
    """Equality that treats NaN as equal to NaN and tells -0.0 from 0.0 (repr-exact)."""
    return json.dumps(a, allow_nan=True) == json.dumps(b, allow_nan=True)


# ----------------------------------------------------------------------------- round trips


@given(payloads)
def test_every_payload_survives_to_dict_from_dict(pair: tuple[EventType, Payload]) -> None:
    _, payload = pair
    back = type(payload).from_dict(payload.to_dict())
    assert same_floats(back.to_dict(), payload.to_dict())


@given(events)
def test_every_event_survives_a_json_line_round_trip(event: TelemetryEvent) -> None:
    line = event_to_json_line(event)
    assert "\n" not in line
    back = event_from_json_line(line)
    assert event_to_json_line(back) == line
    assert back.event_type is event.event_type
    assert type(back.payload) is type(event.payload)


@given(events, st.sampled_from([None, math.inf, -math.inf, math.nan]))
def test_the_json_line_is_exactly_what_json_dumps_writes(
    event: TelemetryEvent, odd_timestamp: float | None
) -> None:
    """`event_to_json_line` joins the envelope from its parts for speed: byte for byte
    the encoder's output, unicode, huge ints, NaN and infinite timestamps included."""
    if odd_timestamp is not None:
        event = dataclasses.replace(event, timestamp=odd_timestamp)
    expected = json.dumps(event_to_dict(event), allow_nan=True, separators=(",", ":"))
    assert event_to_json_line(event) == expected


def update(index: int = 0, joint: float = 1.0, **heads: HeadStats) -> PPOUpdatePayload:
    """An update of the eight esper heads, unmeasured except those given."""
    records = {h: heads.get(h, HeadStats()) for h in HEAD_NAMES}
    return PPOUpdatePayload(
        update_index=index, stats=UpdateStats(heads=records, joint_ratio_max=joint)
    )


def test_nan_and_infinities_read_back_identical() -> None:
    payload = update(
        3,
        0.1 + 0.2,
        op=HeadStats(ratio_max=math.nan),
        slot=HeadStats(ratio_max=math.inf, ratio_min=-math.inf),
    )
    event = TelemetryEvent(
        EventType.PPO_UPDATE_COMPLETED, 1.5, "run", 0, None, 3, "info", "m", payload
    )
    back = event_from_json_line(event_to_json_line(event)).payload
    assert isinstance(back, PPOUpdatePayload)
    assert math.isnan(back.heads["op"].ratio_max)
    assert back.heads["slot"].ratio_max == math.inf
    assert back.heads["slot"].ratio_min == -math.inf
    assert back.stats.joint_ratio_max == 0.30000000000000004


def test_json_object_has_exactly_the_documented_keys() -> None:
    payload = TrainingFailed(error="boom")
    event = TelemetryEvent(
        EventType.TRAINING_FAILED, 2.0, "r", 7, 1, None, "error", "failed", payload
    )
    data = json.loads(event_to_json_line(event))
    assert tuple(data) == EVENT_KEYS
    assert data["event_type"] == "TRAINING_FAILED"
    assert data["data"] == {"error": "boom", "traceback": None}


# ----------------------------------------------------------------------------- the contract


def test_event_type_values_are_their_upper_case_names() -> None:
    assert [e.value for e in EventType] == [e.name for e in EventType]
    assert set(PAYLOAD_TYPES) == set(EventType)


def test_ppo_payload_on_disk_is_the_flat_tele151_record() -> None:
    data = update().to_dict()
    for head in HEAD_NAMES:
        assert data[f"head_{head}_ratio_max"] == 1.0
        assert data[f"head_{head}_ratio_min"] == 1.0
        assert data[f"head_{head}_clip_fraction"] == 0.0
        assert data[f"head_{head}_entropy"] == 0.0
        assert data[f"head_{head}_approx_kl"] == 0.0
        assert data[f"head_{head}_relevant"] == 0
        assert data[f"head_{head}_nonfinite"] == 0
    # 8 heads x 7 stats + update_index + 15 update-wide fields
    assert len(data) == 8 * 7 + 1 + 15


def test_any_heads_round_trip_in_their_order() -> None:
    names = ["zeta", "a_b_c", "x"]
    heads = {n: HeadStats(ratio_max=1.1 + i, relevant=i) for i, n in enumerate(names)}
    payload = PPOUpdatePayload(update_index=2, stats=UpdateStats(heads=heads))
    back = PPOUpdatePayload.from_dict(json.loads(json.dumps(payload.to_dict())))
    assert list(back.heads) == names
    assert back == payload
    assert back.heads["a_b_c"].ratio_max == 2.1


def test_a_log_written_before_heads_were_data_still_loads() -> None:
    """A line as the pre-change trainer wrote it: per-head fields first, ratio max after."""
    line = (Path(__file__).parent / "data" / "ppo_update_v1.json").read_text()
    payload = PPOUpdatePayload.from_dict(json.loads(line)["data"])
    assert list(payload.heads) == list(HEAD_NAMES)
    assert payload.heads["slot"].ratio_max == 1.25 and payload.heads["slot"].relevant == 40
    assert payload.heads["tempo"].relevant == 0
    assert payload.stats.joint_ratio_max == 1.9


def _valid_update() -> dict[str, Any]:
    return update().to_dict()


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"bogus": 1.0}, "bogus"),
        ({"update_index": 1.0}, "update_index"),
        ({"update_index": True}, "update_index"),
        ({"head_op_ratio_max": "1.2"}, "head_op_ratio_max"),
        ({"head_slot_relevant": 2.0}, "head_slot_relevant"),
        ({"early_stopped": 1}, "early_stopped"),
        ({"epochs_run": False}, "epochs_run"),
        ({"head_new_ratio_max": 1.0}, "head_new_ratio_min"),  # a head missing its other stats
        ({"head_9x_ratio_max": 1.0}, "head_9x"),
    ],
)
def test_from_dict_rejects_bad_data_naming_the_field(change: dict[str, Any], field: str) -> None:
    with pytest.raises(ContractError, match=field):
        PPOUpdatePayload.from_dict(_valid_update() | change)


@pytest.mark.parametrize("missing", ["update_index", "joint_ratio_max", "head_op_entropy"])
def test_from_dict_never_fills_in_a_missing_field(missing: str) -> None:
    data = _valid_update()
    del data[missing]
    with pytest.raises(ContractError, match=missing):
        PPOUpdatePayload.from_dict(data)


def test_ints_are_accepted_and_stored_as_floats_in_float_fields() -> None:
    payload = PPOUpdatePayload.from_dict(_valid_update() | {"head_op_ratio_max": 2})
    assert type(payload.heads["op"].ratio_max) is float
    assert payload.to_dict()["head_op_ratio_max"] == 2.0


def test_nested_types_are_checked_by_key() -> None:
    report = ExplosionReport(
        joint_ratio_max=2.0,
        worst_log_ratios={"op": 0.1},
        shares={"op": "big"},  # type: ignore[dict-item]
        driver="op",
        hidden_by_heads=False,
    )
    with pytest.raises(ContractError, match=r"shares\['op'\]"):
        RatioExplosion(update_index=0, report=report)


def _started(config: dict[str, Any]) -> TrainingStarted:
    return TrainingStarted(
        config=config,
        task="spirals",
        head_names=list(HEAD_NAMES),
        head_sizes=dict.fromkeys(HEAD_NAMES, 3),
        episodes_total=4,
        n_envs=2,
        device="cpu",
        esper_version="0",
    )


def test_config_must_be_plain_json_and_tuples_become_lists() -> None:
    assert _started({"hidden": (32, 32)}).config == {"hidden": [32, 32]}
    with pytest.raises(ContractError, match=r"config\['run_dir'\]"):
        _started({"run_dir": Path("runs")})


def test_payload_does_not_alias_the_callers_dicts() -> None:
    config = {"lr": 0.1}
    payload = _started(config)
    config["lr"] = 9.0
    payload.to_dict()["config"]["lr"] = 5.0
    assert payload.config == {"lr": 0.1}


def _event_dict(**changes: Any) -> dict[str, Any]:
    event = TelemetryEvent(
        EventType.TRAINING_FAILED, 1.0, "r", 0, None, None, "error", "x", TrainingFailed(error="e")
    )
    return event_to_dict(event) | changes


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (_event_dict(event_type="PPO_EXPLODED"), "unknown event type"),
        (_event_dict(extra=1), "extra"),
        ({k: v for k, v in _event_dict().items() if k != "seq"}, "seq"),
        (_event_dict(seq=-1), "seq"),
        (_event_dict(severity="fatal"), "severity"),
        (_event_dict(timestamp="now"), "timestamp"),
        (_event_dict(data={"error": 3}), "error"),
        (_event_dict(data=[]), "data"),
    ],
)
def test_event_from_dict_is_strict(data: dict[str, Any], match: str) -> None:
    with pytest.raises(ContractError, match=match):
        event_from_dict(data)


@given(events, st.sampled_from(EVENT_KEYS), json_values)
def test_any_corrupted_field_is_a_contract_error_or_a_valid_event(
    event: TelemetryEvent, key: str, value: Any
) -> None:
    """Whatever JSON a line holds, parsing fails only with ContractError, never a crash."""
    data = event_to_dict(event) | {key: value}
    try:
        back = event_from_dict(data)
    except ContractError:
        return
    line = event_to_json_line(back)  # what was accepted is a well-formed event
    assert event_to_json_line(event_from_json_line(line)) == line


@given(st.dictionaries(st.text(), json_values, max_size=4) | json_values)
def test_arbitrary_json_is_a_contract_error(data: Any) -> None:
    with pytest.raises(ContractError):
        event_from_dict(data)


def test_event_rejects_a_payload_of_another_type() -> None:
    with pytest.raises(ContractError, match="PPOUpdatePayload"):
        TelemetryEvent(
            EventType.PPO_UPDATE_COMPLETED,
            1.0,
            "r",
            0,
            None,
            0,
            "info",
            "x",
            TrainingFailed(error="e"),
        )


@pytest.mark.parametrize(
    ("line", "match"),
    [
        ('{"event_type": ', "bad JSON"),
        ("[" * 100_000, "bad JSON"),  # nested past the recursion limit
        ('{"seq": ' + "1" * 5000 + "}", "bad JSON"),  # int longer than Python will parse
        (json.dumps(_event_dict(timestamp=10**400)), "timestamp"),  # int beyond any float
    ],
)
def test_pathological_json_is_a_contract_error(line: str, match: str) -> None:
    with pytest.raises(ContractError, match=match):
        event_from_json_line(line)


# ----------------------------------------------------------------------------- summaries


def test_ppo_summary_names_the_relevant_head_furthest_from_one() -> None:
    payload = update(
        4,
        2.25,
        op=HeadStats(ratio_max=1.5, relevant=10),
        slot=HeadStats(ratio_max=1.0, ratio_min=0.5, relevant=6),  # |ln 0.5| > |ln 1.5|
        tempo=HeadStats(ratio_max=9.0),  # not relevant: ignored
    )
    payload = PPOUpdatePayload(
        update_index=4, stats=dataclasses.replace(payload.stats, approx_kl=0.0123)
    )
    assert payload.stats.worst_head() == "slot"
    assert payload.summary() == "update 4: worst head slot ratio max 1.000, joint 2.250, KL 0.0123"
    assert update().stats.worst_head() is None


def test_ratio_explosion_summary_lists_the_driving_heads() -> None:
    report = ExplosionReport(
        joint_ratio_max=4.3,
        worst_log_ratios={"slot": 0.6, "op": 0.32, "tempo": 0.05, "style": 0.4},
        shares={"slot": 0.41, "op": 0.22, "tempo": 0.05, "style": 0.32},
        driver="slot",
        hidden_by_heads=True,
    )
    assert RatioExplosion(update_index=9, report=report).summary() == (
        "update 9: joint 4.30 driven by slot (41%), style (32%), op (22%) — every head inside clip"
    )


def test_head_names_are_checked_where_a_run_declares_them() -> None:
    with pytest.raises(ContractError, match="unique"):
        _started_heads(["a", "a"])
    with pytest.raises(ContractError, match="1 to 32"):
        _started_heads([f"h{i}" for i in range(33)])
    with pytest.raises(ContractError, match="head name"):
        _started_heads(["has space"])
    assert _started_heads([f"h{i}" for i in range(32)]).head_names[-1] == "h31"


def _started_heads(names: list[str]) -> TrainingStarted:
    return TrainingStarted(
        config={},
        task="t",
        head_names=names,
        head_sizes=dict.fromkeys(names, 2),
        episodes_total=1,
        n_envs=1,
        device="cpu",
        esper_version="0",
    )


# ----------------------------------------------------------------------------- no torch


def test_telemetry_and_sanctum_import_no_torch(tmp_path: Path) -> None:
    """The dashboard side must start without torch: import it all, write a run, check."""
    script = f"""
import sys
import esper.telemetry.contracts, esper.telemetry.emitter, esper.telemetry.hub
import esper.telemetry.recorder, esper.sanctum.schema, esper.sanctum.aggregator
from esper.telemetry.recorder import RunRecorder
RunRecorder({str(tmp_path)!r}, {{}}).close()
assert "torch" not in sys.modules, "torch was imported"
"""
    subprocess.run([sys.executable, "-c", script], check=True, timeout=60)
    versions = json.loads((tmp_path / "run.json").read_text())["versions"]
    assert "torch" not in versions
    assert set(versions) == {"esper", "python", "numpy"}


def test_a_str_subclass_field_is_stored_as_the_plain_string() -> None:
    class Stage(enum.StrEnum):
        TRAINING = "TRAINING"

    payload = SeedLifecycle(
        env_index=0, slot=0, from_stage=Stage.TRAINING, to_stage="BLENDING",
        blueprint=None, alpha=0.5,
    )  # fmt: skip
    assert type(payload.from_stage) is str
    assert payload.to_json() == json.dumps(payload.to_dict(), separators=(",", ":"))


def test_an_open_ended_run_does_not_announce_zero_episodes() -> None:
    def started(episodes: int) -> str:
        return TrainingStarted(
            config={}, task="Pendulum-v1", head_names=["a"], head_sizes={"a": 3},
            episodes_total=episodes, n_envs=2, device="cpu", esper_version="0",
        ).summary()  # fmt: skip

    assert started(0) == "training started: Pendulum-v1, 2 envs (cpu)"
    assert started(10) == "training started: Pendulum-v1, 10 episodes on 2 envs (cpu)"
