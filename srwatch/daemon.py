"""The supervisor: watcher -> claim -> bounded queue -> worker pool -> sink, with signals.

Reads top to bottom like rq's worker: `run()` = bootstrap, a loop of small named steps
(take signals, watch, claim, dispatch, collect, heartbeat), teardown in `finally`.
"""
from __future__ import annotations

import fcntl
import logging
import os
import signal
import sys
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from . import claim
from .claim import Job
from .config import Config, check_model_file, load_config, prepare_folders
from .errors import ConfigError
from .notify import Notifier
from .pool import Done, Failed, LoadFailed, Pool, Ready, Worker, describe_exit, pool_size, quarantine_job
from .watcher import InboxWatcher, ReadyQueue

log = logging.getLogger("srwatch.daemon")

TICK = 0.1  # in seconds: longest wait in the main loop
STARTUP_TIMEOUT = 300.0  # in seconds: for workers to load their model
RESPAWN_BACKOFF_MAX = 30.0  # in seconds, between restarts of a worker that keeps dying at once
STATUS_EVERY = 2.0  # in seconds, between STATUS= updates to systemd
LOCK_NAME = ".srwatch.lock"


@dataclass
class Counters:
    """What happened since start."""

    done: int = 0
    quarantined: int = 0
    crashed: int = 0


class Daemon:
    """One running srwatch: folders, watcher, pool and their bookkeeping."""

    def __init__(self, cfg: Config, once: bool = False, progress: bool = False) -> None:
        self.cfg = cfg
        self.once = once
        self.progress = progress
        self.pool = Pool(cfg)
        self.watcher: Optional[InboxWatcher] = None
        self.ready = ReadyQueue()  # inbox paths that are complete, not yet claimed
        self.queue: deque[Job] = deque()  # claimed jobs waiting for a worker (bounded)
        self.notifier = Notifier()
        self.counters = Counters()
        self.stopping = False
        self.force_stop = False
        self.reload_requested = False
        self.stop_deadline = 0.0
        self.respawn_delay = 0.0
        self.next_respawn = 0.0
        self._last_status = 0.0
        self._lock_fd: Optional[int] = None
        self._bar = None

    # -- bootstrap -----------------------------------------------------------------------
    def bootstrap(self) -> None:
        """Folders, lock, workers (ready = holding their model), recovered jobs, the watcher."""
        check_model_file(self.cfg)  # before creating anything: a bad config changes nothing
        prepare_folders(self.cfg)
        self._take_lock()
        self._start_workers(self.cfg)
        self._recover()
        self.watcher = InboxWatcher(self.cfg.paths.inbox, self.cfg.watch, exclude=self._own_folders())
        if self.once:
            self.watcher.rescan()
        else:
            self.watcher.start()
        if self.progress:
            self._open_progress()
        workers, threads = self.cfg.worker_layout()
        log.info(
            "srwatch ready: watching %s (%s), %d worker(s) x %d thread(s), model %s",
            self.cfg.paths.inbox, "polling" if self.cfg.watch.polling else "inotify", workers, threads,
            self.cfg.model.path.name,
        )
        self.notifier.ready(self.status_line())

    def _own_folders(self) -> list[Path]:
        return [self.cfg.paths.outbox, self.cfg.paths.quarantine, self.cfg.paths.archive, self.cfg.work_dir]

    def _take_lock(self) -> None:
        """One daemon per work folder: two would process the same claimed files."""
        path = self.cfg.work_dir / LOCK_NAME
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise ConfigError(f"paths.work: another srwatch is already using {self.cfg.work_dir}") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._lock_fd = fd

    def _start_workers(self, cfg: Config) -> None:
        """Start a full generation of workers and wait until each holds its model."""
        self.pool.generation += 1
        fresh = [self.pool.spawn(cfg) for _ in range(pool_size(cfg))]
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while not all(w.ready for w in fresh):
            if time.monotonic() > deadline:
                self._abort_generation(fresh)
                raise ConfigError(f"model.path: workers did not load {cfg.model.path} within {STARTUP_TIMEOUT:.0f} s")
            self._heartbeat()  # on reload the old workers keep serving meanwhile
            for worker, msg in self.pool.wait(TICK):
                if worker in fresh:
                    if isinstance(msg, LoadFailed) or msg is None:
                        self._abort_generation(fresh)
                        why = msg.message if isinstance(msg, LoadFailed) else describe_exit(worker.process.exitcode)
                        raise ConfigError(f"model.path: {why}")
                    if isinstance(msg, Ready):
                        worker.ready = True
                else:
                    self._handle(worker, msg)

    def _abort_generation(self, workers: list[Worker]) -> None:
        for w in workers:
            self.pool.kill(w)
            w.process.join(timeout=5)
            self.pool.remove(w)

    def _recover(self) -> None:
        """Jobs left claimed by an earlier run go first; a file that keeps killing us is quarantined."""
        for job in claim.recover(self.cfg.work_dir):
            if job.attempts >= self.cfg.pool.max_attempts:
                self._quarantine_crashed(job, "the daemon or its worker stopped while processing this file")
            else:
                log.info("taking %s again (claimed by an earlier run)", job.rel)
                self.queue.append(job)

    # -- signals -------------------------------------------------------------------------
    def install_signals(self) -> None:
        """TERM/INT: graceful stop (a second one forces it). HUP: reload the config."""
        signal.signal(signal.SIGTERM, self._on_stop)
        signal.signal(signal.SIGINT, self._on_stop)
        signal.signal(signal.SIGHUP, self._on_hup)

    def _on_stop(self, signum: int, _frame) -> None:
        if self.stopping:
            self.force_stop = True
            return
        self.stopping = True
        self.stop_deadline = time.monotonic() + self.cfg.shutdown_timeout
        signal.signal(signal.SIGINT, self._on_stop)  # a second Ctrl-C forces

    def _on_hup(self, _signum: int, _frame) -> None:
        self.reload_requested = True

    # -- the loop ------------------------------------------------------------------------
    def run(self) -> int:
        """Run until stopped (or, for `once`, until the backlog is done); return the exit status."""
        try:
            self.bootstrap()
            while True:
                if self.stopping and self._drained():
                    break
                if self.once and self._idle():
                    break
                self._take_reload()
                self._watch()
                self._claim()
                self._dispatch()
                self._collect()
                self._check_timeouts()
                self._keep_pool_full()
                self._heartbeat()
            return 0
        finally:
            self.teardown()

    def _take_reload(self) -> None:
        if self.reload_requested and not self.stopping:
            self.reload_requested = False
            self.reload()

    def _watch(self) -> None:
        if self.watcher is None or self.stopping:
            return
        if not self.once and not self.watcher.healthy():
            log.error("the inbox observer stopped; restarting it and rescanning %s", self.cfg.paths.inbox)
            self.watcher.restart_observer()
        self.ready.extend(self.watcher.poll())
        if self._bar is not None:
            self._bar.total = self.counters.done + self.counters.quarantined + self._outstanding()
            self._bar.refresh()

    def _claim(self) -> None:
        """Claim ready files while the queue has room: a burst never floods memory."""
        if self.stopping:
            return
        while self.ready and len(self.queue) < self.cfg.pool.queue_size:
            path = self.ready.pop()
            if self.watcher is not None:
                self.watcher.forget(path)
            try:
                job = claim.claim(path, self.cfg.paths.inbox, self.cfg.work_dir)
            except OSError as exc:
                log.error("cannot claim %s: %s", path, exc)
                continue
            if job is not None:
                log.debug("claimed %s as %s", job.rel, job.id)
                self.queue.append(job)

    def _dispatch(self) -> None:
        if self.stopping:
            return
        for worker in self.pool.workers:
            if not self.queue:
                return
            if worker.idle:
                job = claim.with_attempt(self.queue.popleft())
                try:
                    self.pool.dispatch(worker, job)
                    log.debug("dispatched %s to %s (pid %d, attempt %d)", job.rel, worker.name, worker.process.pid, job.attempts)
                except OSError:  # the worker just died; its death is handled in _collect
                    worker.job = None
                    self.queue.appendleft(claim.with_attempts(job, job.attempts - 1))

    def _collect(self) -> None:
        for worker, msg in self.pool.wait(TICK):
            self._handle(worker, msg)

    def _handle(self, worker: Worker, msg) -> None:
        """A message from a worker, or its death (msg None)."""
        if isinstance(msg, Ready):
            worker.ready = True
            self.respawn_delay = 0.0
        elif isinstance(msg, LoadFailed):
            log.error("%s could not load the model: %s", worker.name, msg.message)
        elif isinstance(msg, (Done, Failed)):
            self._finish(worker, msg)
        elif msg is None:
            self._worker_died(worker)

    def _finish(self, worker: Worker, msg) -> None:
        job = worker.job
        worker.job = None
        worker.jobs_done += 1
        rel = job.rel if job else msg.job_id
        if isinstance(msg, Done):
            self.counters.done += 1
            extra = f", {' ; '.join(msg.notes)}" if msg.notes else ""
            if msg.input_size == (0, 0):  # the result was delivered before a restart
                log.info("done %s -> %s (delivered by an earlier run; original now archived)", rel, msg.output)
            else:
                log.info(
                    "done %s -> %s (%dx%d -> %dx%d, %.2f s%s%s)", rel, msg.output, *msg.input_size,
                    *msg.output_size, msg.seconds, ", cached" if msg.cached else "", extra,
                )
        else:
            self.counters.quarantined += 1
            log.warning("quarantined %s: %s: %s", rel, msg.reason, msg.message)
        self._after_job(worker)

    def _after_job(self, worker: Worker) -> None:
        """Progress, and recycle a worker that has done its share (or is retiring)."""
        if self._bar is not None:
            self._bar.update(1)
        limit = self.cfg.pool.max_jobs_per_worker
        if worker.retiring or (limit and worker.jobs_done >= limit):
            self.pool.retire(worker)

    def _worker_died(self, worker: Worker) -> None:
        how = describe_exit(worker.process.exitcode)
        self.pool.remove(worker)
        job = worker.job
        if worker.retiring and job is None:
            log.debug("%s retired", worker.name)
            return
        if job is None:
            log.error("%s died (%s) without a file", worker.name, how)
            self._schedule_respawn(worker)
            return
        if self.stopping and self.force_stop:
            return  # killed by us on a forced stop: the file stays claimed for the next start
        self.counters.crashed += 1
        log.error("%s died (%s) while processing %s (attempt %d)", worker.name, how, job.rel, job.attempts)
        self._schedule_respawn(worker)
        if job.attempts < self.cfg.pool.max_attempts:
            self.queue.appendleft(job)
        else:
            self._quarantine_crashed(job, f"worker died ({how}) on each of {job.attempts} attempts")

    def _quarantine_crashed(self, job: Job, message: str) -> None:
        try:
            path = quarantine_job(self.cfg, job, "worker_crash", message, "WorkerCrashed")
        except OSError as exc:
            log.error("cannot quarantine %s: %s", job.rel, exc)
            return
        self.counters.quarantined += 1
        log.warning("quarantined %s: worker_crash: %s (%s)", job.rel, message, path)
        if self._bar is not None:
            self._bar.update(1)

    def _schedule_respawn(self, worker: Worker) -> None:
        """Back off if workers die right after starting (e.g. the model no longer loads)."""
        lived = time.monotonic() - worker.started_at
        if lived < 5.0:
            self.respawn_delay = min(RESPAWN_BACKOFF_MAX, max(0.5, self.respawn_delay * 2))
        else:
            self.respawn_delay = 0.0
        self.next_respawn = time.monotonic() + self.respawn_delay

    def _check_timeouts(self) -> None:
        limit = self.cfg.pool.job_timeout
        now = time.monotonic()
        for worker in list(self.pool.workers):
            job = worker.job
            if job is None or now - worker.job_started <= limit:
                continue
            log.error("%s exceeded pool.job_timeout (%.0f s) on %s; killing it", worker.name, limit, job.rel)
            worker.job = None
            self.pool.kill(worker)
            worker.process.join(timeout=5)
            self.pool.remove(worker)
            try:
                quarantine_job(self.cfg, job, "timeout", f"processing took longer than pool.job_timeout ({limit:g} s)", "JobTimeout")
                self.counters.quarantined += 1
            except OSError as exc:
                log.error("cannot quarantine %s: %s", job.rel, exc)

    def _keep_pool_full(self) -> None:
        if self.stopping:
            return
        current = [w for w in self.pool.workers if not w.retiring]
        if len(current) < pool_size(self.cfg) and time.monotonic() >= self.next_respawn:
            self.pool.spawn(self.cfg)
            self.next_respawn = time.monotonic() + max(0.5, self.respawn_delay)

    def _heartbeat(self) -> None:
        """WATCHDOG=1 only while every worker we want is alive; STATUS= now and then."""
        alive = [w for w in self.pool.workers if w.process.is_alive() and not w.retiring]
        if len(alive) >= pool_size(self.cfg):
            self.notifier.watchdog()
        now = time.monotonic()
        if now - self._last_status >= STATUS_EVERY:
            self._last_status = now
            self.notifier.status(self.status_line())

    # -- state ---------------------------------------------------------------------------
    def _outstanding(self) -> int:
        settling = self.watcher.settling if self.watcher else 0
        return len(self.ready) + len(self.queue) + len(self.pool.busy()) + settling

    def _idle(self) -> bool:
        return self._outstanding() == 0

    def _drained(self) -> bool:
        """Stop now? Yes once nothing is in flight, the timeout passed, or a second signal came."""
        if not self.pool.busy():
            return True
        if self.force_stop or time.monotonic() >= self.stop_deadline:
            log.warning("stopping with %d file(s) still in progress; they stay claimed for the next start", len(self.pool.busy()))
            return True
        return False

    def status_line(self) -> str:
        """For systemd's STATUS= and logs."""
        busy = len(self.pool.busy())
        total = len([w for w in self.pool.workers if not w.retiring])
        return (
            f"{busy}/{total} workers busy, {len(self.queue)} queued, {len(self.ready)} ready, "
            f"{self.counters.done} done, {self.counters.quarantined} quarantined"
        )

    # -- reload --------------------------------------------------------------------------
    def reload(self) -> None:
        """SIGHUP: read the config again; a bad one is logged and the old one kept.

        Files already claimed keep their place in the queue; a changed model (or any worker
        setting) starts a new generation of workers, and the old ones retire after their file.
        """
        self.notifier.reloading()
        source = self.cfg.source
        try:
            new = load_config(source)
            prepare_folders(new)
            check_model_file(new)
        except ConfigError as exc:
            log.error("reload of %s failed, keeping the running config:\n%s", source, exc)
            self.notifier.ready(self.status_line())
            return
        old = self.cfg
        if _worker_settings(new) != _worker_settings(old):
            old_workers = list(self.pool.workers)
            try:
                self._start_workers(new)
            except ConfigError as exc:
                log.error("reload failed, keeping the running workers: %s", exc)
                self.notifier.ready(self.status_line())
                return
            for w in old_workers:
                self.pool.retire(w)
            log.info("reloaded: new workers hold %s", new.model.path.name)
        self.cfg = new
        self.pool.cfg = new
        if (new.paths.inbox, new.watch, new.work_dir) != (old.paths.inbox, old.watch, old.work_dir) and self.watcher:
            self.watcher.stop()
            self.ready = ReadyQueue()
            self.watcher = InboxWatcher(new.paths.inbox, new.watch, exclude=self._own_folders())
            self.watcher.start()
        log.info("configuration reloaded from %s", source)
        self.notifier.ready(self.status_line())

    # -- teardown ------------------------------------------------------------------------
    def teardown(self) -> None:
        """Stop the watcher, retire or kill workers; claimed files stay for the next start."""
        if self.stopping:
            self.notifier.stopping()
        if self.watcher is not None:
            self.watcher.stop()
        for worker in list(self.pool.workers):
            if worker.job is not None:
                # Interrupted by us, not by the file: this attempt does not count.
                claim.with_attempts(worker.job, worker.job.attempts - 1)
                self.pool.kill(worker)
            else:
                self.pool.retire(worker)
        deadline = time.monotonic() + 5
        for worker in list(self.pool.workers):
            worker.process.join(timeout=max(0.1, deadline - time.monotonic()))
            if worker.process.is_alive():
                self.pool.kill(worker)
                worker.process.join(timeout=2)
        if self._bar is not None:
            self._bar.close()
        left = len(self.queue) + len(self.ready)
        if self.stopping:
            log.info("stopped: %s; %d claimed file(s) wait for the next start", self.status_line(), len(self.queue))
        elif left:
            log.info("exiting with %d file(s) not done", left)
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def _open_progress(self) -> None:
        from tqdm import tqdm

        self._bar = tqdm(total=self._outstanding(), unit="file", file=sys.stderr, dynamic_ncols=True)


def _worker_settings(cfg: Config) -> tuple:
    """The parts of the config that a worker process uses."""
    return (cfg.model, cfg.pool, cfg.tile, cfg.limits, cfg.preshrink, cfg.cache, cfg.output, cfg.paths, cfg.on_success, cfg.log)
