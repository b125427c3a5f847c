"""`esper ppo --learners N`: several data-parallel learner processes for one run.

Started without a launcher, `esper ppo --learners N` checks its input, then spawns N
copies of the same command line as ranks 0..N-1 of a torch.distributed group (gloo on
CPUs, NCCL with `--device cuda`), exactly as `torchrun --nproc_per_node N` would, and
watches them; under `torchrun` (RANK and WORLD_SIZE set) each process is one rank
already and joins the launcher's group. Either way the ranks train in lock step
(`esper.rl.learners`): rank 0 alone holds the run directory's writer lock, records the
run and writes the checkpoint; the others send it what its telemetry needs.

Failures: a rank that dies makes the others' next collective fail, and they stop with
what is on disk (every update up to the last checkpoint, as a single learner leaves
it); the watcher waits for the survivors, then reports ONE line, naming the rank that
failed first and how to continue (`--resume`, with the same number of learners).
Ranks it spawned never print a failure themselves; they leave the watcher a line
(`STATUS_ENV`) and exit with `EXIT_LOST` when they only lost a peer.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from esper.cli.main import (
    EXIT_INTERRUPTED,
    EXIT_TERMINATED,
    EXIT_USAGE,
    RUN_ID_ENV,
    UsageError,
    _first_line,
    _open_run,
    config_from_args,
    prepare_training,
)
from esper.rl.checkpoint import CHECKPOINT_NAME
from esper.rl.config import ConfigError, TrainConfig, build_config
from esper.rl.threads import learner_threads, usable_cpus

#: Set (to the watcher's pid) for the ranks `--learners N` spawns: they report to the
#: watcher, not the terminal.
SPAWNED_ENV = "ESPER_LEARNER_SPAWNED"
#: Directory where a spawned rank leaves the one line saying why it failed.
STATUS_ENV = "ESPER_LEARNER_STATUS"
#: Exit status of a rank that stopped because it lost contact with another rank.
EXIT_LOST = 3
#: Seconds the watcher gives the surviving ranks, after a first failure, to notice it
#: and stop on their own before it kills them.
GRACE_SECONDS = 30.0
#: Seconds between the watcher's looks at its ranks.
POLL_SECONDS = 0.05


# ------------------------------------------------------------------ the watcher


def _free_port() -> int:
    """A TCP port free on the loopback interface now, for the ranks' rendezvous."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _rank_environment(rank: int, world: int, port: int, run_id: str, status: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        RANK=str(rank),
        WORLD_SIZE=str(world),
        LOCAL_RANK=str(rank),
        LOCAL_WORLD_SIZE=str(world),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        **{SPAWNED_ENV: str(os.getpid()), STATUS_ENV: status, RUN_ID_ENV: run_id},
    )
    if sys.platform == "linux":  # gloo would otherwise pick the host's first interface
        env.setdefault("GLOO_SOCKET_IFNAME", "lo")
    return env


def supervise(args: argparse.Namespace, config: TrainConfig, run_dir: Path, run_id: str) -> int:
    """Spawn `config.learners` ranks of this command line and watch them to the end.

    Returns rank 0's exit status when every rank ends well; after a failure, prints one
    line (which rank, how, where the data is, how to continue) and returns 1. Ctrl-C
    reaches the ranks from the terminal; SIGTERM sent to the watcher is passed on. Either
    makes the ranks stop together after the batch in flight.
    """
    world = config.learners
    if not args.no_tui and sys.stdout.isatty() and sys.stdin.isatty():
        print(
            f"esper ppo: note: {world} learners train headless; watch live with: "
            f"sanctum {run_dir}",
            file=sys.stderr,
        )
    port = _free_port()
    status = tempfile.mkdtemp(prefix="esper-learners-")
    command = [sys.executable, "-m", "esper.cli.main", *args.argv]
    procs: list[subprocess.Popen[bytes]] = []
    terminated = threading.Event()

    def forward(signum: int, frame: object) -> None:
        if signum == signal.SIGTERM:
            terminated.set()
        for p in procs:
            with contextlib.suppress(OSError):
                p.send_signal(signum)

    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        for rank in range(world):
            procs.append(
                subprocess.Popen(
                    command,
                    env=_rank_environment(rank, world, port, run_id, status),
                    stdin=subprocess.DEVNULL,
                    stdout=None if rank == 0 else subprocess.DEVNULL,
                )
            )
        failures = _watch(procs)
    finally:
        for p in procs:  # never leave a rank behind, whatever happened here
            if p.poll() is None:
                p.kill()
                p.wait()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    try:
        return _verdict(procs, failures, Path(status), run_dir, terminated.is_set())
    finally:
        for name in os.listdir(status):
            with contextlib.suppress(OSError):
                os.unlink(os.path.join(status, name))
        with contextlib.suppress(OSError):
            os.rmdir(status)


def _watch(procs: list[subprocess.Popen[bytes]]) -> list[int]:
    """Wait for every rank; returns the ranks that failed, in the order they were seen.

    After the first failure the others get `GRACE_SECONDS` to stop on their own (their
    next collective fails at once when a peer died), then are killed: no hang.
    """
    failures: list[int] = []
    deadline: float | None = None
    while any(p.returncode is None for p in procs):
        for rank, p in enumerate(procs):
            if p.returncode is None and p.poll() is not None and p.returncode != 0:
                failures.append(rank)
        if failures and deadline is None:
            deadline = time.monotonic() + GRACE_SECONDS
        if deadline is not None and time.monotonic() > deadline:
            for p in procs:
                if p.poll() is None:
                    p.kill()
                    p.wait()
        time.sleep(POLL_SECONDS)
    return failures


def _verdict(
    procs: list[subprocess.Popen[bytes]],
    failures: list[int],
    status: Path,
    run_dir: Path,
    terminated: bool,
) -> int:
    """The watcher's exit status, and its one line when a rank failed."""
    codes = [p.returncode for p in procs]
    if not failures:
        return EXIT_TERMINATED if terminated and codes[0] == 0 else codes[0]
    if codes[0] == EXIT_USAGE and all(c in (0, EXIT_USAGE) for c in codes):
        return EXIT_USAGE  # refused at the start: rank 0 said why
    if all(codes[r] in (EXIT_INTERRUPTED, EXIT_TERMINATED) for r in failures):
        return codes[0] if codes[0] != 0 else codes[failures[0]]
    # the cause: the first rank that failed of its own accord, not by losing a peer
    own = [r for r in failures if codes[r] != EXIT_LOST]
    rank = (own or failures)[0]
    code = codes[rank]
    note = status / f"rank{rank}.txt"
    if code < 0:
        cause = f"learner {rank} (pid {procs[rank].pid}) was killed by {_signal_name(-code)}"
    elif note.is_file():
        cause = note.read_text(encoding="utf-8").strip() or f"learner {rank} exited {code}"
    else:
        cause = f"learner {rank} (pid {procs[rank].pid}) exited with status {code}"
    print(
        f"esper ppo: training failed: {cause}; telemetry kept in {run_dir} "
        f"({_durable(run_dir)}); continue with: esper ppo --resume {run_dir}",
        file=sys.stderr,
    )
    return 1


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def _durable(run_dir: Path) -> str:
    """What a resume of `run_dir` keeps, read from its checkpoint."""
    path = run_dir / CHECKPOINT_NAME
    if not path.is_file():
        return "no update is durable yet"
    from esper.rl.checkpoint import load_checkpoint

    try:
        state = load_checkpoint(path)
    except (OSError, ValueError, RuntimeError) as exc:
        return f"its checkpoint cannot be read: {_first_line(exc)}"
    pending = state.get("pending")
    last = int(state.get("next_update_index", 0)) - 1
    if pending is not None:
        last = max(last, int(pending["update_index"]))
    return "no update is durable yet" if last < 0 else f"last durable update {last}"


# ------------------------------------------------------------------ one rank


def _device_hint(args: argparse.Namespace) -> str:
    """The device as this process can tell before the group exists (the backend choice
    depends on it): the flag, the config file, or the local run.json of a resumed run."""
    if args.device is not None:
        return str(args.device)
    if args.resume is not None:
        from esper.rl.trainer import _run_json_config

        return str(_run_json_config(Path(args.resume)).get("device", "cpu"))
    try:
        return config_from_args(args).device
    except ConfigError:
        return "cpu"  # rank 0 reports the error once the group exists


def _checked_learners(config: TrainConfig, world: int, resumed: bool) -> TrainConfig:
    """The run's config for a group of `world` ranks, or UsageError saying why not."""
    if config.learners == world:
        return config
    if resumed:
        raise UsageError(
            f"the run was trained with {config.learners} learner(s) and this launch started "
            f"{world}; resume it with {config.learners}"
        )
    if config.learners != 1:
        raise UsageError(
            f"--learners {config.learners} but the launcher started {world} ranks; "
            "give the same number, or leave --learners out under torchrun"
        )
    try:
        return replace(config, learners=world)
    except ConfigError as exc:
        raise UsageError(str(exc)) from None


def run_rank(args: argparse.Namespace, launch: tuple[int, int, int]) -> int:
    """Train as one rank of a launched group; the exit status of this rank.

    Rank 0 opens the run exactly as a single learner does (checks, lock, run directory,
    recorder) and hands every rank the resulting configuration and resume point; a
    refusal there reaches every rank, so none waits for a run that never starts.
    """
    from esper.rl.learners import Launch, LearnersLost, join, leave

    rank, world, local_rank = launch
    place = Launch(rank, world, local_rank)
    spawned = SPAWNED_ENV in os.environ
    if spawned:
        _end_with_the_watcher(os.environ[SPAWNED_ENV])
    try:
        learners = join(place, _device_hint(args))
    except LearnersLost as exc:
        return _rank_failed(rank, spawned, str(exc), lost=True)
    try:
        return _train_rank(args, learners, place, spawned)
    except LearnersLost as exc:  # in the opening exchange
        leave(learners, clean=False)
        return _rank_failed(rank, spawned, str(exc), lost=True)


def _end_with_the_watcher(watcher: str) -> None:
    """A spawned rank gets SIGTERM (a stop the ranks agree on) if its watcher dies, so a
    killed `esper ppo --learners N` leaves no ranks training on (Linux; elsewhere they
    stop at their next collective once a peer has gone)."""
    if sys.platform != "linux":
        return
    import ctypes

    pr_set_pdeathsig = 1
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(pr_set_pdeathsig, signal.SIGTERM)
    if str(os.getppid()) != watcher:  # it died before the request took
        os.kill(os.getpid(), signal.SIGTERM)


def _rank_failed(rank: int, spawned: bool, message: str, *, lost: bool) -> int:
    """One line for the watcher (spawned) or the terminal (rank 0 under torchrun)."""
    if spawned:
        status = os.environ.get(STATUS_ENV)
        if status:
            with contextlib.suppress(OSError):
                Path(status, f"rank{rank}.txt").write_text(message + "\n", encoding="utf-8")
    elif rank == 0:
        print(f"esper ppo: training failed: {message}", file=sys.stderr)
    return EXIT_LOST if lost else 1


def _train_rank(args: argparse.Namespace, learners: Any, launch: Any, spawned: bool) -> int:
    from esper.rl.learners import leave, rank_device

    world = learners.world
    opened: tuple[str | None, dict[str, Any] | None, str, str, Any] = (None, None, "", "", None)
    prepared = None
    if learners.is_writer:
        try:
            run_dir, run_id, config, resume, lock = _open_run(args)
            try:
                config = _checked_learners(config, world, resume is not None)
            except UsageError:
                if lock is not None:
                    lock.release()
                raise
            config = _rank_config(config, world, rank_device(config.device, launch))
            prepared = prepare_training(args, run_dir, run_id, config, resume, lock, learners)
            opened = (None, prepared.config.to_dict(), str(run_dir), run_id, resume)
        except (ConfigError, UsageError) as exc:
            opened = (str(exc), None, "", "", None)
    message, config_dict, run_dir_text, run_id, resume = learners.broadcast(opened)
    if message is not None:
        if learners.is_writer:
            print(f"esper ppo: error: {message}", file=sys.stderr)
        leave(learners, clean=True)
        return EXIT_USAGE
    assert config_dict is not None
    if prepared is None:
        run_dir = Path(run_dir_text)
        prepared = _follower(args, learners, launch, config_dict, run_dir, run_id, resume)
    return _run_rank_training(prepared, learners, spawned)


def _rank_config(config: TrainConfig, world: int, device: str) -> TrainConfig:
    """This rank's settings: its device, and torch threads within its share of the CPUs."""
    steps = config.rollout_steps if config.env_id is not None else None
    threads = config.threads or max(
        1, min(learner_threads(config, steps), usable_cpus() // world)
    )
    return replace(config, device=device, threads=threads)


def _follower(
    args: argparse.Namespace,
    learners: Any,
    launch: Any,
    config_dict: dict[str, Any],
    run_dir: Path,
    run_id: str,
    resume: Any,
) -> Any:
    """A rank other than 0: the same trainer on its share, telemetry to no recorder."""
    from esper.cli.envs import env_spec
    from esper.cli.main import Prepared
    from esper.rl.learners import rank_device
    from esper.rl.trainer import Trainer
    from esper.telemetry.emitter import TelemetryEmitter
    from esper.telemetry.hub import TelemetryHub

    config = build_config(config_dict, {})
    config = replace(config, device=rank_device(config.device, launch))
    spec = env_spec(config)
    hub = TelemetryHub()  # no backend: rank 0 records what this rank sends it
    emitter = TelemetryEmitter(
        hub,
        run_id=run_id,
        start_update_index=0 if resume is None else resume.start_update_index,
        start_seq=0 if resume is None else resume.next_seq,
    )
    trainer = Trainer(
        config, emitter, run_dir, spec, stop=threading.Event(), resume=resume, learners=learners
    )
    return Prepared(trainer, hub, None, config)


def _run_rank_training(prepared: Any, learners: Any, spawned: bool) -> int:
    """Train this rank headless; signals ask for a stop that the ranks agree on."""
    from esper.cli.console import ConsoleBackend
    from esper.cli.main import _Outcome, _train
    from esper.rl.learners import LearnersLost, leave
    from esper.rl.trainer import TrainingError

    trainer, hub = prepared.trainer, prepared.hub
    console = None
    if learners.is_writer:
        console = ConsoleBackend(prepared.config.episodes, completed=trainer.episodes_done)
        hub.add_backend(console)
    terminated = threading.Event()

    def on_signal(signum: int, frame: object) -> None:  # stop after the batch, together
        if signum == signal.SIGTERM:
            terminated.set()
        trainer.stop.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        outcome: _Outcome = _train(trainer)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    hub.close()
    if prepared.lock is not None:
        prepared.lock.release()
    error = outcome.error
    leave(learners, clean=error is None)
    if error is None:
        r = outcome.result
        if console is not None and r is not None:
            console.console.print(
                f"{'Interrupted' if r.interrupted else 'Finished'}: {r.episodes} episodes, "
                f"{r.updates} PPO updates in {r.wall_seconds:.1f} s with {learners.world} "
                f"learners. Run directory: {trainer.run_dir}",
                soft_wrap=True,
            )
        if terminated.is_set():
            return EXIT_TERMINATED
        return EXIT_INTERRUPTED if r is None or r.interrupted else 0
    lost = isinstance(error.__cause__, LearnersLost) or isinstance(error, LearnersLost)
    if not isinstance(error, TrainingError):
        print(outcome.traceback, file=sys.stderr, end="")  # a bug: its traceback, once
    rank = learners.rank
    if not spawned and rank == 0:
        print(
            f"esper ppo: training failed: {error}; telemetry kept in {trainer.run_dir}; "
            f"continue with: esper ppo --resume {trainer.run_dir}",
            file=sys.stderr,
        )
        return EXIT_LOST if lost else 1
    return _rank_failed(rank, spawned, f"learner {rank}: {_first_line(error)}", lost=lost)
