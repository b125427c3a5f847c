"""Env runners: every backend gives the same numbers; lost workers are replaced and replayed.

The learner acts in the driver, so an in-process run, a run over worker processes and a
run over Ray actors must agree bit for bit: same rollouts, same per-head ratio statistics.
A worker killed mid-episode is replaced, its episodes replayed from their seeds and
actions, and the run ends with the same numbers and a WORKER_RESTARTED warning. In a
continuing run (envs that reset themselves) an env that reports restart points is
replayed from its current episode's start only, so the history stays one episode long.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import signal
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from esper.cli import main as cli
from esper.cli.envs import env_spec
from esper.integrations.gym import make_factored_env
from esper.morpho.actions import factored_actions
from esper.morpho.environment import MorphogeneticEnv
from esper.rl.config import ConfigError, TrainConfig
from esper.rl.ppo import PPOAgent, PPOConfig
from esper.rl.rollout import ContinuingRollout, collect_batch
from esper.rl.runners import (
    EPISODE_START,
    MAX_RESTARTS_PER_CALL,
    EnvFactory,
    EnvGroup,
    EnvRunner,
    InProcessRunner,
    ProcessRunner,
    RestartNotice,
    WorkerError,
    WorkerLost,
    WorkerPoolRunner,
    unreachable_address,
    worker_envs,
)
from esper.rl.trainer import Trainer
from esper.sanctum.aggregator import SanctumAggregator
from esper.sanctum.widgets.header import HeaderView, render_header
from esper.telemetry.contracts import (
    EpisodeCompleted,
    EventType,
    SeedLifecycle,
    TelemetryEvent,
    WorkerRestarted,
    WorkerStatus,
)
from esper.telemetry.emitter import TelemetryEmitter

LENGTH, N_ENVS = 5, 3
#: A full batch of three episodes, then a partial one of two (the last batch of a run).
BATCH_SEEDS = ([10, 11, 12], [13, 14])
make_env: EnvFactory = functools.partial(MorphogeneticEnv, task="spirals", episode_length=LENGTH)


# ------------------------------------------------------------------ helpers


def trace(runner: EnvRunner, on_step: Callable[..., None] | None = None) -> list[Any]:
    """Two batches and two PPO updates from a fresh seed-0 agent: everything they produced."""
    config = PPOConfig(epochs=2, minibatches=2, hidden=32)
    agent = PPOAgent(runner.obs_dim, runner.actions, config, seed=0)
    out: list[Any] = []
    for seeds in BATCH_SEEDS:
        infos: list[tuple[int, int, Any]] = []

        def record(i: int, t: int, info: dict[str, Any], infos: list[Any] = infos) -> None:
            infos.append((i, t, info["lifecycle_events"]))
            if on_step is not None:
                on_step(i, t, info)

        buffer, episodes = collect_batch(agent, runner, LENGTH, seeds, on_step=record)
        out.append((buffer.batch(), episodes, infos, agent.update(buffer)))
    return out


def assert_same_trace(got: list[Any], expected: list[Any]) -> None:
    for (batch, episodes, infos, metrics), (batch0, episodes0, infos0, metrics0) in zip(
        got, expected, strict=True
    ):
        for name, field, field0 in zip(batch._fields, batch, batch0, strict=True):
            assert torch.equal(field, field0), name
        assert episodes == episodes0
        assert infos == infos0
        # repr compares NaN with NaN and every float to the bit
        assert repr(metrics) == repr(metrics0)


@pytest.fixture(scope="module")
def baseline() -> list[Any]:
    """The in-process trace every other backend must reproduce."""
    return trace(InProcessRunner([make_env() for _ in range(N_ENVS)]))


@pytest.fixture(scope="module")
def processes() -> Iterator[ProcessRunner]:
    """Three envs over two worker processes (worker 0 steps envs 0 and 2)."""
    with ProcessRunner([make_env] * N_ENVS, 2, start_timeout=120.0) as runner:
        yield runner


class EventList(list[TelemetryEvent]):
    """An emitter sink that keeps every event."""

    def publish(self, event: TelemetryEvent) -> None:
        self.append(event)


def train(tmp_path: Path, kill: Callable[[Any], None] | None = None, **overrides: Any) -> EventList:
    """A 2-batch spirals run; `kill(runner)` once after step 2 of env 0 in the first batch."""
    config = TrainConfig(
        task="spirals", episodes=4, envs=2, episode_length=4,
        ppo=PPOConfig(epochs=2, minibatches=2, hidden=32), **overrides,
    )  # fmt: skip
    events = EventList()
    trainer = Trainer(config, TelemetryEmitter(events, run_id="t"), tmp_path, env_spec(config))
    if kill is not None:
        original = trainer._on_step

        def on_step(env_index: int, t: int, info: dict[str, Any]) -> None:
            original(env_index, t, info)
            if trainer.batch == 0 and (env_index, t) == (0, 2):
                kill(trainer.runner)

        trainer._on_step = on_step  # type: ignore[method-assign]
    trainer.run()
    return events


def payloads(events: list[TelemetryEvent], kind: EventType) -> list[dict[str, Any]]:
    return [e.payload.to_dict() for e in events if e.event_type is kind]


def assert_same_training(events: list[TelemetryEvent], reference: list[TelemetryEvent]) -> None:
    """Same PPO updates and episodes (the worker tag aside) as the in-process reference."""
    ppo = EventType.PPO_UPDATE_COMPLETED
    assert payloads(events, ppo) == payloads(reference, ppo)
    assert len(payloads(events, ppo)) == 2

    def untagged(evts: list[TelemetryEvent]) -> list[dict[str, Any]]:
        return [
            {k: v for k, v in p.items() if k != "worker"}
            for p in payloads(evts, EventType.EPISODE_COMPLETED)
        ]

    assert untagged(events) == untagged(reference)
    assert events[-1].event_type is EventType.TRAINING_FINISHED


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory: pytest.TempPathFactory) -> list[TelemetryEvent]:
    return train(tmp_path_factory.mktemp("inprocess"))


# ------------------------------------------------------------------ dealing envs


def test_envs_are_dealt_round_robin() -> None:
    assert worker_envs(5, 2) == [[0, 2, 4], [1, 3]]
    assert worker_envs(3, 3) == [[0], [1], [2]]
    assert worker_envs(4, 1) == [[0, 1, 2, 3]]
    for workers in (0, 4):
        with pytest.raises(ValueError, match=r"workers must be in 1\.\.3"):
            worker_envs(3, workers)


@given(st.integers(1, 64).flatmap(lambda n: st.tuples(st.just(n), st.integers(1, n))))
def test_every_env_has_one_worker_and_loads_differ_by_one_at_most(nw: tuple[int, int]) -> None:
    n_envs, n_workers = nw
    groups = worker_envs(n_envs, n_workers)
    assert sorted(i for g in groups for i in g) == list(range(n_envs))
    assert max(map(len, groups)) - min(map(len, groups)) <= 1
    assert all(i % n_workers == w for w, g in enumerate(groups) for i in g)


# ------------------------------------------------------------------ restart logic


class LocalHandle:
    """A worker run in this process whose `lose_on` call numbers are lost, as if it died."""

    def __init__(self, factories: list[EnvFactory], lose_on: set[int], calls: list[int]) -> None:
        self.group = EnvGroup([make() for make in factories])
        self.lose_on, self.calls = lose_on, calls
        self._answer: Any = None

    def send(self, method: str, *args: Any) -> None:
        self.calls[0] += 1
        self._answer = (self.calls[0], getattr(self.group, method)(*args))

    def receive(self, timeout: float) -> Any:
        call, answer = self._answer
        if call in self.lose_on:
            raise WorkerLost(f"lost on call {call}")
        return answer

    def alive(self) -> bool:
        return True

    def kill(self) -> None:
        """Nothing to stop: the next handle starts from fresh envs."""

    def stop(self) -> None:
        """Nothing runs between calls."""

    def close(self, timeout: float) -> None:
        """Nothing to release."""


class ScriptedRunner(WorkerPoolRunner):
    """The real restart-and-replay logic over in-process workers that die on cue.

    Calls are numbered across all of worker 0's handles (describe is call 1, reset call 2,
    the first step call 3, ...); a replacement's replay uses up a number too.
    """

    backend = "scripted"

    def __init__(
        self, lose_on: set[int], factories: list[EnvFactory] | None = None, **kw: Any
    ) -> None:
        self._lose_on, self._calls = lose_on, [0]
        super().__init__(factories or [make_env] * N_ENVS, 2, **kw)

    def _launch(self, worker: int) -> LocalHandle:
        lose = self._lose_on if worker == 0 else set()
        return LocalHandle(
            self._worker_factories(worker), lose, self._calls if worker == 0 else [0]
        )


def test_a_lost_worker_is_replaced_and_replayed_to_the_same_numbers(baseline: list[Any]) -> None:
    notices: list[RestartNotice] = []
    runner = ScriptedRunner({5}, on_restart=notices.append)  # worker 0's third step
    assert_same_trace(trace(runner), baseline)
    # worker 0 steps envs 0 and 2: two steps of two envs were replayed
    assert notices == [RestartNotice(0, "scripted", "lost on call 5", 1, 4)]
    assert [w.restarts for w in runner.status()] == [1, 0]


def test_a_worker_lost_on_every_attempt_fails_the_call_by_name() -> None:
    # call 4 (the second step) and every replay after it are lost
    runner = ScriptedRunner(set(range(4, 5 + MAX_RESTARTS_PER_CALL)))
    runner.reset([1, 2, 3])  # call 2
    runner.step(np.zeros((3, 8), dtype=np.int64))  # call 3: answered
    with pytest.raises(WorkerError, match=r"worker 0 was lost 4 times in a row during step"):
        runner.step(np.zeros((3, 8), dtype=np.int64))


# ------------------------------------------------------------------ continuing runs

cartpole: EnvFactory = functools.partial(make_factored_env, "CartPole-v1")
#: Three envs over two workers (worker 0 steps envs 0 and 2), 3 batches of 64 steps: each
#: env ends several episodes of varied length (random-ish CartPole lasts 10 to 40 steps).
CONTINUING_SEEDS, CONTINUING_STEPS, CONTINUING_BATCHES = [21, 22, 23], 64, 3
#: Called after every step of every env with (batch, env, t, info).
StepHook = Callable[[int, int, int, dict[str, Any]], None]


class WithoutRestartPoints:
    """A self-resetting env that reports no restart points, as a user's own env may not."""

    def __init__(self) -> None:
        self.env = cartpole()
        self.obs_dim, self.factored_actions = self.env.obs_dim, self.env.factored_actions

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> Any:
        return self.env.reset(seed=seed, options=options)

    def step(self, action: Any) -> Any:
        obs, reward, terminated, truncated, info = self.env.step(action)
        info.pop(EPISODE_START, None)
        return obs, reward, terminated, truncated, info

    def legal_actions(self) -> Any:
        return self.env.legal_actions()


def continuing_trace(runner: EnvRunner, on_step: StepHook | None = None) -> list[Any]:
    """A continuing run from a fresh seed-0 agent, a PPO update after each batch: everything
    it produced (the infos hold each episode's summary and its successor's restart point)."""
    agent = PPOAgent(runner.obs_dim, runner.actions, PPOConfig(epochs=1, hidden=16), seed=0)
    rollout = ContinuingRollout(agent, runner, CONTINUING_STEPS, CONTINUING_SEEDS)
    out: list[Any] = []
    for _ in range(CONTINUING_BATCHES):
        infos: list[tuple[int, int, dict[str, Any]]] = []

        def record(i: int, t: int, info: dict[str, Any], infos: list[Any] = infos) -> None:
            infos.append((i, t, info))
            if on_step is not None:
                on_step(len(out), i, t, info)

        buffer, ended = rollout.collect(record)
        out.append((buffer.batch(), ended, infos, agent.update(buffer)))
    return out


class EpisodeSteps:
    """Steps each env took in its current episode (since its reset, or since its latest
    episode ended), and the episodes each has ended, from the infos of a run."""

    def __init__(self, n_envs: int) -> None:
        self.steps, self.ended = [0] * n_envs, [0] * n_envs

    def see(self, env: int, info: dict[str, Any]) -> None:
        if "episode" in info:
            self.steps[env] = 0
            self.ended[env] += 1
        else:
            self.steps[env] += 1

    def of_workers(self, n_workers: int) -> list[int]:
        return [
            sum(self.steps[i] for i in envs) for envs in worker_envs(len(self.steps), n_workers)
        ]


@pytest.fixture(scope="module")
def continuing_baseline() -> list[Any]:
    return continuing_trace(InProcessRunner([cartpole() for _ in CONTINUING_SEEDS]))


def test_a_continuing_run_keeps_one_episode_of_history_per_env() -> None:
    runner = ScriptedRunner(set(), [cartpole] * N_ENVS)
    seen = EpisodeSteps(N_ENVS)
    pending: list[list[int]] = []
    lengths: list[int] = []

    def check(batch: int, i: int, t: int, info: dict[str, Any]) -> None:
        seen.see(i, info)
        if "episode" in info:
            lengths.append(info["episode"]["length"])
        if i == N_ENVS - 1:  # every env has taken this step
            pending.append(runner.replay_steps())
            assert pending[-1] == seen.of_workers(2)  # each env's current episode, no more

    continuing_trace(runner, check)
    assert min(seen.ended) >= 5  # many episodes ended in every env
    assert len(pending) == CONTINUING_STEPS * CONTINUING_BATCHES
    # worker 0 holds two envs, so two episodes at most; the run is far longer
    assert max(p[0] for p in pending) <= 2 * max(lengths) < len(pending)


@pytest.mark.parametrize("points", [True, False], ids=["restart-points", "no-restart-points"])
def test_a_worker_lost_late_in_a_continuing_run_replays_to_the_same_numbers(points: bool) -> None:
    factory: EnvFactory = cartpole if points else WithoutRestartPoints
    lost_at = 150  # step index of the call lost: worker 0's call 3 + 150
    seen = EpisodeSteps(N_ENVS)

    def watch(batch: int, i: int, t: int, info: dict[str, Any]) -> None:
        if batch * CONTINUING_STEPS + t < lost_at:
            seen.see(i, info)

    notices: list[RestartNotice] = []
    runner = ScriptedRunner({3 + lost_at}, [factory] * N_ENVS, on_restart=notices.append)
    got = continuing_trace(runner, watch)
    assert_same_trace(got, continuing_trace(InProcessRunner([factory() for _ in range(N_ENVS)])))
    assert min(seen.ended) >= 3  # the loss came episodes into the run
    # restart points: the current episodes of envs 0 and 2; none: every step since the reset
    expected = seen.of_workers(2)[0] if points else 2 * lost_at
    assert [(n.worker, n.replayed_steps) for n in notices] == [(0, expected)]
    if points:
        assert expected < lost_at


# ------------------------------------------------------------------ real processes


def test_worker_processes_give_the_in_process_numbers(
    processes: ProcessRunner, baseline: list[Any]
) -> None:
    assert (processes.obs_dim, processes.actions) == (make_env().obs_dim, factored_actions(3))
    assert_same_trace(trace(processes), baseline)
    status = processes.status()
    assert [(w.worker, w.alive, w.envs, w.steps) for w in status] == [
        (0, True, 2, LENGTH),  # the partial batch: env 0 on worker 0, env 1 on worker 1
        (1, True, 1, LENGTH),
    ]


def test_a_worker_process_killed_late_in_a_continuing_run_gives_the_same_numbers(
    continuing_baseline: list[Any],
) -> None:
    """Two kills, episodes into the run: one mid-episode, one just as env 0's episode
    ended (env 0 then restarts from its point with no actions to replay). The later
    episodes' starts show in the observations and in the infos' restart points."""
    seen = EpisodeSteps(N_ENVS)
    kills: list[int] = []  # worker 0's steps to replay at each kill
    notices: list[RestartNotice] = []
    with ProcessRunner(
        [cartpole] * N_ENVS, 2, start_timeout=120.0, on_restart=notices.append
    ) as runner:

        def kill(batch: int, i: int, t: int, info: dict[str, Any]) -> None:
            seen.see(i, info)
            if i < N_ENVS - 1:
                return
            mid = (batch, t) == (1, 20)
            boundary = batch == 2 and len(kills) == 1 and seen.steps[0] == 0
            if mid or boundary:
                assert min(seen.ended) >= 3  # several episodes ended before
                kills.append(seen.of_workers(2)[0])
                os.kill(runner.pids()[0], signal.SIGKILL)

        assert_same_trace(continuing_trace(runner, kill), continuing_baseline)
    assert len(kills) == 2
    assert [(n.worker, n.restarts, n.replayed_steps) for n in notices] == [
        (0, 1, kills[0]),
        (0, 2, kills[1]),
    ]
    # the current episodes only: the history since the reset was 2 x 85 steps at the first
    assert max(kills) < CONTINUING_STEPS


class HangingEnv(MorphogeneticEnv):
    """Goes silent (sleeps for an hour) at its second step, once per flag file."""

    def __init__(self, flag: str, **kw: Any) -> None:
        super().__init__(**kw)
        self.flag, self.steps = flag, 0

    def reset(self, **kw: Any) -> Any:
        self.steps = 0
        return super().reset(**kw)

    def step(self, action: Any) -> Any:
        self.steps += 1
        if self.steps == 2 and not os.path.exists(self.flag):
            Path(self.flag).touch()
            time.sleep(3600)
        return super().step(action)


def test_a_silent_worker_is_replaced_after_its_timeout(tmp_path: Path) -> None:
    factory = functools.partial(
        HangingEnv, str(tmp_path / "hung"), task="spirals", episode_length=LENGTH
    )
    notices: list[RestartNotice] = []
    with ProcessRunner(
        [factory], 1, timeout=3.0, start_timeout=120.0, on_restart=notices.append
    ) as runner:
        first = runner.reset([7])
        actions = np.zeros((1, 8), dtype=np.int64)
        results = [runner.step(actions) for _ in range(3)]
    env = make_env()
    obs, _ = env.reset(seed=7)
    np.testing.assert_array_equal(first.obs[0], obs)
    np.testing.assert_array_equal(first.legal[0], env.legal_actions())
    for result in results:
        np.testing.assert_array_equal(result.obs[0], env.step(actions[0])[0])
        np.testing.assert_array_equal(result.legal[0], env.legal_actions())
    assert [(n.worker, n.reason, n.replayed_steps) for n in notices] == [(0, "no answer in 3 s", 1)]


def test_a_process_run_survives_a_killed_worker_with_a_warning_event(
    tmp_path: Path, reference_run: list[TelemetryEvent]
) -> None:
    def kill(runner: Any) -> None:
        os.kill(runner.pids()[0], signal.SIGKILL)

    events = train(tmp_path, kill, backend="processes", workers=2)
    assert_same_training(events, reference_run)
    restarted = [e for e in events if e.event_type is EventType.WORKER_RESTARTED]
    assert [(e.severity, e.batch) for e in restarted] == [("warning", 0)]
    notice = restarted[0].payload.to_dict()
    assert "exited (code -9)" in notice.pop("reason")
    # worker 0 steps env 0 alone; it was killed after 3 steps, so 3 were replayed
    assert notice == {"worker": 0, "backend": "processes", "restarts": 1, "replayed_steps": 3}
    statuses = payloads(events, EventType.WORKER_STATUS)
    assert [(s["worker"], s["restarts"], s["alive"]) for s in statuses] == [
        (0, 1, True), (1, 0, True), (0, 1, True), (1, 0, True),
    ]  # fmt: skip
    lifecycle = [e.payload for e in events if e.event_type is EventType.SEED_LIFECYCLE]
    assert all(p.worker == p.env_index % 2 for p in lifecycle)


def test_a_ray_run_survives_a_killed_actor_with_the_same_numbers(
    tmp_path: Path, reference_run: list[TelemetryEvent]
) -> None:
    ray = pytest.importorskip("ray")

    def kill(runner: Any) -> None:
        ray.kill(runner.actors()[1], no_restart=True)

    events = train(tmp_path, kill, backend="ray", workers=2)
    assert not ray.is_initialized()  # the runner started Ray, so it stopped it too
    assert_same_training(events, reference_run)
    restarted = payloads(events, EventType.WORKER_RESTARTED)
    assert [(p["worker"], p["backend"], p["restarts"]) for p in restarted] == [(1, "ray", 1)]
    assert {s["backend"] for s in payloads(events, EventType.WORKER_STATUS)} == {"ray"}


def test_a_ray_address_is_probed_before_ray_retries_it_forever() -> None:
    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]
        assert unreachable_address(f"127.0.0.1:{port}") is None
        assert unreachable_address(f"ray://127.0.0.1:{port}") is None
    assert unreachable_address(f"127.0.0.1:{port}") == "Connection refused"  # closed now
    assert unreachable_address("auto") is None  # Ray answers these itself, at once


# ------------------------------------------------------------------ configuration and CLI


@pytest.mark.parametrize(
    ("overrides", "fragment"),
    [
        ({"backend": "gpu"}, "backend must be one of inprocess, processes, ray, got 'gpu'"),
        ({"backend": "processes", "workers": 0}, "workers must be none or a whole number in [1, "),
        ({"backend": "processes", "envs": 2, "workers": 3}, "workers (3) must be <= envs (2)"),
        ({"workers": 2}, "workers=2 needs backend processes or ray"),
        ({"backend": "processes", "ray_address": "auto"}, "ray_address needs backend ray"),
        ({"backend": "ray", "ray_address": " "}, "ray_address must be none or a non-empty string"),
    ],
)
def test_bad_backend_settings_name_the_field(overrides: dict[str, Any], fragment: str) -> None:
    with pytest.raises(ConfigError) as info:
        TrainConfig(**overrides)
    assert fragment in str(info.value)


def test_workers_default_to_one_per_env_outside_this_process() -> None:
    assert TrainConfig(envs=3).n_workers == 1
    assert TrainConfig(envs=3, workers=1).n_workers == 1
    assert TrainConfig(envs=3, backend="processes").n_workers == 3
    assert TrainConfig(envs=3, backend="ray", workers=2).n_workers == 2


def test_backend_flags_reach_the_config() -> None:
    args = cli._esper_parser().parse_args(
        ["ppo", "--envs", "4", "--backend", "ray", "--workers", "2", "--ray-address", "auto"]
    )
    config = cli.config_from_args(args)
    assert (config.backend, config.workers, config.ray_address) == ("ray", 2, "auto")


def test_ray_backend_without_ray_is_one_line_and_exit_2(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "ray" else find_spec(name, *a)
    )
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as info:
        cli.main(["ppo", "--backend", "ray", "--no-tui"])
    assert info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "install esper-ppo[ray]" in err[0]
    assert not (tmp_path / "runs").exists()  # refused before a run directory was made


# ------------------------------------------------------------------ telemetry and Sanctum


def emit_workers(emitter: TelemetryEmitter, rates: list[float], batch: int) -> None:
    for worker, rate in enumerate(rates):
        emitter.emit(WorkerStatus(
            worker=worker, backend="processes", alive=rate > 0, restarts=0, envs=2,
            steps=int(rate), steps_per_second=rate,
        ), batch=batch)  # fmt: skip


def test_the_aggregator_keeps_each_workers_latest_state() -> None:
    events = EventList()
    emitter = TelemetryEmitter(events, run_id="r")
    emit_workers(emitter, [40.0, 38.5], batch=0)
    emitter.emit(WorkerRestarted(
        worker=1, backend="processes", reason="process exited (code -9)", restarts=1,
        replayed_steps=6,
    ), batch=1)  # fmt: skip
    emit_workers(emitter, [41.0, 0.0], batch=1)  # worker 1 reported dead
    aggregator = SanctumAggregator()
    for event in events:
        aggregator.handle_event(event)
    snap = aggregator.snapshot()
    got = [(w.worker, w.alive, w.restarts, w.steps_per_second, w.batch) for w in snap.workers]
    assert got == [(0, True, 0, 41.0, 1), (1, False, 0, 0.0, 1)]
    logged = [(e.severity, e.message) for e in snap.events]
    assert logged == [
        ("warning", "worker 1 (processes) lost (process exited (code -9)); replaced and "
         "6 env steps replayed (restart 1)"),
        ("warning", "worker 1 (processes, 2 envs): DEAD, 0 restarts"),
    ]  # fmt: skip


def header_text(rates: list[float]) -> str:
    events = EventList()
    emit_workers(TelemetryEmitter(events, run_id="r"), rates, batch=0)
    aggregator = SanctumAggregator()
    for event in events:
        aggregator.handle_event(event)
    from rich.console import Console

    console = Console(width=400, record=True)
    console.print(render_header(aggregator.snapshot(), HeaderView()))
    return console.export_text()


def test_the_header_shows_workers_only_when_there_are_several() -> None:
    assert "worker" not in header_text([55.0])
    text = header_text([40.0, 0.0, 38.5])
    for field in ("workers 2/3 alive", "w0 40.0 steps/s", "w1 dead", "w2 38.5 steps/s",
                  "total 78.5 steps/s"):  # fmt: skip
        assert field in text
    many = header_text([10.0 + w for w in range(9)] + [0.0])
    assert "workers 9/10 alive" in many and "10.0–18.0 steps/s per worker" in many
    assert "dead: w9" in many and "w0 " not in many


def test_logs_from_before_workers_still_read() -> None:
    old = {"env_index": 0, "slot": 1, "from_stage": "DORMANT", "to_stage": "GERMINATED",
           "blueprint": "MLP", "alpha": 0.0}  # fmt: skip
    assert SeedLifecycle.from_dict(old).worker is None
    old_episode = {"env_index": 1, "episode_return": 0.5, "final_accuracy": 0.9,
                   "seeds_grown": 1, "seeds_fossilized": 0, "seeds_killed": 0,
                   "length": 25}  # fmt: skip
    assert EpisodeCompleted.from_dict(old_episode).worker is None
