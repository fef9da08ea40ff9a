"""Batching policies: what the batcher runs next, decided apart from running it.

A policy answers two questions at each step (as vLLM's scheduler decides and its engine runs):

* **admission**: how many queued requests, from the head of the queue, join the running set,
  given the running set and the capacity in UNet rows;
* **composition**: which running requests share the next UNet call.

It reads a request only through ``rows`` (its UNet rows: two per prompt with guidance),
``group`` (requests share a call only within one: same image size, same UNet) and ``arrived``
(a monotonic time), so it is tested on plain stand-ins, without engines or a pipeline. The
batcher (``batcher.py``) executes its answers: it moves the jobs, calls the UNet and decodes.

Policies, for the load benchmark's comparison (``POLICIES`` holds them by name):

* ``inflight``: a request joins the running batch at the next step and leaves when done;
* ``static``: a batch starts with what is queued and runs all its steps; newcomers wait for it;
* ``single``: one request at a time.

Under every policy, the first request to enter an empty running set is admitted even when it is
larger than the capacity (a composable prompt of many phrases): it runs alone, and the pipeline
splits its rows into calls the engines take.
"""

from __future__ import annotations

from typing import ClassVar, Hashable, Protocol, Sequence, TypeVar

from ..errors import InputError


class BatchJob(Protocol):
    """What a policy reads of a request."""

    @property
    def rows(self) -> int: ...

    @property
    def group(self) -> Hashable: ...

    @property
    def arrived(self) -> float: ...


Job = TypeVar("Job", bound=BatchJob)


class Policy:
    """Admission by capacity, in queue order; a subclass narrows it (``takes_newcomers``,
    ``joins``). Composition is the same for every policy."""

    name: ClassVar[str]

    def takes_newcomers(self, running: Sequence[BatchJob]) -> bool:
        """Whether the running set may grow now; when it may not, admission changes nothing."""
        return True

    def joins(self, job: BatchJob, admitted: Sequence[BatchJob]) -> bool:
        """Whether ``job`` may join those ``admitted`` before it at this step (capacity aside)."""
        return True

    def admit(self, queued: Sequence[BatchJob], running: Sequence[BatchJob], capacity: int) -> int:
        """How many of the first ``queued`` jobs join ``running``, whose calls take ``capacity`` rows."""
        if not self.takes_newcomers(running):
            return 0
        rows = sum(job.rows for job in running)
        admitted: list[BatchJob] = []
        for job in queued:
            alone = not running and not admitted  # an oversized job may still run on its own
            if (rows + job.rows > capacity and not alone) or not self.joins(job, admitted):
                break
            admitted.append(job)
            rows += job.rows
        return len(admitted)

    def compose(self, running: Sequence[Job]) -> list[Job]:
        """The running jobs of the next UNet call: the group of the job that has waited longest
        goes first, so no group starves."""
        if not running:
            return []
        oldest = min(running, key=lambda job: job.arrived)
        return [job for job in running if job.group == oldest.group]


class Inflight(Policy):
    """A request joins the running set at the next step, as long as its rows fit."""

    name = "inflight"


class Static(Policy):
    """A batch is one group, formed at its start from what is queued, and runs to its end."""

    name = "static"

    def takes_newcomers(self, running: Sequence[BatchJob]) -> bool:
        return not running

    def joins(self, job: BatchJob, admitted: Sequence[BatchJob]) -> bool:
        return not admitted or job.group == admitted[0].group


class Single(Static):
    """One request at a time."""

    name = "single"

    def joins(self, job: BatchJob, admitted: Sequence[BatchJob]) -> bool:
        return not admitted


POLICIES: dict[str, type[Policy]] = {policy.name: policy for policy in (Inflight, Static, Single)}
DEFAULT_POLICY = Inflight.name


def policy_named(name: object) -> Policy:
    """The policy called ``name``, or ``InputError`` listing the names."""
    if not isinstance(name, str) or name not in POLICIES:
        raise InputError(f"must be one of {', '.join(POLICIES)}, not {name!r}", parameter="policy")
    return POLICIES[name]()
