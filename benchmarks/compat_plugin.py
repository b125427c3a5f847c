"""pytest plugin: a library's own tests, run with `PerHeadPPO` / `PerHeadMaskablePPO` in.

`python -m benchmarks.compat` loads it into pytest runs of Stable-Baselines3's and
sb3-contrib's test suites (`-p benchmarks.compat_plugin --esper-compat MODE`):

- `--esper-compat original` leaves the classes alone and only notes which tests
  construct `PPO` or `MaskablePPO` (those are the tests the comparison is about);
- `--esper-compat per-head` puts the per-head classes wherever a test can reach the
  library's: the package attributes (`stable_baselines3.PPO`, `stable_baselines3.ppo.PPO`,
  `sb3_contrib.MaskablePPO`, ...) before any test module is imported, every other module's
  global that is the original class, and the classes a test was parametrized with. A
  test that still builds the original class is noted as `unsubstituted`, so a hole in the
  substitution shows instead of passing for compatibility.

`--esper-compat-only FILE` keeps only the tests whose ids it lists (the command runs the
per-head side on the tests that built the class on the original side: the others cannot
differ). `--esper-compat-report PATH` writes, per test, its outcome (passed / failed / skipped),
the failure's one-line message, its duration and the classes it built, as JSON.
Everything is undone at the end of the session: the plugin can run inside another
pytest process without leaving the library patched.
"""

from __future__ import annotations

import functools
import json
import sys
import time
from collections.abc import Callable, Generator, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

MODES = ("original", "per-head")
#: Modules that define the classes (and ours, which subclasses them): never rewritten.
_KEEP = (
    "stable_baselines3.ppo.ppo",
    "sb3_contrib.ppo_mask.ppo_mask",
    "esper.integrations.sb3",
)
_OUTCOME_RANK = {"passed": 0, "skipped": 1, "failed": 2}


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("esper-compat", "per-head classes in a library's own tests")
    group.addoption(
        "--esper-compat",
        choices=MODES,
        default=None,
        help="original: note which tests build PPO/MaskablePPO; per-head: substitute ours",
    )
    group.addoption("--esper-compat-report", default=None, help="write the results as JSON")
    group.addoption(
        "--esper-compat-only",
        default=None,
        help="a file of test ids, one a line: deselect every other test",
    )


def pytest_configure(config: pytest.Config) -> None:
    mode = config.getoption("--esper-compat")
    if mode is None:
        return
    report = config.getoption("--esper-compat-report")
    only = config.getoption("--esper-compat-only")
    recorder = Recorder(mode, None if report is None else Path(report))
    if only is not None:
        recorder.only = set(Path(only).read_text().splitlines())
    recorder.install()
    config.pluginmanager.register(recorder, "esper-compat-recorder")
    config.add_cleanup(recorder.uninstall)


def class_pairs() -> list[tuple[type, type]]:
    """(library class, its per-head twin) for each class the comparison is about."""
    from sb3_contrib import MaskablePPO
    from stable_baselines3 import PPO

    from esper.integrations.sb3 import PerHeadMaskablePPO, PerHeadPPO

    return [(PPO, PerHeadPPO), (MaskablePPO, PerHeadMaskablePPO)]


def _rewritable(name: str, module: Any) -> bool:
    if not isinstance(module, ModuleType) or name in _KEEP or name == __name__:
        return False
    return not name.startswith(("esper.", "_pytest", "pytest"))


class Recorder:
    """Substitutes (in per-head mode), notes which classes each test builds, records outcomes."""

    def __init__(self, mode: str, report: Path | None) -> None:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        self.mode = mode
        self.report = report
        self.pairs = class_pairs()
        self.current: str | None = None
        self.only: set[str] | None = None  # test ids to keep; None: all
        self.tests: dict[str, dict[str, Any]] = {}
        self._undo: list[Callable[[], None]] = []
        self._started = time.monotonic()

    # ---- substitution -------------------------------------------------------------

    @property
    def substitutes(self) -> dict[int, type]:
        return {id(original): ours for original, ours in self.pairs}

    def _swap_globals(self) -> int:
        """Point every module's global naming an original class at its per-head twin."""
        substitutes, swapped = self.substitutes, 0
        for name, module in list(sys.modules.items()):
            if not _rewritable(name, module):
                continue
            for attr, value in list(vars(module).items()):
                ours = substitutes.get(id(value))
                if ours is None or value is ours:
                    continue
                setattr(module, attr, ours)
                self._undo.append(functools.partial(setattr, module, attr, value))
                swapped += 1
        return swapped

    def _watch(self, cls: type, unsubstituted: bool = False) -> None:
        """Wrap `cls.__init__` to note the test that builds it (and undo that at the end)."""
        own = cls.__dict__.get("__init__")
        init = cls.__init__  # type: ignore[misc]
        recorder = self

        @functools.wraps(init)
        def noted(obj: Any, *args: Any, **kwargs: Any) -> None:
            recorder.built(type(obj), unsubstituted)
            init(obj, *args, **kwargs)

        cls.__init__ = noted  # type: ignore[misc]
        if own is None:
            self._undo.append(lambda: delattr(cls, "__init__"))
        else:
            self._undo.append(functools.partial(setattr, cls, "__init__", own))

    def install(self) -> None:
        for original, ours in self.pairs:
            if self.mode == "original":
                self._watch(original)
            else:
                self._watch(ours)
                self._watch(original, unsubstituted=True)
        if self.mode == "per-head":
            self._swap_globals()

    def uninstall(self) -> None:
        while self._undo:
            self._undo.pop()()

    def built(self, cls: type, unsubstituted: bool) -> None:
        """A test (the current one, if any) constructed an instance of `cls`."""
        if self.current is None:
            return
        test = self._test(self.current)
        if cls.__name__ not in test["built"]:
            test["built"].append(cls.__name__)
        # A per-head class runs the original's __init__ too; only a bare original counts.
        ours = {o for _, o in self.pairs}
        if unsubstituted and not any(issubclass(cls, o) for o in ours):
            test["unsubstituted"] = True

    # ---- pytest hooks -------------------------------------------------------------

    def _test(self, nodeid: str) -> dict[str, Any]:
        return self.tests.setdefault(
            nodeid,
            {"outcome": "passed", "message": "", "duration": 0.0, "built": [],
             "unsubstituted": False},
        )  # fmt: skip

    @pytest.hookimpl(trylast=True)
    def pytest_collection_modifyitems(
        self, config: pytest.Config, items: list[pytest.Item]
    ) -> None:
        """Keep the tests asked for; test modules are imported now: swap what they hold,
        and their parameters."""
        if self.only is not None:
            dropped = [item for item in items if item.nodeid not in self.only]
            items[:] = [item for item in items if item.nodeid in self.only]
            config.hook.pytest_deselected(items=dropped)
        if self.mode != "per-head":
            return
        self._swap_globals()
        substitutes = self.substitutes
        for item in items:
            params = getattr(getattr(item, "callspec", None), "params", None)
            if not params:
                continue
            for key, value in list(params.items()):
                if id(value) in substitutes:
                    params[key] = substitutes[id(value)]

    def pytest_make_parametrize_id(self, val: object) -> str | None:
        """A test parametrized with our class keeps the id the original gives it
        (`test_save_load[PPO]`, not `[PerHeadPPO]`), so the two runs' tests pair up."""
        if self.mode != "per-head":
            return None
        for original, ours in self.pairs:
            if val is ours:
                return original.__name__
        return None

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_protocol(self, item: pytest.Item) -> Generator[None, object, object]:
        self.current = item.nodeid
        self._test(item.nodeid)
        try:
            return (yield)
        finally:
            self.current = None

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        test = self._test(report.nodeid)
        test["duration"] += report.duration
        outcome = report.outcome
        if outcome == "passed" and report.when != "call":
            return
        if _OUTCOME_RANK[outcome] > _OUTCOME_RANK[test["outcome"]]:
            test["outcome"] = outcome
            test["message"] = one_line(report)

    def pytest_sessionfinish(self, session: pytest.Session, exitstatus: int) -> None:
        if self.report is None:
            return
        self.report.parent.mkdir(parents=True, exist_ok=True)
        self.report.write_text(
            json.dumps(
                {
                    "mode": self.mode,
                    "exitstatus": int(exitstatus),
                    "seconds": round(time.monotonic() - self._started, 2),
                    "tests": self.tests,
                },
                indent=1,
            )
        )


def one_line(report: pytest.TestReport) -> str:
    """The failure's (or skip's) message on one line: the exception and its text."""
    longrepr = report.longrepr
    crash = getattr(longrepr, "reprcrash", None)
    if crash is not None:
        text = str(crash.message)
    elif isinstance(longrepr, tuple) and len(longrepr) == 3:  # a skip: (file, line, reason)
        text = str(longrepr[2])
    else:
        text = str(longrepr)
    return " ".join(_lines(text))[:400]


def _lines(text: str) -> Iterator[str]:
    for line in text.splitlines():
        if line.strip():
            yield line.strip()
