"""The library-suite check (`python -m benchmarks.compat`): its plugin and its table.

The real run (the libraries' suites, minutes) is the command's job, not this suite's;
these check, offline and in seconds, that the plugin substitutes the classes wherever a
test can reach them and notices where it could not, that the table counts what it
claims, and that the archive handling finds the tests and the version.
"""

from __future__ import annotations

import io
import json
import sys
import tarfile
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("stable_baselines3")
pytest.importorskip("sb3_contrib")

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the `benchmarks` package

import stable_baselines3
from sb3_contrib import MaskablePPO
from stable_baselines3 import PPO

from benchmarks import compat, compat_plugin
from esper.integrations.sb3 import PerHeadMaskablePPO, PerHeadPPO

pytest_plugins = ["pytester"]
REPO = Path(__file__).resolve().parents[1]


def _test(outcome: str, built: list[str] | None = None, message: str = "", **kw: Any) -> Any:
    return {"outcome": outcome, "message": message, "duration": 0.5,
            "built": ["PPO"] if built is None else built, "unsubstituted": False, **kw}  # fmt: skip


def test_the_box_refusal_pattern_matches_the_real_error() -> None:
    with pytest.raises(ValueError) as refused:
        PerHeadPPO("MlpPolicy", "Pendulum-v1")
    refusal = compat.refusal_of(f"ValueError: {refused.value}")
    assert refusal is not None and refusal.what == "Box action space"
    assert compat.refusal_of("AssertionError: assert 0.5 == 0.7") is None


def test_compare_counts_only_tests_that_build_the_class_and_classifies_differences() -> None:
    box = "ValueError: per-head telemetry needs a Discrete, 1-D MultiDiscrete or MultiBinary "
    box += "action space, got Box(-1.0, 1.0, (1,), float32); a Box can be discretised"
    original = {
        "tests/test_run.py::test_a": _test("passed"),
        "tests/test_run.py::test_box": _test("passed"),
        "tests/test_run.py::test_dqn": _test("passed", built=[]),  # another algorithm
        "tests/test_save_load.py::test_b": _test("passed"),
        "tests/test_save_load.py::test_skip": _test("skipped"),
        "tests/test_save_load.py::test_gone": _test("passed"),
    }
    per_head = {
        "tests/test_run.py::test_a": _test("passed", ["PerHeadPPO"]),
        "tests/test_run.py::test_box": _test("failed", ["PerHeadPPO"], box),
        "tests/test_run.py::test_dqn": _test("failed", built=[]),  # not counted either way
        "tests/test_save_load.py::test_b": _test("failed", ["PerHeadPPO"], "AssertionError: x"),
        "tests/test_save_load.py::test_skip": _test("skipped", ["PerHeadPPO"]),
    }
    per_head["tests/test_run.py::test_a"]["unsubstituted"] = True
    c = compat.compare("stable-baselines3", "2.9.2", "PPO", original, per_head)
    rows = {r.file: r for r in c.rows}
    assert set(rows) == {"test_run.py", "test_save_load.py"}
    assert rows["test_run.py"].original == {"passed": 2, "failed": 0, "skipped": 0}
    assert rows["test_run.py"].per_head == {"passed": 1, "failed": 1, "skipped": 0}
    assert (rows["test_run.py"].by_design, rows["test_run.py"].unexplained) == (1, 0)
    assert rows["test_save_load.py"].per_head == {"passed": 0, "failed": 2, "skipped": 1}
    assert rows["test_save_load.py"].unexplained == 2  # an assertion, and a test not run
    assert [d.test.rsplit("::")[-1] for d in c.unexplained] == ["test_b", "test_gone"]
    assert c.unsubstituted == ["tests/test_run.py::test_a"] and not c.ok
    assert c.total_tests == 6
    text = compat.markdown(c)
    assert "| **all** | 5 | 4 / 0 / 1 | 1 / 3 / 1 | 1 | 2 |" in text
    assert "- Box action space (1): `tests/test_run.py::test_box`" in text
    assert "5 of the 6 tests collected" in text


def test_compare_of_identical_runs_is_ok() -> None:
    tests = {"tests/test_x.py::t": _test("passed")}
    c = compat.compare("sb3-contrib", "2.9.2", "MaskablePPO", tests, tests)
    assert c.ok and not c.differences and c.rows[0].tests == 1


def _archive(path: Path, files: dict[str, str]) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for name, text in files.items():
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def test_archives_are_found_by_name_versioned_and_their_tests_extracted(tmp_path: Path) -> None:
    sdist = _archive(
        tmp_path / "stable_baselines3-2.9.2.tar.gz",
        {"stable_baselines3-2.9.2/PKG-INFO": "Metadata-Version: 2.1\nName: x\nVersion: 2.9.2\n",
         "stable_baselines3-2.9.2/pyproject.toml": "[tool.pytest.ini_options]\n",
         "stable_baselines3-2.9.2/tests/test_run.py": "def test_x(): pass\n",
         "stable_baselines3-2.9.2/stable_baselines3/ppo.py": "",},
    )  # fmt: skip
    tag = _archive(
        tmp_path / "stable-baselines3-contrib-2.9.2.tar.gz",
        {"c-2.9.2/sb3_contrib/version.txt": "2.9.2\n", "c-2.9.2/tests/test_run.py": ""},
    )
    sb3, contrib = compat.SUITES
    assert compat.pick_archive(sb3.archive_names, [tag, sdist]) == sdist
    assert compat.pick_archive(contrib.archive_names, [sdist, tag]) == tag  # GitHub's name
    assert compat.pick_archive(contrib.archive_names, [sdist]) is None
    assert compat.archive_version(sdist) == "2.9.2" and compat.archive_version(tag) == "2.9.2"
    suite = compat.Suite("stable-baselines3", "PPO", ("test_run.py",))
    root = compat.extract_tests(sdist, tmp_path / "cache", suite, "2.9.2")
    assert (root / "tests" / "test_run.py").read_text() == "def test_x(): pass\n"
    assert (root / "pyproject.toml").is_file() and not (root / "stable_baselines3").exists()
    missing = compat.Suite("stable-baselines3", "PPO", ("test_spaces.py",), repository="R")
    with pytest.raises(SystemExit, match=r"R/archive/refs/tags/v2.9.2.tar.gz"):
        compat.extract_tests(sdist, tmp_path / "cache", missing, "2.9.2")


def test_original_mode_notes_who_builds_the_class_and_uninstall_restores(
    tmp_path: Path,
) -> None:
    recorder = compat_plugin.Recorder("original", None)
    recorder.install()
    try:
        assert stable_baselines3.PPO is PPO  # nothing substituted
        recorder.current = "tests/test_x.py::t"
        PPO("MlpPolicy", "CartPole-v1", n_steps=8, batch_size=8)
        recorder.current = None
        PPO("MlpPolicy", "CartPole-v1", n_steps=8, batch_size=8)  # outside a test: no note
    finally:
        recorder.uninstall()
    assert recorder.tests == {
        "tests/test_x.py::t": {"outcome": "passed", "message": "", "duration": 0.0,
                               "built": ["PPO"], "unsubstituted": False},
    }  # fmt: skip
    assert "__init__" in PPO.__dict__ and PPO.__init__.__name__ == "__init__"
    assert not hasattr(PPO.__init__, "__wrapped__")


def test_per_head_mode_swaps_and_restores_in_process() -> None:
    recorder = compat_plugin.Recorder("per-head", None)
    recorder.install()
    try:
        import sb3_contrib
        import stable_baselines3.ppo

        assert stable_baselines3.PPO is PerHeadPPO and stable_baselines3.ppo.PPO is PerHeadPPO
        assert sb3_contrib.MaskablePPO is PerHeadMaskablePPO
        assert "__init__" in PerHeadPPO.__dict__  # watched
    finally:
        recorder.uninstall()
    assert stable_baselines3.PPO is PPO and sb3_contrib.MaskablePPO is MaskablePPO
    assert "__init__" not in PerHeadPPO.__dict__
    assert not hasattr(MaskablePPO.__init__, "__wrapped__")


SUITE_FILE = """
import pytest
import stable_baselines3.ppo.ppo as defining
from stable_baselines3 import PPO
from stable_baselines3.ppo.ppo import PPO as FromTheDefiningModule
from sb3_contrib import MaskablePPO

from esper.integrations.sb3 import PerHeadMaskablePPO, PerHeadPPO

def test_package_names_are_ours():
    assert PPO is PerHeadPPO and MaskablePPO is PerHeadMaskablePPO

def test_a_defining_module_import_is_swapped_after_collection():
    assert FromTheDefiningModule is PerHeadPPO

@pytest.mark.parametrize("cls", [PPO, FromTheDefiningModule])
def test_parameters_are_ours(cls, tmp_path):
    assert cls is PerHeadPPO
    cls("MlpPolicy", "CartPole-v1", n_steps=8, batch_size=8, run_dir=tmp_path / "r")

def test_reaching_the_original_is_noticed():
    defining.PPO("MlpPolicy", "CartPole-v1", n_steps=8, batch_size=8)

def test_a_refusal_is_a_failure_with_its_message():
    PPO("MlpPolicy", "Pendulum-v1")

@pytest.mark.skip(reason="not here")
def test_skipped():
    pass
"""


def test_per_head_mode_reaches_every_import_and_reports_what_it_could_not(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PYTHONPATH", str(REPO))
    pytester.makepyfile(test_suite=SUITE_FILE)
    report = pytester.path / "report.json"
    result = pytester.runpytest_subprocess(
        "-p", "benchmarks.compat_plugin", "--esper-compat", "per-head",
        "--esper-compat-report", str(report), "-p", "no:cacheprovider",
    )  # fmt: skip
    result.assert_outcomes(passed=5, failed=1, skipped=1)
    tests = {k.split("::")[1]: v for k, v in json.loads(report.read_text())["tests"].items()}
    # Both parameters keep the original's id (PPO), as in an original run: the runs pair up.
    for param in ("PPO0", "PPO1"):
        test = tests[f"test_parameters_are_ours[{param}]"]
        assert test["outcome"] == "passed" and test["built"] == ["PerHeadPPO"]
        assert not test["unsubstituted"]
    assert tests["test_reaching_the_original_is_noticed"]["unsubstituted"]
    assert tests["test_reaching_the_original_is_noticed"]["built"] == ["PPO"]
    refused = tests["test_a_refusal_is_a_failure_with_its_message"]
    assert refused["outcome"] == "failed" and refused["built"] == ["PerHeadPPO"]
    assert compat.refusal_of(refused["message"]) is compat.DESIGN_REFUSALS[0]
    assert tests["test_skipped"] == {"outcome": "skipped", "message": "Skipped: not here",
                                     "duration": pytest.approx(0, abs=1), "built": [],
                                     "unsubstituted": False}  # fmt: skip
