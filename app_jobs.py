"""Model jobs that can be stopped: one `CancelToken` per request, a worker thread that honours it, and a record
of what ran and how it ended.

Why this exists: Gradio runs a synchronous handler in a worker thread. When a job is cancelled (gradio_client's
`job.cancel()`, a Stop button's `cancels=`) Gradio cancels the asyncio task and frees the queue slot, but the
thread goes on computing beside the next request; when a client leaves, Gradio only marks its event "not alive"
and lets it run to the end. Here the handler is asynchronous: it runs the work in a thread of its own and awaits
it, and

- on `asyncio.CancelledError` (the API's cancel, a Stop button, the server stopping) it cancels the job's token
  and awaits the worker before re-raising, so the queue slot is freed only once the worker has stopped;
- every `POLL_S` it asks `client_gone()` (app.py reads Gradio's "event alive" flag, cleared when the client's
  event stream closes: a killed client, a closed tab) and cancels the token when it says so;
- `Jobs.stop_session` cancels a session's jobs (the Stop button's handler; the unload event, sent when a page or
  a gradio_client stops its heartbeat).

The library stops within one denoising step or one batch of a cancelled token (`compression.cancel`); nothing
here imports gradio. Every start and every end of a job is logged on "dcl.app" with the job's reference.

Example:
    >>> job = JOBS.start("sweep", session="abc")
    >>> result = await JOBS.run(job, lambda token: run_sweep(..., cancel=token), client_gone=lambda: False)
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import logging
import threading
import time
import uuid
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field

from compression.cancel import Cancelled, CancelToken

log = logging.getLogger("dcl.app")

POLL_S = 0.25  # how often a running job asks whether its client is still there (a dict lookup)
RECENT_S = 30.0  # a Stop pressed this long after its job ended still reports how it ended
STOP_WAIT_S = 30.0  # the Stop handler waits this long for the worker to reach its next check
RATE_WEIGHT = 0.3  # weight of the newest finished job in the pace estimate (seconds per image-step run, scoring
# and reports included: a rough figure, shown as "about")
RECENT_JOBS = 50  # ended jobs kept for inspection (`Jobs.recent`)
LAST_JOBS = 1000  # (session, kind) pairs whose latest job is remembered for a Stop pressed just after it ended

# Reasons a token is cancelled for, as logged and shown.
CLIENT_CANCELLED = "cancelled by the client"  # asyncio cancel: the API's /cancel, a Stop button's `cancels=`
CLIENT_LEFT = "the client left"  # its event stream closed
SESSION_CLOSED = "the client's session closed"  # a page or gradio_client stopped its heartbeat
STOP_BUTTON = "the Stop button"


@dataclass
class Job:
    """One model request while it runs, and how it ended.

    Args:
        ref (`str`): short reference in logs and messages.
        kind (`str`): "compare", "sweep" or "export".
        session (`str`, *optional*): the Gradio session that asked for it (one per page load or API client).
    """

    ref: str
    kind: str
    session: str | None
    cost: int = 0  # its price in denoising image-steps, set by the work once the request is checked
    steps_run: int = 0  # image-steps it actually ran (reused sweep settings cost none), set by the work
    token: CancelToken = field(default_factory=CancelToken)
    started: float = field(default_factory=time.monotonic)
    ended: float | None = None
    outcome: str = "running"  # then "finished", "stopped" or "failed"
    note: str = ""  # what a stopped job kept (set by the work, shown by the Stop button)
    done: threading.Event = field(default_factory=threading.Event)

    @property
    def seconds(self) -> float:
        return (self.ended if self.ended is not None else time.monotonic()) - self.started


class Jobs:
    """The model jobs of this process: running ones by reference, the last one per (session, kind), the pace.

    Args:
        workers (`int`): worker threads; the queue's concurrency limit for model work (more would never be
            used: a job holds its queue slot until its worker has stopped).
    """

    def __init__(self, workers: int = 1):
        self._executor = concurrent.futures.ThreadPoolExecutor(max(1, workers), thread_name_prefix="dcl-model")
        self._lock = threading.Lock()
        self._running: dict[str, Job] = {}
        self._last: OrderedDict[tuple[str | None, str], Job] = OrderedDict()
        self.recent: deque[Job] = deque(maxlen=RECENT_JOBS)  # ended jobs, newest last
        self.seconds_per_step: float | None = None  # measured pace, None until a job has finished

    def start(self, kind: str, session: str | None) -> Job:
        """Register a job that is about to run (logged with its reference)."""
        job = Job(uuid.uuid4().hex[:8], kind, session)
        with self._lock:
            self._running[job.ref] = job
            self._last.pop((session, kind), None)
            self._last[(session, kind)] = job
            while len(self._last) > LAST_JOBS:
                self._last.popitem(last=False)
        log.info("job %s: %s started", job.ref, kind)
        return job

    def running(self, kind: str | None = None) -> list[Job]:
        """Jobs whose worker has not finished, oldest first."""
        with self._lock:
            return [j for j in self._running.values() if kind is None or j.kind == kind]

    def stop_session(self, session: str | None, reason: str, kind: str | None = None) -> list[Job]:
        """Cancel the running jobs of a session (of one kind, or all); returns them (logged when it cancels)."""
        jobs = [j for j in self.running(kind) if j.session == session]
        for job in jobs:
            self.cancel(job, reason)
        return jobs

    def stop_for(self, session: str | None, kind: str, reason: str) -> Job | None:
        """What a Stop button acts on: the session's running job of this kind (cancelled now), else its last
        one if that was stopped in the past `RECENT_S` seconds (a Stop's `cancels=` may have ended it first),
        else None."""
        running = self.stop_session(session, reason, kind)
        if running:
            return running[0]
        with self._lock:
            job = self._last.get((session, kind))
        recent = job is not None and job.ended is not None and time.monotonic() - job.ended < RECENT_S
        return job if recent and job.outcome == "stopped" else None

    def cancel(self, job: Job, reason: str) -> None:
        """Cancel a job's token; the first reason is the one logged and kept."""
        if job.token.cancel(reason):
            log.info("job %s: stop asked (%s) after %.1f s", job.ref, reason, job.seconds)

    def estimate_seconds(self, cost: int) -> float | None:
        """Seconds a job of this price should take at the measured pace (None before the first finished job)."""
        return None if self.seconds_per_step is None else cost * self.seconds_per_step

    def _end(self, job: Job, outcome: str) -> None:
        job.ended, job.outcome = time.monotonic(), outcome
        with self._lock:
            self._running.pop(job.ref, None)
            self.recent.append(job)
            if outcome == "finished" and job.steps_run:
                pace = job.seconds / job.steps_run
                old = self.seconds_per_step
                self.seconds_per_step = pace if old is None else (1 - RATE_WEIGHT) * old + RATE_WEIGHT * pace
        job.done.set()
        why = f" ({job.token.reason})" if outcome == "stopped" else ""
        log.info(
            "job %s: %s %s%s after %.1f s (%s image-steps priced, %s run)",
            job.ref,
            job.kind,
            outcome,
            why,
            job.seconds,
            f"{job.cost:,}",
            f"{job.steps_run:,}",
        )

    async def run(
        self,
        job: Job,
        work: Callable[[CancelToken], object],
        client_gone: Callable[[], bool] = lambda: False,
    ):
        """Run `work(job.token)` on a worker thread (with this context's variables: Gradio's progress and
        warnings find their event) and return its result; stop it when this task is cancelled or the client goes.

        Args:
            work (`Callable[[CancelToken], Any]`): the blocking work; it must honour the token.
            client_gone (`Callable[[], bool]`): polled every `POLL_S` seconds while the work runs.

        Raises:
            asyncio.CancelledError: re-raised once the worker has stopped.
            Cancelled: the work stopped because its token was cancelled (a client that left, a Stop button).
            Exception: whatever the work raised.
        """
        context = contextvars.copy_context()
        future = asyncio.wrap_future(self._executor.submit(context.run, work, job.token))
        outcome = "failed"
        try:
            while True:
                done, _ = await asyncio.wait({future}, timeout=POLL_S)  # never cancels the future itself
                if done:
                    break
                if not job.token.cancelled and client_gone():
                    self.cancel(job, CLIENT_LEFT)
            try:
                result = future.result()
            except Cancelled:
                outcome = "stopped"
                raise
            outcome = "finished"
            return result
        except asyncio.CancelledError:
            self.cancel(job, CLIENT_CANCELLED)
            await _drain(future)
            outcome = "stopped"
            raise
        finally:
            self._end(job, outcome)


async def _drain(future: asyncio.Future) -> None:
    """Wait for a worker whose token is cancelled: it stops at its next check (a denoising step, a batch)."""
    while not future.done():
        try:
            await asyncio.wait({future})
        except asyncio.CancelledError:
            continue  # cancelled again (a second cancel, the server stopping): the worker must still stop first
    if not future.cancelled():
        future.exception()  # retrieved: the outcome is logged by the caller, not as "never retrieved"


def pace_text(seconds: float | None) -> str:
    """'about 40 s' / 'about 3 min' for an estimate, '' when there is none yet."""
    if seconds is None:
        return ""
    return f"about {seconds:.0f} s" if seconds < 90 else f"about {seconds / 60:.0f} min"
