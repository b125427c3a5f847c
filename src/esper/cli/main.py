"""Command line: `esper ppo` trains, `sanctum` watches; bad input exits 2 with one line.

The training stack (torch) is imported only once the arguments are known to be good,
so mistakes are reported instantly and `sanctum` never loads torch at all.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import signal
import sys
import threading
import traceback
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, NoReturn

from esper.analysis import AnalysisError
from esper.analysis.commands import add_analysis_commands
from esper.analysis.exporters import make_exporters
from esper.cli.envs import check_task, env_spec
from esper.cli.evaluate import add_eval_command
from esper.morpho.tasks import TASKS
from esper.rl.checkpoint import CHECKPOINT_NAME
from esper.rl.config import (
    ConfigError,
    SettingFlag,
    TrainConfig,
    build_config,
    read_config_file,
    setting_flags,
)
from esper.rl.threads import learner_threads
from esper.telemetry.recorder import EVENTS_FILE
from esper.telemetry.rundir import (
    NewRunDir,
    RunDirError,
    check_not_busy,
    holds_run,
    lock_run_dir,
    new_run_id,
    prepare_run_dir,
)

EXIT_USAGE = 2
#: The run id a launcher of several learners hands its ranks (they must agree on it).
RUN_ID_ENV = "ESPER_RUN_ID"
EXIT_INTERRUPTED = 130
#: 128 + SIGTERM: what a scheduler's stop looks like to the shell, as for any tool.
EXIT_TERMINATED = 143
#: Longest file name most file systems take (one path component, in bytes).
NAME_MAX = 255
#: The flags that are training settings, declared on the config fields (esper.rl.config).
SETTINGS: tuple[SettingFlag, ...] = tuple(setting_flags())
#: Their dests: TrainConfig fields, or flat PPO keys such as `clip`, as build_config reads.
SETTING_FLAGS: tuple[str, ...] = tuple(s.key for s in SETTINGS)
#: What the help of a setting adds that only the command line knows (the tasks live in
#: esper.morpho, which the config module does not import).
SETTING_NOTES: dict[str, str] = {"task": f"one of {', '.join(TASKS)}"}


class UsageError(Exception):
    """Input the tools cannot act on; reported as one line with exit code 2."""


def _fail(prog: str, message: str) -> NoReturn:
    print(f"{prog}: error: {message}", file=sys.stderr)
    raise SystemExit(EXIT_USAGE)


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a bad flag costs one line (plus a hint), not the whole usage text.

    Prefixes of flags are refused (`allow_abbrev=False`): `--env` must not quietly mean
    `--envs`, and a flag added later must not change what an old command line means.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        _fail(self.prog, f"{message} (see --help)")


def _directory_arg(text: str) -> Path:
    """A directory flag's value; an empty one is refused (Path("") would be the cwd)."""
    if not text.strip():
        raise argparse.ArgumentTypeError("must name a directory, got an empty string")
    return Path(text)


def add_setting_flags(
    parser: argparse.ArgumentParser,
    settings: Sequence[SettingFlag],
    notes: Mapping[str, str] | None = None,
) -> None:
    """One argparse flag per setting; each defaults to None, which means "not given".

    A flag's value is only converted here (int, float, a choice); its range is checked
    by build_config, so flags and config files give the same one-line message.
    """
    for s in settings:
        note = (notes or {}).get(s.key)
        help_text = s.help if note is None else f"{s.about}; {note} {s.default}".rstrip()
        options: dict[str, Any] = {
            "dest": s.key,
            "default": None,
            "help": argparse.SUPPRESS if s.hidden else help_text,
        }
        if s.metavar is not None:
            options["metavar"] = s.metavar
        if s.kind is bool:
            options["action"] = argparse.BooleanOptionalAction
            options.pop("metavar", None)
        else:
            if s.kind is not str:
                options["type"] = s.kind
            if s.choices is not None:
                options["choices"] = s.choices
        parser.add_argument(s.flag, **options)


def _ppo_parser(sub: argparse._SubParsersAction[OneLineParser]) -> None:
    p = sub.add_parser("ppo", help="train a policy with factored PPO")
    add_setting_flags(p, SETTINGS, SETTING_NOTES)
    p.add_argument("--run-dir", help="where to record the run (default runs/<run-id>)")
    p.add_argument("--config", type=Path, help="TOML or JSON file of settings; flags override it")
    p.add_argument("--no-tui", action="store_true", help="run headless with a progress bar")
    p.add_argument(
        "--tensorboard",
        type=_directory_arg,
        metavar="DIR",
        help="also write TensorBoard scalars to DIR/<run dir name> (esper-ppo[tensorboard])",
    )
    p.add_argument(
        "--wandb",
        action="store_true",
        help="also log an offline W&B run into the run directory (esper-ppo[wandb])",
    )
    p.add_argument(
        "--resume", type=Path, metavar="RUN_DIR", help="continue a run from its checkpoint"
    )


def _esper_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="esper", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True, parser_class=OneLineParser)
    _ppo_parser(sub)
    add_analysis_commands(sub)
    add_eval_command(sub)
    return parser


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """Defaults <- config file <- flags; raises ConfigError naming the bad value."""
    file_values = read_config_file(args.config) if args.config is not None else None
    overrides: dict[str, Any] = {name: getattr(args, name) for name in SETTING_FLAGS}
    return check_task(build_config(file_values, overrides))


def run_dir_path(run_dir: str | Path | None, run_id: str) -> Path:
    """Where a new run records, checked without touching the disk beyond a look."""
    if run_dir is None:
        return Path("runs") / run_id
    text = str(run_dir)
    if not text.strip():
        raise UsageError("--run-dir must name a directory, got an empty string")
    long = [part for part in Path(text).parts if len(os.fsencode(part)) > NAME_MAX]
    if long:
        raise UsageError(
            f"--run-dir: the name {long[0][:40]!r}... is {len(os.fsencode(long[0]))} bytes; "
            f"file systems take at most {NAME_MAX}"
        )
    path = Path(text)
    try:
        if holds_run(path):
            check_not_busy(path)  # a run being written: name its writer, as --resume does
            raise UsageError(
                f"{path} already holds a recorded run; choose another --run-dir "
                f"or continue it with --resume {path}"
            )
        if path.exists() and not path.is_dir():
            raise UsageError(f"{path} exists and is not a directory")
    except RunDirError as exc:
        raise UsageError(str(exc)) from None
    except OSError as exc:
        raise UsageError(f"cannot use run directory {path}: {exc.strerror or exc}") from None
    return path


def tensorboard_path(tensorboard: Path, run_dir: Path) -> Path:
    """Where `--tensorboard DIR` puts a run's scalars (DIR/<run dir name>), checked.

    Said before anything is made: a file in the way would otherwise surface as an
    error naming the run directory.
    """
    target = tensorboard / run_dir.name  # as esper.analysis.exporters.make_exporters
    for path in (tensorboard, target):
        if path.exists() and not path.is_dir():
            raise UsageError(f"--tensorboard: {path} exists and is not a directory")
    return target


def _check_ray(config: TrainConfig) -> None:
    """The ray backend needs the optional extra; say so before any worker starts."""
    if config.backend == "ray" and importlib.util.find_spec("ray") is None:
        raise UsageError("--backend ray needs Ray, which is not installed: install esper-ppo[ray]")


def _check_device(device: str) -> None:
    """The device must exist here; said before any directory is made."""
    import torch

    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise UsageError(f"--device {device} requested but no CUDA device is available")
        index = int(device.partition(":")[2] or 0)
        if index >= torch.cuda.device_count():
            raise UsageError(
                f"--device {device}: only {torch.cuda.device_count()} CUDA device(s) here"
            )
    if device == "mps" and not torch.backends.mps.is_available():
        raise UsageError("--device mps requested but no MPS device is available")


#: Flags a resumed run may change; everything else comes from its checkpoint. Where the
#: envs step changes the wall time only, so a resumed run may move to other workers.
RESUME_FLAGS = frozenset({"episodes", "device", "backend", "workers", "ray_address", "threads"})


def _given_settings(args: argparse.Namespace) -> set[str]:
    """Names of the training settings given on the command line or in a config file."""
    given = {name for name in SETTING_FLAGS if getattr(args, name) is not None}
    return given | ({"config"} if args.config is not None else set())


def check_resume_args(args: argparse.Namespace) -> Path:
    """The `--resume` directory, if the flags given with it are ones a resume may change."""
    run_dir: Path = args.resume
    extra = _given_settings(args) - RESUME_FLAGS
    if extra or args.run_dir is not None:
        named = ", ".join(
            f"--{n.replace('_', '-')}"
            for n in sorted(extra | ({"run_dir"} if args.run_dir else set()))
        )
        raise UsageError(f"--resume takes its settings from the checkpoint; drop {named}")
    if not run_dir.is_dir():
        raise UsageError(f"no run directory at {run_dir}")
    events = run_dir / EVENTS_FILE
    if events.is_symlink() or not events.is_file():
        raise UsageError(f"{run_dir} has no regular {EVENTS_FILE} to resume from")
    checkpoint = run_dir / CHECKPOINT_NAME
    if checkpoint.is_symlink() or (checkpoint.exists() and not checkpoint.is_file()):
        raise UsageError(f"{run_dir} has no regular {CHECKPOINT_NAME} to resume from")
    return run_dir


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def resume_settings(args: argparse.Namespace) -> tuple[Path, TrainConfig, Any]:
    """Rebuild a run's configuration from its checkpoint (or run.json if it died first).

    Call with the run directory locked: the checkpoint and log must not move meanwhile.
    """
    run_dir = check_resume_args(args)
    from esper.rl.trainer import ForeignRunError, load_resume_point

    try:
        point = load_resume_point(run_dir)
        saved = dict(point.config)
    except ForeignRunError as exc:  # an SB3 or monitor run: its own tool continues it
        raise UsageError(str(exc)) from None
    except Exception as exc:  # a damaged or foreign file: say which, never unpickle
        raise UsageError(
            f"cannot resume from {run_dir / CHECKPOINT_NAME}: {_first_line(exc)}"
        ) from None
    overrides = {name: getattr(args, name) for name in RESUME_FLAGS}
    if args.backend is not None:  # another backend starts from its own worker defaults
        saved = {k: v for k, v in saved.items() if k not in ("workers", "ray_address")}
    try:
        config = check_task(build_config(saved, overrides))
    except ConfigError as exc:
        raise UsageError(f"cannot resume {run_dir}: its configuration is refused: {exc}") from None
    done = 0 if point.checkpoint is None else int(point.checkpoint["episodes_done"])
    # A run killed after its last update but before it said so resumes with nothing left
    # to train: it only records that it finished.
    if done >= config.episodes and point.finished:
        raise UsageError(episodes_refusal(run_dir, done, config.episodes, args.episodes))
    return run_dir, config, point


def episodes_refusal(run_dir: Path, done: int, total: int, given: int | None) -> str:
    """Why a resume has nothing to train, and what to pass instead (one line).

    `--episodes` is the run's total, not a number to add; a user who passes fewer than
    the run already ran is told so, rather than that it ran "40 of 8".
    """
    more = f"pass --episodes N with N > {done} to train further"
    if given is None:
        return f"{run_dir} already ran {done} of {total} episodes; {more}"
    return (
        f"--episodes {given} is the run's total, not a number to add: "
        f"{run_dir} already ran {done} episodes, so {more}"
    )


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the training thread so the run ends as on Ctrl-C."""


def _open_run(args: argparse.Namespace) -> tuple[Path, str, TrainConfig, Any, Any]:
    """Validate everything, then lock (and for a new run create) the run directory.

    Returns (run dir, run id, config, resume point or None, lock holder). A new run's
    directory is made last, so a start refused for any reason leaves nothing behind.
    """
    if args.resume is not None:
        run_dir = check_resume_args(args)
        try:
            lock = lock_run_dir(run_dir)
        except RunDirError as exc:
            raise UsageError(str(exc)) from None
        try:
            run_dir, config, resume = resume_settings(args)
            _check_ray(config)
            _check_device(config.device)
            if args.tensorboard is not None:
                tensorboard_path(args.tensorboard, run_dir)
        except BaseException:
            lock.release()
            raise
        # the id its log was started under, so one run keeps one id (run.json may be lost)
        run_id = resume.run_id or run_dir.resolve().name
        return run_dir, run_id, config, resume, lock
    config = config_from_args(args)
    _check_ray(config)
    # the ranks `--learners N` spawns record under the id their launcher drew
    run_id = os.environ.get(RUN_ID_ENV) or new_run_id()
    path = run_dir_path(args.run_dir, run_id)
    _check_device(config.device)
    if args.tensorboard is not None:
        tensorboard_path(args.tensorboard, path)
    return path, run_id, config, None, None


def run_ppo(args: argparse.Namespace) -> int:
    """`esper ppo`: train, recording every event; headless or with the live dashboard.

    Launched as one rank of several (torchrun, or the ranks `--learners N` spawns), it
    trains as that rank (`esper.cli.learners`). A run of several learners started here
    is checked here, then spawned: bad input costs one line before any process starts.
    """
    launch = launched_rank()
    if launch is not None:
        from esper.cli.learners import run_rank

        return run_rank(args, launch)
    try:
        run_dir, run_id, config, resume, lock = _open_run(args)
    except (ConfigError, UsageError) as exc:
        _fail("esper ppo", str(exc))
    if config.learners > 1:
        if lock is not None:
            lock.release()  # rank 0 takes it again
        from esper.cli.learners import supervise

        return supervise(args, config, run_dir, run_id)
    try:
        prepared = prepare_training(args, run_dir, run_id, config, resume, lock)
    except UsageError as exc:
        _fail("esper ppo", str(exc))
    trainer, hub = prepared.trainer, prepared.hub
    use_tui = not args.no_tui and sys.stdout.isatty() and sys.stdin.isatty()
    try:
        if use_tui:
            return _run_with_dashboard(trainer, hub)
        return _run_headless(trainer, hub, prepared.config, run_dir)
    finally:
        prepared.lock.release()


@dataclass
class Prepared:
    """A run ready to train: its trainer, the hub its recorder hangs on, the held lock."""

    trainer: Any
    hub: Any
    lock: Any
    config: TrainConfig


def prepare_training(
    args: argparse.Namespace,
    run_dir: Path,
    run_id: str,
    config: TrainConfig,
    resume: Any,
    lock: Any,
    learners: Any = None,
) -> Prepared:
    """Build the trainer, then create and lock the run directory and start recording.

    Raises UsageError (one line) after undoing what it did: a start refused here leaves
    no new directory behind and releases the lock it was handed.
    """
    try:
        spec = env_spec(config)
    except ConfigError as exc:
        if lock is not None:
            lock.release()
        raise UsageError(str(exc)) from None
    # the count, into run.json
    config = replace(config, threads=learner_threads(config, spec.batch_steps))

    from esper.rl.trainer import Trainer
    from esper.telemetry.emitter import TelemetryEmitter
    from esper.telemetry.hub import TelemetryHub
    from esper.telemetry.recorder import RunRecorder

    hub = TelemetryHub()
    emitter = TelemetryEmitter(
        hub,
        run_id=run_id,
        start_update_index=0 if resume is None else resume.start_update_index,
        start_seq=0 if resume is None else resume.next_seq,
    )
    stop = threading.Event()
    new_dir: NewRunDir | None = None
    try:
        try:
            trainer = Trainer(
                config, emitter, run_dir, spec, stop=stop, resume=resume, learners=learners
            )
        except Exception as exc:  # e.g. a checkpoint whose agent does not fit its config
            where = run_dir / CHECKPOINT_NAME if resume is not None else "the run"
            raise UsageError(f"cannot start {where}: {_first_line(exc)}") from None
        if resume is None:
            try:
                new_dir = prepare_run_dir(run_dir)
            except RunDirError as exc:
                raise UsageError(str(exc)) from None
            lock = new_dir.lock
        try:
            exporters = make_exporters(args.tensorboard, False, run_dir, {})
        except OSError as exc:  # the TensorBoard directory, not the run's, is at fault
            target = tensorboard_path(args.tensorboard, run_dir)
            why = exc.strerror or exc
            raise UsageError(f"cannot write TensorBoard scalars into {target}: {why}") from None
        except AnalysisError as exc:
            raise UsageError(str(exc)) from None
        try:
            exporters += make_exporters(None, args.wandb, run_dir, config.to_dict())
            recorder = RunRecorder(
                run_dir,
                config=config.to_dict(),
                run_id=run_id,
                started_at=None if resume is None else resume.started_at,
            )
        except AnalysisError as exc:
            raise UsageError(str(exc)) from None
        except OSError as exc:
            raise UsageError(f"cannot record into {run_dir}: {exc.strerror or exc}") from None
    except UsageError:
        if new_dir is not None:
            new_dir.discard()
        elif lock is not None:
            lock.release()
        raise
    if recorder.note is not None:
        print(f"esper ppo: note: {recorder.note}", file=sys.stderr)
    trainer.io_failure = recorder.failure
    hub.add_backend(recorder)
    for backend in exporters:
        hub.add_backend(backend)
    return Prepared(trainer, hub, lock, config)


def launched_rank() -> tuple[int, int, int] | None:
    """(rank, world size, local rank) when a launcher (torchrun, or `--learners N`) started
    this process as one of several ranks; None otherwise (also for a world of one)."""
    try:
        rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
        local = int(os.environ.get("LOCAL_RANK", rank))
    except (KeyError, ValueError):
        return None
    return (rank, world, local) if world > 1 else None


def _run_headless(trainer: Any, hub: Any, config: TrainConfig, run_dir: Path) -> int:
    from esper.cli.console import ConsoleBackend

    console = ConsoleBackend(config.episodes, completed=trainer.episodes_done)
    hub.add_backend(console)
    terminated = threading.Event()

    def on_sigterm(signum: int, frame: object) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # one is enough; the run is ending
        terminated.set()
        raise Terminated

    previous = signal.signal(signal.SIGTERM, on_sigterm)
    try:
        outcome = _train(trainer)
    except KeyboardInterrupt:  # arrived after the trainer had ended its run: it is complete
        outcome = _Outcome(result=None)
    finally:
        signal.signal(signal.SIGTERM, previous)
    hub.close()
    if outcome.result is not None:
        r = outcome.result
        console.console.print(  # one line, never wrapped: the path gets copied and pasted
            f"{'Interrupted' if r.interrupted else 'Finished'}: {r.episodes} episodes, "
            f"{r.updates} PPO updates in {r.wall_seconds:.1f} s. Run directory: {run_dir}",
            soft_wrap=True,
        )
    return _exit_code(outcome, trainer, terminated.is_set())


@dataclass
class _Outcome:
    """How `Trainer.run` ended: a result, or the error and its traceback text."""

    result: Any = None
    error: BaseException | None = None
    traceback: str = ""


def _train(trainer: Any) -> _Outcome:
    try:
        return _Outcome(result=trainer.run())
    except Exception as exc:
        return _Outcome(error=exc, traceback=traceback.format_exc())


def _exit_code(outcome: _Outcome, trainer: Any, terminated: bool = False) -> int:
    """0 done, 130 interrupted, 143 terminated, 1 failed (traceback only if unexpected)."""
    from esper.rl.trainer import TrainingError

    if outcome.error is None:
        if terminated:
            return EXIT_TERMINATED
        return EXIT_INTERRUPTED if outcome.result is None or outcome.result.interrupted else 0
    if not isinstance(outcome.error, TrainingError):
        print(outcome.traceback, file=sys.stderr, end="")
    print(f"esper ppo: training failed: {outcome.error}", file=sys.stderr)
    durable = trainer.durable_update
    kept = "no update is durable yet" if durable is None else f"last durable update {durable}"
    print(
        f"esper ppo: telemetry kept in {trainer.run_dir} ({kept}); "
        f"continue with: esper ppo --resume {trainer.run_dir}",
        file=sys.stderr,
    )
    return 1


def _run_with_dashboard(trainer: Any, hub: Any) -> int:
    """Train in a worker thread while Sanctum runs in the foreground on this terminal."""
    from esper.sanctum.aggregator import SanctumAggregator, SanctumBackend
    from esper.sanctum.app import SanctumApp

    aggregator = SanctumAggregator()
    hub.add_backend(SanctumBackend(aggregator))
    outcome = _Outcome()

    def work() -> None:
        nonlocal outcome
        outcome = _train(trainer)

    thread = threading.Thread(target=work, name="esper-trainer", daemon=True)
    app = SanctumApp(aggregator.snapshot)
    terminated = threading.Event()

    def on_sigterm(signum: int, frame: object) -> None:  # like q: finish the batch, stop
        terminated.set()
        trainer.stop.set()
        app.exit()

    previous = signal.signal(signal.SIGTERM, on_sigterm)
    try:
        thread.start()
        app.run()  # a failure shows in the header until q
        trainer.stop.set()
        thread.join()
    finally:
        signal.signal(signal.SIGTERM, previous)
    hub.close()
    if outcome.result is not None:
        print(f"Run directory: {trainer.run_dir}")
    return _exit_code(outcome, trainer, terminated.is_set())


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `esper`."""
    parser = _esper_parser()
    args, extra = parser.parse_known_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # what spawned ranks re-run
    if args.command == "query" and extra and not any(e.startswith("-") for e in extra):
        args.items = [*args.items, *extra]  # `esper query RUN --json SQL`: flags in between
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if args.command == "ppo":
        return run_ppo(args)
    return int(args.handler(args))  # analysis commands: report, query


# ---------------------------------------------------------------- sanctum


def latest_run(root: Path) -> Path:
    """The most recently written run under `root` (by its event log's modification time)."""
    candidates = [p.parent for p in root.glob(f"*/{EVENTS_FILE}")] if root.is_dir() else []
    if not candidates:
        raise UsageError(f"no runs under {root}/; start one with `esper ppo` or name a RUN_DIR")
    return max(candidates, key=lambda d: (d / EVENTS_FILE).stat().st_mtime)


def resolve_run_dir(run_dir: Path | None) -> Path:
    """The run directory to show: the one named, or the latest under ./runs."""
    if run_dir is None:
        return latest_run(Path("runs"))
    if not run_dir.is_dir():
        raise UsageError(f"no run directory at {run_dir}")
    if not (run_dir / EVENTS_FILE).is_file():
        raise UsageError(f"{run_dir} holds no {EVENTS_FILE}; is it an esper run directory?")
    return run_dir


def _sanctum_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="sanctum", description="Watch an esper run: live, finished, or replayed."
    )
    parser.add_argument("run_dir", nargs="?", type=Path, help="run directory (default: latest)")
    parser.add_argument("--replay", action="store_true", help="step through the recorded updates")
    parser.add_argument("--screenshot", type=Path, help="render the dashboard to an SVG and exit")
    parser.add_argument(
        "--size", default="120x40", help="screenshot size COLSxROWS (default 120x40)"
    )
    return parser


#: Screenshot sizes accepted, in terminal cells (a larger frame only costs time and memory).
MIN_SIZE, MAX_SIZE = (40, 12), (1000, 500)


def _parse_size(text: str) -> tuple[int, int]:
    try:
        cols, rows = (int(part) for part in text.lower().split("x"))
    except ValueError:
        raise UsageError(f"--size must look like 120x40, got {text!r}") from None
    if cols < MIN_SIZE[0] or rows < MIN_SIZE[1]:
        raise UsageError(f"--size {text} is too small (at least {MIN_SIZE[0]}x{MIN_SIZE[1]})")
    if cols > MAX_SIZE[0] or rows > MAX_SIZE[1]:
        raise UsageError(f"--size {text} is too large (at most {MAX_SIZE[0]}x{MAX_SIZE[1]})")
    return cols, rows


def _screenshot_path(path: Path) -> Path:
    """Where `--screenshot` may write: an .svg file in a directory that exists.

    The suffix rule also keeps a screenshot from landing on the run's own files
    (events.jsonl, run.json, checkpoint.pt).
    """
    if path.suffix.lower() != ".svg":
        raise UsageError(f"--screenshot writes an SVG: give a path ending in .svg, not {path}")
    if path.is_dir():
        raise UsageError(f"--screenshot {path} is a directory; give a file path ending in .svg")
    if not path.parent.is_dir():
        raise UsageError(f"--screenshot: no directory {path.parent} to write {path.name} into")
    return path


def sanctum_main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `sanctum`."""
    args = _sanctum_parser().parse_args(argv)
    try:
        run_dir = resolve_run_dir(args.run_dir)
        size = _parse_size(args.size)
        if args.screenshot is not None:
            if args.replay:
                raise UsageError("--replay steps through a run on screen; --screenshot draws "
                                 "its last state to a file: use one or the other")
            _screenshot_path(args.screenshot)
    except UsageError as exc:
        _fail("sanctum", str(exc))
    events = run_dir / EVENTS_FILE

    from esper.sanctum.aggregator import SanctumAggregator, aggregate_file, replay_snapshots
    from esper.sanctum.app import SanctumApp, render_screenshot

    if args.screenshot is not None:
        snapshot = aggregate_file(events)
        try:
            render_screenshot(snapshot, args.screenshot, size=size)
        except OSError as exc:
            _fail("sanctum", f"cannot write {args.screenshot}: {exc.strerror or exc}")
        print(
            f"wrote {args.screenshot} ({snapshot.events_read} events, "
            f"{snapshot.lines_skipped} lines skipped)"
        )
        return 0
    if args.replay:
        snapshots = replay_snapshots(events)
        if not snapshots:
            _fail("sanctum", f"{events} holds no PPO updates to replay")
        SanctumApp(lambda: snapshots[-1], replay=snapshots).run()
        return 0

    from esper.telemetry.recorder import ReadStats, committed_events, read_events

    aggregator = SanctumAggregator()
    stop = threading.Event()
    stats = ReadStats()

    def follow() -> None:  # a batch shows once its update is in (exact after a resume)
        for event in committed_events(read_events(events, follow=True, stop=stop, stats=stats)):
            aggregator.handle_event(event)
            aggregator.set_lines_skipped(stats.skipped)

    threading.Thread(target=follow, name="sanctum-follow", daemon=True).start()
    SanctumApp(aggregator.snapshot).run()
    stop.set()
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
