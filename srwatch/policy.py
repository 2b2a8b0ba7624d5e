"""The supervisor's rules: retries after a crash, timeouts, recovery at start, back-off.

Kept apart from the daemon's plumbing so they can be read in one place and tested with a
fake pool (tests/test_policy.py). Quarantine decisions carry the real error instance
(WorkerCrashed, JobTimeout): its class gives the reason code.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Protocol, Sequence, Union

from .claim import Job
from .errors import JobError, JobTimeout, WorkerCrashed


@dataclass(frozen=True)
class Retry:
    """Put the job back at the front of the queue."""

    job: Job


@dataclass(frozen=True)
class Quarantine:
    """Give up on the job: quarantine it (unless an earlier attempt delivered it) with `error`."""

    job: Job
    error: JobError


Decision = Union[Retry, Quarantine]


class HoldsJob(Protocol):
    """What the policy needs of a worker."""

    name: str
    job: Optional[Job]
    job_started: float


@dataclass(frozen=True)
class JobPolicy:
    """Retry and timeout rules for one config."""

    max_attempts: int
    job_timeout: float  # in seconds

    def after_crash(self, job: Job, how: str) -> Decision:
        """A worker died holding `job` (`how`: 'signal SIGKILL (9)', ...)."""
        if job.attempts < self.max_attempts:
            return Retry(job)
        return Quarantine(job, WorkerCrashed(f"worker died ({how}) on each of {job.attempts} attempt(s)"))

    def after_restart(self, job: Job) -> Decision:
        """`job` was left claimed by an earlier run (which may have died because of it)."""
        if job.attempts < self.max_attempts:
            return Retry(job)
        return Quarantine(
            job,
            WorkerCrashed(
                f"the daemon or its worker stopped while processing this file on each of {job.attempts} attempt(s)"
            ),
        )

    def overdue(self, workers: Sequence[HoldsJob], now: float) -> list[tuple[HoldsJob, JobTimeout]]:
        """Workers whose job has run past job_timeout, each with the error to quarantine it with."""
        late = []
        for worker in workers:
            if worker.job is not None and now - worker.job_started > self.job_timeout:
                late.append((worker, JobTimeout(f"processing took longer than pool.job_timeout ({self.job_timeout:g} s)")))
        return late


@dataclass
class Backoff:
    """Pause a step after a failure that is not the file's (a full disk): 0.5 s, doubling, at most `cap`."""

    first: float = 0.5  # in seconds
    cap: float = 15.0  # in seconds
    delay: float = 0.0
    until: float = 0.0  # monotonic time before which the step waits
    reason: Optional[str] = None  # why it is paused, for logs and STATUS=

    def failed(self, now: float, reason: str) -> bool:
        """Note a failure; True if this starts a pause (log it once)."""
        starting = self.reason is None
        self.delay = self.first if starting else min(self.cap, self.delay * 2)
        self.until = now + self.delay
        self.reason = reason
        return starting

    def succeeded(self) -> bool:
        """Note a success; True if this ends a pause (log the recovery once)."""
        ending = self.reason is not None
        self.delay, self.until, self.reason = 0.0, 0.0, None
        return ending

    def waiting(self, now: float) -> bool:
        """True while the step should not be tried."""
        return now < self.until
