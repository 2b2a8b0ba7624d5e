"""`srwatch status`: the running daemon's figures, or counts from the folders when it is stopped.

Read-only: nothing is created, modified or locked for longer than a probe, so it works on a
read-only tree and beside a running daemon. Whether a daemon runs is whether its lock
(`<work>/.srwatch.lock`, flock'ed by the daemon) is held; its figures come from `status.json`,
which the supervisor rewrites every 2 s (`claim.write_status`). A status file older than
STALE_AFTER while the lock is held means the supervisor's loop is not turning: stuck.
"""
from __future__ import annotations

import fcntl
import os
import stat
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional

from . import claim, replay
from .config import Config
from .watcher import is_ignored

STALE_AFTER = 10.0  # in seconds: five missed status writes (every 2 s) = the daemon seems stuck
RECENT = 5  # done and quarantined files shown


@dataclass(frozen=True)
class LockState:
    """Whether a daemon holds the work folder's lock, and since when."""

    running: bool
    pid: Optional[int] = None
    since: Optional[float] = None  # unix time the daemon took the lock (it writes its pid then)


def lock_state(work: Path) -> LockState:
    """Is a daemon running on `work`? Never creates the lock file."""
    try:
        fd = os.open(work / claim.LOCK_NAME, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError:
        return LockState(False)  # no lock file: no daemon has ever opened this work folder
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            return LockState(False)
        held = _listed_in_proc_locks(st)
        if not held:
            held = _held_by_probe(fd)
        if not held:
            return LockState(False)
        return LockState(True, _read_pid(fd), st.st_mtime)
    finally:
        os.close(fd)


def _listed_in_proc_locks(st: os.stat_result) -> bool:
    """True if /proc/locks shows a flock on this inode (no lock taken, so a starting daemon never loses its lock)."""
    key = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    try:
        text = Path("/proc/locks").read_text()
    except OSError:
        return False
    return any(" FLOCK " in f" {line} " and key in line.split() for line in text.splitlines())


def _held_by_probe(fd: int) -> bool:
    """The authoritative check (a daemon in another PID namespace is hidden from /proc/locks).

    A shared lock taken and dropped at once: only a daemon starting within that instant could
    see it, which is why /proc/locks is asked first.
    """
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    except OSError:
        return False
    fcntl.flock(fd, fcntl.LOCK_UN)
    return False


def _read_pid(fd: int) -> Optional[int]:
    try:
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


# -- collecting -----------------------------------------------------------------------------------
def collect(cfg: Config, now: Optional[float] = None) -> dict:
    """Everything `srwatch status` shows, in plain JSON types."""
    now = time.time() if now is None else now
    lock = lock_state(cfg.work_dir)
    report: dict = {
        "config": str(cfg.source) if cfg.source else None, "running": lock.running, "pid": lock.pid,
        "stuck": False, "status_age_seconds": None, "daemon": None,
    }
    if lock.running:
        snapshot, age = _current_status(cfg.work_dir, lock, now)
        report["daemon"] = snapshot
        report["status_age_seconds"] = None if age is None else round(age, 1)
        since = age if age is not None else now - (lock.since or now)
        report["stuck"] = since > STALE_AFTER
    report["folders"] = folder_counts(cfg)
    return report


def _current_status(work: Path, lock: LockState, now: float) -> tuple[Optional[dict], Optional[float]]:
    """This daemon's status file and its age in seconds; (None, None) if it has written none yet."""
    try:
        mtime = os.stat(work / claim.STATUS_NAME, follow_symlinks=False).st_mtime
    except OSError:
        return None, None
    if lock.since is not None and mtime < lock.since - 1.0:
        return None, None  # left by an earlier run
    return claim.read_status(work), max(0.0, now - mtime)


def folder_counts(cfg: Config) -> dict:
    """What is in the folders now: inbox, claimed jobs, pending retries, outbox, archive, quarantine."""
    items = replay.list_quarantine(cfg.paths.quarantine) if cfg.paths.quarantine.is_dir() else []
    jobs = claim.claimed_jobs(cfg.work_dir)
    return {
        "inbox": inbox_counts(cfg),
        "claimed": [_job_view(j) for j in jobs],
        "pending_retries": replay.pending_count(cfg.work_dir),
        "outbox": _visible_files(cfg.paths.outbox),
        "archive": _visible_files(cfg.paths.archive) if cfg.on_success == "archive" else None,
        "on_success": cfg.on_success,  # delete: no archive to count
        "quarantine": {
            "total": len(items),
            "by_reason": dict(sorted(Counter(q.reason for q in items).items())),
            "recent": [{"file": q.file, "original": q.original, "reason": q.reason, "message": q.message,
                        "failed_at": q.failed_at} for q in reversed(items[-RECENT:])],
        },
    }


def inbox_counts(cfg: Config) -> Optional[dict]:
    """Non-hidden entries waiting in the inbox by kind; temporary names and unwatched sub-folders apart."""
    inbox = cfg.paths.inbox
    if not inbox.is_dir():
        return None
    counts = {"waiting": 0, "files": 0, "links": 0, "other": 0, "temporary": 0, "not_watched": 0}
    for rel, kind in _entries(inbox):
        if not cfg.watch.recursive and len(rel.parts) > 1:
            counts["not_watched"] += 1
        elif is_ignored(rel, cfg.watch.ignore):
            counts["temporary"] += 1
        else:
            counts["waiting"] += 1
            counts[{"file": "files", "link": "links"}.get(kind, "other")] += 1
    return counts


def _entries(top: Path, rel: Path = Path()) -> Iterator[tuple[Path, str]]:
    """(relative path, file|link|other) of every non-hidden entry below `top`; links never descended."""
    try:
        with os.scandir(top / rel) as listing:
            items = list(listing)
    except OSError:
        return
    for entry in items:
        if entry.name.startswith("."):
            continue
        try:
            mode = entry.stat(follow_symlinks=False).st_mode
        except OSError:
            continue
        if stat.S_ISDIR(mode):
            yield from _entries(top, rel / entry.name)
        else:
            yield rel / entry.name, claim.entry_kind(mode)


def _visible_files(folder: Path) -> Optional[int]:
    """Entries a reader of the folder sees (temp files are hidden); None if the folder is missing."""
    if not folder.is_dir():
        return None
    return sum(1 for _rel, _kind in _entries(folder))


def _job_view(job: claim.Job) -> dict:
    state = "waiting"
    if (job.job_dir / claim.QUARANTINE_INTENT).exists():
        state = "quarantining"
    elif (job.job_dir / claim.DELIVERED).exists():
        state = "delivered"
    return {"id": job.id, "rel": job.rel, "attempts": job.attempts, "prior_attempts": job.prior_attempts,
            "claimed_at": job.claimed_at, "state": state}


# -- showing --------------------------------------------------------------------------------------
def render(report: dict) -> str:
    """The report as lines for a terminal."""
    lines: list[str] = []
    if report["running"]:
        _render_daemon(report, lines)
    else:
        lines.append("srwatch is not running (no daemon holds the work folder's lock); counts from the folders:")
    _render_folders(report["folders"], lines, running=report["running"])
    return "\n".join(lines)


def _render_daemon(report: dict, lines: list[str]) -> None:
    pid = report["pid"]
    head = f"srwatch is running (pid {pid})" if pid else "srwatch is running"
    snap = report["daemon"]
    if report["stuck"]:
        age = report["status_age_seconds"]
        lines.append(f"{head}, but it seems stuck: " + (
            f"its status was last written {_duration(age)} ago (every 2 s when it is well)" if age is not None
            else "it holds its lock but has written no status"))
    if snap is None:
        if not report["stuck"]:
            lines.append(f"{head}; no status yet (it writes one every 2 s once its workers hold the model)")
        return
    if not report["stuck"]:
        state = snap.get("state", "running")
        lines.append(f"{head}, up {_duration(snap.get('uptime_seconds'))}, srwatch {snap.get('version', '?')}"
                     + ("" if state == "running" else f"; {state}"))
    lines.append("workers:")
    for w in snap.get("workers", []):
        load = w.get("load_seconds")
        lines.append(
            f"  {w.get('name')}  pid {w.get('pid')}  {w.get('state')}  {w.get('jobs_done', 0)} done"
            + (f"  model loaded in {load:.1f} s" if isinstance(load, (int, float)) else "")
            + (f"  on {w.get('job')}" if w.get("job") else "")
        )
    lines.append(
        f"queue: {snap.get('settling', 0)} settling, {snap.get('ready', 0)} ready, {snap.get('queued', 0)} claimed, "
        f"{snap.get('in_progress', 0)} in progress; oldest pending {_duration(snap.get('oldest_pending_age'))}"
    )
    folders = snap.get("folders", [])
    if len(folders) > 1 or any(f.get("hours") for f in folders):
        for f in folders:
            held = f.get("state") == "closed"
            lines.append(f"  hot folder {f.get('name')}: {f.get('state')}"
                         + (f" (hours {f.get('hours')})" if f.get("hours") else "")
                         + f", {f.get('ready', 0)} {'held' if held else 'ready'}, {f.get('queued', 0)} claimed")
    for paused in snap.get("paused", []):
        lines.append(f"PAUSED: {paused}")
    t = snap.get("totals", {})
    lines.append(f"since start: {t.get('done', 0)} done, {t.get('quarantined', 0)} quarantined, "
                 f"{t.get('crashed', 0)} worker crashes, {t.get('restarts', 0)} restarts")
    hour = snap.get("last_hour", [])
    busiest = max((m.get("done", 0) for m in hour), default=0)
    lines.append(f"last hour: {sum(m.get('done', 0) for m in hour)} done, {sum(m.get('quarantined', 0) for m in hour)} "
                 f"quarantined, {sum(m.get('output_megapixels', 0) for m in hour):.1f} output megapixels "
                 f"(busiest minute: {busiest} files)")
    for e in snap.get("recent_done", [])[:RECENT]:
        lines.append(f"  done         {e.get('rel')} -> {e.get('output')} ({e.get('seconds', 0):.1f} s, {_when(e.get('at'))})")
    for e in snap.get("recent_quarantined", [])[:RECENT]:
        lines.append(f"  quarantined  {e.get('rel')}: {e.get('reason')}: {e.get('message')} ({_when(e.get('at'))})")


def _render_folders(f: dict, lines: list[str], running: bool) -> None:
    inbox = f["inbox"]
    if inbox is None:
        lines.append("inbox: missing")
    else:
        kinds = ", ".join(f"{inbox[k]} {k}" for k in ("files", "links", "other") if inbox[k])
        extra = [f"{inbox['temporary']} still being written (temporary names)"] if inbox["temporary"] else []
        if inbox["not_watched"]:
            extra.append(f"{inbox['not_watched']} in sub-folders, not taken (watch.recursive is off)")
        lines.append(f"inbox: {inbox['waiting']} waiting" + (f" ({kinds})" if kinds else "")
                     + "".join(f"; {e}" for e in extra))
    claimed = f["claimed"]
    if claimed:
        when = "in the work folder" if running else "left in the work folder (taken again at the next start)"
        lines.append(f"claimed: {len(claimed)} {when}")
        for j in claimed[:RECENT]:
            lines.append(f"  {j['rel']}  attempt {j['attempts']}  {j['state']}")
    if f["pending_retries"]:
        lines.append(f"retried: {f['pending_retries']} put back into the inbox by `srwatch quarantine retry`, not yet taken")
    archive = f"; archive: {_count(f['archive'])}" if f["on_success"] == "archive" else "; originals deleted after delivery"
    lines.append(f"outbox: {_count(f['outbox'])}{archive}")
    q = f["quarantine"]
    reasons = ", ".join(f"{reason} {n}" for reason, n in q["by_reason"].items())
    lines.append(f"quarantine: {q['total']}" + (f" ({reasons})" if reasons else ""))
    if not running:
        for e in q["recent"]:
            lines.append(f"  {e['original']}: {e['reason']}: {e['message']} ({e['failed_at'][:19].replace('T', ' ')} UTC)")


def _count(n: Optional[int]) -> str:
    return "missing" if n is None else f"{n} file(s)"


def _duration(seconds: Optional[float]) -> str:
    if not isinstance(seconds, (int, float)):
        return "?"
    s = int(seconds)
    if s < 60:
        return f"{seconds:.1f} s" if seconds < 10 else f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    if s < 86400:
        return f"{s // 3600} h {s % 3600 // 60:02d} min"
    return f"{s // 86400} d {s % 86400 // 3600} h"


def _when(at: Optional[float]) -> str:
    if not isinstance(at, (int, float)):
        return "?"
    return f"{_duration(max(0.0, time.time() - at))} ago"
