"""A rich progress bar for training: step, loss, eval loss, tokens/s and time left."""

from __future__ import annotations

from types import TracebackType

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)


class TrainProgress:
    """Shows progress on the main process; does nothing elsewhere or when disabled."""

    def __init__(self, console: Console, total: int, done: int, enabled: bool = True):
        self._progress = Progress(
            TextColumn("[bold]train"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[stats]}"),
            TimeElapsedColumn(),
            TextColumn("eta"),
            TimeRemainingColumn(),
            console=console,
            disable=not enabled or console.quiet,
        )
        self._task = self._progress.add_task("train", total=total, completed=done, stats="")

    def __enter__(self) -> TrainProgress:
        self._progress.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self._progress.stop()

    def update(self, step: int, loss: float, tokens_per_s: float, eval_loss: float | None) -> None:
        stats = f"loss {loss:.4f}  {tokens_per_s:,.0f} tok/s"
        if eval_loss is not None:
            stats += f"  eval {eval_loss:.4f}"
        self._progress.update(self._task, completed=step, stats=stats)
