"""Watching the inbox: which files exist, and which are completely written.

The watchdog observer thread only filters events and forwards paths (it never touches the
files); the daemon's main thread asks `InboxWatcher.poll()` for files that are complete:
their close-after-write was seen (inotify) or they were renamed into the inbox, and nothing
changed for a short quiet time after; or their size and mtime stayed unchanged for
`watch.settle_seconds`. A periodic rescan catches files whose event was lost.
"""
from __future__ import annotations

import fnmatch
import logging
import os
import queue
import time
from collections import deque
from dataclasses import dataclass
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
    FileSystemEvent,
    FileSystemEventHandler,
)
from watchdog.observers import Observer
from watchdog.observers.polling import PollingObserver

from .config import WatchConfig

log = logging.getLogger("srwatch.watcher")

CLOSE_QUIET = 0.3  # in seconds: after a close-after-write, no further change for this long
CHECK_EVERY = 0.25  # in seconds: how often a settling file is stat()ed at most


@dataclass(frozen=True)
class InboxEvent:
    """A path in the inbox that may have become ready. kind: changed|closed|moved_in|deleted|scan_dir."""

    kind: str
    path: Path


def is_ignored(rel: Path, patterns: Iterable[str]) -> bool:
    """Hidden files and folders, and temporary names, are not taken (until renamed)."""
    if any(part.startswith(".") for part in rel.parts[:-1]):
        return True
    name = rel.name
    return any(fnmatch.fnmatchcase(name, pattern) for pattern in patterns)


class InboxHandler(FileSystemEventHandler):
    """Turns watchdog events into InboxEvents on a queue; runs in the observer thread."""

    def __init__(self, events: "queue.SimpleQueue[InboxEvent]") -> None:
        self.events = events

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
        elif isinstance(event, (FileCreatedEvent, FileModifiedEvent)):
            self.events.put(InboxEvent("changed", src))
        elif isinstance(event, FileDeletedEvent):
            self.events.put(InboxEvent("deleted", src))


@dataclass
class _Pending:
    """What we last saw of a file that is not ready yet."""

    size: int
    mtime_ns: int
    stable_since: float  # monotonic time since which size and mtime are unchanged
    checked_at: float
    closed_at: Optional[float] = None  # monotonic time of the last close-after-write / rename-in


class Settler:
    """Decides when a file is completely written. Main-thread only."""

    def __init__(self, settle_seconds: float) -> None:
        self.settle = settle_seconds
        self.pending: dict[Path, _Pending] = {}

    def note(self, path: Path, kind: str, now: float) -> None:
        """Record an event (or a scan sighting: kind 'changed') for `path`."""
        if kind == "deleted":
            self.pending.pop(path, None)
            return
        entry = self.pending.get(path)
        if entry is None:
            stat = _stat_file(path)
            if stat is None:
                return
            size, mtime_ns = stat
            stable_since = now
            # A file already old at first sight (the backlog) is not being written right now.
            age = time.time() - mtime_ns / 1e9
            if kind == "changed" and age >= self.settle:
                stable_since = now - self.settle
            entry = _Pending(size, mtime_ns, stable_since, checked_at=now)
            self.pending[path] = entry
        elif kind == "changed":
            entry.checked_at = 0.0  # re-stat soon
        if kind in ("closed", "moved_in"):
            entry.closed_at = now
            entry.checked_at = 0.0

    def ready(self, now: float) -> list[Path]:
        """Files that are complete now (removed from pending), in the order first seen."""
        done: list[Path] = []
        for path, entry in list(self.pending.items()):
            if now - entry.checked_at < CHECK_EVERY:
                continue
            entry.checked_at = now
            stat = _stat_file(path)
            if stat is None:
                del self.pending[path]
                continue
            if stat != (entry.size, entry.mtime_ns):
                entry.size, entry.mtime_ns = stat
                entry.stable_since = now
                if entry.closed_at is not None and entry.closed_at < now - CHECK_EVERY:
                    entry.closed_at = None  # written again after the close: wait again
                continue
            quiet = now - entry.stable_since
            closed = entry.closed_at is not None and now - entry.closed_at >= CLOSE_QUIET
            if quiet >= self.settle or (closed and quiet >= CLOSE_QUIET):
                del self.pending[path]
                done.append(path)
        return done


def _stat_file(path: Path) -> Optional[tuple[int, int]]:
    """(size, mtime_ns) of a regular file, or None if it is gone or not a regular file."""
    try:
        st = path.stat()
    except OSError:
        return None
    if not os.path.isfile(path):
        return None
    return st.st_size, st.st_mtime_ns


class InboxWatcher:
    """The observer, the settle tracker and the periodic rescan for one inbox."""

    def __init__(self, inbox: Path, cfg: WatchConfig, exclude: Iterable[Path] = ()) -> None:
        self.inbox = inbox
        self.cfg = cfg
        self.exclude = [Path(p) for p in exclude]
        self.events: "queue.SimpleQueue[InboxEvent]" = queue.SimpleQueue()
        self.settler = Settler(cfg.settle_seconds)
        self.observer: Optional[Observer] = None
        self.last_scan = 0.0
        self.known: set[Path] = set()  # handed out as ready, not yet claimed

    # -- lifecycle -------------------------------------------------------------------------
    def start(self) -> None:
        """Start the observer, then take the backlog (so nothing falls between the two)."""
        self._start_observer()
        self.rescan()

    def _start_observer(self) -> None:
        if self.cfg.polling:
            observer = PollingObserver(timeout=self.cfg.poll_interval)
        else:
            observer = Observer()
        observer.schedule(InboxHandler(self.events), str(self.inbox), recursive=self.cfg.recursive)
        observer.daemon = True
        observer.start()
        self.observer = observer

    def stop(self) -> None:
        """Stop the observer thread."""
        if self.observer is not None:
            self.observer.stop()
            self.observer.join(timeout=5)
            self.observer = None

    def healthy(self) -> bool:
        """False if the observer thread died (e.g. the inbox was unmounted)."""
        return self.observer is not None and self.observer.is_alive()

    def restart_observer(self) -> None:
        """Replace a dead observer and rescan, so lost events are made up for."""
        self.stop()
        self._start_observer()
        self.rescan()

    # -- scanning --------------------------------------------------------------------------
    def iter_files(self, top: Optional[Path] = None) -> Iterator[Path]:
        """Candidate files under `top` (default the inbox), honouring recursion and ignores."""
        top = top or self.inbox
        try:
            entries = list(os.scandir(top))
        except OSError:
            return
        for entry in sorted(entries, key=lambda e: e.name):
            path = Path(entry.path)
            if entry.is_dir(follow_symlinks=False):
                if self.cfg.recursive and not entry.name.startswith(".") and path not in self.exclude:
                    yield from self.iter_files(path)
            elif entry.is_file(follow_symlinks=False) and self._wanted(path):
                yield path

    def rescan(self, top: Optional[Path] = None) -> int:
        """Note every candidate file (the backlog, or what lost events hid); return how many."""
        now = time.monotonic()
        if top is None:
            self.last_scan = now
        n = 0
        for path in self.iter_files(top):
            if path not in self.settler.pending and path not in self.known:
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
    def poll(self) -> list[Path]:
        """Drain events, rescan when due, and return the files that became ready."""
        now = time.monotonic()
        while True:
            try:
                event = self.events.get_nowait()
            except queue.Empty:
                break
            if event.kind == "scan_dir":
                if self.cfg.recursive and event.path.is_relative_to(self.inbox):
                    self.rescan(event.path)
                continue
            if event.kind == "deleted":
                self.settler.note(event.path, "deleted", now)
                self.known.discard(event.path)
                continue
            if self._wanted(event.path) and event.path not in self.known:
                self.settler.note(event.path, event.kind, now)
        if self.cfg.rescan_interval and now - self.last_scan >= self.cfg.rescan_interval:
            found = self.rescan()
            if found:
                log.debug("rescan found %d file(s) without an event", found)
        ready = self.settler.ready(now)
        self.known.update(ready)
        return ready

    def forget(self, path: Path) -> None:
        """The daemon claimed (or dropped) `path`: a new file of that name is new work."""
        self.known.discard(path)

    @property
    def settling(self) -> int:
        """Files seen but not yet complete."""
        return len(self.settler.pending)


class ReadyQueue:
    """Inbox paths ready to claim, in arrival order, without duplicates."""

    def __init__(self) -> None:
        self._order: deque[Path] = deque()
        self._members: set[Path] = set()

    def extend(self, paths: Iterable[Path]) -> None:
        """Append paths not already queued."""
        for path in paths:
            if path not in self._members:
                self._members.add(path)
                self._order.append(path)

    def pop(self) -> Path:
        """The oldest ready path."""
        path = self._order.popleft()
        self._members.discard(path)
        return path

    def __len__(self) -> int:
        return len(self._order)
