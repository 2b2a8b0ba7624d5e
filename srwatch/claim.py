"""Claiming: a file is renamed out of the inbox into its own job folder before any work.

Layout of the work folder (same filesystem as the inbox, so the claim is one rename):

    work/<job id>/job.json     what the job is (original relative path, attempts, ...)
    work/<job id>/f/<rel path> the claimed file itself

A job folder left behind by a crash or a kill is a job to take again at the next start.
"""
from __future__ import annotations

import itertools
import json
import os
import shutil
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Optional

from .sink import utc_now

JOB_RECORD = "job.json"
FILES_DIR = "f"
_ids = itertools.count()


@dataclass(frozen=True)
class Job:
    """One claimed input file."""

    id: str
    rel: str  # path relative to the inbox, with '/' separators
    job_dir: Path
    claimed_at: str
    attempts: int = 0  # dispatches so far (a dispatch that ended in a worker crash counts)
    delivered: Optional[str] = None  # output already in the outbox (crash between deliver and archive)

    @property
    def path(self) -> Path:
        """Where the claimed file is now."""
        return self.job_dir / FILES_DIR / self.rel

    @property
    def name(self) -> str:
        """The file's name."""
        return Path(self.rel).name


def new_job_id() -> str:
    """Sortable and unique among processes: time, pid, counter."""
    return f"{time.strftime('%Y%m%dT%H%M%S')}-{time.time_ns() % 10**9:09d}-{os.getpid()}-{next(_ids)}"


def write_record(job: Job) -> None:
    """Persist the job record atomically (temp name, then replace)."""
    data = {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(job).items()}
    tmp = job.job_dir / (JOB_RECORD + ".tmp")
    tmp.write_text(json.dumps(data, indent=1))
    os.replace(tmp, job.job_dir / JOB_RECORD)


def claim(src: Path, inbox: Path, work: Path) -> Optional[Job]:
    """Move `src` from the inbox into a new job folder; None if it vanished meanwhile.

    The rename is the claim: only one process can win it, so a file is never taken twice.
    """
    rel = src.relative_to(inbox).as_posix()
    job_id = new_job_id()
    job = Job(id=job_id, rel=rel, job_dir=work / job_id, claimed_at=utc_now())
    job.path.parent.mkdir(parents=True)
    try:
        os.rename(src, job.path)
    except FileNotFoundError:
        shutil.rmtree(job.job_dir, ignore_errors=True)
        return None
    write_record(job)
    return job


def with_attempt(job: Job) -> Job:
    """The job with one more attempt, persisted (so a crash loop is bounded across restarts)."""
    return with_attempts(job, job.attempts + 1)


def with_attempts(job: Job, attempts: int) -> Job:
    """The job with its attempt count set, persisted."""
    job = replace(job, attempts=max(0, attempts))
    write_record(job)
    return job


def with_delivery(job: Job, output: Path) -> Job:
    """Record that the output is in the outbox, so a retry only archives the original."""
    job = replace(job, delivered=str(output))
    write_record(job)
    return job


def release(job: Job) -> None:
    """Remove the job folder once its file has left it (outbox/archive or quarantine)."""
    shutil.rmtree(job.job_dir, ignore_errors=True)


def recover(work: Path) -> list[Job]:
    """Jobs left in the work folder by an earlier run, oldest first.

    A job folder without a readable record (killed between the rename and the record write)
    is rebuilt from the file it holds; an empty one is removed.
    """
    jobs: list[Job] = []
    if not work.is_dir():
        return jobs
    for job_dir in sorted(p for p in work.iterdir() if p.is_dir()):
        job = _load_record(job_dir)
        if job is None:
            job = _rebuild(job_dir)
        if job is None or not job.path.is_file():
            shutil.rmtree(job_dir, ignore_errors=True)
            continue
        jobs.append(job)
    return jobs


def _load_record(job_dir: Path) -> Optional[Job]:
    try:
        data = json.loads((job_dir / JOB_RECORD).read_text())
        return Job(
            id=data["id"], rel=data["rel"], job_dir=job_dir, claimed_at=data["claimed_at"],
            attempts=int(data.get("attempts", 0)), delivered=data.get("delivered"),
        )
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _rebuild(job_dir: Path) -> Optional[Job]:
    files = [p for p in (job_dir / FILES_DIR).rglob("*") if p.is_file()]
    if len(files) != 1:
        return None
    rel = files[0].relative_to(job_dir / FILES_DIR).as_posix()
    job = Job(id=job_dir.name, rel=rel, job_dir=job_dir, claimed_at=utc_now())
    write_record(job)
    return job
