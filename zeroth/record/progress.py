"""Live progress in the terminal: one bar per stage with its key numbers and the time left.

On a terminal, rich redraws the bars in place. Elsewhere (CI logs, pipes) a plain line is
printed about every 10% of a stage, so a log still shows the run moving.
"""

from __future__ import annotations

import time
from contextlib import contextmanager

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
)
from rich.table import Table


def fmt(fields: dict) -> str:
    return " ".join(f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}"
                    for k, v in fields.items())


class Display:
    """Stage bars over a rich Console (quiet=True prints only stage ends and tables)."""

    def __init__(self, console: Console | None = None, quiet: bool = False):
        self.console = console or Console()
        self.quiet = quiet
        self.live = self.console.is_terminal and not quiet
        self.progress = Progress(
            TextColumn("[bold]{task.description:<10}"), BarColumn(bar_width=12),
            MofNCompleteColumn(), TimeRemainingColumn(compact=True), TextColumn("left"),
            TextColumn("{task.fields[info]}"), console=self.console, disable=not self.live)
        self._stage = None

    @classmethod
    def silent(cls) -> Display:
        """A display that shows nothing (the ranks of a torchrun job but rank 0)."""
        import os

        return cls(Console(file=open(os.devnull, "w")), quiet=True)

    def __enter__(self):
        self.progress.start()
        return self

    def __exit__(self, *exc):
        self.progress.stop()

    @contextmanager
    def stage(self, name: str, total: int, done: int = 0):
        """A bar for `name`; yields update(done, **fields)."""
        bar = self.progress.add_task(name, total=total, completed=done, info="")
        start, last_print = time.time(), [-1]

        def update(completed: int, **fields) -> None:
            info = fmt(fields)
            self.progress.update(bar, completed=completed, info=info)
            tenth = completed * 10 // max(1, total)
            if not self.live and not self.quiet and tenth != last_print[0]:
                last_print[0] = tenth
                left = (time.time() - start) / max(1, completed - done) * (total - completed)
                self.console.print(f"{name} {completed}/{total}  {info}  ~{left:.0f}s left",
                                   highlight=False)

        yield update
        self.progress.update(bar, completed=total)
        if not self.live:
            self.console.print(f"{name} done in {time.time() - start:.1f}s", highlight=False)

    def print(self, *args, **kwargs) -> None:
        self.console.print(*args, **kwargs)


def results_table(rows: list[tuple[str, str, str]], title: str,
                  heads: tuple[str, str] = ("before RL", "after RL")) -> Table:
    table = Table(title=title)
    for head in ("metric", *heads):
        table.add_column(head, justify="right" if head != "metric" else "left")
    for row in rows:
        table.add_row(*row)
    return table
