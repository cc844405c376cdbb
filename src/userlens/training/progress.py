"""Progress of a training run that reads well on a terminal and in a file.

On a terminal: Rich bars on stderr, one for the current epoch (rate, loss, elapsed,
remaining), one for validation, one for the whole run (epochs done, elapsed, an
upper-bound estimate: early stopping may end sooner); the per-epoch JSON rows are
printed above the bars, in order. In a file (stderr redirected) there are no bars:
a plain line at each quarter of an epoch, one for validation and the JSON row of
each epoch, in the order they happen.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from rich.console import Console
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn,
                           TimeRemainingColumn)


def _clock(seconds: float) -> str:
    s = int(round(seconds))
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"


class RunReporter:
    """Reports one :func:`~userlens.training.trainer.fit` run; ``log`` receives the per-epoch JSON lines."""

    def __init__(self, enabled: bool, log: Callable[[str], None], epochs: int, batches: int,
                 first_epoch: int = 0) -> None:
        self.log, self.epochs, self.batches = log, epochs, batches
        self.console = Console(stderr=True)
        self.live = enabled and self.console.is_terminal
        self.plain = enabled and not self.live
        self.started = time.perf_counter()
        self.first_epoch = first_epoch
        self.bar: Progress | None = None
        self._epoch_task: TaskID | None = None
        self._valid_task: TaskID | None = None
        self._quarter = 0

    def __enter__(self) -> RunReporter:
        if self.live:
            self.bar = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                                TextColumn("{task.fields[info]}"), TimeElapsedColumn(), TextColumn("eta"),
                                TimeRemainingColumn(), console=self.console, transient=False)
            self.bar.start()
            self._run_task = self.bar.add_task("run", total=self.epochs, completed=self.first_epoch, info="")
        return self

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.stop()

    def emit(self, line: str) -> None:
        """A line above the bars (terminal) or in order (file)."""
        if self.bar is not None:
            self.bar.console.print(line, markup=False, highlight=False, soft_wrap=True)
        else:
            self.log(line)

    def epoch_start(self, epoch: int) -> None:
        self._t0, self._quarter = time.perf_counter(), 0
        if self.bar is not None:
            self._epoch_task = self.bar.add_task(f"epoch {epoch + 1}/{self.epochs}", total=self.batches, info="")

    def step(self, epoch: int, step: int, seen: int, loss: float) -> None:
        elapsed = time.perf_counter() - self._t0
        rate = seen / max(elapsed, 1e-9)
        if self.bar is not None and self._epoch_task is not None:
            if step % 10 == 0 or step == self.batches - 1:
                self.bar.update(self._epoch_task, completed=step + 1, info=f"{rate:,.0f} samples/s loss {loss:.4f}")
        elif self.plain and (step + 1) * 4 >= (self._quarter + 1) * self.batches and self._quarter < 3:
            self._quarter += 1
            left = elapsed / (step + 1) * (self.batches - step - 1)
            self.log(f"epoch {epoch + 1}/{self.epochs}: {25 * self._quarter}% ({step + 1}/{self.batches} batches), "
                     f"{rate:,.0f} samples/s, loss {loss:.4f}, elapsed {_clock(elapsed)}, epoch eta {_clock(left)}")

    def validating(self, epoch: int, batches: int) -> Callable[[], None]:
        """Start validation; returns the per-batch callback."""
        if self.bar is not None:
            self._valid_task = self.bar.add_task(f"valid {epoch}", total=batches, info="")
            return lambda: self.bar.advance(self._valid_task)  # type: ignore[union-attr,arg-type]
        if self.plain:
            self.log(f"epoch {epoch}: validating ({batches} batches)")
        return lambda: None

    def epoch_end(self, epoch: int, row_json: str) -> None:
        self.emit(row_json)
        done = epoch - self.first_epoch
        per_epoch = (time.perf_counter() - self.started) / max(done, 1)
        if self.bar is not None:
            self.bar.update(self._run_task, completed=epoch, info="")
        elif self.plain:
            self.log(f"run: {epoch}/{self.epochs} epochs, elapsed {_clock(time.perf_counter() - self.started)}, "
                     f"at most {_clock(per_epoch * (self.epochs - epoch))} more (early stopping may end sooner)")


__all__ = ("RunReporter",)
