"""One place for what headstart tells the person at the terminal.

Messages go to stderr through rich, so `--json` output on stdout stays machine-readable.
"""

from __future__ import annotations

from rich.console import Console

console = Console(stderr=True, highlight=False, soft_wrap=True)  # long paths stay whole, greppable


def info(message: str) -> None:
    console.print(message)


def warn(message: str) -> None:
    console.print(f"[bold yellow]warning:[/] {message}")


def warn_skipped(skipped: list[tuple[str, str]], what: str = "files") -> None:
    """Name every skipped file with its reason, then the count: a user must be able to find and fix each."""
    if not skipped:
        return
    for ref, reason in skipped:
        console.print(f"[yellow]  skipped[/] {ref}: {reason}")
    warn(f"skipped {len(skipped)} {what} (listed above)")
