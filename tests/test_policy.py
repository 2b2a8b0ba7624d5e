"""The supervisor's rules (retry, quarantine, timeout, back-off), checked against fake workers."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from srwatch.claim import Job
from srwatch.errors import JobTimeout, WorkerCrashed
from srwatch.policy import Backoff, JobPolicy, Quarantine, Retry


def job(attempts: int) -> Job:
    return Job(id="j", rel="a.png", job_dir=Path("/nonexistent/job-j"), claimed_at="t", attempts=attempts)


@dataclass
class FakeWorker:
    """What the policy sees of a worker: a name, the job it holds and since when."""

    name: str
    job: Optional[Job]
    job_started: float


def test_a_crash_is_retried_until_max_attempts_then_quarantined_as_worker_crash() -> None:
    policy = JobPolicy(max_attempts=2, job_timeout=10)
    assert policy.after_crash(job(1), "signal SIGKILL (9)") == Retry(job(1))
    decision = policy.after_crash(job(2), "signal SIGSEGV (11)")
    assert isinstance(decision, Quarantine) and isinstance(decision.error, WorkerCrashed)
    assert decision.error.reason == "worker_crash" and "SIGSEGV" in str(decision.error)


def test_a_job_left_by_a_dead_daemon_counts_its_attempts() -> None:
    policy = JobPolicy(max_attempts=3, job_timeout=10)
    assert isinstance(policy.after_restart(job(2)), Retry)
    decision = policy.after_restart(job(3))
    assert isinstance(decision, Quarantine) and decision.error.reason == "worker_crash"


def test_overdue_names_only_workers_past_the_timeout_with_a_job_timeout_error() -> None:
    policy = JobPolicy(max_attempts=2, job_timeout=10)
    workers = [
        FakeWorker("w1", job(1), job_started=100.0),  # 10.5 s: late
        FakeWorker("w2", job(1), job_started=105.0),  # 5.5 s: fine
        FakeWorker("w3", None, job_started=0.0),  # idle
    ]
    late = policy.overdue(workers, now=110.5)
    assert [w.name for w, _ in late] == ["w1"]
    error = late[0][1]
    assert isinstance(error, JobTimeout) and error.reason == "timeout" and "10 s" in str(error)


def test_backoff_doubles_to_its_cap_and_reports_start_and_end_once() -> None:
    b = Backoff(first=0.5, cap=4.0)
    assert b.failed(0.0, "disk full") is True
    assert b.waiting(0.4) and not b.waiting(0.5)
    delays = []
    for t in range(5):
        assert b.failed(float(t), "disk full") is False
        delays.append(b.delay)
    assert delays == [1.0, 2.0, 4.0, 4.0, 4.0]
    assert b.reason == "disk full"
    assert b.succeeded() is True and b.succeeded() is False and not b.waiting(0.0)
