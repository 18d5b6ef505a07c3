"""Stopping a run cleanly: the first Ctrl-C (SIGINT) or SIGTERM asks the loop to stop after the current update
and save a checkpoint; a second one ends the run at once. Either way the process's exit status is 128 + the
signal's number, as a shell reports a process the signal killed (130 for Ctrl-C, 143 for SIGTERM)."""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
from collections.abc import Iterator
from typing import Any

from tqdm import tqdm


class Aborted(KeyboardInterrupt):
    """A second stop signal: the run ends at once, without saving (its last checkpoint stays)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


class StopRequest:
    """Ctrl-C (SIGINT) or SIGTERM, once :meth:`installed`, asks the loop to stop after the current update
    and save; ``signum`` says which came (the exit status is 128 + it). A second one interrupts at once
    (:class:`Aborted`). ``requested`` may also be set directly."""

    def __init__(self) -> None:
        self.requested = False
        self.signum: int | None = None

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested:
            raise Aborted(signum)
        self.requested, self.signum = True, signum
        tqdm.write("stopping after this step and saving a checkpoint (Ctrl-C again to abort at once)",
                   file=sys.stderr)

    @contextlib.contextmanager
    def installed(self) -> Iterator[None]:
        """Handle SIGINT and SIGTERM within the block (signals reach only the main thread)."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = {sig: signal.signal(sig, self._handle) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
