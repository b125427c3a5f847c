"""Telemetry contracts: strict payloads, exact JSON round trips, no torch downstream."""

from __future__ import annotations

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

from esper.actions import HEAD_NAMES
from esper.telemetry.contracts import (
    EVENT_KEYS,
    PAYLOAD_TYPES,
    ContractError,
    EventType,
    Payload,
    PPOUpdatePayload,
    RatioExplosion,
    TelemetryEvent,
    TrainingFailed,
    TrainingStarted,
    event_from_dict,
    event_from_json_line,
    event_to_dict,
    event_to_json_line,
)

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


def payload_strategy(cls: type[Payload]) -> st.SearchStrategy[Payload]:
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


def test_nan_and_infinities_read_back_identical() -> None:
    payload = PPOUpdatePayload(
        update_index=3,
        head_op_ratio_max=math.nan,
        head_slot_ratio_max=math.inf,
        head_slot_ratio_min=-math.inf,
        joint_ratio_max=0.1 + 0.2,
    )
    event = TelemetryEvent(
        EventType.PPO_UPDATE_COMPLETED, 1.5, "run", 0, None, 3, "info", "m", payload
    )
    back = event_from_json_line(event_to_json_line(event)).payload
    assert isinstance(back, PPOUpdatePayload)
    assert math.isnan(back.head_op_ratio_max)
    assert back.head_slot_ratio_max == math.inf
    assert back.head_slot_ratio_min == -math.inf
    assert back.joint_ratio_max == 0.30000000000000004


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


def test_ppo_payload_has_every_per_head_field_with_neutral_defaults() -> None:
    payload = PPOUpdatePayload(update_index=0)
    for head in HEAD_NAMES:
        assert payload.head(head, "ratio_max") == 1.0
        assert payload.head(head, "ratio_min") == 1.0
        assert payload.head(head, "clip_fraction") == 0.0
        assert payload.head(head, "entropy") == 0.0
        assert payload.head(head, "approx_kl") == 0.0
        assert payload.head(head, "relevant") == 0
        assert payload.head(head, "nonfinite") == 0
    # 8 heads x 7 stats + update_index + 15 update-wide fields
    assert len(payload.to_dict()) == 8 * 7 + 1 + 15


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({"update_index": 0, "bogus": 1.0}, "bogus"),
        ({}, "update_index"),
        ({"update_index": 1.0}, "update_index"),
        ({"update_index": True}, "update_index"),
        ({"update_index": 0, "head_op_ratio_max": "1.2"}, "head_op_ratio_max"),
        ({"update_index": 0, "head_slot_relevant": 2.0}, "head_slot_relevant"),
        ({"update_index": 0, "early_stopped": 1}, "early_stopped"),
        ({"update_index": 0, "epochs_run": False}, "epochs_run"),
    ],
)
def test_from_dict_rejects_bad_data_naming_the_field(data: dict[str, Any], field: str) -> None:
    with pytest.raises(ContractError, match=field):
        PPOUpdatePayload.from_dict(data)


def test_ints_are_accepted_and_stored_as_floats_in_float_fields() -> None:
    payload = PPOUpdatePayload.from_dict({"update_index": 0, "head_op_ratio_max": 2})
    assert type(payload.head_op_ratio_max) is float
    assert payload.to_dict()["head_op_ratio_max"] == 2.0


def test_nested_types_are_checked_by_key() -> None:
    with pytest.raises(ContractError, match=r"shares\['op'\]"):
        RatioExplosion(
            update_index=0,
            joint_ratio_max=2.0,
            worst_log_ratios={},
            shares={"op": "big"},  # type: ignore[dict-item]
            driver="op",
            hidden_by_heads=False,
        )


def _started(config: dict[str, Any]) -> TrainingStarted:
    return TrainingStarted(
        config=config,
        task="spirals",
        head_names=list(HEAD_NAMES),
        head_sizes={"slot": 3},
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
    payload = PPOUpdatePayload(
        update_index=4,
        head_op_ratio_max=1.5,
        head_op_relevant=10,
        head_slot_ratio_max=0.5,  # |ln 0.5| = 0.69 > |ln 1.5| = 0.41
        head_slot_relevant=6,
        head_tempo_ratio_max=9.0,  # not relevant: ignored
        joint_ratio_max=2.25,
        approx_kl=0.0123,
    )
    assert payload.worst_head() == "slot"
    assert payload.summary() == "update 4: worst head slot ratio max 0.500, joint 2.250, KL 0.0123"
    assert PPOUpdatePayload(update_index=0).worst_head() is None


def test_ratio_explosion_summary_lists_the_driving_heads() -> None:
    payload = RatioExplosion(
        update_index=9,
        joint_ratio_max=4.3,
        worst_log_ratios={"slot": 0.6, "op": 0.32, "tempo": 0.05},
        shares={"slot": 0.41, "op": 0.22, "tempo": 0.05, "style": 0.32},
        driver="slot",
        hidden_by_heads=True,
    )
    assert payload.summary() == (
        "update 9: joint 4.30 driven by slot (41%), style (32%), op (22%) — every head inside clip"
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
