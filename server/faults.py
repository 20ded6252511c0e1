"""Named fault-injection points of a sequencing round, for tests that break one step at a time.

The sequencer (:mod:`server.sequencer`), both storage backends' commit
(:mod:`server.storage.sqlite`, :mod:`server.storage.postgres`) and the witness collector
(:mod:`server.witnessing`) call :func:`fault_point` just before and just after each step of a
round, in this order::

    assign indexes -> sign -> [one transaction: store entries -> store hashes and tiles ->
    swap the checkpoint -> commit] -> record the high-water mark -> answer submitters ->
    publish -> push to witnesses -> publish the cosigned checkpoint

(the PostgreSQL backend swaps the checkpoint first in its transaction, SQLite last: each backend
calls the points in the order it does the work).

By default no hook is installed and :func:`fault_point` returns at once (one global read and a
comparison). A test installs a :class:`FaultHook` with :func:`installed`; the hook is called with
the :class:`FaultPoint` and a context object, and makes the step fail by raising (or, for
PostgreSQL, by closing the connection it is given). Contexts: the ``sqlite3.Connection`` or the
asyncpg connection inside the storage commit (on the storage's thread for SQLite), the signed
checkpoint note for the sequencer's and collector's points, the witness's name for pushes.

Hooks run synchronously, also on the SQLite storage thread: a hook must not block for long and
must not touch the event loop.
"""

from __future__ import annotations

import contextlib
import enum
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol

__all__ = [
    "FaultHook",
    "FaultPoint",
    "InjectedFault",
    "Phase",
    "Step",
    "fault_point",
    "install",
    "installed",
]


class Step(enum.Enum):
    """A step of a sequencing round, or of the publication that follows it."""

    ASSIGN_INDEXES = "assign indexes"
    """The sequencer drops duplicates and numbers the fresh submissions (in memory)."""
    SIGN = "sign"
    """The sequencer signs the checkpoint of the new tree (in memory)."""
    STORE_ENTRIES = "store entries"
    """Storage inserts the entries (inside the commit transaction)."""
    STORE_HASHES_AND_TILES = "store hashes and tiles"
    """Storage inserts the leaf-hash, idempotency and lookup rows and upserts the tiles."""
    SWAP_CHECKPOINT = "swap the checkpoint"
    """Storage compare-and-swaps the latest checkpoint (inside the commit transaction)."""
    COMMIT = "commit"
    """Storage commits the transaction: after this point the round is durable."""
    RECORD_HIGH_WATER = "record the high-water mark"
    """The sequencer writes the new checkpoint to the high-water mark file, if it keeps one."""
    ANSWER_SUBMITTERS = "answer submitters"
    """The sequencer hands each submitter its index and inclusion proof."""
    PUBLISH = "publish"
    """The sequencer hands the new checkpoint to its subscribers (publication, the collector)."""
    PUSH_TO_WITNESS = "push to a witness"
    """The witness collector sends the checkpoint to one witness (``add-checkpoint``)."""
    PUBLISH_COSIGNED = "publish the cosigned checkpoint"
    """The witness collector stores and publishes a checkpoint that met its quorum."""


class Phase(enum.Enum):
    """Whether a point is just before its step or just after it (the step has taken effect)."""

    BEFORE = "before"
    AFTER = "after"


@dataclass(frozen=True, slots=True)
class FaultPoint:
    """One injection point: a step and a phase, e.g. ``FaultPoint(Step.COMMIT, Phase.AFTER)``."""

    step: Step
    phase: Phase

    def __str__(self) -> str:
        return f"{self.phase.value} {self.step.value}"


class FaultHook(Protocol):
    """What a test installs: called at every point; raising makes the step fail there."""

    def __call__(self, point: FaultPoint, context: object) -> None:
        """React to reaching ``point``; ``context`` is the module docstring's context object."""
        ...


class InjectedFault(Exception):  # noqa: N818 (it names an event, like the storage errors)
    """An error a test hook raises where no more specific one models the fault."""


_POINTS = {(step, phase): FaultPoint(step, phase) for step in Step for phase in Phase}
_hook: FaultHook | None = None


def fault_point(step: Step, phase: Phase, context: object = None) -> None:
    """Call the installed hook at this point, or do nothing when none is installed (the default).

    Raises whatever the hook raises.
    """
    hook = _hook
    if hook is not None:
        hook(_POINTS[step, phase], context)


def install(hook: FaultHook | None) -> FaultHook | None:
    """Install ``hook`` (``None``: none) process-wide and return the one it replaces."""
    global _hook
    previous, _hook = _hook, hook
    return previous


@contextlib.contextmanager
def installed(hook: FaultHook) -> Iterator[None]:
    """Install ``hook`` for the duration of a ``with`` block, then restore the previous one."""
    previous = install(hook)
    try:
        yield
    finally:
        install(previous)
