"""zc-ctl's two output streams: lines and JSON go out as they are; rich is loaded only to draw a table or a
live view, so a command that prints neither never imports it (about 15 ms of a start-up budget of 150).

A line is what rich printed before (markup and highlighting off, soft wrap): the control codes rich strips
(BEL, BS, VT, FF, CR) are stripped and tabs expanded (``tests/unit/test_ctl_output.py`` compares the two).
Progress bars and spinners are transient, and rich draws them only on a terminal; off a terminal they are
skipped here without loading rich at all.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, TextIO

if TYPE_CHECKING:
    from rich.console import Console, RenderableType

# What scripts see (ctl.py's docstring says when each is returned).
EXIT_OK, EXIT_JOB_FAILED, EXIT_USAGE, EXIT_UNREACHABLE, EXIT_SKIPPED, EXIT_DENIED, EXIT_INTERRUPTED = (
    0, 1, 2, 3, 4, 5, 130)
# The job is done, but files that should have been copied were not (unreadable at the source, changed while
# read): rsync's 23 "partial transfer due to error". Worse than skipped entries (4), which it outranks.
EXIT_FILE_ERRORS = 6

_STRIP = dict.fromkeys((7, 8, 11, 12, 13))  # rich.control.STRIP_CONTROL_CODES


def is_terminal(stream: TextIO) -> bool:
    """rich's rule (``Console.is_terminal``), so a bar is drawn exactly where rich would draw it."""
    compatible = os.environ.get("TTY_COMPATIBLE", "")
    if compatible in ("0", "1"):
        return compatible == "1"
    force = os.environ.get("FORCE_COLOR")
    if force is not None:
        return force != ""
    try:
        return stream.isatty()
    except ValueError:  # closed
        return False


class Out:
    """stdout or stderr. The stream is looked up at each write, as rich does, so a replaced ``sys.stdout``
    (tests, the demo) is honoured."""

    def __init__(self, stderr: bool = False) -> None:
        self.stderr = stderr
        self._console: Console | None = None

    @property
    def stream(self) -> TextIO:
        return sys.stderr if self.stderr else sys.stdout

    @property
    def terminal(self) -> bool:
        return is_terminal(self.stream)

    @property
    def width(self) -> int:
        """The rich console's width off a terminal (piped output keeps whole lines)."""
        return 200

    @property
    def console(self) -> Console:
        """A rich console on this stream: piped output keeps whole lines (200 columns), a terminal its width."""
        if self._console is None:
            from rich.console import Console

            wide = None if self.stream.isatty() else self.width
            self._console = Console(stderr=self.stderr, highlight=False, soft_wrap=True, width=wide)
        return self._console

    def write(self, text: str) -> None:
        """Text already laid out (a plain table)."""
        self._write(text)

    def line(self, text: str) -> None:
        self._write(text.translate(_STRIP).expandtabs(8) + "\n")

    def json(self, doc: Any) -> None:
        import json  # here: a command that prints no JSON never loads it

        self._write(json.dumps(doc, indent=2, sort_keys=True) + "\n")

    def show(self, renderable: RenderableType) -> None:
        """A rich table (or any renderable)."""
        self.console.print(renderable)

    @contextlib.contextmanager
    def status(self, text: str) -> Iterator[Callable[[str], None]]:
        """A spinner with ``text`` on a terminal; yields the function that changes its text."""
        if not self.terminal:
            yield lambda _text: None
            return
        with self.console.status(text) as spinner:
            yield lambda new: spinner.update(new)

    def _write(self, text: str) -> None:
        # Flushed at once, like rich: a token on stdout and its note on stderr keep their order in a shared pipe.
        s = self.stream
        s.write(text)
        s.flush()
