"""How long work and figures are shown: one progress bar layout and one number format."""

from __future__ import annotations

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn


def progress_bar(console: Console, *, transient: bool = True, disable: bool = False) -> Progress:
    """A rich progress display: description, bar, done/total, elapsed time."""
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    return Progress(*columns, console=console, transient=transient, disable=disable)


def fmt(value: float | None, digits: int = 2, sign: bool = False) -> str:
    """`value` with `digits` decimals (a leading + or − with `sign`); "n/a" for None."""
    if value is None:
        return "n/a"
    return f"{value:+.{digits}f}" if sign else f"{value:.{digits}f}"
