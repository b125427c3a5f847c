"""Command line: `esper ppo` trains, `sanctum` watches; bad input exits 2 with one line.

The training stack (torch) is imported only once the arguments are known to be good,
so mistakes are reported instantly and `sanctum` never loads torch at all.
"""

from __future__ import annotations

import argparse
import secrets
import sys
import threading
import traceback
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NoReturn

from esper.config import CLIP_MODES, TASKS, ConfigError, TrainConfig, build_config, read_config_file

EXIT_USAGE = 2
EXIT_INTERRUPTED = 130
EVENTS_FILE = "events.jsonl"


class UsageError(Exception):
    """Input the tools cannot act on; reported as one line with exit code 2."""


def _fail(prog: str, message: str) -> NoReturn:
    print(f"{prog}: error: {message}", file=sys.stderr)
    raise SystemExit(EXIT_USAGE)


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a bad flag costs one line (plus a hint), not the whole usage text."""

    def error(self, message: str) -> NoReturn:
        _fail(self.prog, f"{message} (see --help)")


def _ppo_parser(sub: argparse._SubParsersAction[OneLineParser]) -> None:
    p = sub.add_parser("ppo", help="train a morphogenetic policy with factored PPO")
    p.add_argument("--episodes", type=int, help="episodes in total (default 10)")
    p.add_argument("--task", help=f"host task: {', '.join(TASKS)} (default digits)")
    p.add_argument("--envs", type=int, help="parallel environments per PPO batch (default 2)")
    p.add_argument("--episode-length", type=int, help="host epochs per episode (default 25)")
    p.add_argument("--slots", type=int, help="seed slots in the host (default 3)")
    p.add_argument("--epochs", type=int, help="PPO epochs per update (default 4)")
    p.add_argument("--minibatches", type=int, help="minibatches per PPO epoch (default 4)")
    p.add_argument("--clip", type=float, help="PPO clip range epsilon (default 0.2)")
    p.add_argument("--clip-mode", choices=CLIP_MODES, help="clip each head or the joint ratio")
    p.add_argument("--lr", type=float, help="learning rate (default 3e-4)")
    p.add_argument("--seed", type=int, help="random seed (default 0)")
    p.add_argument("--device", help="torch device: cpu (default), cuda, cuda:N")
    p.add_argument("--run-dir", type=Path, help="where to record the run (default runs/<run-id>)")
    p.add_argument("--config", type=Path, help="TOML or JSON file of settings; flags override it")
    p.add_argument("--no-tui", action="store_true", help="run headless with a progress bar")


def _esper_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="esper", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True, parser_class=OneLineParser)
    _ppo_parser(sub)
    return parser


def make_run_id(now: datetime | None = None) -> str:
    """Sortable, collision-resistant run id: UTC time plus four random hex digits."""
    stamp = (now or datetime.now(UTC)).strftime("%Y%m%d-%H%M%S")
    return f"{stamp}-{secrets.token_hex(2)}"


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """Defaults <- config file <- flags; raises ConfigError naming the bad value."""
    file_values = read_config_file(args.config) if args.config is not None else None
    overrides: dict[str, Any] = {
        "episodes": args.episodes,
        "task": args.task,
        "envs": args.envs,
        "episode_length": args.episode_length,
        "slots": args.slots,
        "epochs": args.epochs,
        "minibatches": args.minibatches,
        "clip": args.clip,
        "clip_mode": args.clip_mode,
        "lr": args.lr,
        "seed": args.seed,
        "device": args.device,
    }
    return build_config(file_values, overrides)


def prepare_run_dir(run_dir: Path | None, run_id: str) -> Path:
    """The run directory, created empty; refuses to write into an existing run."""
    path = run_dir if run_dir is not None else Path("runs") / run_id
    if (path / EVENTS_FILE).exists():
        raise UsageError(f"{path} already holds a recorded run; choose another --run-dir")
    if path.exists() and not path.is_dir():
        raise UsageError(f"{path} exists and is not a directory")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"cannot create run directory {path}: {exc.strerror or exc}") from None
    return path


def _check_device(device: str) -> None:
    import torch

    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError(f"--device {device} requested but no CUDA device is available")


def run_ppo(args: argparse.Namespace) -> int:
    """`esper ppo`: train, recording every event; headless or with the live dashboard."""
    try:
        config = config_from_args(args)
    except ConfigError as exc:
        _fail("esper ppo", str(exc))
    run_id = make_run_id()
    try:
        run_dir = prepare_run_dir(args.run_dir, run_id)
        _check_device(config.device)
    except UsageError as exc:
        _fail("esper ppo", str(exc))

    from esper.telemetry.emitter import TelemetryEmitter
    from esper.telemetry.hub import TelemetryHub
    from esper.telemetry.recorder import RunRecorder
    from esper.trainer import Trainer

    hub = TelemetryHub()
    hub.add_backend(RunRecorder(run_dir, config=config.to_dict(), run_id=run_id))
    emitter = TelemetryEmitter(hub, run_id=run_id)
    use_tui = not args.no_tui and sys.stdout.isatty() and sys.stdin.isatty()
    if use_tui:
        return _run_with_dashboard(config, emitter, hub, run_dir)

    from esper.console import ConsoleBackend

    console = ConsoleBackend(config.episodes)
    hub.add_backend(console)
    trainer = Trainer(config, emitter, run_dir)
    try:
        result = trainer.run()
    except Exception:
        hub.close()
        traceback.print_exc()
        print(f"esper ppo: training failed; telemetry kept in {run_dir}", file=sys.stderr)
        return 1
    hub.close()
    console.console.print(
        f"{'Interrupted' if result.interrupted else 'Finished'}: {result.episodes} episodes, "
        f"{result.updates} PPO updates in {result.wall_seconds:.1f} s. Run directory: {run_dir}"
    )
    return EXIT_INTERRUPTED if result.interrupted else 0


def _run_with_dashboard(config: TrainConfig, emitter: Any, hub: Any, run_dir: Path) -> int:
    """Train in a worker thread while Sanctum runs in the foreground on this terminal."""
    from esper.sanctum.aggregator import SanctumAggregator, SanctumBackend
    from esper.sanctum.app import SanctumApp
    from esper.trainer import Trainer

    aggregator = SanctumAggregator()
    hub.add_backend(SanctumBackend(aggregator))
    stop = threading.Event()
    trainer = Trainer(config, emitter, run_dir, stop=stop)
    outcome: dict[str, Any] = {}

    def work() -> None:
        try:
            outcome["result"] = trainer.run()
        except BaseException as exc:  # shown in the TUI, re-raised below after the screen
            outcome["error"] = exc
            outcome["traceback"] = traceback.format_exc()

    thread = threading.Thread(target=work, name="esper-trainer", daemon=True)
    thread.start()
    SanctumApp(aggregator.snapshot).run()
    stop.set()
    thread.join()
    hub.close()
    if "error" in outcome:
        print(outcome["traceback"], file=sys.stderr)
        print(f"esper ppo: training failed; telemetry kept in {run_dir}", file=sys.stderr)
        return 1
    result = outcome["result"]
    print(f"Run directory: {run_dir}")
    return EXIT_INTERRUPTED if result.interrupted else 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `esper`."""
    args = _esper_parser().parse_args(argv)
    if args.command == "ppo":
        return run_ppo(args)
    raise AssertionError(f"unhandled command {args.command}")  # argparse rejects others


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


def _parse_size(text: str) -> tuple[int, int]:
    try:
        cols, rows = (int(part) for part in text.lower().split("x"))
    except ValueError:
        raise UsageError(f"--size must look like 120x40, got {text!r}") from None
    if cols < 40 or rows < 12:
        raise UsageError(f"--size {text} is too small (at least 40x12)")
    return cols, rows


def sanctum_main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `sanctum`."""
    args = _sanctum_parser().parse_args(argv)
    try:
        run_dir = resolve_run_dir(args.run_dir)
        size = _parse_size(args.size)
    except UsageError as exc:
        _fail("sanctum", str(exc))
    events = run_dir / EVENTS_FILE

    from esper.sanctum.aggregator import SanctumAggregator, aggregate_file, replay_snapshots
    from esper.sanctum.app import SanctumApp, render_screenshot

    if args.screenshot is not None:
        snapshot = aggregate_file(events)
        render_screenshot(snapshot, args.screenshot, size=size)
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

    from esper.telemetry.recorder import ReadStats, read_events

    aggregator = SanctumAggregator()
    stop = threading.Event()
    stats = ReadStats()

    def follow() -> None:
        for event in read_events(events, follow=True, stop=stop, stats=stats):
            aggregator.handle_event(event)
            aggregator.set_lines_skipped(stats.skipped)

    threading.Thread(target=follow, name="sanctum-follow", daemon=True).start()
    SanctumApp(aggregator.snapshot).run()
    stop.set()
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
