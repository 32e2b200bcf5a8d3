"""Single key presses from the terminal for the live view of `pivot up` / `attach`.

The terminal is put in cbreak mode (keys arrive one by one, unechoed; Ctrl-C still
sends SIGINT) and restored on close, whatever happens. Not a terminal: no keys.

Ctrl-Z and `fg`: the shell gets its terminal back in the mode it was in (restored before
stopping), and the mode is set again on SIGCONT: keys work at once after `fg` (they used
to wait for Enter, the shell having left the terminal in line mode).
"""

from __future__ import annotations

import os
import queue
import select
import sys
import threading
from types import TracebackType
from typing import Any, TextIO

__all__ = ["KeyReader"]


class KeyReader:
    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream if stream is not None else sys.stdin
        self.keys: queue.SimpleQueue[str] = queue.SimpleQueue()
        self._stop = threading.Event()
        self._saved: list[Any] | None = None
        self._thread: threading.Thread | None = None
        self._front: list[str] = []  # taken off the queue by keys_wait, not yet returned
        self._previous: dict[Any, Any] = {}  # signal handlers replaced while reading keys

    def __enter__(self) -> KeyReader:
        try:
            fd = self.stream.fileno()
            if not os.isatty(fd):
                return self
        except (AttributeError, ValueError, OSError):
            return self
        import termios
        import tty

        self._saved = termios.tcgetattr(fd)
        tty.setcbreak(fd)
        self._signals(fd)
        self._thread = threading.Thread(target=self._read, args=(fd,), name="keys", daemon=True)
        self._thread.start()
        return self

    def _signals(self, fd: int) -> None:
        """Ctrl-Z (SIGTSTP): the terminal as it was, then stop; SIGCONT: cbreak again."""
        import signal
        import termios
        import tty

        if threading.current_thread() is not threading.main_thread():
            return

        def on_stop(signum: int, _frame: object) -> None:
            if self._saved is not None:
                termios.tcsetattr(fd, termios.TCSADRAIN, self._saved)
            # SIGSTOP, not SIGTSTP again: the kernel ignores SIGTSTP's default stop in a
            # process group without a parent in its session (a pivot up started by a tool).
            os.kill(os.getpid(), signal.SIGSTOP)  # stops here, until SIGCONT

        def on_continue(signum: int, _frame: object) -> None:
            if not self._stop.is_set():
                tty.setcbreak(fd)

        self._previous = {
            signal.SIGTSTP: signal.signal(signal.SIGTSTP, on_stop),
            signal.SIGCONT: signal.signal(signal.SIGCONT, on_continue),
        }

    def _read(self, fd: int) -> None:
        while not self._stop.is_set():
            ready, _, _ = select.select([fd], [], [], 0.1)
            if ready:
                data = os.read(fd, 32)
                if not data:
                    return
                for ch in data.decode(errors="replace"):
                    self.keys.put(ch)

    def keys_wait(self, timeout: float) -> None:
        """Block until a key is pressed or `timeout` passes (the key stays queued)."""
        try:
            key = self.keys.get(timeout=timeout)
        except queue.Empty:
            return
        self._front.append(key)

    def pressed(self) -> list[str]:
        found, self._front = self._front, []
        while True:
            try:
                found.append(self.keys.get_nowait())
            except queue.Empty:
                return found

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(1.0)
        import signal

        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        if self._saved is not None:
            import termios

            termios.tcsetattr(self.stream.fileno(), termios.TCSADRAIN, self._saved)
