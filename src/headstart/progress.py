"""Rich progress bars that stay quiet when nobody is watching (CI logs, pipes, tests)."""

from __future__ import annotations

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from headstart.console import console


def progress_bar(transient: bool = True) -> Progress:
    """A bar with counts and times; update the description to show live metrics."""
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=transient,
        disable=not console.is_terminal,
    )
