"""A function run in a forked child process, beside the caller, with its result sent back.

``process_study`` uses it to encode and write the report, the derived SEG and the summary image
while it computes the parametric maps, and each feature class's maps but the last while it
computes the next class (docs/performance.md, "End to end"): those objects need the series,
the SEG, the features, the QC or the maps the process holds, and a forked child has them
without copying them (copy-on-write pages, no pickling of the series); they use two cores.

Only where the platform forks (Linux, where the node runs): :func:`fork_available`. The child
runs nothing but the function: ``multiprocessing`` starts it with the ``fork`` method and ends
it with ``os._exit`` (no inherited ``atexit`` handler, pool or finaliser runs in it), and the
function's result, or the exception it raised, comes back pickled through a pipe.
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Generic, TypeVar

T = TypeVar("T")


class ForkedCallError(RuntimeError):
    """The child ended without a result: killed (e.g. by the OOM killer) or crashed."""


def fork_available() -> bool:
    """Whether this platform starts processes by ``fork`` (POSIX; not Windows)."""
    return "fork" in multiprocessing.get_all_start_methods()


def _run(fn: Callable[[], T], send: Connection) -> None:
    try:
        outcome: tuple[bool, object] = (True, fn())
    except Exception as exc:  # raised again in the parent by ForkedCall.result
        outcome = (False, exc)
    send.send(outcome)
    send.close()


class ForkedCall(Generic[T]):
    """``fn()`` started in a forked child at construction; :meth:`result` waits for it."""

    def __init__(self, fn: Callable[[], T], name: str):
        context = multiprocessing.get_context("fork")
        self._name = name
        self._receive, send = context.Pipe(duplex=False)
        self._process = context.Process(target=_run, args=(fn, send), name=name)
        self._process.start()
        send.close()  # the child holds the sending end: EOF here once it has ended

    def result(self) -> T:
        """The function's return value once the child has ended, or the exception it raised.

        Raises:
            ForkedCallError: the child ended without sending a result (its exit code says how).
        """
        try:
            ok, value = self._receive.recv()
        except EOFError:
            ok, value = None, None
        finally:
            self._receive.close()
            self._process.join()
        if ok is None:
            raise ForkedCallError(f"{self._name}: the child process ended without a result "
                                  f"(exit code {self._process.exitcode})")
        if not ok:
            raise value  # type: ignore[misc]
        return value  # type: ignore[return-value]
