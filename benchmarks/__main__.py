"""`python -m benchmarks [--quick]`: every benchmark, one table of ratios, latest.json.

`python -m benchmarks learning` is separate (see benchmarks/learning.py): it trains; so is
`python -m benchmarks family` (benchmarks/family.py): it searches the schedule family.
`python -m benchmarks learners [--quick]` runs the one section of several learners
(benchmarks/learners.py) into results/learners.json; `python -m benchmarks` includes it.

Sections run in a fixed order in one process (the `esper ppo` runs of `cli_run` and the
memory run in child processes), with torch pinned to one thread in this one. The JSON
holds one top-level key per figure (its median), then per figure its spread and target,
the raw measurements of each section, the machine and the load average before and after.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from benchmarks import (
    cli_run,
    emit_path,
    foreign_env,
    learners,
    memory,
    sanctum_load,
    sb3_overhead,
    scaling,
    telemetry_overhead,
    versus_sb3,
)
from benchmarks.common import Row, Section, load_average, machine_info, pin_threads

RESULTS = Path(__file__).parent / "results" / "latest.json"
SECTIONS: dict[str, Callable[[bool], Section]] = {
    "cli_run": cli_run.run,
    "telemetry_overhead": telemetry_overhead.run,
    "versus_sb3": versus_sb3.run,
    "foreign_env": foreign_env.run,
    "sanctum_load": sanctum_load.run,
    "emit_path": emit_path.run,
    "memory": memory.run,
    "scaling": scaling.run,
    "learners": learners.run,
    "sb3_overhead": sb3_overhead.run,
}


def _figure(value: float) -> str:
    """Rates with thousands separators, ratios with three decimals, times with one."""
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    return f"{value:.3f}" if abs(value) < 10 else f"{value:.1f}"


def results_table(rows: Sequence[Row], title: str) -> Table:
    """The one table printed: each figure's median, spread, target and verdict."""
    table = Table(title=title, title_justify="left")
    for column in ("key (latest.json)", "median", "IQR", "min–max", "target", ""):
        table.add_column(column, justify="left" if column.startswith("key") else "right")
    for row in rows:
        v = row.value
        target = ""
        if row.target is not None:
            target = ("≥ " if row.higher_is_better else "≤ ") + _figure(row.target)
        verdict = {True: "[green]met[/]", False: "[red]MISSED[/]", None: ""}[row.met]
        table.add_row(
            row.key,
            f"{_figure(v.median)} {row.unit}",
            f"{_figure(v.q1)}–{_figure(v.q3)}",
            f"{_figure(v.min)}–{_figure(v.max)}",
            target,
            verdict,
        )
    return table


def report(
    sections: Sequence[Section], quick: bool, wall: float, load: dict[str, Any]
) -> dict[str, Any]:
    """The latest.json document."""
    rows = [row for section in sections for row in section.rows]
    return {
        **{row.key: row.value.median for row in rows},
        "figures": {row.key: row.as_dict() for row in rows},
        "raw": {section.name: section.raw for section in sections},
        "mode": "quick" if quick else "full",
        "command": "python -m benchmarks" + (" --quick" if quick else ""),
        "wall_seconds": round(wall, 1),
        "load_average": load,
        "machine": machine_info(),
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def temp_entries() -> set[str]:
    """Names in the system temp directory (shared: other processes add to it too)."""
    return set(os.listdir(tempfile.gettempdir()))


def clean_temp(before: set[str]) -> list[str]:
    """Remove what a run leaves in the temp directory and can be known to be its own.

    Every section cleans up after itself; what torch adds on its own is the empty
    `torchinductor_<user>` cache folder that importing `torch._dynamo` creates (any
    `torch.optim` optimiser, e.g. SB3's, imports it), and multiprocessing keeps this
    process's `pymp-*` folder (the worker processes' fork server) until it exits and then
    removes it. Whatever else is new is listed, not deleted: on a shared machine it may be
    another process's.
    """
    root = Path(tempfile.gettempdir())
    # multiprocessing's folder for this process (private config, stable since Python 3.3).
    own_mp = multiprocessing.process.current_process()._config.get("tempdir")  # type: ignore[attr-defined]
    left = []
    for name in sorted(temp_entries() - before):
        path = root / name
        if name.startswith("torchinductor_") and path.is_dir() and not any(path.iterdir()):
            path.rmdir()
        elif own_mp is not None and path == Path(own_mp):
            continue  # removed by multiprocessing when this process exits
        else:
            left.append(name)
    return left


def main(argv: Sequence[str] | None = None) -> int:
    args_list = sys.argv[1:] if argv is None else list(argv)
    if args_list[:1] == ["learning"]:  # minutes of training per seed: its own command
        from benchmarks import learning

        return learning.main(args_list[1:])
    if args_list[:1] == ["family"]:  # thousands of episodes: its own command
        from benchmarks import family

        return family.main(args_list[1:])
    if args_list[:1] == ["learners"]:  # its own results file; the flags as for the rest
        quick = "--quick" in args_list
        own = RESULTS.with_name("learners_quick.json" if quick else "learners.json")
        args_list = ["--only", "learners", "--output", str(own), *args_list[1:]]
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer repeats (under 2 minutes)")
    parser.add_argument("--only", nargs="+", choices=list(SECTIONS), help="run these sections only")
    parser.add_argument("--output", type=Path, default=RESULTS, help="where to write the JSON")
    args = parser.parse_args(args_list)
    pin_threads(1)
    temp_before = temp_entries()
    console = Console(width=max(Console().width, 110))
    load = {"before": load_average()}
    start = time.perf_counter()
    sections = []
    for name in args.only or SECTIONS:
        with console.status(f"benchmark {name}…"):
            section_start = time.perf_counter()
            sections.append(SECTIONS[name](args.quick))
        console.log(f"{name}: {time.perf_counter() - section_start:.1f} s")
    wall = time.perf_counter() - start
    load["after"] = load_average()
    document = report(sections, args.quick, wall, load)
    document["temp_left_behind"] = clean_temp(temp_before)
    mode = "quick" if args.quick else "full"
    title = f"esper benchmarks ({mode}, {wall:.0f} s; load {load['before']} -> {load['after']})"
    console.print(results_table([r for s in sections for r in s.rows], title))
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
    console.print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
