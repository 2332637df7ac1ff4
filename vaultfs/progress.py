"""Progress display for long work: files, bytes, rate and ETA on a terminal.

Uses rich when stderr is a terminal; prints nothing otherwise (cron, systemd,
pipes). The snapshot and restore engines only call the `Progress` methods.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from types import TracebackType
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rich.progress import Progress, TaskID


class TerminalProgress:
    """Implements snapshot.Progress and restore.RestoreProgress."""

    def __init__(
        self, label: str, enabled: bool | None = None, note: Callable[[], str] | None = None
    ) -> None:
        self.enabled = sys.stderr.isatty() if enabled is None else enabled
        self.label = label
        # What bounds the work now, if not the work itself (`store.limit.Bandwidth.note`:
        # "upload limit 8MiB/s" while the limit holds transfers back), shown after the files.
        self.note = note
        self._progress: Progress | None = None
        self._bytes: TaskID | None = None
        self._files_total = 0
        self._files_done = 0

    def __enter__(self) -> TerminalProgress:
        if self.enabled:
            # rich is imported only for a terminal: it costs ~25 ms of start-up.
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                DownloadColumn,
                Progress,
                TextColumn,
                TimeRemainingColumn,
                TransferSpeedColumn,
            )

            self._progress = Progress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                DownloadColumn(binary_units=True),
                TransferSpeedColumn(),
                TimeRemainingColumn(),
                console=Console(stderr=True),
                transient=True,
            )
            self._progress.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._progress is not None:
            self._progress.stop()

    def stage(self, text: str) -> None:
        if self._progress is not None:
            if self._bytes is None:
                self._bytes = self._progress.add_task(f"{self.label}: {text}", total=None)
            else:
                self._progress.update(self._bytes, description=f"{self.label}: {text}")

    def scanned(self, files: int, size: int) -> None:
        pass

    def reading(self, files_total: int, bytes_total: int) -> None:
        if self._progress is None:
            return
        if self._bytes is None:
            self._bytes = self._progress.add_task(self.label, total=None)
        self._files_total = files_total
        self._files_done = 0
        self._progress.update(self._bytes, description=self._describe(), total=bytes_total, completed=0)

    def _describe(self) -> str:
        note = self.note() if self.note is not None else ""
        return f"{self.label}: {self._files_done}/{self._files_total} files" + (f" ({note})" if note else "")

    def advance(self, files: int, size: int) -> None:
        if self._progress is not None and self._bytes is not None:
            self._files_done += files
            self._progress.update(self._bytes, advance=size, description=self._describe())
