"""Graceful stop on SIGTERM: the warning SLURM sends before a job's time limit (``--signal`` in
slurm/config.yaml).

:func:`stop_on_sigterm` installs, for the duration of a ``with`` block, a handler that only sets a
flag (:func:`requested`); the long loops (the M-step's training steps, the E-step's blocks) read it
between units of work, save their state and raise :class:`~emprior.core.errors.Preempted`, which the
CLI turns into exit status :data:`EXIT_PREEMPTED`; Snakemake's retry then continues from the saved
state. With no signal nothing changes: the loops only read a flag where they would go on anyway.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import signal
import threading
from typing import Callable, Iterator, TypeVar

# 128 + SIGTERM: what a shell reports for a process killed by SIGTERM; any non-zero status makes
# Snakemake retry the job (profile key `retries`).
EXIT_PREEMPTED = 128 + int(signal.SIGTERM)

_flags: list[list[bool]] = []  # one entry per installed guard, innermost last (main thread only)

F = TypeVar("F", bound=Callable)


def requested() -> bool:
    """Whether SIGTERM arrived since the innermost :func:`stop_on_sigterm` block began."""
    return bool(_flags) and _flags[-1][0]


@contextlib.contextmanager
def stop_on_sigterm() -> Iterator[None]:
    """Within the block, SIGTERM sets :func:`requested` instead of killing the process; the previous
    handler is restored afterwards. Signal handlers can only be installed from the main thread: in
    another thread this installs nothing and :func:`requested` stays False there."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    flag = [False]

    def handler(signum, frame) -> None:  # noqa: ARG001 - signal handler signature
        flag[0] = True

    previous = signal.signal(signal.SIGTERM, handler)
    _flags.append(flag)
    try:
        yield
    finally:
        _flags.pop()
        if flag[0] and _flags:  # a nested block got the signal: the outer one should stop too
            _flags[-1][0] = True
        signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)


def stops_on_sigterm(when: str) -> Callable[[F], F]:
    """Decorator: run the function inside :func:`stop_on_sigterm` when its argument ``when`` (e.g.
    the resume path, without which there is nothing to save) is given; otherwise SIGTERM keeps its
    default action."""

    def wrap(func: F) -> F:
        sig = inspect.signature(func)

        @functools.wraps(func)
        def inner(*args, **kwargs):
            if not sig.bind_partial(*args, **kwargs).arguments.get(when):
                return func(*args, **kwargs)
            with stop_on_sigterm():
                return func(*args, **kwargs)

        return inner  # type: ignore[return-value]

    return wrap
