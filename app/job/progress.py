"""Rich progress for the job's steps: one line per step, a bar where the step has a count."""

from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
)


class Steps:
    def __init__(self, console: Console) -> None:
        self._progress = Progress(
            SpinnerColumn(finished_text="[green]✓"),
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=console,
        )

    def __enter__(self) -> "Steps":
        self._progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._progress.stop()

    @contextmanager
    def step(self, description: str, total: int | None = None) -> Iterator[Callable[..., None]]:
        """Yields `advance(n=1, note=None)` (a note, such as the running loss, shows after the
        description); the step shows done (✓) when the block ends without error."""
        task = self._progress.add_task(description, total=total)

        def advance(n: int = 1, note: str | None = None) -> None:
            if note is not None:
                self._progress.update(task, description=f"{description} ({note})")
            self._progress.advance(task, n)

        yield advance
        self._progress.update(task, total=total or 1, completed=total or 1)
