"""Ctrl-C handling: only the main process turns SIGINT into "interrupted; re-run to resume".

Ctrl-C in a terminal sends SIGINT to the whole process group, helper processes included. A
spawned process starts with the signal mask of the thread that created it, and keeps it
across ``exec``: creating helpers with SIGINT blocked means they never raise
KeyboardInterrupt (a traceback per helper), while the main process, which never blocks it
for long, stops them itself."""

from __future__ import annotations

import contextlib
import signal
import threading


@contextlib.contextmanager
def sigint_blocked():
    """Block SIGINT in this thread (processes started meanwhile inherit the block). In the
    main thread a Ctrl-C arriving meanwhile is delivered when the block ends."""
    if not hasattr(signal, "pthread_sigmask"):  # not POSIX
        yield
        return
    old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def ignore_sigint() -> None:
    """Process initializer of helpers: Ctrl-C is the main process's business."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


@contextlib.contextmanager
def sigint_deferred():
    """Finish closing the output even if Ctrl-C is pressed again meanwhile (main thread)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = signal.signal(signal.SIGINT, lambda *_: None)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, old)
