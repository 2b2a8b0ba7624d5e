"""Claiming: a file is renamed out of the inbox into its own job folder before any work.

Layout of the work folder (same filesystem as the inbox, so the claim is one rename):

    work/.srwatch-work             tag: this folder is srwatch's (it deletes only what it made)
    work/.srwatch.lock             one daemon per work folder (flock)
    work/job-<id>/job.json         what the job is; written by the supervisor only, at the claim
    work/job-<id>/attempts         its attempts so far: one byte each (the size is the count);
                                   the supervisor's, set at every dispatch
    work/job-<id>/f/<rel path>     the claimed file itself
    work/job-<id>/delivered.json   written by whoever delivered the output (then only archiving is left)
    work/job-<id>/quarantine.json  the quarantine in progress: reason, target names
    work/retry-<dev>-<ino>.json    a file `srwatch quarantine retry` put back into the inbox: its
                                   attempts so far (written by the retry; read and removed by the claim)

One writer per file: the supervisor owns job.json and attempts; the process holding the job
(a worker, or the supervisor after that worker died) writes the markers, atomically, with fsync.
A job folder left behind by a crash or a kill is a job to take again at the next start.
"""
from __future__ import annotations

import hashlib
import itertools
import json
import logging
import os
import re
import shutil
import socket
import stat
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Iterator, Optional

from . import safefs
from .errors import ConfigError, StorageError

JOB_RECORD = "job.json"
ATTEMPTS = "attempts"
DELIVERED = "delivered.json"
QUARANTINE_INTENT = "quarantine.json"
FILES_DIR = "f"
JOB_PREFIX = "job-"
WORK_TAG = ".srwatch-work"
LOCK_NAME = ".srwatch.lock"
STATUS_NAME = "status.json"  # the running daemon's figures, for `srwatch status`
#: Retry ledgers and the temp names _write_json gives them on the way.
_LEDGER_RE = re.compile(r"(retry-\d+-\d+\.json|\.retry-\d+-\d+\.json\.\d+\.tmp)\Z")
LEDGER_MAX_AGE = 86400.0  # in seconds: a ledger whose file is no longer in the inbox is removed after this
_LEDGER_MAX_BYTES = 1 << 16  # a ledger is a few hundred bytes; anything bigger is not one
#: Job folders of srwatch 0.x before the tag existed (adopted, then tagged).
_LEGACY_JOB = re.compile(r"\d{8}T\d{6}-\d{9}-\d+-\d+\Z")
log = logging.getLogger("srwatch.claim")
_ids = itertools.count()
HOST_TAG = hashlib.sha256(socket.gethostname().encode()).hexdigest()[:6]


@dataclass(frozen=True)
class Job:
    """One claimed inbox entry."""

    id: str
    rel: str  # path relative to the inbox, with '/' separators
    job_dir: Path
    claimed_at: str
    attempts: int = 0  # dispatches so far (a dispatch that ended in a worker crash counts)
    kind: str = "file"  # what the entry was when claimed: file | link | other (never opened unless file)
    size: Optional[int] = None  # in bytes, when it settled: the worker reads no more than this
    prior_attempts: int = 0  # attempts before a `srwatch quarantine retry` put it back (from its ledger)

    @property
    def path(self) -> Path:
        """Where the claimed file is now."""
        return self.job_dir / FILES_DIR / self.rel

    @property
    def name(self) -> str:
        """The file's name."""
        return self.rel.rsplit("/", 1)[-1]

    @property
    def rel_parts(self) -> tuple[str, ...]:
        """The sub-folders of the inbox it came from (empty at the top)."""
        return tuple(self.rel.split("/")[:-1])


@dataclass(frozen=True)
class Candidate:
    """An inbox entry that settled, as it was then: claimed only if it is still the same."""

    path: Path
    kind: str  # file | link | other
    ino: int
    size: int
    mtime_ns: int


class Changed(Exception):
    """The entry is no longer what settled (rewritten in place, replaced): settle it again."""


def new_job_id() -> str:
    """Sortable, unique among processes and hosts sharing an inbox: time, host, pid, counter."""
    return f"{time.strftime('%Y%m%dT%H%M%S')}-{time.time_ns() % 10**9:09d}-{HOST_TAG}-{os.getpid()}-{next(_ids)}"


def utc_now() -> str:
    """ISO 8601 timestamp in UTC."""
    from datetime import datetime, timezone

    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def entry_kind(mode: int) -> str:
    """file | link | other, from an lstat mode."""
    if stat.S_ISLNK(mode):
        return "link"
    return "file" if stat.S_ISREG(mode) else "other"


# -- the work folder ------------------------------------------------------------------------------
def prepare_work_folder(work: Path, tag: bool = True) -> None:
    """Make sure `work` is srwatch's: tag it when empty (or legacy), refuse it when it holds anything else.

    srwatch deletes only what it created; a mistyped paths.work pointing at user data must
    not be cleaned up, so such a folder stops the start with a ConfigError (exit 2).
    """
    entries = sorted(os.listdir(work))
    tagged = WORK_TAG in entries
    foreign = [e for e in entries if not _ours(work, e, tagged)]
    if foreign:
        shown = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
        raise ConfigError(
            f"paths.work: {work} holds entries srwatch did not create ({shown}); srwatch deletes only "
            "what it made, so it will not use this folder. Point paths.work at an empty folder, or move those entries away."
        )
    if tag and not tagged:
        fd = os.open(work / WORK_TAG, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o666)
        os.write(fd, b"This folder is srwatch's work folder: claimed files wait here. Do not put anything else here.\n")
        os.fsync(fd)
        os.close(fd)


def _ours(work: Path, name: str, tagged: bool) -> bool:
    if name in (WORK_TAG, LOCK_NAME):
        return True
    if name in (STATUS_NAME, STATUS_NAME + ".tmp"):
        return tagged
    path = work / name
    if _LEDGER_RE.match(name):
        return tagged and not path.is_symlink() and path.is_file()
    if path.is_symlink() or not path.is_dir():
        return False
    if name.startswith(JOB_PREFIX):
        return tagged
    return bool(_LEGACY_JOB.match(name)) and _load_record(path) is not None


def write_status(work: Path, data: dict) -> None:
    """Replace the status file (written by the supervisor only; a reader sees the old or the new one)."""
    tmp, final = work / (STATUS_NAME + ".tmp"), work / STATUS_NAME
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    try:
        os.write(fd, json.dumps(data, separators=(",", ":")).encode())
    finally:
        os.close(fd)
    os.replace(tmp, final)  # our own file: replacing it is the point


def read_status(work: Path) -> Optional[dict]:
    """The last status the daemon wrote, or None."""
    try:
        return json.loads((work / STATUS_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


# -- claiming -------------------------------------------------------------------------------------
def claim(cand: Candidate, inbox: Path, work: Path) -> Optional[Job]:
    """Move the entry from the inbox into a new job folder; None if it vanished meanwhile.

    The rename is the claim: only one process can win it, so a file is never taken twice.
    The job record is written before the rename, so every job folder that holds a file has
    its record. Raises Changed if the entry is not the one that settled, StorageError when
    the work folder cannot take the job (the file then stays in the inbox).
    """
    rel = cand.path.relative_to(inbox)
    parts = rel.parts
    try:
        with safefs.opened_dir(inbox, parts[:-1], create=False, where="paths.inbox") as src_fd:
            try:
                st = os.stat(parts[-1], dir_fd=src_fd, follow_symlinks=False)
            except FileNotFoundError:
                return None
            kind = entry_kind(st.st_mode)
            if (kind, st.st_ino) != (cand.kind, cand.ino) or (
                kind == "file" and (st.st_size, st.st_mtime_ns) != (cand.size, cand.mtime_ns)
            ):
                raise Changed(str(cand.path))
            job_id = new_job_id()
            ledger = find_ledger(work, st) if kind == "file" else None
            job = Job(
                id=job_id, rel=rel.as_posix(), job_dir=work / (JOB_PREFIX + job_id),
                claimed_at=utc_now(), kind=kind, size=st.st_size if kind == "file" else None,
                prior_attempts=ledger.prior_attempts if ledger else 0,
            )
            moved = _move_in(job, src_fd, parts[-1])
            if moved is not None and ledger is not None:
                remove_ledger(work, ledger)  # the job record carries the attempts now
            return moved
    except (FileNotFoundError, NotADirectoryError):
        return None  # a folder on the way vanished
    except safefs.UnsafePath:
        return None  # a folder on the way became a link: the link itself is an entry of its own


#: Claims that may wait on the disk at once (see Claims).
CLAIM_THREADS = 2


class Claims:
    """Claims on a few threads, answered in the order they were asked.

    A claim waits on the disk: its job record is fsynced, file and folder (3-4 ms here, tens
    of ms on a slow disk or a network share). One after another, those waits kept the
    supervisor from reading results and sending files. Only claim() runs on a thread (the
    job folder, its record, the rename); the supervisor's main thread takes each answer and
    does all of its own bookkeeping, so none of its state is shared. `wake_fd` becomes
    readable when a claim is answered, for the main loop to wait on beside the workers' pipes.
    """

    def __init__(self, threads: int = CLAIM_THREADS) -> None:
        self._threads = ThreadPoolExecutor(threads, thread_name_prefix="claim")
        self._line: "deque[tuple[Any, Candidate, Future]]" = deque()
        self._read, self._write = os.pipe()
        os.set_blocking(self._read, False)
        os.set_blocking(self._write, False)

    @property
    def wake_fd(self) -> int:
        """Readable once a claim has been answered (drained by answered())."""
        return self._read

    def ask(self, owner: Any, cand: Candidate, inbox: Path, work: Path) -> None:
        """Start claiming `cand` (for `owner`, e.g. its hot folder); its answer comes from answered()."""
        future = self._threads.submit(claim, cand, inbox, work)
        self._line.append((owner, cand, future))
        future.add_done_callback(self._wake)

    def _wake(self, _future: Future) -> None:
        try:
            os.write(self._write, b"\0")
        except (BlockingIOError, OSError):
            pass  # the pipe is full (so already readable) or closed (shutting down)

    def pending(self, owner: Any = None) -> int:
        """Claims asked and not yet taken from answered() (of `owner`; of all with None)."""
        return sum(1 for o, _, _ in self._line if owner is None or o is owner)

    def answered(self) -> Iterator[tuple[Any, Candidate, Future]]:
        """(owner, candidate, future) of the claims answered when called, in the order asked:
        the first one still under way holds back those after it. The future's result() is
        claim()'s: a Job, None, or the Changed / StorageError it raised.

        Claims answered while the caller works through these wait for the next call: the
        caller's work per answer (a dispatch, with its fsync) must not keep it from the
        workers' results for as long as the threads keep answering."""
        try:
            while os.read(self._read, 4096):
                pass
        except BlockingIOError:
            pass
        ready = 0
        for _, _, future in self._line:
            if not future.done():
                break
            ready += 1
        for _ in range(ready):
            yield self._line.popleft()

    def close(self) -> int:
        """Wait for the claims under way, cancel those not started (their files stay in the
        inbox, untouched); return how many files were claimed but not taken from answered():
        they wait in the work folder for the next start, like any queued job."""
        self._threads.shutdown(wait=True, cancel_futures=True)
        claimed = sum(1 for _, _, f in self._line if not f.cancelled() and f.exception() is None and f.result())
        self._line.clear()
        os.close(self._read)
        os.close(self._write)
        return claimed


def _move_in(job: Job, src_fd: int, name: str) -> Optional[Job]:
    try:
        job.job_dir.mkdir()
        # Empty: no attempt yet. Made before the record, whose folder fsync makes its name durable.
        os.close(os.open(job.job_dir / ATTEMPTS, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600))
        write_record(job)
        job.path.parent.mkdir(parents=True)
        with safefs.opened_dir(job.path.parent) as dst_fd:
            os.rename(name, job.name, src_dir_fd=src_fd, dst_dir_fd=dst_fd)
    except FileNotFoundError:
        shutil.rmtree(job.job_dir, ignore_errors=True)
        return None
    except OSError as exc:
        shutil.rmtree(job.job_dir, ignore_errors=True)
        # Whatever stops a claim (full, read-only, ...) is the work folder's problem, never the
        # file's: it stays in the inbox and claiming pauses.
        raise StorageError(f"cannot claim into {job.job_dir.parent}: {exc.strerror or exc}", exc.errno) from None
    return job


# -- records --------------------------------------------------------------------------------------
def _write_json(folder: Path, name: str, data: dict[str, Any]) -> None:
    """Atomically (temp, fsync, rename, fsync folder) write one of our own job files."""
    body = (json.dumps(data, indent=1) + "\n").encode()
    tmp = f".{name}.{os.getpid()}.tmp"
    with safefs.opened_dir(folder) as fd:
        safefs.unlink_if_exists(fd, tmp)
        safefs.write_exclusive(fd, tmp, body)
        os.rename(tmp, name, src_dir_fd=fd, dst_dir_fd=fd)
        safefs.fsync_dir(fd)


def _read_json(path: Path) -> Optional[dict[str, Any]]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def write_record(job: Job) -> None:
    """Persist the job record (the supervisor's file)."""
    data = {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(job).items()}
    _write_json(job.job_dir, JOB_RECORD, data)


def set_attempts(job: Job, attempts: int) -> Job:
    """The job with its attempt count set and persisted (a crash loop stays bounded across restarts).

    The count is the size of the job folder's `attempts` file: set with ftruncate and made
    durable with one fdatasync (the size is what it keeps), in place. This is done at every
    dispatch, on the supervisor's main thread: rewriting the record (temp, fsync, rename,
    folder fsync) waited on the disk twice as long. A job folder that is already gone (the job
    finished meanwhile) is left alone.
    """
    job = replace(job, attempts=max(0, attempts))
    path = job.job_dir / ATTEMPTS
    flags = os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC
    created = False
    try:
        try:
            fd = os.open(path, flags)
        except FileNotFoundError:
            if not job.job_dir.is_dir():
                return job
            # A job claimed by an srwatch from before this file: its count was in the record.
            fd = os.open(path, flags | os.O_CREAT | os.O_EXCL, 0o600)
            created = True
        try:
            os.ftruncate(fd, job.attempts)
            os.fdatasync(fd)
        finally:
            os.close(fd)
        if created:
            with safefs.opened_dir(job.job_dir) as dir_fd:
                safefs.fsync_dir(dir_fd)
    except FileNotFoundError:
        pass  # the job folder went meanwhile
    return job


def mark_delivered(job: Job, output: Path) -> None:
    """Record that the output is in the outbox, so any later attempt only archives the original."""
    _write_json(job.job_dir, DELIVERED, {"output": str(output), "at": utc_now()})


def delivered(job: Job) -> Optional[Path]:
    """The output already delivered for this job, if any."""
    data = _read_json(job.job_dir / DELIVERED)
    return Path(data["output"]) if data and isinstance(data.get("output"), str) else None


def write_quarantine_intent(job: Job, intent: dict[str, Any]) -> None:
    """Record the quarantine in progress (reason and target names) before moving anything."""
    _write_json(job.job_dir, QUARANTINE_INTENT, intent)


def quarantine_intent(job: Job) -> Optional[dict[str, Any]]:
    """The quarantine in progress for this job, if one was started."""
    return _read_json(job.job_dir / QUARANTINE_INTENT)


def holds_file(job: Job) -> bool:
    """True while the claimed entry is still in the job folder (link or not)."""
    try:
        os.lstat(job.path)
        return True
    except OSError:
        return False


def release(job: Job) -> None:
    """Remove the job folder once its file has left it (outbox/archive or quarantine)."""
    shutil.rmtree(job.job_dir, ignore_errors=True)


# -- recovery -------------------------------------------------------------------------------------
def recover(work: Path) -> list[Job]:
    """Jobs left in the work folder by an earlier run, oldest first.

    Only folders prepare_work_folder() accepted as srwatch's are looked at. A job folder
    without a readable record was made by a claim killed before its rename: it holds no
    file and is removed.
    """
    jobs: list[Job] = []
    for name in sorted(os.listdir(work)):
        job_dir = work / name
        if name in (WORK_TAG, LOCK_NAME, STATUS_NAME, STATUS_NAME + ".tmp") or not job_dir.is_dir() or job_dir.is_symlink():
            continue
        job = _load_record(job_dir)
        if job is None:
            if _holds_entries(job_dir / FILES_DIR):
                log.error("job folder %s has a file but no readable %s; left as it is", job_dir, JOB_RECORD)
            else:
                shutil.rmtree(job_dir, ignore_errors=True)
            continue
        jobs.append(job)
    sweep_ledgers(work)
    return jobs


def _holds_entries(folder: Path) -> bool:
    """True if anything but folders is below `folder`."""
    return folder.is_dir() and any(not p.is_dir() or p.is_symlink() for p in folder.rglob("*"))


def _load_record(job_dir: Path) -> Optional[Job]:
    data = _read_json(job_dir / JOB_RECORD)
    if data is None:
        return None
    try:
        attempts = os.stat(job_dir / ATTEMPTS, follow_symlinks=False).st_size
    except OSError:
        attempts = None  # claimed by an srwatch from before the file: the record has the count
    try:
        return Job(
            id=str(data["id"]), rel=str(data["rel"]), job_dir=job_dir, claimed_at=str(data["claimed_at"]),
            attempts=attempts if attempts is not None else int(data.get("attempts", 0)),
            kind=str(data.get("kind", "file")),
            size=int(data["size"]) if data.get("size") is not None else None,
            prior_attempts=int(data.get("prior_attempts", 0)),
        )
    except (KeyError, TypeError, ValueError):
        return None


def claimed_jobs(work: Path) -> list[Job]:
    """The jobs in the work folder, oldest first, read-only (nothing is removed: `srwatch status`)."""
    try:
        names = sorted(os.listdir(work))
    except OSError:
        return []
    jobs = []
    for name in names:
        job_dir = work / name
        if name.startswith(JOB_PREFIX) or _LEGACY_JOB.match(name):
            if job_dir.is_dir() and not job_dir.is_symlink():
                job = _load_record(job_dir)
                if job is not None:
                    jobs.append(job)
    return jobs


# -- retry ledgers --------------------------------------------------------------------------------
# `srwatch quarantine retry` puts a quarantined file back into the inbox and notes its attempts so
# far in work/retry-<dev>-<ino>.json, keyed by the inode the claim will see. One writer per file:
# the retry command creates a ledger; the claim that takes the file reads it and removes it.
@dataclass(frozen=True)
class RetryLedger:
    """What `srwatch quarantine retry` remembers about a file it put back into the inbox."""

    dev: int
    ino: int
    size: int  # in bytes, as placed: a file rewritten since is a new file (no prior attempts)
    mtime_ns: int
    prior_attempts: int  # the attempts its quarantine record counted
    rel: str  # where it came from, relative to the inbox ('/'-separated)
    inbox: str  # the inbox it was put back into (absolute)
    temp: str  # its hidden name while the retry places it, relative to the inbox
    record: str  # the quarantine record it came from, relative to paths.quarantine
    record_job: str  # that record's job_id: only that record is removed
    reason: str  # why it was quarantined
    retried_at: float  # unix time

    @property
    def name(self) -> str:
        """The ledger's file name in the work folder."""
        return ledger_name(self.dev, self.ino)


def ledger_name(dev: int, ino: int) -> str:
    """`retry-<dev>-<ino>.json`: found by the claim with one open, no listing."""
    return f"retry-{dev}-{ino}.json"


def write_ledger(work: Path, ledger: RetryLedger) -> None:
    """Persist a ledger atomically (temp, fsync, rename).

    Its name is keyed by an inode that the retry just placed, so a ledger already there is a
    stale one of ours (a retry killed and run again, or an inode number reused): replaced.
    """
    _write_json(work, ledger.name, asdict(ledger))


def read_ledger(work: Path, name: str) -> Optional[RetryLedger]:
    """The ledger `name` in the work folder, or None if missing or unreadable (never through a link)."""
    try:
        fd = os.open(work / name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        data = json.loads(os.read(fd, _LEDGER_MAX_BYTES))
        fields = {f: data[f] for f in RetryLedger.__dataclass_fields__}
    except (OSError, ValueError, TypeError, KeyError):
        return None
    finally:
        os.close(fd)
    # Only well-typed ledgers: a count that is not a number must never reach a quarantine record.
    if not all(type(fields[k]) is int and fields[k] >= 0 for k in _LEDGER_INTS):
        return None
    if not all(isinstance(fields[k], str) for k in _LEDGER_STRS) or not isinstance(fields["retried_at"], (int, float)):
        return None
    return RetryLedger(**fields)


_LEDGER_INTS = ("dev", "ino", "size", "mtime_ns", "prior_attempts")
_LEDGER_STRS = ("rel", "inbox", "temp", "record", "record_job", "reason")


def find_ledger(work: Path, st: os.stat_result) -> Optional[RetryLedger]:
    """The ledger for the inbox entry with this lstat, if a retry put exactly this file back."""
    ledger = read_ledger(work, ledger_name(st.st_dev, st.st_ino))
    if ledger is None or (ledger.size, ledger.mtime_ns) != (st.st_size, st.st_mtime_ns):
        return None
    return ledger


def remove_ledger(work: Path, ledger: RetryLedger) -> None:
    """Forget a ledger once its file is claimed (best effort: a stale one is swept after a day)."""
    try:
        os.unlink(work / ledger.name)
    except OSError:
        pass


def ledger_names(work: Path) -> list[str]:
    """The ledger files (and temp names of ledgers being written) in the work folder."""
    try:
        return sorted(n for n in os.listdir(work) if _LEDGER_RE.match(n))
    except OSError:
        return []


def sweep_ledgers(work: Path, now: Optional[float] = None, max_age: float = LEDGER_MAX_AGE) -> int:
    """Remove ledgers older than `max_age` seconds whose file is no longer in the inbox; how many.

    A ledger outlives its file only when a claim was killed between its rename and removing the
    ledger (the job record already holds the attempts), or the file was taken out of the inbox
    by hand. Ledgers of files still waiting in the inbox (a daemon stopped for days) are kept.
    """
    now = time.time() if now is None else now
    removed = 0
    for name in ledger_names(work):
        try:
            if now - os.lstat(work / name).st_mtime < max_age:
                continue
        except OSError:
            continue
        ledger = None if name.startswith(".") else read_ledger(work, name)
        if ledger is not None and _ledger_file_waits(ledger):
            continue
        try:
            os.unlink(work / name)
            removed += 1
        except OSError:
            pass
    return removed


def _ledger_file_waits(ledger: RetryLedger) -> bool:
    """True if the ledger's inode is still in the inbox folder it was put back into."""
    parts = tuple(ledger.temp.split("/")[:-1])
    try:
        with safefs.opened_dir(Path(ledger.inbox), parts) as fd:
            return safefs.find_by_inode(fd, ledger.ino, ledger.dev) is not None
    except (OSError, safefs.UnsafePath):
        return False
