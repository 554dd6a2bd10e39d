"""A job as a plan: the steps a pipeline function yields to whoever runs it.

The pipeline never runs work concurrently, starts a process or calls into the node. A stage
function that needs work done that may run elsewhere is a generator (a *plan*): it yields a
step and receives what the step gave, and its return value is the stage's result. Three kinds
of step exist:

* :class:`Tasks`: a fan-out, one function over independent tasks of plain values and arrays
  (``pipelines.science.features.FeatureTask``, ``pipelines.outputs.parametric_map.MapTask``); the
  runner sends back the results in task order, like the builtin ``map``, wherever it ran them (this
  process, a pool of processes, a Dask cluster). An exception a task raised is thrown into the plan
  at the ``yield``.
* :class:`Write`: encode and write result objects. With ``beside`` nothing the plan yields up to
  the :class:`Gather` that collects it depends on it, so the runner may run it in another
  process beside what follows; ``announce`` says its objects may be delivered as soon as they
  are written. The runner sends back a :class:`Pending`.
* :class:`Gather`: wait for those pending writes; the runner sends back each one's value and
  the seconds of its stages where it ran beside (else ``{}``: they are in the job's laps).

:func:`drive` runs a plan with a function that answers each step; :func:`run_tasks` runs a
plan of :class:`Tasks` steps only (one stage's fan-outs, e.g.
``pipelines.science.features.extract_lesions``) with a ``map`` function; the node runs whole jobs
(``node.flow.executor``).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Generator, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

T = TypeVar("T")
_Task = TypeVar("_Task")
_Result = TypeVar("_Result")


class TaskMap(Protocol):
    """Runs a function on every task and returns the results in task order, like the builtin
    ``map``."""

    def __call__(self, fn: Callable[[_Task], _Result], tasks: Iterable[_Task], /
                 ) -> Iterable[_Result]: ...


class Laps:
    """A stopwatch whose laps are stages: ``lap(name)`` adds the time since the previous lap
    (``time.perf_counter``, a monotonic counter)."""

    def __init__(self) -> None:
        self._last = time.perf_counter()
        self.seconds: dict[str, float] = {}

    def lap(self, stage: str) -> None:
        now = time.perf_counter()
        self.seconds[stage] = self.seconds.get(stage, 0.0) + now - self._last
        self._last = now


@dataclass(frozen=True)
class Tasks(Generic[_Task, _Result]):
    """``fn`` over every task; the plan receives ``list[_Result]`` in task order."""

    fn: Callable[[_Task], _Result]
    tasks: Iterable[_Task]


@dataclass(frozen=True)
class Written(Generic[T]):
    """What a :class:`Write` step gives: the objects it wrote
    (``pipelines.outputs.result.OutputObject``) and a value for the plan."""

    objects: tuple[Any, ...]
    value: T


@dataclass(frozen=True)
class Write(Generic[T]):
    """``fn(laps)`` encodes and writes objects, lapping its stages on ``laps``: the job's own
    (``laps``) where it runs in the plan's process, a new one where it runs beside. ``name``
    says what it writes, for errors."""

    name: str
    fn: Callable[[Laps], Written[T]]
    laps: Laps
    beside: bool
    announce: bool


class Pending(Protocol[T]):
    """A :class:`Write` the runner started; ``beside`` whether it runs in another process."""

    beside: bool

    def result(self) -> tuple[T, dict[str, float]]:
        """Its value and, where it ran beside, the seconds of its stages."""


@dataclass(frozen=True)
class Gather:
    """Wait for ``pending``; the plan receives ``[(value, stage seconds), ...]`` in order."""

    pending: Sequence[Pending[Any]]


Step = Tasks[Any, Any] | Write[Any] | Gather
Plan = Generator[Step, Any, T]


def drive(plan: Generator[Any, Any, T], answer: Callable[[Any], Any]) -> T:
    """Run ``plan``: send it ``answer(step)`` for each step it yields, or throw into it, at
    that ``yield``, the exception ``answer`` raised (module docstring); its return value. An
    exception the plan does not catch propagates."""
    reply: Any = None
    error: Exception | None = None
    while True:
        try:
            step = plan.throw(error) if error is not None else plan.send(reply)
        except StopIteration as stop:
            return stop.value  # type: ignore[no-any-return]
        error = None
        try:
            reply = answer(step)
        except Exception as exc:  # thrown into the plan at its yield
            error = exc


def run_tasks(plan: Generator[Tasks[Any, Any], list[Any], T], map_tasks: TaskMap = map) -> T:
    """Run a plan of :class:`Tasks` steps with ``map_tasks``; its return value."""
    return drive(plan, lambda step: list(map_tasks(step.fn, step.tasks)))
