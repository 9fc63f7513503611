"""Import a script under benchmarks/ as a module, so a test calls its functions (or `main()`) in-process."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest


def import_script(path: Path, monkeypatch: pytest.MonkeyPatch | None = None) -> ModuleType:
    """The script at `path` executed as module `script_<stem>`, registered in sys.modules (dataclasses look
    their module up there): with `monkeypatch` until the test ends, else for the session."""
    spec = importlib.util.spec_from_file_location(f"script_{path.stem}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    if monkeypatch is None:
        sys.modules[spec.name] = module
    else:
        monkeypatch.setitem(sys.modules, spec.name, module)
    spec.loader.exec_module(module)
    return module
