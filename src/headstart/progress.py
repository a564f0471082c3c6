"""Rich progress bars that stay quiet when nobody is watching (CI logs, pipes, tests)."""

from __future__ import annotations

import time

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


class CellsView:
    """One view of a whole experiment (the cells of `compare` on a cluster): done / running / failed of the
    total, the time so far and the time left at the pace so far. One line, however many processes train: the
    workers' own bars stay in their logs."""

    def __init__(self, total: int):
        self.total, self.started = total, time.monotonic()
        self.bar = Progress(TextColumn("[bold]cells[/]"), BarColumn(), MofNCompleteColumn(),
                            TextColumn("{task.fields[counts]}"), TimeElapsedColumn(), TextColumn("ETA {task.fields[eta]}"),
                            console=console, transient=False, disable=not console.is_terminal)
        self.task = self.bar.add_task("cells", total=total, counts="", eta="-")

    def __enter__(self) -> CellsView:
        self.bar.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self.bar.__exit__(*exc)

    def show(self, done: int, failed: int, running: int) -> None:
        finished = done + failed
        eta = eta_seconds(finished, self.total - finished, time.monotonic() - self.started)
        self.bar.update(self.task, completed=finished, counts=f"{done} done · {running} running · {failed} failed",
                        eta="-" if eta is None else time.strftime("%H:%M:%S", time.gmtime(eta)))


def cells_view(total: int) -> CellsView:
    return CellsView(total)


def eta_seconds(finished: int, remaining: int, elapsed: float) -> float | None:
    """Time left at the pace so far (cells finished per second of the whole experiment, however many ran side by
    side); None before the first cell finished."""
    if finished == 0 or elapsed <= 0:
        return None
    return remaining * elapsed / finished
