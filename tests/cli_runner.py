"""Run the `fastinv` command line in-process, as the tests do: (exit code, stdout, stderr)."""

from __future__ import annotations

import contextlib
import io

from fastinv.cli import main


def cli(args: list[str]) -> tuple[int, str, str]:
    """Run `fastinv ARGS`: (exit code, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            main(args)
            code = 0
        except SystemExit as exit_info:
            code = exit_info.code
    return code, out.getvalue(), err.getvalue()
