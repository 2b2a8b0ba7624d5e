"""Watching the inbox: which entries exist, and which are completely written.

The watchdog observer thread only filters events and forwards paths (it never touches the
files); the daemon's main thread asks `InboxWatcher.take()` for entries that are complete:
their close-after-write was seen (inotify) or they were renamed into the inbox, and nothing
changed for a short quiet time after; or their size and mtime stayed unchanged for
`watch.settle_seconds`. A periodic rescan catches files whose event was lost (and runs at
once when the kernel reports an inotify queue overflow).

With `watch.writer_check`, the kernel is also asked, just before a file is handed out,
whether any process still has it open for writing (`open_for_writing`, a read lease): such a
file goes back to settling however long it has been unchanged, and a file renamed into the
inbox that nobody holds open is taken without the quiet time. Where the kernel cannot tell
(no lease support, another user's file without CAP_LEASE) the timing rule decides alone.

Entries are looked at with lstat only: a symbolic link, a FIFO or another non-regular entry
is never opened or followed. It is handed out like a file (it is an input that must end
somewhere) and the daemon quarantines it without reading it. Each ready entry carries the
identity it settled with (inode, size, mtime), which the claim checks again.
"""
from __future__ import annotations

import errno
import fcntl
import fnmatch
import logging
import os
import queue
import signal
import stat
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator, Optional

from watchdog.events import (
    DirCreatedEvent,
    DirMovedEvent,
    FileClosedEvent,
    FileCreatedEvent,
    FileDeletedEvent,
    FileModifiedEvent,
    FileMovedEvent,
    FileOpenedEvent,
    FileSystemEvent,
    FileSystemEventHandler,
)
from watchdog.observers import Observer
from watchdog.observers.polling import PollingObserver

from .claim import Candidate, entry_kind
from .config import WatchConfig

log = logging.getLogger("srwatch.watcher")

CLOSE_QUIET = 0.3  # in seconds: after a close-after-write, no further change for this long
CHECK_EVERY = 0.25  # in seconds: how often a settling file is lstat()ed at most
INBOX_CHECK_EVERY = 1.0  # in seconds: how often the inbox itself is checked (removed, replaced)
DUE_MARGIN = 0.001  # in seconds: a check this long after a quiet time is up finds it up (float rounding)
# In seconds, with writer_check: how long a file renamed into the inbox stays unchanged before
# the writer check decides. Not 0: a fresh creation reports its IN_CREATE an instant before
# its IN_OPEN, and watchdog hands the two over one at a time; this leaves room for the open to
# arrive and mark it as being written.
RENAME_QUIET = 0.05
WRITER_RECHECK = 1.0  # in seconds: how often a file still open for writing is asked about again
WRITER_WARN_AFTER = 60.0  # in seconds unchanged but still open for writing: say so, once

_CAP_LEASE = 28  # linux/capability.h
# Lease-break notices go to this signal instead of SIGIO, whose default action would kill the
# daemon if a writer opened the file in the instant the lease is held. SIGURG is ignored by default.
_F_SETSIG = getattr(fcntl, "F_SETSIG", 10)
_LEASE_SIGNAL = signal.SIGURG


@dataclass(frozen=True)
class InboxEvent:
    """A path in the inbox that may have become ready. kind: changed|created|opened|closed|moved_in|deleted|scan_dir.

    ``at``: when the observer thread saw it (monotonic). The quiet time counts from there, not
    from when the main thread got to it (up to a loop tick later).
    """

    kind: str
    path: Path
    at: float = field(default_factory=time.monotonic)


def is_ignored(rel: Path, patterns: Iterable[str]) -> bool:
    """Hidden files and folders are never taken, whatever watch.ignore says; nor temporary names."""
    if any(part.startswith(".") for part in rel.parts):
        return True
    name = rel.name
    return any(fnmatch.fnmatchcase(name, pattern) for pattern in patterns)


class InboxHandler(FileSystemEventHandler):
    """Turns watchdog events into InboxEvents on a queue; runs in the observer thread.

    With inotify, a file renamed in from outside the inbox arrives as a creation with no
    open (a writer's create always comes with an open): `created`, which settles as fast as a
    close-after-write. The polling observer cannot tell the two apart: its creations are
    plain `changed`.
    """

    # The events it uses, which also sets the inotify mask: not the close of a read-only open
    # (the writer check's own opens, a reader's), which would only fill the kernel's queue.
    EVENTS = (FileMovedEvent, DirMovedEvent, DirCreatedEvent, FileClosedEvent, FileOpenedEvent,
              FileCreatedEvent, FileModifiedEvent, FileDeletedEvent)

    def __init__(self, events: "queue.SimpleQueue[InboxEvent]", inotify: bool = True) -> None:
        self.events = events
        self.inotify = inotify

    def on_any_event(self, event: FileSystemEvent) -> None:
        src = Path(os.fsdecode(event.src_path))
        if isinstance(event, FileMovedEvent):
            self.events.put(InboxEvent("deleted", src))
            self.events.put(InboxEvent("moved_in", Path(os.fsdecode(event.dest_path))))
        elif isinstance(event, DirMovedEvent):
            self.events.put(InboxEvent("scan_dir", Path(os.fsdecode(event.dest_path))))
        elif isinstance(event, DirCreatedEvent):
            self.events.put(InboxEvent("scan_dir", src))
        elif isinstance(event, FileClosedEvent):
            self.events.put(InboxEvent("closed", src))
        elif isinstance(event, FileOpenedEvent):
            self.events.put(InboxEvent("opened", src))
        elif isinstance(event, FileCreatedEvent) and self.inotify:
            self.events.put(InboxEvent("created", src))
        elif isinstance(event, (FileCreatedEvent, FileModifiedEvent)):
            self.events.put(InboxEvent("changed", src))
        elif isinstance(event, FileDeletedEvent):
            self.events.put(InboxEvent("deleted", src))


class _OverflowAlarm(logging.Handler):
    """watchdog reports a lost-events overflow only in its log: turn that into a flag."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.raised = threading.Event()

    def emit(self, record: logging.LogRecord) -> None:
        if "overflow" in record.getMessage().lower():
            self.raised.set()


@dataclass
class _Pending:
    """What we last saw of an entry that is not ready yet."""

    kind: str
    ino: int
    size: int
    mtime_ns: int
    stable_since: float  # monotonic time since which size and mtime are unchanged
    checked_at: float
    closed_at: Optional[float] = None  # monotonic time of the last close-after-write / rename-in
    # Renamed into the inbox (no writer seen since) where the writer check can answer for it:
    # decided once, when the rename is noted, not with an lstat per loop tick (a burst of
    # 10,000 renames). A filesystem found without leases later sends it back through confirm().
    renamed: bool = False
    fast: bool = False  # handed out on the rename alone: the writer check must answer for it
    not_before: float = 0.0  # monotonic: found open for writing, ask again no sooner than this
    writing_since: Optional[float] = None  # monotonic: first found unchanged but open for writing
    warned: bool = False

    def candidate(self, path: Path) -> Candidate:
        return Candidate(path, self.kind, self.ino, self.size, self.mtime_ns)

    def can_skip_quiet(self) -> bool:
        """A non-empty file renamed into place, where the writer check can vouch for it.

        Empty is excluded: a writer's fresh file is empty in the instant between its creation
        and its open, when no check can see the writer yet.
        """
        return self.renamed and self.kind == "file" and self.size > 0

    def ready_at(self, settle: float) -> float:
        """When the timing rule (or, for a vouched-for rename, RENAME_QUIET) says it is complete."""
        at = self.stable_since + settle
        if self.closed_at is not None:
            quiet = RENAME_QUIET if self.can_skip_quiet() else CLOSE_QUIET
            at = min(at, max(self.stable_since, self.closed_at) + quiet)
        return at

    def next_check(self, settle: float) -> float:
        """When to lstat it next: every CHECK_EVERY, and just as its quiet time would be up.

        Checking only every CHECK_EVERY made a 0.3 s quiet time 0.5 s whenever the check
        before fell just short of it.
        """
        due = min(self.checked_at + CHECK_EVERY, self.ready_at(settle) + DUE_MARGIN)
        return max(due, self.not_before)


def has_cap_lease() -> bool:
    """Whether this process may take a lease on another user's file (CAP_LEASE, e.g. root)."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("CapEff:"):
                    return bool(int(line.split()[1], 16) >> _CAP_LEASE & 1)
    except (OSError, ValueError):
        pass
    return False


def open_for_writing(path: Path) -> Optional[bool]:
    """Whether any process on this machine has the regular file `path` open for writing.

    True or False, or None where the kernel cannot tell: a read lease (F_SETLEASE, Linux) is
    refused with EAGAIN while the file is open for writing anywhere on this machine (a writable
    shared mapping included), and it is let go at once. It needs the file's owner or
    CAP_LEASE (EACCES otherwise) and a filesystem with leases (EINVAL on NFS, some FUSE
    mounts...). The open is non-blocking: where Samba or the NFS server holds a lease of
    their own, it fails at once (True: a client has it) instead of waiting for their lease to
    be broken. Writers on other machines are never seen.
    """
    return _ask_kernel(path)[0]


def _ask_kernel(path: Path) -> tuple[Optional[bool], bool]:
    """open_for_writing's answer, and whether the filesystem itself refused leases (EINVAL)."""
    flags = os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_NOCTTY | os.O_CLOEXEC
    try:
        fd = os.open(path, flags)
    except BlockingIOError:
        return True, False
    except OSError:
        return None, False
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None, False
        fcntl.fcntl(fd, _F_SETSIG, _LEASE_SIGNAL)
        fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_RDLCK)
    except OSError as exc:
        if exc.errno in (errno.EAGAIN, errno.EWOULDBLOCK):
            return True, False
        return None, exc.errno in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP)
    else:
        fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_UNLCK)
        return False, False
    finally:
        os.close(fd)


def _lstat(path: Path) -> Optional[tuple[str, int, int, int]]:
    """(kind, inode, size, mtime_ns) of a non-folder entry, never following a link; None if gone or a folder."""
    try:
        st = os.lstat(path)
    except OSError:
        return None
    if stat.S_ISDIR(st.st_mode):
        return None
    return entry_kind(st.st_mode), st.st_ino, st.st_size, st.st_mtime_ns


class Settler:
    """Decides when an entry is completely written. Main-thread only.

    `ready()` hands out what the timing rule (or a rename) says is complete; with
    `writer_check`, `confirm()` then asks the kernel about writers just before the entry is
    taken, and sends one still open for writing back to settling.
    """

    def __init__(self, settle_seconds: float, writer_check: bool = False) -> None:
        self.settle = settle_seconds
        self.writer_check = writer_check
        self.pending: dict[Path, _Pending] = {}
        self.handed: dict[Path, _Pending] = {}  # handed out by ready(), not yet confirmed
        self._cap_lease = has_cap_lease() if writer_check else False
        self._no_leases: set[int] = set()  # st_dev of filesystems that refused a lease (EINVAL)

    def _leases(self, path: Path) -> bool:
        """Whether the writer check can answer for this file (so far as can be told without opening it)."""
        if not self.writer_check:
            return False
        try:
            st = os.lstat(path)
        except OSError:
            return False
        if st.st_dev in self._no_leases:
            return False
        return self._cap_lease or st.st_uid == os.geteuid()

    def note(self, path: Path, kind: str, now: float, at: Optional[float] = None) -> None:
        """Record an event seen at `at` (or, with `at` None, a scan sighting: kind 'changed') for `path`.

        An event restarts the quiet time from when it happened: a change seen in the same batch
        as the rename before it must not count as quiet.
        """
        if kind == "deleted":
            # watchdog holds a move-out back to pair it (up to 0.5 s), so a "deleted" can arrive
            # after a new file of the same name (a camera's next scan.jpg): keep that one.
            if _lstat(path) is None:
                self.pending.pop(path, None)
            return
        entry = self.pending.get(path)
        if entry is None and path in self.handed:
            # Handed out but not yet taken, and it changed: it settles again from what was seen.
            entry = self.pending[path] = self.handed.pop(path)
            entry.fast = False
        if entry is None:
            seen = _lstat(path)
            if seen is None:
                return
            what, ino, size, mtime_ns = seen
            stable_since = now if at is None else min(at, now)
            # A file already old at first sight (the backlog) is not being written right now;
            # a link or a FIFO has no content being written at all.
            age = time.time() - mtime_ns / 1e9
            if what != "file" or (kind == "changed" and age >= self.settle):
                stable_since = now - self.settle
            entry = _Pending(what, ino, size, mtime_ns, stable_since, checked_at=0.0 if what != "file" else now)
            self.pending[path] = entry
        else:
            if at is not None:
                entry.stable_since = max(entry.stable_since, min(at, now))
            if kind == "changed":
                entry.checked_at = 0.0  # re-check soon
                entry.renamed = False
        if kind in ("closed", "moved_in", "created"):
            # Complete as far as the writer is concerned: a close after writing, or a rename
            # into place (a creation without an open). Still checked for quiet before taken.
            entry.closed_at = now if at is None else min(at, now)
            entry.renamed = kind != "closed" and self._leases(path)
            entry.checked_at = 0.0
            entry.not_before = 0.0
        elif kind == "opened":
            entry.closed_at = None  # someone is writing (or reading) it: wait for the close
            entry.renamed = False

    def next_due(self) -> Optional[float]:
        """The monotonic time the next entry is worth checking, or None with nothing settling."""
        return min((e.next_check(self.settle) for e in self.pending.values()), default=None)

    def ready(self, now: float) -> list[Candidate]:
        """Entries that are complete now (removed from pending), in the order first seen."""
        done: list[Candidate] = []
        for path, entry in list(self.pending.items()):
            if now < entry.next_check(self.settle):
                continue
            entry.checked_at = now
            seen = _lstat(path)
            if seen is None:
                del self.pending[path]
                continue
            if seen != (entry.kind, entry.ino, entry.size, entry.mtime_ns):
                entry.kind, entry.ino, entry.size, entry.mtime_ns = seen
                entry.stable_since = now
                entry.renamed = False
                entry.writing_since = None
                if entry.closed_at is not None and entry.closed_at < now - CHECK_EVERY:
                    entry.closed_at = None  # written again after the close: wait again
                continue
            quiet = now - entry.stable_since
            closed = entry.closed_at is not None and now - entry.closed_at >= CLOSE_QUIET
            timed = quiet >= self.settle or (closed and quiet >= CLOSE_QUIET)
            if timed or now + DUE_MARGIN >= entry.ready_at(self.settle):
                entry.fast = not timed
                del self.pending[path]
                if self.writer_check:
                    self.handed[path] = entry
                done.append(entry.candidate(path))
        return done

    def confirm(self, cand: Candidate, now: float) -> bool:
        """Just before `cand` is taken: False (and back to settling) if a writer still has it open.

        Also False for an entry handed out on its rename alone when the kernel cannot tell
        after all: it then waits out the timing rule like any other.
        """
        entry = self.handed.pop(cand.path, None)
        if not self.writer_check or cand.kind != "file":
            return True
        writing, refused = _ask_kernel(cand.path) if self._leases(cand.path) else (None, False)
        if writing is False:
            return True
        if entry is None:  # put back after an earlier confirm: nothing kept to settle it again
            entry = _Pending(cand.kind, cand.ino, cand.size, cand.mtime_ns, stable_since=now, checked_at=now)
        if writing is None:
            if refused:
                self._no_leases_on(cand.path)
            if not entry.fast:
                return True
        else:
            entry.not_before = now + WRITER_RECHECK
            self._still_writing(cand.path, entry, now)
        entry.renamed = entry.fast = False
        entry.checked_at = now
        self.pending[cand.path] = entry
        return False

    def _no_leases_on(self, path: Path) -> None:
        """The filesystem refused a lease: the timing rule alone decides there from now on."""
        try:
            dev = os.lstat(path).st_dev
        except OSError:
            return
        if dev not in self._no_leases:
            log.info("the filesystem of %s has no leases, so nobody can tell whether a file there is still "
                     "open for writing: the timing rule alone decides there", path.parent)
            self._no_leases.add(dev)

    def _still_writing(self, path: Path, entry: _Pending, now: float) -> None:
        if entry.writing_since is None:
            entry.writing_since = now
        if not entry.warned and now - entry.writing_since >= WRITER_WARN_AFTER:
            entry.warned = True
            log.warning("%s has not changed for %.0f s but another process still has it open for writing: "
                        "waiting for it to be closed", path, now - entry.stable_since)

    def forget(self, path: Path) -> None:
        """The entry left the ready set without being taken (deleted, or the inbox was replaced)."""
        self.handed.pop(path, None)


class InboxWatcher:
    """The observer, the settle tracker, the ready set and the rescans for one inbox."""

    def __init__(self, inbox: Path, cfg: WatchConfig, exclude: Iterable[Path] = ()) -> None:
        self.inbox = inbox
        self.cfg = cfg
        self.exclude = [Path(p) for p in exclude]
        self.events: "queue.SimpleQueue[InboxEvent]" = queue.SimpleQueue()
        self.settler = Settler(cfg.settle_seconds, writer_check=cfg.writer_check)
        self.observer: Optional[Observer] = None
        self.last_scan = 0.0
        self._ready: "OrderedDict[Path, Candidate]" = OrderedDict()  # complete, not yet claimed
        self._inbox_id: Optional[tuple[int, int]] = None  # (st_dev, st_ino) the observer watches
        self._inbox_checked = 0.0
        self.inbox_missing = False
        self._inbox_fd: Optional[int] = None
        self._overflow = _OverflowAlarm()

    # -- lifecycle -------------------------------------------------------------------------
    def start(self) -> None:
        """Start the observer, then take the backlog (so nothing falls between the two)."""
        logging.getLogger("watchdog.observers.inotify_c").addHandler(self._overflow)
        self._start_observer()
        self.rescan()

    def _start_observer(self) -> None:
        self._inbox_id = _identity(self.inbox)
        self._close_inbox_fd()
        try:
            # Held open so a removal is seen even when a new folder reuses the inode number.
            self._inbox_fd = os.open(self.inbox, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError:
            self._inbox_fd = None
        if self.cfg.polling:
            observer = PollingObserver(timeout=self.cfg.poll_interval)
        else:
            observer = Observer()
        observer.schedule(InboxHandler(self.events, inotify=not self.cfg.polling), str(self.inbox),
                          recursive=self.cfg.recursive, event_filter=list(InboxHandler.EVENTS))
        observer.daemon = True
        observer.start()
        self.observer = observer

    def stop(self) -> None:
        """Stop the observer thread."""
        logging.getLogger("watchdog.observers.inotify_c").removeHandler(self._overflow)
        self._stop_observer()
        self._close_inbox_fd()

    def _close_inbox_fd(self) -> None:
        if self._inbox_fd is not None:
            os.close(self._inbox_fd)
            self._inbox_fd = None

    def _inbox_removed(self) -> bool:
        """True if the folder being watched was removed (it may have been recreated under the same inode number)."""
        if self._inbox_fd is None:
            return False
        try:
            return os.fstat(self._inbox_fd).st_nlink == 0
        except OSError:
            return True

    def _stop_observer(self) -> None:
        if self.observer is not None:
            self.observer.stop()
            self.observer.join(timeout=5)
            self.observer = None

    def healthy(self) -> bool:
        """False if the observer thread died or the inbox is missing."""
        return not self.inbox_missing and self.observer is not None and self.observer.is_alive()

    def _check_inbox(self, now: float) -> None:
        """Re-arm the observer at once when the inbox was removed and recreated, or the thread died."""
        if now - self._inbox_checked < INBOX_CHECK_EVERY:
            return
        self._inbox_checked = now
        current = _identity(self.inbox)
        if current is not None and self._inbox_removed():
            current = (-1, -1)  # a new folder that reuses the old one's inode number
        if current is None:
            if not self.inbox_missing:
                log.error("the inbox %s is gone; waiting for it to come back", self.inbox)
                self.inbox_missing = True
                self._stop_observer()
            return
        if self.inbox_missing or current != self._inbox_id or not (self.observer and self.observer.is_alive()):
            why = "is back" if self.inbox_missing else (
                "was replaced" if current != self._inbox_id else "observer stopped")
            log.warning("the inbox %s %s; watching it again and rescanning", self.inbox, why)
            self.inbox_missing = False
            self._stop_observer()
            self.settler.pending.clear()
            self.settler.handed.clear()
            self._ready.clear()
            self._start_observer()
            self.rescan()

    # -- scanning --------------------------------------------------------------------------
    def iter_entries(self, top: Optional[Path] = None) -> Iterator[Path]:
        """Candidate entries under `top` (default the inbox); symlinked folders are never descended."""
        top = top or self.inbox
        try:
            entries = list(os.scandir(top))
        except OSError:
            return
        for entry in sorted(entries, key=lambda e: e.name):
            path = Path(entry.path)
            try:
                is_dir = entry.is_dir(follow_symlinks=False)
            except OSError:
                continue
            if is_dir:
                if self.cfg.recursive and not entry.name.startswith(".") and path not in self.exclude:
                    yield from self.iter_entries(path)
            elif self._wanted(path):
                yield path

    def rescan(self, top: Optional[Path] = None) -> int:
        """Note every candidate entry (the backlog, or what lost events hid); return how many."""
        now = time.monotonic()
        if top is None:
            self.last_scan = now
        n = 0
        for path in self.iter_entries(top):
            if path not in self.settler.pending and path not in self._ready:
                self.settler.note(path, "changed", now)
                n += 1
        return n

    def _wanted(self, path: Path) -> bool:
        try:
            rel = path.relative_to(self.inbox)
        except ValueError:
            return False
        if not self.cfg.recursive and len(rel.parts) != 1:
            return False
        if any(path.is_relative_to(ex) for ex in self.exclude):
            return False
        return not is_ignored(rel, self.cfg.ignore)

    # -- polling ---------------------------------------------------------------------------
    def poll(self) -> int:
        """Drain events, re-arm or rescan when due; return how many entries became ready."""
        now = time.monotonic()
        self._check_inbox(now)
        while True:
            try:
                event = self.events.get_nowait()
            except queue.Empty:
                break
            self._on_event(event, now)
        overflow = self._overflow.raised.is_set()
        if overflow or (self.cfg.rescan_interval and now - self.last_scan >= self.cfg.rescan_interval):
            self._overflow.raised.clear()
            found = self.rescan()
            if found:
                log.log(logging.WARNING if overflow else logging.DEBUG,
                        "rescan%s found %d entr%s without an event", " after an inotify overflow" if overflow else "",
                        found, "y" if found == 1 else "ies")
        ready = self.settler.ready(now)
        for cand in ready:
            self._ready[cand.path] = cand
        return len(ready)

    def _on_event(self, event: InboxEvent, now: float) -> None:
        if event.kind == "scan_dir":
            if self.cfg.recursive and event.path.is_relative_to(self.inbox) and not event.path.is_symlink():
                self.rescan(event.path)
            return
        if event.kind == "deleted":
            self.settler.note(event.path, "deleted", now)
            ready = self._ready.get(event.path)
            if ready is not None and _lstat(event.path) is None:
                self._ready.pop(event.path)
                self.settler.forget(event.path)
            return
        if self._wanted(event.path):
            # A change to an entry that was already complete: it is being rewritten; settle it again.
            self._ready.pop(event.path, None)
            self.settler.note(event.path, event.kind, now, event.at)

    def take(self) -> Optional[Candidate]:
        """The oldest complete entry, or None. With writer_check, one still open for writing goes back to settling."""
        while self._ready:
            cand = self._ready.popitem(last=False)[1]
            if self.settler.confirm(cand, time.monotonic()):
                return cand
        return None

    def put_back(self, cand: Candidate) -> None:
        """A claim could not happen now (the work folder is full): keep the entry first in line."""
        self._ready[cand.path] = cand
        self._ready.move_to_end(cand.path, last=False)

    def claimed(self, cand: Candidate) -> None:
        """`cand` has been claimed (or had vanished): forget what was noted of that same file
        since it was taken. Claims run beside the main loop, so the events of the writer
        check's own open and close of the file may come in before the claim has moved it,
        and would otherwise leave it counted as settling. A new file at that name (another
        inode) is kept."""
        entry = self.settler.pending.get(cand.path)
        if entry is not None and entry.ino == cand.ino:
            del self.settler.pending[cand.path]
        ready = self._ready.get(cand.path)
        if ready is not None and ready.ino == cand.ino:
            del self._ready[cand.path]
            self.settler.forget(cand.path)

    def resettle(self, path: Path) -> None:
        """The entry changed since it settled: watch it until it is complete again."""
        self.settler.note(path, "changed", time.monotonic())

    @property
    def ready_count(self) -> int:
        """Entries complete and waiting to be claimed."""
        return len(self._ready)

    def next_due(self) -> Optional[float]:
        """When poll() next has an entry to check (monotonic), or None: the caller's longest sleep."""
        return self.settler.next_due()

    @property
    def settling(self) -> int:
        """Entries seen but not yet complete."""
        return len(self.settler.pending)


def _identity(path: Path) -> Optional[tuple[int, int]]:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino) if stat.S_ISDIR(st.st_mode) else None
