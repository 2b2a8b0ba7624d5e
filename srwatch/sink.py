"""Where files end: the outbox (result), the archive (original) and quarantine (with a reason).

Delivery follows Maildir: write under an exclusive hidden temp name in the target folder,
fsync, then link into a free name (link never overwrites), so a reader of the outbox never
sees a partial file and an existing file is never replaced.

Every step can be killed and run again without a duplicate or a loss:
- deliver: temp `.srwatch-tmp-<job>.out`, link to the output name, `delivered.json` in the
  job folder, then the temp is removed. A temp with two names after a kill is recognised by
  its inode and becomes the delivery.
- archive / quarantine: link (or, across filesystems, copy + fsync + link) into place first,
  remove the source last; a source with two names is recognised the same way.
- quarantine writes its intent (target names) into the job folder, then the record, then
  moves the file, so a kill at any point is finished by the next attempt.
"""
from __future__ import annotations

import errno
import json
import logging
import os
import re
import secrets
import stat
import time
import traceback as tb
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterable, Optional

from . import __version__, claim, safefs
from .claim import Job, utc_now
from .config import Config
from .errors import JobError, is_environmental
from .messages import Done, Failed, Gone, JobResult

log = logging.getLogger("srwatch.sink")

#: Prefix of temp files in srwatch's folders; readers should ignore dotfiles.
TEMP_PREFIX = ".srwatch-tmp-"
_TEMP_RE = re.compile(re.escape(TEMP_PREFIX) + r"(\d{8}T\d{6}-\d{9}-([0-9a-f]{6})-(\d+)-\d+)\.")
RECORD_SUFFIX = ".error"  # records are <file>.error.json, or <file>.error-N.json if that is taken


def temp_name(job: Job, purpose: str, ext: str = "") -> str:
    """This job's own temp name for one step (deterministic, so a resumed job finds it)."""
    return safefs.fit_name(f"{TEMP_PREFIX}{job.id}.{purpose}", ext)


# -- outbox ---------------------------------------------------------------------------------------
def deliver(cfg: Config, job: Job, data: bytes, stem: str, ext: str) -> Path:
    """Write the result to outbox/<job's sub-folder>/<stem>[-N]<ext>, atomically; mark the job delivered."""
    where = "paths.outbox"
    folder = cfg.paths.outbox.joinpath(*job.rel_parts)
    try:
        with safefs.opened_dir(cfg.paths.outbox, job.rel_parts, create=True, where=where) as fd:
            tmp = temp_name(job, "out")
            safefs.unlink_if_exists(fd, tmp)
            safefs.write_exclusive(fd, tmp, data, cfg.output.mode)
            try:
                name = place_numbered(fd, tmp, fd, stem, ext, keep_source=True)
            except BaseException:
                safefs.unlink_if_exists(fd, tmp)
                raise
            safefs.fsync_dir(fd)
            output = folder / name
            claim.mark_delivered(job, output)  # before the temp goes: a kill here is recognised by the inode
            safefs.unlink_if_exists(fd, tmp)
            return output
    except OSError as exc:
        raise safefs.storage_guard(f"cannot write the result to {folder}", exc) from None


def resume_delivery(cfg: Config, job: Job) -> Optional[Path]:
    """The output this job already delivered, completing a delivery a kill interrupted; else None."""
    done = claim.delivered(job)
    if done is not None:
        return done
    name = temp_name(job, "out")
    try:
        with safefs.opened_dir(cfg.paths.outbox, job.rel_parts) as fd:
            try:
                st = os.stat(name, dir_fd=fd, follow_symlinks=False)
            except FileNotFoundError:
                return None
            found = None
            if st.st_nlink > 1:
                found = safefs.find_by_inode(fd, st.st_ino, st.st_dev, skip=lambda n: n == name)
            if found is None:
                safefs.unlink_if_exists(fd, name)  # never linked: partial; render again
                return None
            output = cfg.paths.outbox.joinpath(*job.rel_parts, found)
            claim.mark_delivered(job, output)
            safefs.unlink_if_exists(fd, name)
            return output
    except (FileNotFoundError, NotADirectoryError, safefs.UnsafePath):
        return None
    except OSError as exc:
        raise safefs.storage_guard("cannot check the outbox for an earlier delivery", exc) from None
    return None


def place_numbered(src_fd: int, src: str, dst_fd: int, stem: str, ext: str, keep_source: bool = False) -> str:
    """Place `src` as `stem.ext`, else the next free `stem-N.ext` (found with one listing, not N probes)."""
    name = safefs.place(src_fd, src, dst_fd, [safefs.fit_name(stem, ext)], keep_source)
    if name is not None:
        return name
    start = safefs.highest_counter(dst_fd, stem, ext) + 1
    name = safefs.place(src_fd, src, dst_fd, safefs.candidate_names(stem, ext, start), keep_source)
    assert name is not None
    return name


# -- archive --------------------------------------------------------------------------------------
def finish_original(cfg: Config, job: Job) -> Optional[Path]:
    """After delivery: archive the original under a free name (returns it) or delete it."""
    if cfg.on_success == "delete":
        try:
            os.unlink(job.path)
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise safefs.storage_guard(f"cannot delete the original {job.rel}", exc) from None
        return None
    folder = cfg.paths.archive.joinpath(*job.rel_parts)
    try:
        try:
            dst_fd = safefs.open_subdir_path(cfg.paths.archive, job.rel_parts, create=True, where="paths.archive")
        except safefs.UnsafePath as exc:
            # A link planted in place of an archive sub-folder is never followed; the output is
            # already delivered, so the original goes to the top of the archive instead.
            log.error("%s; archiving %s at the top of %s", exc, job.rel, cfg.paths.archive)
            folder = cfg.paths.archive
            dst_fd = safefs.open_subdir_path(cfg.paths.archive, (), create=True)
        try:
            with safefs.opened_dir(job.path.parent) as src_fd:
                name = _move(job, src_fd, dst_fd, "arc", _numbered(dst_fd, job.name))
        finally:
            os.close(dst_fd)
    except OSError as exc:
        raise safefs.storage_guard(f"cannot archive the original to {folder}", exc) from None
    return folder / name if name else None


def _numbered(dst_fd: int, name: str) -> "Iterable[str]":
    stem, ext = safefs.split_name(name)
    yield safefs.fit_name(stem, ext)
    yield from safefs.candidate_names(stem, ext, safefs.highest_counter(dst_fd, stem, ext) + 1)


def _move(job: Job, src_fd: int, dst_fd: int, purpose: str, names: Iterable[str]) -> Optional[str]:
    """Move the claimed entry into dst under the first free name of `names`; return that name.

    '' if an earlier run already finished the move (name unknown), None if every name is
    taken (nothing moved).

    Same filesystem: link, then unlink the source. Across filesystems: copy to this job's
    temp, fsync, link into place, unlink the source, unlink the temp. Either way the source
    goes last, and a half-done move (source or temp with two names) is completed, not redone.
    """
    src = job.name
    tmp = temp_name(job, purpose)
    try:
        st = os.stat(src, dir_fd=src_fd, follow_symlinks=False)
    except FileNotFoundError:
        safefs.unlink_if_exists(dst_fd, tmp)
        return ""  # the move finished before a kill; the source is removed last
    same_fs = safefs.same_filesystem(src_fd, dst_fd)
    done = _half_done(st, src_fd, dst_fd, tmp, same_fs)
    if done is None:
        if same_fs:
            done = safefs.place(src_fd, src, dst_fd, names, keep_source=True)
        else:
            _copy_entry(st, src_fd, src, dst_fd, tmp)
            done = safefs.place(dst_fd, tmp, dst_fd, names, keep_source=True)
        if done is None:
            safefs.unlink_if_exists(dst_fd, tmp)
            return None
        safefs.fsync_dir(dst_fd)
    os.unlink(src, dir_fd=src_fd)
    safefs.unlink_if_exists(dst_fd, tmp)
    safefs.fsync_dir(src_fd)
    return done


def _half_done(st: os.stat_result, src_fd: int, dst_fd: int, tmp: str, same_fs: bool) -> Optional[str]:
    """The name an interrupted earlier move already gave the file in dst, if any."""
    if same_fs and st.st_nlink > 1:
        return safefs.find_by_inode(dst_fd, st.st_ino, st.st_dev, skip=lambda n: n == tmp)
    try:
        tst = os.stat(tmp, dir_fd=dst_fd, follow_symlinks=False)
    except FileNotFoundError:
        return None
    if tst.st_nlink > 1:
        return safefs.find_by_inode(dst_fd, tst.st_ino, tst.st_dev, skip=lambda n: n == tmp)
    return None


def _copy_entry(st: os.stat_result, src_fd: int, src: str, dst_fd: int, tmp: str) -> None:
    """Copy a file, a link (as a link) or a FIFO/device node (as a node: never opened) to `tmp`."""
    if stat.S_ISREG(st.st_mode):
        safefs.copy_into(src_fd, src, dst_fd, tmp)
    elif stat.S_ISLNK(st.st_mode):
        safefs.copy_link_into(src_fd, src, dst_fd, tmp)
    else:
        safefs.unlink_if_exists(dst_fd, tmp)
        os.mknod(tmp, st.st_mode, st.st_rdev, dir_fd=dst_fd)


# -- quarantine -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class QuarantineRecord:
    """What `<name>.error.json` holds beside a quarantined file."""

    file: str
    original_path: str
    reason: str
    message: str
    exception: str
    attempts: int  # every attempt, those before a `srwatch quarantine retry` included
    claimed_at: str
    failed_at: str
    job_id: str
    traceback: Optional[str] = None
    prior_attempts: int = 0  # of `attempts`, those made before the file was last retried
    srwatch_version: str = __version__


def record_for(job: Job, error: BaseException, attempts: Optional[int] = None) -> dict:
    """The record fields (all but `file`) for quarantining `job` because of `error`."""
    reason = error.reason if isinstance(error, JobError) else "error"
    trace = None
    if error.__traceback__ is not None and not isinstance(error, JobError):
        trace = "".join(tb.format_exception(type(error), error, error.__traceback__))
    elif error.__cause__ is not None and error.__cause__.__traceback__ is not None:
        cause = error.__cause__
        trace = "".join(tb.format_exception(type(cause), cause, cause.__traceback__))
    message = str(error) if isinstance(error, JobError) else f"{type(error).__name__}: {error}"
    return {
        "original_path": job.rel, "reason": reason, "message": message, "exception": type(error).__name__,
        "attempts": job.prior_attempts + (job.attempts if attempts is None else attempts),
        "prior_attempts": job.prior_attempts, "claimed_at": job.claimed_at,
        "failed_at": utc_now(), "job_id": job.id, "traceback": trace,
    }


def quarantine_job(cfg: Config, job: Job, error: BaseException) -> Path:
    """Move a claimed entry to quarantine/<sub-folder>/ with its record beside it; release the job.

    The intent (reason and both names) goes into the job folder first, so an interrupted
    quarantine is completed by whoever takes the job next, with the first reason.
    """
    folder = cfg.paths.quarantine.joinpath(*job.rel_parts)
    try:
        intent = claim.quarantine_intent(job)
        if intent is None:
            intent = record_for(job, error)
            claim.write_quarantine_intent(job, intent)
        if not claim.holds_file(job):
            claim.release(job)  # moved before a kill: the record went first
            return folder / str(intent.get("file", job.name))
        parts = job.rel_parts
        try:
            q_fd = safefs.open_subdir_path(cfg.paths.quarantine, parts, create=True, where="paths.quarantine")
        except safefs.UnsafePath as exc:
            # A link planted in place of a quarantine sub-folder: never followed. The file goes
            # to the top of quarantine instead (its record keeps the original path).
            log.error("%s; quarantining %s at the top of %s", exc, job.rel, cfg.paths.quarantine)
            parts, folder = (), cfg.paths.quarantine
            q_fd = safefs.open_subdir_path(cfg.paths.quarantine, (), create=True)
        try:
            with safefs.opened_dir(job.path.parent) as src_fd:
                name = _quarantine_into(job, intent, src_fd, q_fd)
        finally:
            os.close(q_fd)
    except OSError as exc:
        raise safefs.storage_guard(f"cannot quarantine into {folder}", exc) from None
    claim.release(job)
    return folder / name


def _quarantine_into(job: Job, intent: dict, src_fd: int, q_fd: int) -> str:
    """Place record then file under a free pair of names (F, F.error.json); return F."""
    tried_fallback = False
    while True:
        planned = intent.get("file"), intent.get("record")
        if not all(isinstance(n, str) for n in planned) or not _record_is_ours(q_fd, intent["record"], job):
            try:
                intent = _claim_names(job, intent, q_fd, fallback=tried_fallback)
            except OSError as exc:
                if is_environmental(exc) or tried_fallback:
                    raise
                tried_fallback = True  # a name this filesystem refuses: use a safe one
                continue
        name = _move(job, src_fd, q_fd, "qua", [intent["file"]])
        if name is not None:
            safefs.fsync_dir(q_fd)
            return name or intent["file"]
        # Someone took the file's name between our check and the link: let the record go, retry.
        safefs.unlink_if_exists(q_fd, intent["record"])
        intent = {**intent, "file": None, "record": None}


def _claim_names(job: Job, intent: dict, q_fd: int, fallback: bool) -> dict:
    """Pick F with F and its record name free, write the intent, then place the record exclusively."""
    base = f"quarantined-{job.id}" + safefs.split_name(job.name)[1] if fallback else job.name
    stem, ext = safefs.split_name(base)
    for name in _numbered(q_fd, base) if not fallback else [base]:
        record = record_name(name)
        if _exists(q_fd, name) or _exists(q_fd, record):
            continue
        fields = {**intent, "file": name, "record": record}
        claim.write_quarantine_intent(job, fields)
        body = asdict(QuarantineRecord(file=name, **{k: v for k, v in fields.items() if k in _RECORD_FIELDS}))
        tmp = temp_name(job, "rec", ".json")
        safefs.unlink_if_exists(q_fd, tmp)
        safefs.write_exclusive(q_fd, tmp, (json.dumps(body, indent=2) + "\n").encode())
        placed = safefs.place(q_fd, tmp, q_fd, [record])
        if placed is None:
            safefs.unlink_if_exists(q_fd, tmp)
            continue
        return fields
    raise FileExistsError(errno.EEXIST, f"no free quarantine name for {stem}{ext}")


_RECORD_FIELDS = {f for f in QuarantineRecord.__dataclass_fields__ if f not in ("file", "srwatch_version")}


def record_name(file_name: str) -> str:
    """The quarantine record's name beside the quarantined file `file_name` (<file>.error.json)."""
    return safefs.fit_name(file_name + RECORD_SUFFIX, ".json")


def _exists(dir_fd: int, name: str) -> bool:
    try:
        os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        return True
    except FileNotFoundError:
        return False


def _record_is_ours(q_fd: int, record: str, job: Job) -> bool:
    """True if `record` in quarantine is the one this job wrote (after a kill mid-quarantine)."""
    try:
        fd = os.open(record, os.O_RDONLY | os.O_NOFOLLOW, dir_fd=q_fd)
    except OSError:
        return False
    try:
        data = json.loads(os.read(fd, 1 << 20))
    except ValueError:
        return False
    finally:
        os.close(fd)
    return isinstance(data, dict) and data.get("job_id") == job.id


def read_record(path: Path) -> dict:
    """A quarantine record as a dict."""
    return json.loads(path.read_text())


# -- resuming a job a kill interrupted ----------------------------------------------------------------
def resume(cfg: Config, job: Job) -> Optional[JobResult]:
    """Finish a job whose outcome an earlier attempt already decided; None if it must be processed.

    Called before a job is processed and before it is quarantined for any reason: a
    delivered output only needs the original archived, a started quarantine only needs
    finishing. Raises StorageError when a folder cannot take it now.
    """
    started = time.monotonic()
    intent = claim.quarantine_intent(job)
    if intent is not None:
        path = quarantine_job(cfg, job, JobError(str(intent.get("message", ""))))
        return Failed(job.id, str(intent.get("reason", "error")), str(intent.get("message", "")), str(path))
    output = resume_delivery(cfg, job)
    if output is not None:
        archived = finish_original(cfg, job)
        claim.release(job)
        return Done(job.id, str(output), str(archived) if archived else None, time.monotonic() - started,
                    None, None, resumed=True)
    if not claim.holds_file(job):
        claim.release(job)
        return Gone(job.id)
    return None


def fail(cfg: Config, job: Job, error: BaseException) -> JobResult:
    """Quarantine `job` for `error`, unless an earlier attempt delivered it (then just archive)."""
    finished = resume(cfg, job)
    if finished is not None:
        return finished
    path = quarantine_job(cfg, job, error)
    record = record_for(job, error)
    return Failed(job.id, record["reason"], record["message"], str(path))


# -- temp files left by a kill ------------------------------------------------------------------------
def sweep_temps(folders: Iterable[Path], live_job_ids: set[str]) -> int:
    """Remove temp files that a killed srwatch on this host left at the top of its folders."""
    removed = 0
    for folder in folders:
        try:
            names = os.listdir(folder)
        except OSError:
            continue
        for name in names:
            if name.startswith(TEMP_PREFIX) and _stale_temp(name, live_job_ids):
                try:
                    os.unlink(folder / name)
                    removed += 1
                except OSError:
                    pass
    return removed


def _stale_temp(name: str, live_job_ids: set[str]) -> bool:
    """A temp of ours whose job is not live and whose supervisor is not running."""
    match = _TEMP_RE.match(name)
    if match:
        job_id, host, pid = match.group(1), match.group(2), int(match.group(3))
        if job_id in live_job_ids or host != claim.HOST_TAG:
            return False
        return not _pid_alive(pid)
    legacy = name[len(TEMP_PREFIX):].split(".")  # 0.1: <ns>.<pid>.<n>.<hostname>[.ext]
    if len(legacy) >= 4 and legacy[1].isdigit() and legacy[3] == os.uname().nodename:
        return not _pid_alive(int(legacy[1]))
    return False


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# -- small files outside jobs (cache, CLI) ---------------------------------------------------------
def write_new(folder: Path, stem: str, ext: str, data: bytes, mode: Optional[int] = None) -> Path:
    """Write `data` to a new file `folder/stem[-N]ext` atomically; never overwrite; return it."""
    folder.mkdir(parents=True, exist_ok=True)
    with safefs.opened_dir(folder) as fd:
        tmp = write_temp_in(fd, ext, data, mode)
        try:
            name = place_numbered(fd, tmp, fd, stem, ext)
        except BaseException:
            safefs.unlink_if_exists(fd, tmp)
            raise
        safefs.fsync_dir(fd)
    return folder / name


def write_temp_in(dir_fd: int, ext: str, data: bytes, mode: Optional[int] = None) -> str:
    """Write `data` to a new uniquely named hidden temp file in the folder; return its name."""
    name = f"{TEMP_PREFIX}{os.getpid()}-{secrets.token_hex(8)}{ext}"
    safefs.write_exclusive(dir_fd, name, data, mode)
    return name


def write_temp(folder: Path, ext: str, data: bytes) -> Path:
    """Write `data` to a new hidden temp file in `folder` (exclusive create, fsync); return it."""
    with safefs.opened_dir(folder) as fd:
        return folder / write_temp_in(fd, ext, data)


