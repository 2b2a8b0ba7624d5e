"""`srwatch quarantine list|retry`: what is in quarantine, and putting it back into the inbox.

A retry moves a quarantined file Q (record R beside it) back to the inbox under its original
relative path. The steps are ordered so that a kill at any point loses nothing, never replaces
a file, and never leaves the file in the inbox and in quarantine without its record:

1. Q gets a hidden name T in the inbox folder it goes back to (T is derived from R's path, so
   a run after a kill finds it; the watcher never takes dotfiles): a link on one filesystem,
   a copy + fsync across filesystems; the folder is fsynced, then Q is unlinked.
   Killed before Q is gone: Q and R are untouched in quarantine; the next retry redoes T.
2. The ledger `work/retry-<dev>-<ino>.json` (T's inode) notes the attempts so far, where T is
   and which record R is. Killed here: R names a missing file and T exists: the next retry
   continues from this step.
3. R is removed (folder fsynced). From here the ledger is the only note of the retry: every
   `srwatch quarantine retry` first finishes the ledgers whose T is still there.
4. T is linked to its visible name (the original, else a free `-N`: never replacing), then T
   is unlinked. The daemon takes the file like any other; its claim reads and removes the
   ledger, so a file that fails again is quarantined with attempts = before + this run's.

Links are never followed: folders are opened one component at a time with O_NOFOLLOW, and a
quarantined entry that is not a regular file (a link, a FIFO) is never retried.
"""
from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
import stat
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterable, Iterator, Optional, Sequence

from . import claim, safefs, sink
from .config import Config
from .errors import SrwatchError

RETRY_TEMP_PREFIX = ".srwatch-retry-"  # T: hidden, so the watcher never takes a half-placed file
_RECORD_MAX_BYTES = 1 << 20  # a record with a long traceback is a few kB


class RetryError(SrwatchError):
    """A quarantined file could not be put back into the inbox (the reason says why); nothing was lost."""


@dataclass(frozen=True)
class Quarantined:
    """One quarantine record and the entry it names, as `srwatch quarantine list` shows them."""

    record: str  # the record's path relative to paths.quarantine ('/'-separated)
    file: str  # the quarantined entry's path relative to paths.quarantine
    original: str  # where it came from, relative to the inbox
    reason: str
    message: str
    attempts: int
    failed_at: str  # ISO 8601, UTC
    job_id: str
    kind: str  # file | link | other | missing (being quarantined right now, or removed by hand)

    @property
    def folder(self) -> tuple[str, ...]:
        """The sub-folders of quarantine that hold the record and the entry."""
        return tuple(self.record.split("/")[:-1])

    @property
    def record_name(self) -> str:
        """The record's own name."""
        return self.record.rsplit("/", 1)[-1]

    @property
    def file_name(self) -> str:
        """The quarantined entry's own name."""
        return self.file.rsplit("/", 1)[-1]


@dataclass(frozen=True)
class Outcome:
    """What a retry did with one file: `placed` (relative to the inbox) or `error`."""

    item: Optional[Quarantined]
    placed: Optional[str] = None
    error: Optional[str] = None
    note: str = ""


# -- listing ----------------------------------------------------------------------------------------
def list_quarantine(quarantine: Path) -> list[Quarantined]:
    """Every quarantine record under `quarantine`, oldest failure first (links never followed)."""
    found: list[Quarantined] = []
    for parts, names in _walk(quarantine):
        for name in names:
            item = _load(quarantine, parts, name)
            if item is not None:
                found.append(item)
    return sorted(found, key=lambda q: (q.failed_at, q.record))


def _walk(top: Path, parts: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], list[str]]]:
    """(sub-folder parts, names of regular non-hidden files) for each folder, not descending links."""
    try:
        with os.scandir(top.joinpath(*parts)) as listing:
            items = sorted(listing, key=lambda e: e.name)
    except OSError:
        return
    files = [e.name for e in items if not e.name.startswith(".") and e.is_file(follow_symlinks=False)]
    yield parts, files
    for entry in items:
        if not entry.name.startswith(".") and entry.is_dir(follow_symlinks=False):
            yield from _walk(top, parts + (entry.name,))


def _load(quarantine: Path, parts: tuple[str, ...], name: str) -> Optional[Quarantined]:
    """The record `name` in quarantine/parts, or None if it is not one of srwatch's records."""
    if not name.endswith(".json"):
        return None
    data = _read_json_nofollow(quarantine.joinpath(*parts, name))
    if data is None or not isinstance(data.get("file"), str) or not isinstance(data.get("reason"), str):
        return None
    file_name = data["file"]
    if "/" in file_name or file_name in ("", ".", "..") or name != sink.record_name(file_name):
        return None  # a user's JSON file that landed in quarantine, not a record
    prefix = "/".join(parts) + "/" if parts else ""
    attempts = data.get("attempts")
    return Quarantined(
        record=prefix + name, file=prefix + file_name, original=str(data.get("original_path") or prefix + file_name),
        reason=data["reason"], message=str(data.get("message", "")),
        attempts=attempts if type(attempts) is int and attempts >= 0 else 0,
        failed_at=str(data.get("failed_at", "")), job_id=str(data.get("job_id", "")),
        kind=_kind(quarantine.joinpath(*parts, file_name)),
    )


def _read_json_nofollow(path: Path) -> Optional[dict]:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError:
        return None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        data = json.loads(os.read(fd, _RECORD_MAX_BYTES))
    except (OSError, ValueError):
        return None
    finally:
        os.close(fd)
    return data if isinstance(data, dict) else None


def _kind(path: Path) -> str:
    try:
        return claim.entry_kind(os.lstat(path).st_mode)
    except OSError:
        return "missing"


# -- choosing -----------------------------------------------------------------------------------------
def select(items: Sequence[Quarantined], names: Sequence[str] = (), reasons: Sequence[str] = (),
           everything: bool = False) -> tuple[list[Quarantined], list[str]]:
    """The items to retry, and the NAMEs that matched none.

    A NAME is the quarantined file's path in quarantine, its original path in the inbox, or
    its bare name; `reasons` selects by reason code; `everything` takes all.
    """
    if everything:
        return list(items), []
    if reasons:
        return [q for q in items if q.reason in reasons], []
    chosen: list[Quarantined] = []
    unmatched: list[str] = []
    for wanted in names:
        wanted = wanted.strip("/")
        hits = [q for q in items if wanted in (q.file, q.original, q.file_name, q.record)]
        if not hits:
            unmatched.append(wanted)
        chosen += [q for q in hits if q not in chosen]
    return chosen, unmatched


# -- retrying -------------------------------------------------------------------------------------
@contextmanager
def retry_lock(work: Path) -> Iterator[None]:
    """One `srwatch quarantine retry` at a time per work folder (flock on the folder itself: no new file)."""
    fd = os.open(work, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RetryError(f"another `srwatch quarantine retry` is running on {work}; try again when it is done") from None
        except OSError as exc:
            if exc.errno not in (errno.EBADF, errno.ENOLCK, errno.EOPNOTSUPP, errno.EINVAL):
                raise
            # A filesystem without flock on folders: go on unlocked (retries are rare and by hand).
        yield
    finally:
        os.close(fd)


def temp_for(item: Quarantined) -> str:
    """T: the hidden inbox name for `item` while it is placed (the same on every run)."""
    return RETRY_TEMP_PREFIX + hashlib.sha256(item.record.encode("utf-8", "surrogateescape")).hexdigest()[:20]


def target(cfg: Config, item: Quarantined) -> tuple[tuple[str, ...], str]:
    """(inbox sub-folders, name) the file goes back to: its original path.

    With watch.recursive off the daemon never looks into sub-folders, so the file goes to the
    top of the inbox instead.
    """
    parts = tuple(item.original.split("/"))
    name = parts[-1] if parts[-1] not in ("", ".", "..") else item.file_name
    return (parts[:-1] if cfg.watch.recursive else ()), name


def retry(cfg: Config, item: Quarantined) -> str:
    """Put one quarantined file back into the inbox (steps 1-4 above); its new path relative to the inbox."""
    if item.kind not in ("file", "missing"):
        what = "a symbolic link" if item.kind == "link" else "not a regular file"
        raise RetryError(f"{item.file} is {what}; srwatch never follows or retries it (remove it by hand)")
    parts, name = target(cfg, item)
    temp = temp_for(item)
    try:
        with safefs.opened_dir(cfg.paths.quarantine, item.folder, where="paths.quarantine") as q_fd, \
                safefs.opened_dir(cfg.paths.inbox, parts, create=True, where="paths.inbox") as in_fd:
            _check_record(q_fd, item)
            _stage(item, q_fd, in_fd, temp)
            st = os.stat(temp, dir_fd=in_fd, follow_symlinks=False)
            claim.write_ledger(cfg.work_dir, _ledger(cfg, item, parts, temp, st))
            safefs.unlink_if_exists(q_fd, item.record_name)
            safefs.fsync_dir(q_fd)
            placed = publish(in_fd, temp, name)
    except (OSError, safefs.UnsafePath) as exc:
        raise RetryError(_why(exc)) from None
    return "/".join(parts + (placed,))


def _check_record(q_fd: int, item: Quarantined) -> None:
    """The record must still be the one listed (a concurrent retry or quarantine may have changed it)."""
    try:
        fd = os.open(item.record_name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=q_fd)
    except FileNotFoundError:
        raise RetryError(f"its record {item.record} is gone (retried or removed meanwhile)") from None
    try:
        data = json.loads(os.read(fd, _RECORD_MAX_BYTES))
    except ValueError:
        data = None
    finally:
        os.close(fd)
    if not isinstance(data, dict) or str(data.get("job_id", "")) != item.job_id:
        raise RetryError(f"its record {item.record} changed meanwhile; list the quarantine again")


def _stage(item: Quarantined, q_fd: int, in_fd: int, temp: str) -> None:
    """Step 1: the file as T in the inbox, then not in quarantine; done already if only T is left."""
    try:
        st = os.stat(item.file_name, dir_fd=q_fd, follow_symlinks=False)
    except FileNotFoundError:
        try:
            os.stat(temp, dir_fd=in_fd, follow_symlinks=False)
            return  # an earlier retry got this far: Q goes only once T is complete
        except FileNotFoundError:
            raise RetryError(f"{item.file} is not in quarantine (being quarantined right now, or removed)") from None
    if not stat.S_ISREG(st.st_mode):
        raise RetryError(f"{item.file} is not a regular file; srwatch never follows or retries it")
    safefs.unlink_if_exists(in_fd, temp)  # a T from a run killed in this step: ours, redone
    if safefs.same_filesystem(q_fd, in_fd):
        if safefs.place(q_fd, item.file_name, in_fd, [temp], keep_source=True) is None:
            raise RetryError(f"the temp name {temp} was taken meanwhile (another retry?)")
    else:
        safefs.copy_into(q_fd, item.file_name, in_fd, temp)
    safefs.fsync_dir(in_fd)
    safefs.unlink_if_exists(q_fd, item.file_name)  # gone already where place() had to rename
    safefs.fsync_dir(q_fd)


def _ledger(cfg: Config, item: Quarantined, parts: tuple[str, ...], temp: str, st: os.stat_result) -> claim.RetryLedger:
    return claim.RetryLedger(
        dev=st.st_dev, ino=st.st_ino, size=st.st_size, mtime_ns=st.st_mtime_ns, prior_attempts=item.attempts,
        rel=item.original, inbox=str(cfg.paths.inbox.absolute()), temp="/".join(parts + (temp,)),
        record=item.record, record_job=item.job_id, reason=item.reason, retried_at=time.time(),
    )


def publish(in_fd: int, temp: str, name: str) -> str:
    """Step 4: give T the visible `name` (or a free `name-N`), never replacing; the name given.

    T with a second name already (a kill between the link and unlinking T) is not placed again:
    its visible name is in this folder (or the daemon has claimed it meanwhile).
    """
    st = os.stat(temp, dir_fd=in_fd, follow_symlinks=False)
    if st.st_nlink > 1:
        found = safefs.find_by_inode(in_fd, st.st_ino, st.st_dev, skip=lambda n: n == temp)
        if found is not None:
            safefs.unlink_if_exists(in_fd, temp)
            safefs.fsync_dir(in_fd)
            return found
    stem, ext = safefs.split_name(name)
    placed = sink.place_numbered(in_fd, temp, in_fd, stem, ext)
    safefs.fsync_dir(in_fd)
    return placed


def finish_interrupted(cfg: Config) -> list[Outcome]:
    """Finish retries a kill interrupted after step 2: every ledger whose hidden T is still in the inbox.

    Call it holding retry_lock: a ledger temp file then belongs to a retry that was killed
    while writing it (only retries write ledgers), and is removed.
    """
    done: list[Outcome] = []
    claim.sweep_ledgers(cfg.work_dir)  # ledgers whose file left the inbox a day ago or more
    for name in claim.ledger_names(cfg.work_dir):
        if name.startswith("."):
            try:
                os.unlink(cfg.work_dir / name)
            except OSError:
                pass
            continue
        ledger = claim.read_ledger(cfg.work_dir, name)
        if ledger is None or Path(ledger.inbox) != cfg.paths.inbox.absolute():
            continue
        parts = tuple(ledger.temp.split("/"))
        try:
            with safefs.opened_dir(cfg.paths.inbox, parts[:-1], where="paths.inbox") as in_fd:
                try:
                    st = os.stat(parts[-1], dir_fd=in_fd, follow_symlinks=False)
                except FileNotFoundError:
                    continue  # placed: waiting in the inbox for the daemon
                if (st.st_dev, st.st_ino) != (ledger.dev, ledger.ino):
                    continue
                _remove_record(cfg, ledger)
                placed = publish(in_fd, parts[-1], ledger.rel.rsplit("/", 1)[-1])
        except (OSError, safefs.UnsafePath) as exc:
            done.append(Outcome(None, error=f"{ledger.rel}: cannot finish an interrupted retry: {_why(exc)}"))
            continue
        done.append(Outcome(None, "/".join(parts[:-1] + (placed,)), note=f"{ledger.rel}: finished an interrupted retry"))
    return done


def _remove_record(cfg: Config, ledger: claim.RetryLedger) -> None:
    """Step 3 for an interrupted retry: remove its record, if it is still there and still the same one."""
    parts = tuple(ledger.record.split("/"))
    try:
        with safefs.opened_dir(cfg.paths.quarantine, parts[:-1], where="paths.quarantine") as q_fd:
            data = _read_json_nofollow(cfg.paths.quarantine.joinpath(*parts))
            if data is not None and str(data.get("job_id", "")) == ledger.record_job:
                safefs.unlink_if_exists(q_fd, parts[-1])
                safefs.fsync_dir(q_fd)
    except FileNotFoundError:
        pass


def retry_all(cfg: Config, items: Iterable[Quarantined]) -> list[Outcome]:
    """Retry each item in turn; one failure does not stop the others."""
    outcomes = []
    for item in items:
        try:
            outcomes.append(Outcome(item, placed=retry(cfg, item)))
        except RetryError as exc:
            outcomes.append(Outcome(item, error=str(exc)))
    return outcomes


def pending_count(work: Path) -> int:
    """Retries put back into the inbox and not yet claimed by the daemon (their ledgers)."""
    return sum(1 for n in claim.ledger_names(work) if not n.startswith("."))


def _why(exc: BaseException) -> str:
    if isinstance(exc, OSError):
        where = f": {exc.filename}" if exc.filename else ""
        return f"{exc.strerror or exc}{where}"
    return str(exc)


# -- showing --------------------------------------------------------------------------------------
def as_json(items: Sequence[Quarantined]) -> list[dict]:
    """The items in plain JSON types."""
    return [asdict(q) for q in items]


def table(items: Sequence[Quarantined], width: int = 60) -> str:
    """A plain-text table: failed at, reason, attempts, original path, message (cut to `width`)."""
    if not items:
        return "quarantine is empty"
    rows = [("FAILED AT (UTC)", "REASON", "ATTEMPTS", "ORIGINAL PATH", "MESSAGE")]
    for q in items:
        original = q.original + ("" if q.original.endswith(q.file) else f"  (as {q.file})")
        if q.kind != "file":
            original += f"  [{q.kind}]"
        message = q.message if len(q.message) <= width else q.message[: width - 3] + "..."
        rows.append((q.failed_at[:19].replace("T", " "), q.reason, str(q.attempts), original, message))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    return "\n".join("  ".join(r[i].ljust(widths[i]) for i in range(4)) + "  " + r[4] for r in rows)
