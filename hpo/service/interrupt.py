"""Ctrl-C for `hpo launch` and `hpo worker`: stop promptly, at a safe point, every time.

Python raises KeyboardInterrupt at whatever bytecode runs when SIGINT arrives. In a
worker that lost Ctrl-C about one time in six (found by interrupting `hpo launch` at
random moments, many times over): the exception landed inside a weakref callback of the
import machinery, where Python prints "Exception ignored in ..." and carries on, so the
worker went on starting trials until `hpo launch` killed it a minute later and left its
trial RUNNING. It can also land inside a storage call, between SQLAlchemy's BEGIN and
COMMIT or while the pool hands a connection back, and leave a SQLite write lock behind on
which the trial's own FAIL then waits out the busy timeout and the retry window.

So a process inside `GracefulStop` turns SIGINT (and SIGTERM, what a scheduler or `kill`
sends) into a request. Only code run through
`call` (a trial's objective, a worker's setup) is interrupted, and only while no storage
or SQLAlchemy frame is on the stack; a helper thread delivers the signal again
every NUDGE_EVERY seconds until the interrupt has left `call`, so one that was deferred
or swallowed lands a moment later. Everywhere else (between trials, while Optuna records
a trial, in `hpo launch`'s monitor) the request is a flag that the loop checks.

`hpo launch` passes Ctrl-C on to its workers as SIGTERM: a worker still importing torch
(seconds on a busy machine) has no handler yet and nothing stored, and ends at once and
silently, instead of finishing its imports or printing a traceback from inside them.
"""

from __future__ import annotations

import gc
import signal
import sys
import threading
import time
from collections.abc import Callable
from types import FrameType, TracebackType
from typing import Any, TypeVar

NUDGE_EVERY = 0.2
SIGNALS = (signal.SIGINT, signal.SIGTERM)
# Code that must not be left half done: the storage, and SQLAlchemy's session and pool
# underneath it (an interrupted write can keep a SQLite lock the trial's FAIL then waits
# on). Anything else may be cut short: the process stops right after.
_UNSAFE = ("/sqlalchemy/", "/optuna/storages/")

T = TypeVar("T")


class GracefulStop:
    """SIGINT and SIGTERM as a request to stop (see the module docstring); a context
    manager that restores the previous handlers. `on_request` runs in the signal
    handler, on every signal: keep it to an os.kill."""

    def __init__(self, on_request: Callable[[], None] | None = None) -> None:
        self.requested = False
        self._on_request = on_request
        self._previous: dict[int, Any] = {}
        self._previous_hook: Any = None
        self._installed = False
        self._stopped = threading.Event()
        self._nudger: threading.Thread | None = None

    def __enter__(self) -> GracefulStop:
        if threading.current_thread() is not threading.main_thread():
            return self  # signals reach the main thread only; nothing to install
        self._previous = {s: signal.signal(s, self._on_signal) for s in SIGNALS}
        self._previous_hook = sys.unraisablehook
        sys.unraisablehook = self._unraisable
        self._installed = True
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stopped.set()
        if self._installed:
            for s, handler in self._previous.items():
                signal.signal(s, handler)
            sys.unraisablehook = self._previous_hook
            self._installed = False

    def call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """fn(*args, **kwargs), interrupted by KeyboardInterrupt on Ctrl-C (at once if
        Ctrl-C came before)."""
        if self.requested:
            raise KeyboardInterrupt
        return fn(*args, **kwargs)

    def sleep(self, seconds: float) -> None:
        """time.sleep that ends early on Ctrl-C."""
        end = time.monotonic() + seconds
        while not self.requested and time.monotonic() < end:
            time.sleep(min(0.1, max(0.0, end - time.monotonic())))

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self.requested = True
        if self._on_request is not None:
            self._on_request()
        if self._nudger is None:
            self._nudger = threading.Thread(target=self._nudge, name="hpo-interrupt", daemon=True)
            self._nudger.start()
        if interruptible(frame):
            raise KeyboardInterrupt

    def _nudge(self) -> None:
        """Deliver SIGINT again while the main thread is still inside `call`."""
        main = threading.main_thread()
        while not self._stopped.wait(NUDGE_EVERY):
            frame = sys._current_frames().get(main.ident or 0)
            if frame is None or not _inside_call(frame):
                continue
            signal.pthread_kill(main.ident or 0, signal.SIGINT)

    def _unraisable(self, unraisable: Any) -> None:
        # A KeyboardInterrupt raised in a __del__ or weakref callback is swallowed by
        # Python; the nudger delivers it again, so say nothing about this one.
        if isinstance(unraisable.exc_value, KeyboardInterrupt):
            return
        self._previous_hook(unraisable)


def skip_final_collection() -> None:
    """After Ctrl-C the process should end now. Python's shutdown garbage collection
    walks every object torch, sympy and the rest created (2 s on a busy 2-core machine,
    most of a worker's exit); freezing them skips it. Nothing there needs it: the
    trials are stored and the files closed."""
    gc.freeze()


def interruptible(frame: FrameType | None) -> bool:
    """Whether raising in `frame` interrupts a `GracefulStop.call` with no unsafe code
    (storage, SQLAlchemy, an import) between the two."""
    while frame is not None:
        if frame.f_code is _CALL_CODE:
            return True
        if any(part in frame.f_code.co_filename for part in _UNSAFE):
            return False
        frame = frame.f_back
    return False


def _inside_call(frame: FrameType | None) -> bool:
    while frame is not None:
        if frame.f_code is _CALL_CODE:
            return True
        frame = frame.f_back
    return False


_CALL_CODE = GracefulStop.call.__code__
