"""Where the environments step: in this process, in local worker processes, or on Ray actors.

The learner stays in the driver and acts for every env in one batch (one policy, one
sampling generator), so the actions, and with them every number of a run, are the same
whichever runner steps the envs: the backend changes the wall time only. A runner only
steps. `reset(seeds)` starts an episode in each of the first `len(seeds)` envs (the last
batch of a run may be smaller), `step(actions)` advances those envs by one action each;
both return what the agent needs next, the observations and the legal values of every
head (`esper.common.spaces`), and `step` also the rewards, end flags and per-env info
dicts (lifecycle events, episode summaries), which travel back with the results.

Env compute runs at `ENV_THREADS` intra-op torch threads in every backend: torch's float
results depend on the thread count (the digits host drifts apart after a few epochs at 1
vs 2 threads), so a fixed count is what makes the backend invisible in the numbers. One
thread per env is also the fastest setting for these small hosts on a shared machine.

Envs are dealt round-robin (env i on worker i % W), so a partial last batch still keeps
every worker busy.

Faults (worker pools): every wait has a timeout, so a run never hangs on a dead worker. A
worker that dies or does not answer in time is killed and replaced, and its envs are
restored by replay: the env is deterministic given its reset seed and the actions since,
so `reset(seed)` plus those actions rebuilds the exact state; then the call it missed is
sent again. `on_restart` hears of every replacement (the trainer emits a warning event).
An env that resets itself when an episode ends (continuing mode, where the runner resets
only once a run) would make that history the whole run; such an env may report where its
next episode starts (`info[EPISODE_START]`, see `FactoredEnv`), and the runner then keeps,
per env, only that restart point and the actions since it, so a replay re-steps the
current episode alone. An env that reports none is replayed from the last `reset`.

Why the processes backend is not gymnasium's `AsyncVectorEnv`: it runs one process per env
(no `workers < envs`), merges the info dicts into numpy arrays (the lists of lifecycle
events and the episode summary would come back as object arrays to unpick), needs a
second round trip per step (`call`) for the legal values, and a dead worker breaks the
whole vector env with no way to replace that one worker and replay its episodes. A pipe per
worker from the standard library's `multiprocessing` does all of it in a few lines.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import multiprocessing.connection
import multiprocessing.context
import os
import secrets
import signal
import socket
import time
import traceback
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection
from types import ModuleType
from typing import Any, ClassVar, NamedTuple, Protocol

import numpy as np
import numpy.typing as npt
import torch

from esper.common.spaces import FactoredActions

FloatArray = npt.NDArray[np.float32]
BoolArray = npt.NDArray[np.bool_]
IntArray = npt.NDArray[np.int64]

#: Intra-op torch threads for env compute, in every backend (see the module docstring).
ENV_THREADS = 1
#: Seconds a worker may take to answer one reset or step before it is presumed lost.
CALL_TIMEOUT = 120.0
#: Seconds a new worker may take to start (spawn, import torch, build its envs) and replay.
START_TIMEOUT = 300.0
#: A call whose worker is lost this many times in a row fails the run.
MAX_RESTARTS_PER_CALL = 3
#: The info key of a step that started a new episode: where to restart the env from.
EPISODE_START = "episode_start"


class FactoredEnv(Protocol):
    """What a runner needs from an environment: a gymnasium env that declares its heads.

    `legal_actions()` gives the legal values of the current state ([cases, heads, width],
    `esper.common.spaces`). The morphogenetic env satisfies it; any gymnasium env with a
    Discrete, MultiDiscrete or discretised Box action space does through
    `esper.integrations.gym.FactoredGymEnv`.

    Optional, for envs that reset themselves inside `step`: a step that starts a new
    episode may put a restart point in `info[EPISODE_START]` (a small JSON-able mapping),
    and then the env must have `restart(point)`, which puts a fresh env where that step
    left it (returning what `reset` does). A worker pool then replays a lost env from its
    latest point rather than from its reset seed (see the module docstring). An env without
    them is replayed from its reset, as before.
    """

    obs_dim: int
    factored_actions: FactoredActions

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[npt.NDArray[np.float32], dict[str, Any]]: ...

    def step(self, action: npt.ArrayLike) -> tuple[Any, Any, bool, bool, dict[str, Any]]: ...

    def legal_actions(self) -> BoolArray: ...


EnvFactory = Callable[[], FactoredEnv]
#: Called with each worker replacement, after its envs were restored.
RestartCallback = Callable[["RestartNotice"], None]


class WorkerLost(Exception):
    """A worker died or did not answer in time; replacing it and replaying recovers."""


class WorkerError(RuntimeError):
    """The workers cannot go on: one failed to start, or kept dying on the same call."""


class RemoteEnvError(RuntimeError):
    """An environment raised inside a worker; the remote traceback is the `__cause__`."""


class _RemoteTraceback(Exception):
    """Carries a worker's traceback text into the driver's traceback (as its cause)."""

    def __str__(self) -> str:
        return f"\n\n{self.args[0]}"


# ------------------------------------------------------------------ results


class EnvState(NamedTuple):
    """One env after reset: what the agent acts on."""

    obs: FloatArray
    legal: BoolArray


class EnvStep(NamedTuple):
    """One env after one step."""

    obs: FloatArray
    legal: BoolArray
    reward: float
    terminated: bool
    truncated: bool
    info: dict[str, Any]


@dataclass(frozen=True)
class EnvStates:
    """Observations and legal values of the active envs, stacked in env order."""

    obs: FloatArray  # [n, obs_dim]
    legal: BoolArray  # [n, cases, heads, width]


@dataclass(frozen=True)
class StepResults(EnvStates):
    """`EnvStates` after a step, plus what each env reported."""

    rewards: FloatArray  # [n]
    terminated: BoolArray  # [n]
    truncated: BoolArray  # [n]
    infos: list[dict[str, Any]]


def stack_states(states: Sequence[EnvState | EnvStep]) -> EnvStates:
    """Per-env observations and masks as the batch arrays the agent takes."""
    return EnvStates(
        obs=np.stack([s.obs for s in states]),
        legal=np.stack([s.legal for s in states]),
    )


def stack_steps(steps: Sequence[EnvStep]) -> StepResults:
    """Per-env step outcomes as batch arrays, infos kept per env."""
    states = stack_states(steps)
    return StepResults(
        obs=states.obs,
        legal=states.legal,
        rewards=np.array([float(s.reward) for s in steps], dtype=np.float32),
        terminated=np.array([bool(s.terminated) for s in steps], dtype=np.bool_),
        truncated=np.array([bool(s.truncated) for s in steps], dtype=np.bool_),
        infos=[s.info for s in steps],
    )


@dataclass(frozen=True)
class WorkerInfo:
    """One worker's health and its throughput over the latest batch, for telemetry."""

    worker: int
    alive: bool
    restarts: int  # replacements so far in the run
    envs: int  # envs this worker steps
    steps: int  # env steps it took since the latest reset
    seconds: float  # wall seconds from the latest reset to the latest step

    @property
    def steps_per_second(self) -> float:
        return self.steps / self.seconds if self.seconds > 0 else 0.0


@dataclass(frozen=True)
class RestartNotice:
    """A lost worker was replaced and its episodes replayed."""

    worker: int
    backend: str
    reason: str
    restarts: int  # replacements of this worker so far, this one included
    replayed_steps: int  # env steps replayed to restore its envs


class EnvRunner(Protocol):
    """Steps a fixed set of envs for the driver; see the module docstring."""

    n_envs: int
    n_workers: int
    obs_dim: int
    actions: FactoredActions

    @property
    def backend(self) -> str:
        """"inprocess", "processes" or "ray" (a class attribute of each runner)."""
        ...

    def reset(self, seeds: Sequence[int | None]) -> EnvStates: ...

    def step(self, actions: IntArray) -> StepResults: ...

    def worker_of(self, env_index: int) -> int: ...

    def status(self) -> list[WorkerInfo]: ...

    def close(self) -> None: ...


# ------------------------------------------------------------------ the env side


def worker_envs(n_envs: int, n_workers: int) -> list[list[int]]:
    """Env indices of each worker, dealt round-robin: worker w steps envs w, w + W, ..."""
    if not 1 <= n_workers <= n_envs:
        raise ValueError(f"workers must be in 1..{n_envs} (one env at least each), got {n_workers}")
    return [list(range(w, n_envs, n_workers)) for w in range(n_workers)]


@contextlib.contextmanager
def env_threads() -> Iterator[None]:
    """Run the enclosed env compute at ENV_THREADS torch threads, then restore the count."""
    previous = torch.get_num_threads()
    if previous == ENV_THREADS:
        yield
        return
    torch.set_num_threads(ENV_THREADS)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


class EnvReplay(NamedTuple):
    """What rebuilds one env after its worker was lost: where it starts, then its actions."""

    seed: int | None  # its reset seed, where `point` is None
    point: Mapping[str, Any] | None  # its latest `info[EPISODE_START]`, if it gave one
    actions: IntArray  # [steps, heads]: every action since that start


class EnvGroup:
    """The envs of one worker, and the only code that steps envs (every backend runs it).

    `reset(seeds)` activates the first `len(seeds)` envs; `step(actions)` steps those.
    """

    def __init__(self, envs: Sequence[FactoredEnv]) -> None:
        if not envs:
            raise ValueError("an env group needs at least one env")
        self.envs = list(envs)
        self._active = 0

    def describe(self) -> tuple[int, FactoredActions]:
        """(obs_dim, heads) of the envs, for the driver to size its buffers."""
        return int(self.envs[0].obs_dim), self.envs[0].factored_actions

    def reset(self, seeds: Sequence[int | None]) -> list[EnvState]:
        if len(seeds) > len(self.envs):
            raise ValueError(f"{len(seeds)} seeds for {len(self.envs)} envs")
        self._active = len(seeds)
        active = self.envs[: self._active]
        with env_threads():
            obs = [env.reset(seed=seed)[0] for env, seed in zip(active, seeds, strict=True)]
        return [EnvState(ob, env.legal_actions()) for ob, env in zip(obs, active, strict=True)]

    def step(self, actions: npt.ArrayLike) -> list[EnvStep]:
        acts = np.asarray(actions)
        if acts.shape[0] != self._active:
            raise ValueError(f"{acts.shape[0]} actions for {self._active} active envs")
        active = self.envs[: self._active]
        with env_threads():
            outcomes = [env.step(a) for env, a in zip(active, acts, strict=True)]
        return [
            EnvStep(ob, env.legal_actions(), float(r), bool(term), bool(trunc), info)
            for (ob, r, term, trunc, info), env in zip(outcomes, active, strict=True)
        ]

    def replay(self, envs: Sequence[EnvReplay]) -> int:
        """Rebuild the first `len(envs)` envs' state; returns the env steps it re-took.

        Each env starts from its restart point (or its reset seed) and re-steps its own
        actions. The envs step in turn, as they did, with the shorter histories aligned to
        the end: an env without restart points has the longest (all steps since the reset),
        so a group of those replays exactly as it ran.
        """
        if len(envs) > len(self.envs):
            raise ValueError(f"{len(envs)} envs to replay for {len(self.envs)} envs")
        self._active = len(envs)
        active = self.envs[: self._active]
        longest = max((len(e.actions) for e in envs), default=0)
        with env_threads():
            for env, log in zip(active, envs, strict=True):
                if log.point is None:
                    env.reset(seed=log.seed)
                    continue
                restart = getattr(env, "restart", None)
                if not callable(restart):
                    raise TypeError(
                        f"{type(env).__name__} reported info[{EPISODE_START!r}] but has no "
                        "restart(point) to start from it"
                    )
                restart(log.point)
            for t in range(longest):
                for env, log in zip(active, envs, strict=True):
                    lag = longest - len(log.actions)
                    if t >= lag:
                        env.step(log.actions[t - lag])
        return sum(len(e.actions) for e in envs)


class WorkerEnvGroup(EnvGroup):
    """An EnvGroup built inside a worker from env factories, the process pinned to ENV_THREADS.

    Pinning once (rather than around every call) is right here: the worker does nothing else.
    """

    def __init__(self, factories: Sequence[EnvFactory]) -> None:
        torch.set_num_threads(ENV_THREADS)
        super().__init__([make() for make in factories])


# ------------------------------------------------------------------ throughput


class _Throughput:
    """Env steps per worker since the latest reset, and the wall time they took."""

    def __init__(self, n_workers: int) -> None:
        self.steps = [0] * n_workers
        self.seconds = 0.0
        self._start = time.perf_counter()

    def restart(self) -> None:
        self.steps = [0] * len(self.steps)
        self.seconds = 0.0
        self._start = time.perf_counter()

    def count(self, steps: Mapping[int, int]) -> None:
        for worker, n in steps.items():
            self.steps[worker] += n
        self.seconds = time.perf_counter() - self._start


# ------------------------------------------------------------------ in process


class InProcessRunner:
    """Steps the given envs one after another in this process (the default backend).

    The env objects are the caller's own, so a caller may inspect them between batches.
    """

    backend = "inprocess"
    n_workers = 1

    def __init__(self, envs: Sequence[FactoredEnv]) -> None:
        self._group = EnvGroup(envs)
        self.n_envs = len(envs)
        self.obs_dim, self.actions = self._group.describe()
        self._throughput = _Throughput(1)

    def reset(self, seeds: Sequence[int | None]) -> EnvStates:
        self._throughput.restart()
        return stack_states(self._group.reset(seeds))

    def step(self, actions: IntArray) -> StepResults:
        results = stack_steps(self._group.step(actions))
        self._throughput.count({0: len(results.infos)})
        return results

    def worker_of(self, env_index: int) -> int:
        return 0

    def status(self) -> list[WorkerInfo]:
        t = self._throughput
        return [WorkerInfo(0, True, 0, self.n_envs, t.steps[0], t.seconds)]

    def close(self) -> None:
        """Nothing to release: the envs belong to the caller."""


# ------------------------------------------------------------------ worker pools


class WorkerHandle(Protocol):
    """The driver's end of one remote worker: one call in flight at a time."""

    def send(self, method: str, *args: Any) -> None: ...

    def receive(self, timeout: float) -> Any:
        """The result of the call sent last; WorkerLost if it died or timed out."""
        ...

    def alive(self) -> bool: ...

    def kill(self) -> None: ...

    def stop(self) -> None:
        """Ask the worker to exit, without waiting."""
        ...

    def close(self, timeout: float) -> None:
        """Wait for a stopped worker to exit; kill it if it has not within `timeout` s."""
        ...


class _EnvLog:
    """What the driver keeps to restore one env: where it started, and the actions since.

    A step that reports `info[EPISODE_START]` moves the start to that point and drops the
    actions before it, so an env that resets itself keeps one episode of history, not a run.
    """

    def __init__(self, seed: int) -> None:
        self.seed = seed
        self.point: dict[str, Any] | None = None
        self.actions: list[IntArray] = []

    def record(self, action: IntArray, info: Mapping[str, Any]) -> None:
        point = info.get(EPISODE_START)
        if point is None:
            self.actions.append(action.copy())  # a copy: a row alone, not the whole batch
        else:
            self.point, self.actions = dict(point), []

    def replay(self, heads: int) -> EnvReplay:
        actions = np.stack(self.actions) if self.actions else np.zeros((0, heads), np.int64)
        return EnvReplay(self.seed, self.point, actions)


def fresh_seed() -> int:
    """A seed for an episode started unseeded: replay after a restart needs a real one."""
    return secrets.randbelow(2**63)


class WorkerPoolRunner:
    """Envs spread over remote workers; restart-and-replay on loss. Subclasses launch workers.

    `timeout` bounds every reset or step call; `start_timeout` a new worker's start-up
    (and, on a restart, its replay).
    """

    backend: ClassVar[str]

    def __init__(
        self,
        factories: Sequence[EnvFactory],
        n_workers: int | None = None,
        *,
        on_restart: RestartCallback | None = None,
        timeout: float = CALL_TIMEOUT,
        start_timeout: float = START_TIMEOUT,
    ) -> None:
        self.n_envs = len(factories)
        self.n_workers = self.n_envs if n_workers is None else n_workers
        self._groups = worker_envs(self.n_envs, self.n_workers)
        self._factories = list(factories)
        self.on_restart = on_restart
        self.timeout, self.start_timeout = timeout, start_timeout
        self.restarts = [0] * self.n_workers
        self._logs: list[_EnvLog] = []  # one per active env, in env order
        self._active: dict[int, int] = {}  # worker -> active envs of the current batch
        self._throughput = _Throughput(self.n_workers)
        self._workers: list[WorkerHandle] = []
        try:
            try:
                self._workers = [self._launch(w) for w in range(self.n_workers)]
            except WorkerLost as lost:
                raise WorkerError(f"{self.backend} workers did not start: {lost}") from None
            shapes = self._start_all()
        except BaseException:
            self.close()
            raise
        if len(set(shapes)) != 1:
            raise WorkerError(f"workers disagree on (obs_dim, heads): {shapes}")
        self.obs_dim, self.actions = shapes[0]

    def _launch(self, worker: int) -> WorkerHandle:
        """Start worker `worker` on its share of the factories (without waiting for it)."""
        raise NotImplementedError

    def _worker_factories(self, worker: int) -> list[EnvFactory]:
        return [self._factories[i] for i in self._groups[worker]]

    def _start_all(self) -> list[tuple[int, FactoredActions]]:
        for handle in self._workers:
            handle.send("describe")
        shapes = []
        for w, handle in enumerate(self._workers):
            try:
                shapes.append(tuple(handle.receive(self.start_timeout)))
            except WorkerLost as lost:
                raise WorkerError(f"{self.backend} worker {w} did not start: {lost}") from None
        return shapes

    # -- the EnvRunner API -----------------------------------------------------------------

    def worker_of(self, env_index: int) -> int:
        return env_index % self.n_workers

    def reset(self, seeds: Sequence[int | None]) -> EnvStates:
        if not 1 <= len(seeds) <= self.n_envs:
            raise ValueError(f"{len(seeds)} seeds for {self.n_envs} envs")
        chosen = [fresh_seed() if s is None else int(s) for s in seeds]
        self._logs = [_EnvLog(seed) for seed in chosen]
        per_worker = {
            w: [chosen[i] for i in envs if i < len(chosen)] for w, envs in enumerate(self._groups)
        }
        self._active = {w: len(s) for w, s in per_worker.items() if s}
        self._throughput.restart()
        results = self._call_all("reset", {w: (per_worker[w],) for w in self._active})
        return stack_states(self._in_env_order(results, len(chosen)))

    def step(self, actions: IntArray) -> StepResults:
        acts = np.asarray(actions, dtype=np.int64)
        n_active = sum(self._active.values())
        if acts.shape[0] != n_active:
            raise ValueError(f"{acts.shape[0]} actions for {n_active} active envs")
        per_worker = {w: acts[w :: self.n_workers] for w in self._active}
        results = self._in_env_order(
            self._call_all("step", {w: (a,) for w, a in per_worker.items()}), n_active
        )
        for log, action, result in zip(self._logs, acts, results, strict=True):
            log.record(action, result.info)
        self._throughput.count(self._active)
        return stack_steps(results)

    def replay_steps(self) -> list[int]:
        """Env steps a replay of each worker would re-take now (what losing it would cost)."""
        return [
            sum(len(self._logs[i].actions) for i in self._active_envs(w))
            for w in range(self.n_workers)
        ]

    def status(self) -> list[WorkerInfo]:
        t = self._throughput
        return [
            WorkerInfo(w, handle.alive(), self.restarts[w], len(envs), t.steps[w], t.seconds)
            for w, (handle, envs) in enumerate(zip(self._workers, self._groups, strict=True))
        ]

    def close(self) -> None:
        """Ask every worker to exit, killing any that does not; idempotent."""
        workers, self._workers = self._workers, []
        for handle in workers:  # all at once: they wind down in parallel
            handle.stop()
        for handle in workers:
            handle.close(timeout=5.0)

    def __enter__(self) -> WorkerPoolRunner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- calls, with restart and replay ----------------------------------------------------

    def _active_envs(self, worker: int) -> list[int]:
        return [i for i in self._groups[worker] if i < len(self._logs)]

    def _in_env_order(self, results: Mapping[int, list[Any]], n_active: int) -> list[Any]:
        return [results[i % self.n_workers][i // self.n_workers] for i in range(n_active)]

    def _call_all(self, method: str, args: Mapping[int, tuple[Any, ...]]) -> dict[int, Any]:
        """Send `method` to the workers in `args` at once, then collect each answer."""
        for w, worker_args in args.items():
            self._workers[w].send(method, *worker_args)
        return {w: self._receive(w, method, worker_args) for w, worker_args in args.items()}

    def _receive(self, worker: int, method: str, args: tuple[Any, ...]) -> Any:
        """The answer of `worker` to `method`, replacing and restoring it while it is lost."""
        losses = 0
        while True:
            try:
                return self._workers[worker].receive(self.timeout)
            except WorkerLost as lost:
                losses += 1
                reason = str(lost)
            while True:  # replace the worker, restore its envs, ask again
                if losses > MAX_RESTARTS_PER_CALL:
                    raise WorkerError(
                        f"{self.backend} worker {worker} was lost {losses} times in a row "
                        f"during {method}; last: {reason}"
                    )
                try:
                    self._replace(worker, reason)
                    break
                except WorkerLost as lost:
                    losses += 1
                    reason = f"restart failed: {lost}"
            self._workers[worker].send(method, *args)

    def _replace(self, worker: int, reason: str) -> None:
        self._workers[worker].kill()
        self.restarts[worker] += 1
        handle = self._launch(worker)
        self._workers[worker] = handle
        heads = self.actions.n_heads
        handle.send("replay", [self._logs[i].replay(heads) for i in self._active_envs(worker)])
        replayed = int(handle.receive(self.start_timeout))
        if self.on_restart is not None:
            self.on_restart(
                RestartNotice(worker, self.backend, reason, self.restarts[worker], replayed)
            )


# ------------------------------------------------------------------ local processes


def _process_worker_main(conn: Connection, factories: Sequence[EnvFactory]) -> None:
    """A worker process: build the envs, then answer calls until told to close.

    Ctrl-C reaches the whole process group; the driver decides when its workers stop.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        group = WorkerEnvGroup(factories)
    except Exception:
        with contextlib.suppress(OSError):
            conn.send((False, traceback.format_exc()))
        return
    while True:
        try:
            method, args = conn.recv()
        except (EOFError, OSError):  # the driver is gone
            return
        if method == "close":
            return
        try:
            answer = (True, getattr(group, method)(*args))
        except Exception:
            answer = (False, traceback.format_exc())
        try:
            conn.send(answer)
        except OSError:  # the driver is gone or replaced us (e.g. its fork server died)
            return


class _ProcessWorker:
    """A worker process and the driver's end of its pipe."""

    def __init__(
        self,
        context: multiprocessing.context.DefaultContext
        | multiprocessing.context.ForkServerContext
        | multiprocessing.context.SpawnContext,
        worker: int,
        factories: Sequence[EnvFactory],
    ) -> None:
        self.worker = worker
        self._conn, child = context.Pipe()
        self.process = context.Process(
            target=_process_worker_main,
            args=(child, factories),
            name=f"esper-env-worker-{worker}",
            daemon=True,
        )
        self.process.start()
        child.close()  # or the driver's copy keeps the pipe open after the worker dies
        self._broken = False

    def send(self, method: str, *args: Any) -> None:
        try:
            self._conn.send((method, args))
        except OSError:  # broken pipe: the worker is gone; receive() says so
            self._broken = True

    def receive(self, timeout: float) -> Any:
        if self._broken:
            raise WorkerLost(self._gone())
        ready = multiprocessing.connection.wait([self._conn, self.process.sentinel], timeout)
        if self._conn in ready:
            try:
                ok, value = self._conn.recv()
            except (EOFError, OSError):
                raise WorkerLost(self._gone()) from None
            if not ok:
                last = value.strip().splitlines()[-1]
                raise RemoteEnvError(f"worker {self.worker}: {last}") from _RemoteTraceback(value)
            return value
        if ready:
            raise WorkerLost(self._gone())
        raise WorkerLost(f"no answer in {timeout:g} s")

    def _gone(self) -> str:
        """Why the pipe broke: the exit code once the process is reaped."""
        self.process.join(timeout=1.0)
        code = self.process.exitcode
        return "pipe closed" if code is None else f"process exited (code {code})"

    def alive(self) -> bool:
        return not self._broken and self.process.is_alive()

    def kill(self) -> None:
        self.process.kill()
        self.process.join(timeout=5.0)
        self._conn.close()

    def stop(self) -> None:
        with contextlib.suppress(OSError):
            self._conn.send(("close", ()))

    def close(self, timeout: float) -> None:
        self.process.join(timeout)
        if self.process.is_alive():
            self.kill()
        self._conn.close()


#: Modules the fork server imports once, so that a worker starts, or restarts, in a fork
#: (0.1 s) instead of a fresh interpreter importing torch (3 s of CPU) and scikit-learn
#: for the digits task (2 s). The host's optimiser (`esper.common.optim.FusedAdam`) no longer
#: pulls in torch._dynamo, so neither does a worker.
FORKSERVER_PRELOAD = [
    "__main__",
    "esper.rl.runners",
    "esper.morpho.environment",
    "sklearn.datasets",
    "sklearn.model_selection",
    "sklearn.preprocessing",
]


class ProcessRunner(WorkerPoolRunner):
    """Envs in local worker processes (the standard library's multiprocessing).

    Workers come from a fork server: never a fork of this process, which may have run
    torch's thread pools (a fork of that can hang), but of a clean server process that has
    only imported the env modules, so starting a worker costs a fork, not a torch import.
    Like spawning (the fallback where there is no fork server), this re-imports the
    caller's `__main__`, so the usual main-module guard applies. The preload takes effect
    if this process has not started a fork server yet.
    """

    backend = "processes"

    def __init__(self, factories: Sequence[EnvFactory], n_workers: int | None = None, **kw: Any):
        self._context: (
            multiprocessing.context.DefaultContext
            | multiprocessing.context.ForkServerContext
            | multiprocessing.context.SpawnContext
        )
        if "forkserver" in multiprocessing.get_all_start_methods():
            self._context = multiprocessing.get_context("forkserver")
            self._context.set_forkserver_preload(FORKSERVER_PRELOAD)
        else:  # Windows: a fresh interpreter per worker
            self._context = multiprocessing.get_context("spawn")
        super().__init__(factories, n_workers, **kw)

    def _launch(self, worker: int) -> WorkerHandle:
        try:
            return _ProcessWorker(self._context, worker, self._worker_factories(worker))
        except (OSError, EOFError) as exc:  # e.g. the fork server was killed: retried once
            raise WorkerLost(
                f"cannot start a worker process ({type(exc).__name__}: {exc})"
            ) from None

    def pids(self) -> list[int | None]:
        """Process ids of the workers, in worker order (for fault drills and tests)."""
        return [h.process.pid if isinstance(h, _ProcessWorker) else None for h in self._workers]


# ------------------------------------------------------------------ Ray


def import_ray() -> ModuleType:
    """The `ray` module, or a WorkerError saying how to get it."""
    try:
        import ray
    except ImportError:
        raise WorkerError("the ray backend needs Ray: install esper-ppo[ray]") from None
    return ray


class _RayWorker:
    """One Ray actor holding a WorkerEnvGroup, and its call in flight."""

    def __init__(self, ray: ModuleType, actor_class: Any, factories: Sequence[EnvFactory]):
        self._ray = ray
        self.actor = actor_class.remote(list(factories))
        self._ref: Any = None
        self._alive = True

    def send(self, method: str, *args: Any) -> None:
        self._ref = getattr(self.actor, method).remote(*args)

    def receive(self, timeout: float) -> Any:
        errors = self._ray.exceptions
        try:
            return self._ray.get(self._ref, timeout=timeout)
        except errors.GetTimeoutError:
            self._alive = False
            raise WorkerLost(f"no answer in {timeout:g} s") from None
        except errors.RayActorError as exc:
            self._alive = False
            raise WorkerLost(f"actor died: {_first_line(exc)}") from None
        except errors.RayTaskError as exc:
            raise RemoteEnvError(f"ray actor: {_first_line(exc)}") from exc
        except errors.RayError as exc:  # lost objects, unavailable nodes: replace and replay
            self._alive = False
            raise WorkerLost(f"{type(exc).__name__}: {_first_line(exc)}") from None

    def alive(self) -> bool:
        return self._alive

    def kill(self) -> None:
        self._alive = False
        with contextlib.suppress(Exception):
            self._ray.kill(self.actor, no_restart=True)

    def stop(self) -> None:
        self.kill()

    def close(self, timeout: float) -> None:
        """Nothing to wait for: `stop` killed the actor."""


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


#: Seconds to wait for a TCP connection to a Ray cluster's address before giving up.
CONNECT_TIMEOUT = 10.0


def unreachable_address(address: str, timeout: float = CONNECT_TIMEOUT) -> str | None:
    """Why a "[ray://]host:port" address takes no TCP connection, or None if it does.

    `ray.init` retries an unreachable cluster without end, so the address is probed
    first. Other forms ("auto", "local") are left to Ray, which answers them at once.
    """
    host, sep, port = address.removeprefix("ray://").rpartition(":")
    if not sep or not host or not port.isdigit():
        return None
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
    except OSError as exc:
        return exc.strerror or type(exc).__name__
    return None


class RayRunner(WorkerPoolRunner):
    """Envs on Ray actors, one actor per worker (1 CPU each).

    `address` connects to a running cluster (whose nodes must have esper installed);
    without it a local Ray instance is started with enough CPUs for the workers. An
    instance that was already running in this process is used and left running.
    """

    backend = "ray"

    def __init__(
        self,
        factories: Sequence[EnvFactory],
        n_workers: int | None = None,
        *,
        address: str | None = None,
        **kw: Any,
    ) -> None:
        ray = import_ray()
        self._ray = ray
        self._owns_ray = not ray.is_initialized()
        if self._owns_ray:
            workers = len(factories) if n_workers is None else n_workers
            if address is not None and (unreachable := unreachable_address(address)):
                raise WorkerError(f"cannot reach the Ray cluster at {address}: {unreachable}")
            try:
                ray.init(
                    address=address,
                    num_cpus=None if address else max(workers, os.cpu_count() or 1),
                    include_dashboard=False,
                    log_to_driver=False,
                    logging_level=logging.ERROR,
                )
            except Exception as exc:  # unreachable address, no local resources, ...
                where = f"the Ray cluster at {address}" if address else "a local Ray instance"
                raise WorkerError(f"cannot start {where}: {_first_line(exc)}") from exc
        self._actor_class = ray.remote(num_cpus=1, max_restarts=0)(WorkerEnvGroup)
        try:
            super().__init__(factories, n_workers, **kw)
        except BaseException:
            self._shutdown()
            raise

    def _launch(self, worker: int) -> WorkerHandle:
        return _RayWorker(self._ray, self._actor_class, self._worker_factories(worker))

    def actors(self) -> list[Any]:
        """The workers' actor handles, in worker order (for fault drills and tests)."""
        return [h.actor if isinstance(h, _RayWorker) else None for h in self._workers]

    def close(self) -> None:
        super().close()
        self._shutdown()

    def _shutdown(self) -> None:
        if self._owns_ray and self._ray.is_initialized():
            self._ray.shutdown()
        self._owns_ray = False


def make_runner(
    backend: str,
    factories: Sequence[EnvFactory],
    workers: int | None = None,
    *,
    ray_address: str | None = None,
    on_restart: RestartCallback | None = None,
) -> EnvRunner:
    """The runner for `backend` ("inprocess", "processes" or "ray") over these envs."""
    if backend == "inprocess":
        return InProcessRunner([make() for make in factories])
    if backend == "processes":
        return ProcessRunner(factories, workers, on_restart=on_restart)
    if backend == "ray":
        return RayRunner(factories, workers, address=ray_address, on_restart=on_restart)
    raise ValueError(f"unknown backend {backend!r}")
