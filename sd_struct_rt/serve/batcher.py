"""In-flight batching of structured generation requests over one pipeline.

Each request keeps its own sampling state (``DenoisingRun``: scheduler, latents, timestep,
guidance scale) and its own conditioning (its number of levels). One loop thread makes every
UNet call: it takes the rows of several requests, at whatever timesteps they are, pads their
levels to the longest (SPEC P4), calls the UNet once, and hands each request its rows back.
Rows that cannot share a call (another image size, or another UNet role) wait for a call of
their own group.

Which requests join the running set and which share the next call is a policy's decision
(``policy.py``: inflight, static, single); this module only carries it out.

A request's image does not depend on its batch beyond float reassociation: its noise comes
from its own seeded generators and its rows are computed by the same UNet.
"""

from __future__ import annotations

import collections
import concurrent.futures
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from ..conditioning import stack_rows
from ..errors import InputError, UserError
from ..pipeline import Prepared, StructuredDiffusionPipeline
from .policy import DEFAULT_POLICY, Policy, policy_named

ROWS_PER_PROMPT = 2  # classifier-free guidance


class QueueFull(UserError):
    """More requests are waiting than the queue takes."""


class Draining(UserError):
    """The service is shutting down and admits nothing new."""


@dataclass
class Job:
    prepared: Prepared
    future: concurrent.futures.Future = field(default_factory=concurrent.futures.Future)
    arrived: float = field(default_factory=time.monotonic)

    @property
    def run(self):
        return self.prepared.run

    @property
    def rows(self) -> int:
        """UNet rows per call: two per prompt (classifier-free guidance), or more in composable mode."""
        return self.run.rows

    @property
    def group(self) -> tuple:
        """Jobs share a UNet call only within a group: same image size, same UNet."""
        request = self.prepared.request
        return request.width, request.height, request.role


@dataclass
class Observer:
    """What the batcher reports, for metrics; each callback is optional and must not block."""

    unet_call: Callable[[int, int, float], None] = lambda rows, requests, seconds: None
    load: Callable[[int, int, int], None] = lambda queued, running, active_rows: None


def check_max_batch_rows(rows: int | None, name: str = "max_batch_rows") -> None:
    """A call must take at least one prompt with guidance; ``sdrt serve`` asks before Ray starts."""
    if rows is not None and rows < ROWS_PER_PROMPT:
        raise InputError(f"must be at least {ROWS_PER_PROMPT} (one prompt with guidance)", parameter=name)


class Batcher:
    def __init__(self, pipe: StructuredDiffusionPipeline, policy: str | Policy = DEFAULT_POLICY,
                 max_batch_rows: int | None = None, queue_limit: int = 32, observer: Observer | None = None):
        policy = policy if isinstance(policy, Policy) else policy_named(policy)
        profile_rows = (ROWS_PER_PROMPT * pipe.engine_set.manifest.profile.batch[1] if pipe.engine_set
                        else 8 * ROWS_PER_PROMPT)
        check_max_batch_rows(max_batch_rows)
        self.pipe, self.policy, self.queue_limit = pipe, policy, queue_limit
        self.capacity = min(max_batch_rows or profile_rows, profile_rows)  # the engine profile caps it too
        self.observer = observer or Observer()
        self.queue: collections.deque[Job] = collections.deque()
        self.active: list[Job] = []
        self.draining = False
        self._changed = threading.Condition()
        self._preparing = threading.Lock()
        self._stopped = False
        self._thread = threading.Thread(target=self._loop, name="sdrt-batcher", daemon=True)
        self._thread.start()

    # --- the callers' side ------------------------------------------------------------------

    def submit(self, prompt: str, **arguments: Any) -> concurrent.futures.Future:
        """Check and prepare one request (``check_inputs``, ``prepare``) and queue it; the future gets
        its output.

        Every refusal (bad input, full queue, draining) happens here, before the request
        reaches a batch.
        """
        if self.draining:
            raise Draining("the service is shutting down; send the request to another replica or retry later")
        # One request prepares at a time: a tokenizer carries its padding settings from call to
        # call and is not safe to share between threads.
        with self._preparing:
            request = self.pipe.check_inputs(prompt, **arguments)
            if len(request.prompts) != 1:
                raise InputError("one prompt per request", parameter="prompt", leads=False)
            with self._changed:
                if len(self.queue) >= self.queue_limit:
                    raise QueueFull(f"{len(self.queue)} requests are waiting already; retry later")
            job = Job(self.pipe.prepare(request))
        with self._changed:
            if self.draining:
                raise Draining("the service is shutting down; send the request to another replica or retry later")
            self.queue.append(job)
            self._report_load()
            self._changed.notify_all()
        return job.future

    def cancel(self, future: concurrent.futures.Future) -> None:
        """Free a request's rows (its client went away); it leaves at the next step."""
        future.cancel()
        with self._changed:
            self._changed.notify_all()

    def drain(self) -> None:
        """Admit nothing new; what is queued or running still finishes."""
        with self._changed:
            self.draining = True

    @property
    def busy(self) -> int:
        """Requests queued or running."""
        with self._changed:
            return len(self.queue) + len(self.active)

    def close(self) -> None:
        with self._changed:
            self._stopped = True
            self._changed.notify_all()
        self._thread.join()

    # --- the loop ---------------------------------------------------------------------------

    def _admit(self) -> None:
        """Move queued jobs into the running set, as the policy allows (called under the lock)."""
        if not self.policy.takes_newcomers(self.active):
            return  # nothing can change: nothing to report
        for _ in range(self.policy.admit(self.queue, self.active, self.capacity)):
            self.active.append(self.queue.popleft())
        self._report_load()

    def _report_load(self) -> None:
        """Tell the observer the queue and the running rows (called under the lock)."""
        self.observer.load(len(self.queue), len(self.active), sum(job.rows for job in self.active))

    def _next_call(self) -> list[Job] | None:
        """The jobs of the next UNet call, or None when there is nothing to do (under the lock)."""
        for jobs in (self.queue, self.active):
            for job in [job for job in jobs if job.future.cancelled()]:
                jobs.remove(job)
        self._admit()
        return self.policy.compose(self.active) or None

    def _loop(self) -> None:
        try:
            while True:
                with self._changed:
                    while not self._stopped and (call := self._next_call()) is None:
                        self._changed.wait(timeout=0.5)
                    if self._stopped:
                        return
                self._step(call)
        except BaseException as error:  # a bug here must fail the requests, never leave them hanging
            with self._changed:
                self._stopped, self.draining = True, True
                jobs = list(self.queue) + self.active
                self.queue.clear()
                self.active.clear()
            for job in jobs:
                if not job.future.done():
                    job.future.set_exception(RuntimeError(f"the batcher stopped: {type(error).__name__}: {error}"))
            raise

    def _step(self, jobs: list[Job]) -> None:
        inputs = [job.run.model_input() for job in jobs]
        sample, timestep = torch.cat([each[0] for each in inputs]), torch.cat([each[1] for each in inputs])
        started = time.perf_counter()
        try:
            noise = self.pipe.predict_noise(sample, timestep, stack_rows([job.prepared.conditioning for job in jobs]),
                                            jobs[0].prepared.request.role)
        except Exception as error:  # the engine failed: every request of the call fails with it
            self._finish(jobs, error=error)
            return
        self.observer.unet_call(sample.shape[0], len(jobs), time.perf_counter() - started)
        finished, failed = [], []
        for job, rows in zip(jobs, torch.split(noise, [job.run.rows for job in jobs])):
            try:
                job.run.advance(rows)
            except UserError as error:  # non-finite latents: this request only
                failed.append((job, error))
                continue
            if job.run.finished:
                finished.append(job)
        for job, error in failed:
            self._finish([job], error=error)
        if finished:
            self._finish(finished)

    def _finish(self, jobs: list[Job], error: BaseException | None = None) -> None:
        if error is None:
            # One VAE call for every request that finished at this step (same group, same size).
            try:
                outputs = self.pipe.outputs([job.prepared for job in jobs])
            except Exception as decode_error:
                error = decode_error
        with self._changed:
            for job in jobs:
                if job in self.active:
                    self.active.remove(job)
            self._report_load()
        for index, job in enumerate(jobs):
            outcome = error or outputs[index]
            try:
                job.future.set_exception(outcome) if error else job.future.set_result(outcome)
            except concurrent.futures.InvalidStateError:
                pass  # cancelled meanwhile: its client is gone
