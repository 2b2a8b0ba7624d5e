"""One hot folder (a profile) as the supervisor runs it: its folders, lock, watcher and queue.

The daemon runs one HotFolder per profile (one for a config without profiles). Each has its
own work folder and lock, so claims, recovery and the claimed queue are per folder; the
worker pool is shared by every folder whose model settings match (daemon.Group).
"""
from __future__ import annotations

import fcntl
import logging
import os
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime
from functools import cached_property
from pathlib import Path
from typing import Optional

from . import claim, sink
from .claim import Job
from .config import Config, prepare_folders
from .errors import ConfigError, JobError
from .policy import Backoff, JobPolicy, Quarantine
from .schedule import Hours, parse_hours
from .watcher import InboxWatcher

log = logging.getLogger("srwatch.daemon")


@dataclass(eq=False)
class HotFolder:
    """A profile's runtime state; only the supervisor's thread touches it."""

    cfg: Config
    group: tuple = ()  # the key of the worker group that serves it
    watcher: Optional[InboxWatcher] = None
    queue: deque[Job] = field(default_factory=deque)  # claimed, waiting for a worker (bounded)
    doomed: dict[str, JobError] = field(default_factory=dict)  # job id -> quarantined without a worker
    claim_pause: Backoff = field(default_factory=Backoff)  # the work folder cannot take a claim
    sink_pause: Backoff = field(default_factory=Backoff)  # outbox, archive or quarantine cannot take a write
    lock_fd: Optional[int] = None
    retiring: bool = False  # removed from the config by a reload: no new claims, drains, then closes
    held_logged: bool = False

    @property
    def name(self) -> str:
        """The profile's name."""
        return self.cfg.name

    @cached_property
    def hours(self) -> Optional[Hours]:
        """The opening hours, or None (always open)."""
        return parse_hours(self.cfg.schedule.hours) if self.cfg.schedule.hours else None

    def is_open(self, now: Optional[datetime] = None) -> bool:
        """May new files be claimed now (opening hours)?"""
        return self.hours is None or self.hours.is_open(now or datetime.now())

    def own_folders(self) -> list[Path]:
        """Folders the watcher must never take files from."""
        paths = self.cfg.paths
        return [paths.outbox, paths.quarantine, paths.archive, self.cfg.work_dir]

    # -- opening and closing ----------------------------------------------------------------
    def open(self, policy: JobPolicy, once: bool) -> list[Job]:
        """Folders, lock, recovered jobs (queued first) and the watcher; returns the recovered jobs."""
        prepare_folders(self.cfg)
        self.take_lock()
        recovered = self.recover(policy)
        self.start_watcher(once)
        return recovered

    def start_watcher(self, once: bool) -> None:
        """Watch the inbox (or, for `once`, scan it a single time)."""
        self.watcher = InboxWatcher(self.cfg.paths.inbox, self.cfg.watch, exclude=self.own_folders())
        if once:
            self.watcher.rescan()
        else:
            self.watcher.start()

    def take_lock(self) -> None:
        """One daemon per work folder: two would process the same claimed files."""
        path = self.cfg.work_dir / claim.LOCK_NAME
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise ConfigError(f"{self._key('paths.work')}: another srwatch is already using {self.cfg.work_dir}") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self.lock_fd = fd

    def recover(self, policy: JobPolicy) -> list[Job]:
        """Jobs left claimed by an earlier run go first; a file that keeps killing us is quarantined."""
        jobs = claim.recover(self.cfg.work_dir)
        paths = self.cfg.paths
        swept = sink.sweep_temps([paths.outbox, paths.archive, paths.quarantine], {j.id for j in jobs})
        if swept:
            log.info("removed %d temp file(s) left by an earlier run", swept)
        for job in jobs:
            decision = policy.after_restart(job)
            if isinstance(decision, Quarantine):
                self.doomed[job.id] = decision.error
            else:
                log.info("taking %s again (claimed by an earlier run)", self.show(job.rel))
            self.queue.append(job)
        return jobs

    def close(self) -> None:
        """Stop watching and let go of the lock (claimed files stay for the next start)."""
        if self.watcher is not None:
            self.watcher.stop()
        if self.lock_fd is not None:
            os.close(self.lock_fd)
            self.lock_fd = None

    # -- figures ------------------------------------------------------------------------------
    @property
    def ready(self) -> int:
        """Settled in the inbox, not yet claimed (held, while the folder is closed)."""
        return self.watcher.ready_count if self.watcher else 0

    @property
    def settling(self) -> int:
        """Seen in the inbox, not yet complete."""
        return self.watcher.settling if self.watcher else 0

    def show(self, rel: str) -> str:
        """A relative path as logs show it: prefixed with the profile when there are several."""
        return rel if self.name == "default" else f"{self.name}:{rel}"

    def _key(self, key: str) -> str:
        return key if self.name == "default" else f"profiles[{self.name}].{key}"
