"""How a followed build is shown: a live progress line on a terminal, plain lines elsewhere.

On a TTY, rich keeps one status line at the bottom (stage, step i of n, cache hits so far,
elapsed) under the scrolling build log. Piped into a file or a CI log, the same events come
out as plain lines without escape codes, so logs stay greppable.
"""

from __future__ import annotations

import time
from types import TracebackType
from typing import IO, Self

from rich.console import Console, RenderableType
from rich.live import Live
from rich.spinner import Spinner
from rich.table import Table
from rich.text import Text

from stagewright.cli.progress import Progress
from stagewright.cli.tables import age_text
from stagewright.status import strip_ansi

#: Wide enough that digests and image references never wrap in a CI log.
_PLAIN_WIDTH = 250


def make_console(stream: IO[str] | None = None, *, tty: bool | None = None) -> Console:
    """A console for ``stream`` (stdout by default); plain and wide when it is no terminal."""
    console = Console(file=stream, highlight=False, soft_wrap=False)
    is_tty = console.is_terminal if tty is None else tty
    if not is_tty:
        return Console(file=stream, highlight=False, force_terminal=False, no_color=True,
                       width=_PLAIN_WIDTH, soft_wrap=False)
    return Console(file=stream, highlight=False, force_terminal=True)


def emit(console: Console, renderable: RenderableType) -> None:
    """Print a table; in plain output without the padding rich adds at line ends."""
    if console.is_terminal:
        console.print(renderable)
        return
    with console.capture() as captured:
        console.print(renderable)
    console.file.write("".join(f"{line.rstrip()}\n" for line in captured.get().splitlines()))


class Reporter:
    """Receives what happens to a followed build; prints it as the console allows."""

    def __init__(self, console: Console, *, show_log: bool = True) -> None:
        self.console = console
        self.show_log = show_log
        self.live_enabled = console.is_terminal
        self._live: Live | None = None
        self._status = _StatusLine()

    def __enter__(self) -> Self:
        if self.live_enabled:
            self._live = Live(self._status, console=self.console, refresh_per_second=4,
                              transient=True)
            self._live.__enter__()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self._live is not None:
            self._live.__exit__(exc_type, exc, tb)
            self._live = None

    def note(self, text: str) -> None:
        """A line about the build (phase changes, which pod is followed)."""
        if self.live_enabled:
            self.console.print(Text(text, style="bold cyan"))
        else:
            self.console.print(f"==> {text}", markup=False, highlight=False, soft_wrap=True)

    def log(self, line: str) -> None:
        """One line of the build log, as the container wrote it (escape codes removed)."""
        if self.show_log:
            self.console.print(Text(strip_ansi(line)), soft_wrap=True)

    def progress(self, progress: Progress) -> None:
        """New progress from the log: the live line shows it (plain output has the log)."""
        self._status.progress = progress

    def phase(self, name: str, phase: str | None) -> None:
        """The ImageBuild's phase, for the live line."""
        self._status.name = name
        self._status.phase = phase or "Pending"

    def show(self, renderable: RenderableType) -> None:
        """The end-of-build table (after the live line is gone)."""
        emit(self.console, renderable)

    def last_line(self, text: str) -> None:
        """The outcome, always the last thing printed."""
        self.console.print(text, markup=False, highlight=False, soft_wrap=True)


class _StatusLine:
    """The live line; elapsed time is computed at each refresh, so it ticks on its own."""

    def __init__(self) -> None:
        self.started = time.monotonic()
        self.name = ""
        self.phase = "Pending"
        self.progress: Progress | None = None
        self._spinner = Spinner("dots")

    def __rich__(self) -> RenderableType:
        table = Table.grid(padding=(0, 1))
        summary = self.progress.summary() if self.progress is not None else "waiting for the pod"
        elapsed = age_text(time.monotonic() - self.started)
        table.add_row(self._spinner, Text(f"{self.name} {self.phase}", style="bold"),
                      Text(summary), Text(elapsed, style="dim"))
        return table
