"""`benchmarks/suite.py` on a two-file checkout whose README's test line is a plain pytest run: outcome
counts and per-file seconds from pytest's JUnit XML and the JSON record; a failing line is one error line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from scripts import import_script

SUITE = Path(__file__).resolve().parents[1] / "benchmarks" / "suite.py"
LINE = "python -m pytest -q -p no:cacheprovider -p no:hypothesispytest -p no:anyio -p no:xdist tests"
"""The checkout's test line (without the plugins its tests do not use, which take seconds to import)."""
TESTS = {
    "test_fast.py": "def test_one():\n    pass\n\n\ndef test_two():\n    pass\n",
    "test_slow.py": (
        "import time\n\nimport pytest\n\n\n@pytest.fixture(scope='module')\ndef slow():\n"
        "    time.sleep(0.4)\n\n\ndef test_after_a_fixture(slow):\n    pass\n\n\n"
        "@pytest.mark.skip(reason='counted by the benchmark')\ndef test_skipped():\n    pass\n\n\n"
    ),
}


def checkout(root: Path, line: str) -> Path:
    """`root` with the tests above and a README whose "## Tests" block is `line`."""
    (root / "tests").mkdir(parents=True)
    for name, text in TESTS.items():
        (root / "tests" / name).write_text(text)
    (root / "README.md").write_text(f"# x\n\n## Tests\n\n```bash\n{line}\n```\n")
    return root


def test_a_run_is_counted_per_file_and_recorded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PYTEST_ADDOPTS", raising=False)
    suite = import_script(SUITE, monkeypatch)
    root = checkout(tmp_path / "checkout", LINE)
    record = suite.main(["--root", str(root), "--out", str(tmp_path / "out")])
    (run,) = record["runs"]
    assert run["outcomes"] == {"passed": 3, "skipped": 1}
    assert list(run["file_seconds"]) == ["tests/test_slow.py", "tests/test_fast.py"]  # slowest first
    assert run["file_seconds"]["tests/test_slow.py"] >= 0.4  # the module fixture counts with its file
    assert run["pytest_seconds"] >= 0.4 and run["wall_seconds"] > run["pytest_seconds"]  # + start-up
    assert record["line"] == LINE and record["met"]
    assert json.loads((tmp_path / "out" / "suite.json").read_text()) == record


def test_a_failing_line_is_one_error_line_and_writes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    suite = import_script(SUITE, monkeypatch)
    root = checkout(tmp_path / "checkout", "echo collecting; echo '1 failed, 3 passed' >&2; exit 1")
    with pytest.raises(SystemExit) as exit_info:
        suite.main(["--root", str(root), "--out", str(tmp_path / "out")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: the test line failed (exit status 1): 1 failed, 3 passed"]
    assert not (tmp_path / "out").exists()
    with pytest.raises(SystemExit) as exit_info:
        suite.main(["--root", str(root), "--runs", "0"])
    assert exit_info.value.code == 2 and "--runs must be at least 1, not 0" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        suite.main(["--root", str(tmp_path)])
    assert exit_info.value.code == 2
    assert (
        capsys.readouterr().err
        == f"error: {tmp_path / 'README.md'} has no '## Tests' section with a one-line bash block\n"
    )
