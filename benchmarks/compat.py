"""`python -m benchmarks.compat`: the libraries' own tests against the per-head classes.

`PerHeadPPO` and `PerHeadMaskablePPO` promise to be Stable-Baselines3's `PPO` and
sb3-contrib's `MaskablePPO` with one import changed. Our own tests check that promise on
cases we chose; the libraries' test suites check it on theirs. This command gets those
suites at the installed versions (from the package index's source distributions, which
ship `tests/`), runs their PPO-relevant files twice, first with the original classes and
then with ours substituted wherever the tests reach them (`benchmarks/compat_plugin.py`),
and prints, per test file, passed / failed / skipped on each side. Only tests that build
the class count (the files also test other algorithms).

Every difference is either a refusal by design (`DESIGN_REFUSALS`: the per-head class
raises its own error on purpose, e.g. on a Box action space) or unexplained; the exit
status is 1 when any is unexplained, or when a test still reached an original class in
the per-head run (a hole in the substitution would otherwise pass for compatibility).

    python -m benchmarks.compat                          # sdists into ~/.cache/esper/compat
    python -m benchmarks.compat --sdist A.tar.gz --sdist B.tar.gz   # offline: these archives
    python -m benchmarks.compat --suite sb3-contrib --markdown      # one suite, doc table

An archive may also be GitHub's source archive of the release tag (same `tests/`). The
suites run in a temporary working directory with TMPDIR inside it, so the `runs/`
folders the per-head classes record and SB3's `SB3-*` log folders go with it.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
DEFAULT_CACHE = Path.home() / ".cache" / "esper" / "compat"
OUTCOMES = ("passed", "failed", "skipped")


@dataclass(frozen=True)
class Suite:
    """One library's test suite: which files are about the class, how the library runs them."""

    name: str  # the distribution, as pip and importlib.metadata know it
    cls: str  # the class compared
    files: tuple[str, ...]  # under tests/
    markexpr: str | None = None  # the library's own default selection
    repository: str = ""
    #: How its archives are named besides the distribution (GitHub's tag archive is named
    #: for the repository).
    aliases: tuple[str, ...] = ()

    @property
    def archive_names(self) -> tuple[str, ...]:
        return (self.name, *self.aliases)


SUITES = (
    Suite(
        "stable-baselines3",
        "PPO",
        (
            "test_run.py",
            "test_save_load.py",
            "test_predict.py",
            "test_callbacks.py",
            "test_spaces.py",
            "test_dict_env.py",
            "test_vec_envs.py",
            "test_custom_policy.py",
            "test_deterministic.py",
            "test_logger.py",
            "test_train_eval_mode.py",
        ),
        markexpr="not expensive",  # as SB3's scripts/run_tests.sh
        repository="https://github.com/DLR-RM/stable-baselines3",
    ),
    Suite(
        "sb3-contrib",
        "MaskablePPO",
        # every file that names MaskablePPO
        ("test_invalid_actions.py", "test_run.py", "test_cnn.py", "test_train_eval_mode.py"),
        repository="https://github.com/Stable-Baselines-Team/stable-baselines3-contrib",
        aliases=("stable-baselines3-contrib",),
    ),
)


@dataclass(frozen=True)
class Refusal:
    """A difference on purpose: the per-head class refuses this case with its own error."""

    what: str
    pattern: str  # searched in the per-head failure's message
    why: str


DESIGN_REFUSALS = (
    Refusal(
        "Box action space",
        r"per-head telemetry needs a .* action space, got Box\(",
        "a continuous action has no finite set of values per head, so no per-head "
        "probability ratio over them; esper.integrations.gym.DiscretizeActions turns a Box "
        "into one head per dimension (sb3-contrib's MaskablePPO refuses a Box itself)",
    ),
    Refusal(
        "another rollout buffer",
        r"brings its own rollout buffer",
        "the per-head log-probs are stored at rollout time by the class's own buffer "
        "(the library's buffer plus one array); another buffer would drop them",
    ),
    Refusal(
        "a non-categorical action distribution",
        r"per-head telemetry needs a categorical action distribution",
        "the heads are read off the library's own categorical distributions, matched by "
        "exact type: a subclass may compute its log-probs otherwise, and then the recorded "
        "per-head values would not be the ones training used",
    ),
)


def refusal_of(message: str) -> Refusal | None:
    """The design refusal a per-head failure message is, if any."""
    for refusal in DESIGN_REFUSALS:
        if re.search(refusal.pattern, message):
            return refusal
    return None


# --------------------------------------------------------------------------- comparison


@dataclass
class FileRow:
    """One test file: outcomes of its tests that build the class, on each side."""

    file: str
    original: dict[str, int] = field(default_factory=lambda: dict.fromkeys(OUTCOMES, 0))
    per_head: dict[str, int] = field(default_factory=lambda: dict.fromkeys(OUTCOMES, 0))
    by_design: int = 0
    unexplained: int = 0
    seconds_original: float = 0.0  # of the tests that passed on both sides
    seconds_per_head: float = 0.0

    @property
    def tests(self) -> int:
        return sum(self.original.values())


@dataclass(frozen=True)
class Difference:
    test: str
    original: str
    per_head: str
    message: str
    refusal: Refusal | None

    @property
    def explained(self) -> bool:
        return self.refusal is not None


@dataclass
class Comparison:
    suite: str
    version: str
    cls: str
    rows: list[FileRow]
    differences: list[Difference]
    unsubstituted: list[str]
    total_tests: int  # collected in those files, whether they build the class or not

    @property
    def unexplained(self) -> list[Difference]:
        return [d for d in self.differences if not d.explained]

    @property
    def ok(self) -> bool:
        return not self.unexplained and not self.unsubstituted


def _file_of(nodeid: str) -> str:
    return nodeid.split("::", 1)[0].rsplit("/", 1)[-1]


def compare(
    suite: str,
    version: str,
    cls: str,
    original: Mapping[str, Mapping[str, Any]],
    per_head: Mapping[str, Mapping[str, Any]],
) -> Comparison:
    """Per file and per test, original vs per-head, for the tests that build the class.

    A test counts when it built the class in either run (a per-head refusal still builds
    the class: the constructor is reached). A test missing from one run (it was not
    collected there) counts as failed on that side.
    """
    missing = {"outcome": "failed", "message": "not run", "duration": 0.0, "built": []}
    names = [n for n in original if original[n]["built"]]
    names += [n for n in per_head if per_head[n]["built"] and n not in original]
    rows: dict[str, FileRow] = {}
    differences: list[Difference] = []
    for name in names:
        ours, theirs = per_head.get(name, missing), original.get(name, missing)
        row = rows.setdefault(_file_of(name), FileRow(_file_of(name)))
        row.original[theirs["outcome"]] += 1
        row.per_head[ours["outcome"]] += 1
        if ours["outcome"] == theirs["outcome"]:
            if ours["outcome"] == "passed":  # a refusal is fast: time only what both ran
                row.seconds_original += float(theirs["duration"])
                row.seconds_per_head += float(ours["duration"])
            continue
        refusal = None
        if theirs["outcome"] == "passed" and ours["outcome"] == "failed":
            refusal = refusal_of(str(ours["message"]))
        differences.append(
            Difference(name, theirs["outcome"], ours["outcome"], str(ours["message"]), refusal)
        )
        if refusal is None:
            row.unexplained += 1
        else:
            row.by_design += 1
    unsubstituted = [n for n, t in per_head.items() if t.get("unsubstituted")]
    return Comparison(
        suite,
        version,
        cls,
        sorted(rows.values(), key=lambda r: r.file),
        differences,
        unsubstituted,
        total_tests=len(set(original) | set(per_head)),
    )


def _counts(c: Mapping[str, int]) -> str:
    return " / ".join(str(c[o]) for o in OUTCOMES)


def _total(rows: Iterable[FileRow]) -> FileRow:
    total = FileRow("all")
    for row in rows:
        for outcome in OUTCOMES:
            total.original[outcome] += row.original[outcome]
            total.per_head[outcome] += row.per_head[outcome]
        total.by_design += row.by_design
        total.unexplained += row.unexplained
        total.seconds_original += row.seconds_original
        total.seconds_per_head += row.seconds_per_head
    return total


def markdown(comparison: Comparison) -> str:
    """The table and its differences, as docs/compatibility.md records them."""
    c = comparison
    lines = [
        f"### {c.suite} {c.version}: `{c.cls}` vs `PerHead{c.cls}`",
        "",
        "| test file | tests | original passed / failed / skipped | per-head passed / failed "
        "/ skipped | by design | unexplained | seconds original / per-head (passed both) |",
        "|---|---:|---|---|---:|---:|---|",
    ]
    for row in [*c.rows, _total(c.rows)]:
        name = "**all**" if row.file == "all" else f"`{row.file}`"
        lines.append(
            f"| {name} | {row.tests} | {_counts(row.original)} | {_counts(row.per_head)} | "
            f"{row.by_design} | {row.unexplained} | "
            f"{row.seconds_original:.1f} / {row.seconds_per_head:.1f} |"
        )
    lines.append("")
    lines.append(
        f"{_total(c.rows).tests} of the {c.total_tests} tests collected in these files build "
        f"`{c.cls}`; the others test other algorithms or no model, and are not counted."
    )
    if c.differences:
        lines += ["", "Differences:", ""]
        by_reason: dict[str, list[Difference]] = {}
        for d in c.differences:
            key = d.refusal.what if d.refusal else f"unexplained: {d.message}"
            by_reason.setdefault(key, []).append(d)
        for key, diffs in by_reason.items():
            lines.append(f"- {key} ({len(diffs)}): " + ", ".join(f"`{d.test}`" for d in diffs))
    if c.unsubstituted:
        lines += ["", "Reached the original class in the per-head run (substitution hole):"]
        lines += [f"- `{n}`" for n in c.unsubstituted]
    return "\n".join(lines) + "\n"


def table(comparison: Comparison) -> Any:
    """The same as a Rich table for the terminal."""
    from rich.table import Table

    c = comparison
    t = Table(title=f"{c.suite} {c.version}: {c.cls} vs PerHead{c.cls}", title_justify="left")
    for column in ("test file", "tests", "original p/f/s", "per-head p/f/s", "by design",
                   "unexplained", "s orig / ours, passed both"):  # fmt: skip
        t.add_column(column, justify="left" if column == "test file" else "right")
    for row in [*c.rows, _total(c.rows)]:
        t.add_row(
            row.file,
            str(row.tests),
            _counts(row.original),
            _counts(row.per_head),
            str(row.by_design),
            f"[red]{row.unexplained}[/]" if row.unexplained else "0",
            f"{row.seconds_original:.1f} / {row.seconds_per_head:.1f}",
        )
    return t


# --------------------------------------------------------------------------- getting suites


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def archive_version(archive: Path) -> str | None:
    """The version an sdist (PKG-INFO) or a source archive (package/version.txt) is of."""
    with tarfile.open(archive) as tar:
        for member in tar.getmembers():
            parts = member.name.split("/")
            is_pkg_info = len(parts) == 2 and parts[1] == "PKG-INFO"
            is_version_txt = len(parts) == 3 and parts[2] == "version.txt"
            if member.isfile() and (is_pkg_info or is_version_txt):
                data = tar.extractfile(member)
                text = data.read().decode() if data is not None else ""
                if is_pkg_info:
                    found = re.search(r"^Version:\s*(\S+)", text, re.MULTILINE)
                    return found.group(1) if found else None
                return text.strip() or None
    return None


def pick_archive(names: Sequence[str], archives: Sequence[Path]) -> Path | None:
    """The archive named for one of these names: the name, then a version
    (`stable_baselines3-2.9.2.tar.gz`, `stable-baselines3-contrib-2.9.2.tar.gz`)."""
    for archive in archives:
        name = _normalise(archive.name)
        if any(re.match(rf"{re.escape(_normalise(n))}-v?\d", name) for n in names):
            return archive
    return None


def download_sdist(dist: str, version: str, cache: Path) -> Path:
    """`pip download` the source distribution of `dist==version` into `cache` (once)."""
    cache.mkdir(parents=True, exist_ok=True)
    for existing in cache.glob("*.tar.gz"):
        if pick_archive([dist], [existing]) and archive_version(existing) == version:
            return existing
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
               "--dest", str(cache), f"{dist}=={version}"]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(
            f"could not download the {dist} {version} sdist ({done.stderr.strip()[-300:]});"
            " offline, pass it with --sdist PATH"
        )
    for existing in cache.glob("*.tar.gz"):
        if pick_archive([dist], [existing]) and archive_version(existing) == version:
            return existing
    raise SystemExit(f"pip downloaded no {dist} {version} sdist into {cache}")


def extract_tests(archive: Path, cache: Path, suite: Suite, version: str) -> Path:
    """Unpack the archive's tests/ and its pytest settings; returns the source root."""
    dest = cache / f"{_normalise(suite.name)}-{version}"
    with tarfile.open(archive) as tar:
        top = tar.getmembers()[0].name.split("/")[0]
        root = dest / top
        if not all((root / "tests" / f).is_file() for f in suite.files):
            wanted = [
                m
                for m in tar.getmembers()
                if m.name.startswith(f"{top}/tests/")
                or m.name in (f"{top}/pyproject.toml", f"{top}/setup.cfg")
            ]
            tar.extractall(dest, members=wanted, filter="data")
    absent = [f for f in suite.files if not (root / "tests" / f).is_file()]
    if absent:
        raise SystemExit(
            f"{archive} has no tests/{absent[0]}; pass the source archive of the release "
            f"tag instead: --sdist <{suite.repository}/archive/refs/tags/v{version}.tar.gz>"
        )
    return root


# --------------------------------------------------------------------------- running


def run_suite(
    suite: Suite,
    root: Path,
    mode: str,
    workdir: Path,
    keyword: str | None = None,
    only: Iterable[str] | None = None,
) -> dict[str, Any]:
    """One pytest run of the suite's files in `mode` (only the tests `only` names, if
    given); the plugin's JSON report."""
    report = workdir / f"{_normalise(suite.name)}-{mode}.json"
    keep: list[str] = []
    if only is not None:
        listed = workdir / f"{_normalise(suite.name)}-{mode}.only"
        listed.write_text("\n".join(only) + "\n")
        keep = ["--esper-compat-only", str(listed)]
    settings = root / "pyproject.toml"
    command = [
        sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
        "-c", str(settings if settings.is_file() else root / "setup.cfg"),
        "--rootdir", str(root),
        "-p", "benchmarks.compat_plugin", "--esper-compat", mode,
        "--esper-compat-report", str(report), *keep,
        *(["-m", suite.markexpr] if suite.markexpr else []),
        *(["-k", keyword] if keyword else []),
        *(str(root / "tests" / f) for f in suite.files),
    ]  # fmt: skip
    scratch = workdir / f"cwd-{_normalise(suite.name)}-{mode}"
    (scratch / "tmp").mkdir(parents=True)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, (str(REPO), env.get("PYTHONPATH"))))
    env["TMPDIR"] = str(scratch / "tmp")
    done = subprocess.run(command, cwd=scratch, env=env, capture_output=True, text=True)
    if not report.is_file():
        raise SystemExit(
            f"pytest wrote no report for {suite.name} ({mode}), exit {done.returncode}:\n"
            + (done.stdout + done.stderr)[-2000:]
        )
    result: dict[str, Any] = json.loads(report.read_text())
    result["summary"] = (done.stdout.strip().splitlines() or [""])[-1]
    return result


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.compat",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add = parser.add_argument
    add("--cache", type=Path, default=DEFAULT_CACHE,
        help=f"where sdists and their tests are kept (default {DEFAULT_CACHE})")  # fmt: skip
    add("--sdist", type=Path, action="append", default=[],
        help="use this archive (an sdist or a tag's source archive); repeatable")  # fmt: skip
    add("--suite", action="append", choices=[s.name for s in SUITES],
        help="only this suite (repeatable; default both)")  # fmt: skip
    add("-k", dest="keyword", help="pytest -k expression (to narrow a run while debugging)")
    add("--markdown", action="store_true",
        help="print the tables as docs/compatibility.md records them")  # fmt: skip
    args = parser.parse_args(argv)

    from rich.console import Console

    console = Console(stderr=True)
    suites = [s for s in SUITES if args.suite is None or s.name in args.suite]
    comparisons: list[Comparison] = []
    with tempfile.TemporaryDirectory(prefix="esper-compat-") as tmp:
        for suite in suites:
            version = metadata.version(suite.name)
            given = pick_archive(suite.archive_names, args.sdist)
            archive = given or download_sdist(suite.name, version, args.cache)
            found = archive_version(archive)
            if found is not None and found != version:
                raise SystemExit(f"{archive} is {suite.name} {found}; {version} is installed")
            root = extract_tests(archive, args.cache, suite, version)
            results: dict[str, dict[str, Any]] = {}
            for mode in ("original", "per-head"):
                started = time.monotonic()
                console.print(f"{suite.name} {version}, {mode} classes ...")
                only = None
                if mode == "per-head":  # the tests that built the class; the others cannot differ
                    only = [n for n, t in results["original"]["tests"].items() if t["built"]]
                results[mode] = run_suite(suite, root, mode, Path(tmp), args.keyword, only)
                console.print(
                    f"  {results[mode]['summary']} ({time.monotonic() - started:.0f} s wall)"
                )
            comparisons.append(
                compare(suite.name, version, suite.cls, results["original"]["tests"],
                        results["per-head"]["tests"])
            )  # fmt: skip
    out = Console()
    for c in comparisons:
        if args.markdown:
            print(markdown(c))
        else:
            out.print(table(c))
            for d in c.differences:
                why = d.refusal.what if d.refusal else "[red]unexplained[/]"
                out.print(f"  {d.test}: {d.original} -> {d.per_head} ({why}) {d.message[:160]}")
            for name in c.unsubstituted:
                out.print(f"  [red]reached the original class[/] in the per-head run: {name}")
    ok = all(c.ok for c in comparisons)
    console.print("no unexplained differences" if ok else "[red]unexplained differences[/]")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
