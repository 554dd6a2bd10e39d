"""A function run in a forked child process, beside the caller, with its result sent back.

A local job worker (``node.flow.executor.LocalRunner``) uses it to run a job plan's ``beside``
writes: quality control, the models, the report, the derived SEG and the summary image while
the job computes the parametric maps, and each feature class's maps but the last while it
computes the next class (docs/history/performance.md,
"End to end"): that work needs the series, the SEG, the features or the maps the process holds,
and a forked child has them without copying them (copy-on-write pages, no pickling of the
series); they use two cores.

Only where the platform forks (Linux, where the node runs): :func:`fork_available`. The child
runs nothing but the function: ``multiprocessing`` starts it with the ``fork`` method and ends
it with ``os._exit`` (no inherited ``atexit`` handler, pool or finaliser runs in it). The
function's result, or the exception it raised, is pickled into an unnamed temporary file the
child inherits, not into a pipe: a result larger than the pipe's buffer (the report's child
sends back the QC reports and model outputs, 0.5 MB on the demo study) would keep the child
blocked, holding its pages, until the caller read it after the maps, and the caller would then
wait for it to write the rest and to end (20 to 30 ms on the demo study); through the file the
child ends as soon as it is done.
"""

from __future__ import annotations

import multiprocessing
import pickle
import tempfile
from collections.abc import Callable
from typing import IO, Generic, TypeVar

T = TypeVar("T")


class ForkedCallError(RuntimeError):
    """The child ended without a result: killed (e.g. by the OOM killer) or crashed."""


def fork_available() -> bool:
    """Whether this platform starts processes by ``fork`` (POSIX; not Windows)."""
    return "fork" in multiprocessing.get_all_start_methods()


def _run(fn: Callable[[], T], out: IO[bytes]) -> None:
    try:
        outcome: tuple[bool, object] = (True, fn())
    except Exception as exc:  # raised again in the parent by ForkedCall.result
        outcome = (False, exc)
    pickle.dump(outcome, out, protocol=pickle.HIGHEST_PROTOCOL)
    out.flush()


class ForkedCall(Generic[T]):
    """``fn()`` started in a forked child at construction; :meth:`result` waits for it."""

    def __init__(self, fn: Callable[[], T], name: str):
        context = multiprocessing.get_context("fork")
        self._name = name
        # unnamed, gone once closed (in result) or when this process ends
        self._outcome = tempfile.TemporaryFile()  # noqa: SIM115
        self._process = context.Process(target=_run, args=(fn, self._outcome), name=name)
        self._process.start()

    def result(self) -> T:
        """The function's return value once the child has ended, or the exception it raised.

        Raises:
            ForkedCallError: the child ended without a whole result (its exit code says how).
        """
        self._process.join()
        try:
            self._outcome.seek(0)
            ok, value = pickle.load(self._outcome)
        except Exception:  # nothing, or part of it: the child died as it wrote
            ok, value = None, None
        finally:
            self._outcome.close()
        if ok is None:
            raise ForkedCallError(f"{self._name}: the child process ended without a result "
                                  f"(exit code {self._process.exitcode})")
        if not ok:
            raise value  # type: ignore[misc]
        return value  # type: ignore[return-value]
