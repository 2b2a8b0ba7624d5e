"""The supervisor: watcher -> claim -> bounded queue -> worker pool -> sink, with signals.

Reads top to bottom like rq's worker: `run()` = bootstrap, a loop of small named steps
(take signals, watch, claim, dispatch, collect, heartbeat), teardown in `finally`. Signal
handlers only set flags (gunicorn's rule); a starting generation of workers is a state of
the loop, never a wait, so a stop is handled within one tick even while models load.
"""
from __future__ import annotations

import fcntl
import logging
import os
import signal
import sys
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from . import claim, sink
from .claim import Job
from .config import Config, check_model_file, load_config, prepare_folders, resolve_engine, resolve_precision
from .errors import ConfigError, JobError, LinkRefused, NotAFile, StorageError
from .messages import Deferred, Done, Failed, Gone, LoadFailed, Ready
from .notify import Notifier
from .policy import Backoff, JobPolicy, Quarantine, Retry
from .pool import Event, Pool, Worker, WorkerState, describe_exit
from .telemetry import Pipeline, Telemetry, WorkerView
from .watcher import InboxWatcher

log = logging.getLogger("srwatch.daemon")

TICK = 0.1  # in seconds: longest wait in the main loop
STARTUP_TIMEOUT = 300.0  # in seconds: for a generation of workers to load their model
RESPAWN_BACKOFF_MAX = 30.0  # in seconds, between restarts of a worker that keeps dying at once
STATUS_EVERY = 2.0  # in seconds, between STATUS= updates to systemd and status-file writes


@dataclass
class Counters:
    """What happened since start."""

    done: int = 0
    quarantined: int = 0
    crashed: int = 0


@dataclass
class Generation:
    """Workers started together for one config; they serve once every one of them holds its model."""

    number: int
    cfg: Config
    deadline: float  # monotonic
    workers: list[Worker] = field(default_factory=list)
    reload: bool = False  # started by SIGHUP (a failure keeps the running workers)


class Daemon:
    """One running srwatch: folders, watcher, pool and their bookkeeping."""

    def __init__(self, cfg: Config, once: bool = False, progress: bool = False) -> None:
        self.cfg = cfg
        self.once = once
        self.progress = progress
        self.pool = Pool()
        self.policy = JobPolicy(cfg.pool.max_attempts, cfg.pool.job_timeout)
        self.watcher: Optional[InboxWatcher] = None
        self.queue: deque[Job] = deque()  # claimed jobs waiting for a worker (bounded)
        self.doomed: dict[str, JobError] = {}  # job id -> why it goes to quarantine without a worker
        self.notifier = Notifier()
        self.counters = Counters()
        self.telemetry = Telemetry(engine=_engine_label(cfg), model=cfg.model.path.name)
        self.taken_at: dict[str, float] = {}  # job id -> monotonic time it was claimed (or recovered)
        self.owed_restarts = 0  # workers that died and are to be replaced
        self.claim_pause = Backoff()  # the work folder cannot take a claim
        self.sink_pause = Backoff()  # outbox, archive or quarantine cannot take a write
        self.active = 0  # the generation that serves jobs (0: none yet)
        self.starting: Optional[Generation] = None
        self.announced = False  # READY=1 sent
        self.stopping = False
        self.force_stop = False
        self.reload_requested = False
        self.stop_deadline = 0.0
        self.respawn_delay = 0.0
        self.next_respawn = 0.0
        self._last_status = 0.0
        self._lock_fd: Optional[int] = None
        self._bar = None
        self.web = None  # the HTTP endpoint (srwatch.web.WebServer) while metrics.listen is set

    # -- bootstrap -----------------------------------------------------------------------
    def bootstrap(self) -> None:
        """Check the config, start the first generation of workers loading; folders come once they hold the model.

        Nothing is created or taken before the model has loaded: a config whose model does not
        load (exit 2) leaves the folders as they were.
        """
        check_model_file(self.cfg)
        prepare_folders(self.cfg, create=False)  # checks only
        self._start_web()  # before the model loads: a taken port is exit 2 at once; /metrics shows the start
        self.starting = self._start_generation(self.cfg, reload=False)

    def _open_folders(self) -> None:
        """Folders, lock, recovered jobs and the watcher: the daemon starts taking files."""
        prepare_folders(self.cfg)
        self._take_lock()
        self._recover()
        self.watcher = InboxWatcher(self.cfg.paths.inbox, self.cfg.watch, exclude=self._own_folders())
        if self.once:
            self.watcher.rescan()
        else:
            self.watcher.start()
        if self.progress:
            self._open_progress()

    def _own_folders(self) -> list[Path]:
        return [self.cfg.paths.outbox, self.cfg.paths.quarantine, self.cfg.paths.archive, self.cfg.work_dir]

    def _take_lock(self) -> None:
        """One daemon per work folder: two would process the same claimed files."""
        path = self.cfg.work_dir / claim.LOCK_NAME
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise ConfigError(f"paths.work: another srwatch is already using {self.cfg.work_dir}") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._lock_fd = fd

    def _recover(self) -> None:
        """Jobs left claimed by an earlier run go first; a file that keeps killing us is quarantined."""
        jobs = claim.recover(self.cfg.work_dir)
        swept = sink.sweep_temps(
            [self.cfg.paths.outbox, self.cfg.paths.archive, self.cfg.paths.quarantine], {j.id for j in jobs}
        )
        if swept:
            log.info("removed %d temp file(s) left by an earlier run", swept)
        for job in jobs:
            decision = self.policy.after_restart(job)
            if isinstance(decision, Quarantine):
                self.doomed[job.id] = decision.error
            else:
                log.info("taking %s again (claimed by an earlier run)", job.rel)
            self.taken_at[job.id] = time.monotonic()
            self.queue.append(job)

    def _start_generation(self, cfg: Config, reload: bool) -> Generation:
        """Start a full set of workers for `cfg`; they serve once all hold their model (see _step_generation)."""
        number = self.active + 1 if self.starting is None else self.starting.number + 1
        gen = Generation(number, cfg, time.monotonic() + STARTUP_TIMEOUT, reload=reload)
        gen.workers = [self.pool.spawn(cfg, number) for _ in range(cfg.worker_layout()[0])]
        return gen

    # -- signals -------------------------------------------------------------------------
    def install_signals(self) -> None:
        """TERM/INT: graceful stop (a second one forces it). HUP: reload the config."""
        signal.signal(signal.SIGTERM, self._on_stop)
        signal.signal(signal.SIGINT, self._on_stop)
        signal.signal(signal.SIGHUP, self._on_hup)

    def _on_stop(self, signum: int, _frame) -> None:
        # No logging here: a handler may interrupt the logging module itself.
        if self.stopping:
            self.force_stop = True
            return
        self.stopping = True
        self.stop_deadline = time.monotonic() + self.cfg.shutdown_timeout

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
                if self.once and self.announced and self._idle():
                    break
                self._take_reload()
                self._step_generation()
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

    def _step_generation(self) -> None:
        """Promote a starting generation once every worker holds its model; fail it if one cannot."""
        gen = self.starting
        if gen is None:
            return
        if any(w.state is WorkerState.DEAD for w in gen.workers) or time.monotonic() > gen.deadline:
            self._abort_generation(gen, "a worker died while loading" if time.monotonic() <= gen.deadline
                                   else f"workers did not load {gen.cfg.model.path} within {STARTUP_TIMEOUT:.0f} s")
            return
        if all(w.state is WorkerState.IDLE for w in gen.workers):
            self._promote(gen)

    def _promote(self, gen: Generation) -> None:
        old = [w for w in self.pool.workers if w.generation != gen.number]
        for w in old:
            self.pool.retire(w)
        self.starting = None
        self.active = gen.number
        if gen.reload:
            self._apply_config(gen.cfg)
            log.info("reloaded: new workers hold %s", gen.cfg.model.path.name)
        elif self.watcher is None:
            self._open_folders()
        workers, threads = gen.cfg.worker_layout()
        loads = [w.load_seconds for w in gen.workers if w.load_seconds is not None]
        log.info(
            "srwatch ready: watching %s (%s), %d worker(s) x %d thread(s), model %s (loaded in %.1f s)",
            self.cfg.paths.inbox, "polling" if self.cfg.watch.polling else "inotify", workers, threads,
            self.cfg.model.path.name, max(loads, default=0.0),
        )
        self.announced = True
        self.notifier.ready(self.status_line())

    def _abort_generation(self, gen: Generation, why: str) -> None:
        for w in gen.workers:
            if w.state is not WorkerState.DEAD:
                self.pool.kill(w)
        self.starting = None
        if not gen.reload:
            raise ConfigError(f"model.path: {why}")
        log.error("reload failed, keeping the running workers: %s", why)
        self.notifier.ready(self.status_line())

    def _watch(self) -> None:
        if self.watcher is None or self.stopping:
            return
        self.watcher.poll()
        if self._bar is not None:
            self._bar.total = self.counters.done + self.counters.quarantined + self._outstanding()
            self._bar.refresh()

    def _claim(self) -> None:
        """Claim ready entries while the queue has room: a burst never floods memory."""
        now = time.monotonic()
        if self.stopping or self.watcher is None or self.claim_pause.waiting(now):
            return
        while len(self.queue) < self.cfg.pool.queue_size:
            cand = self.watcher.take()
            if cand is None:
                return
            try:
                job = claim.claim(cand, self.cfg.paths.inbox, self.cfg.work_dir)
            except claim.Changed:
                log.debug("%s changed after it settled; waiting for it again", cand.path)
                self.watcher.resettle(cand.path)
                continue
            except StorageError as exc:
                self.watcher.put_back(cand)
                if self.claim_pause.failed(now, str(exc)):
                    log.error("claiming paused: %s; the files wait in the inbox, retrying with back-off", exc)
                return
            if self.claim_pause.succeeded():
                log.warning("claiming resumed")
            if job is None:
                continue
            log.debug("claimed %s as %s", job.rel, job.id)
            self.telemetry.claimed()
            self.taken_at[job.id] = time.monotonic()
            if job.kind == "link":
                self.doomed[job.id] = LinkRefused("a symbolic link in the inbox; srwatch never follows links")
            elif job.kind == "other":
                self.doomed[job.id] = NotAFile("not a regular file (a FIFO, socket or device); never opened")
            self.queue.append(job)

    def _dispatch(self) -> None:
        now = time.monotonic()
        if self.stopping or self.sink_pause.waiting(now):
            return
        while self.queue:
            job = self.queue[0]
            error = self.doomed.get(job.id)
            if error is not None:
                self.queue.popleft()
                if not self._settle_here(job, error):
                    return
                continue
            idle = self.pool.idle(self.active)
            if not idle:
                return
            job = claim.set_attempts(self.queue.popleft(), job.attempts + 1)
            worker = idle[0]
            if self.pool.dispatch(worker, job):
                log.debug("dispatched %s to %s (pid %d, attempt %d)", job.rel, worker.name, worker.pid, job.attempts)
            else:  # it just died: its death comes through _collect; this attempt did not happen
                self.queue.appendleft(claim.set_attempts(job, job.attempts - 1))
                return

    def _settle_here(self, job: Job, error: JobError) -> bool:
        """Quarantine a job in the supervisor (a link, a crash, a timeout); False if a folder cannot take it now."""
        try:
            result = sink.fail(self.cfg, job, error)
        except StorageError as exc:
            self.queue.appendleft(job)
            self._pause_sink(str(exc))
            return False
        self.doomed.pop(job.id, None)
        self._report(job, result)
        return True

    def _collect(self) -> None:
        for event in self.pool.wait(TICK):
            self._handle(event)

    def _handle(self, event: Event) -> None:
        """A message from a worker, or its death (msg None)."""
        msg, worker = event.msg, event.worker
        if isinstance(msg, Ready):
            self.telemetry.model_loaded(msg.load_seconds)
            if worker.generation == self.active:
                self.respawn_delay = 0.0
        elif isinstance(msg, LoadFailed):
            log.error("%s could not load the model: %s", worker.name, msg.message)
        elif isinstance(msg, Deferred):
            assert event.job is not None
            self.queue.appendleft(claim.set_attempts(event.job, event.job.attempts - 1))  # not the file's fault
            self._pause_sink(msg.message)
            self._after_job(worker)
        elif isinstance(msg, (Done, Failed, Gone)):
            if self.sink_pause.succeeded():
                log.warning("writing resumed")
            self._report(event.job, msg, worker)
            self._after_job(worker)
        elif msg is None:
            self._worker_died(worker, event.job)

    def _pause_sink(self, why: str) -> None:
        if self.sink_pause.failed(time.monotonic(), why):
            log.error("delivery paused: %s; files stay claimed, retrying with back-off", why)

    def _report(self, job: Optional[Job], msg, worker: Optional[Worker] = None) -> None:
        """Count and log one finished job: one line per file (with fields for log.format: json)."""
        job_id = job.id if job else getattr(msg, "job_id", "?")
        rel = job.rel if job else job_id
        seconds = time.monotonic() - self.taken_at.pop(job_id, time.monotonic())
        by = worker.name if worker else "supervisor"
        self.telemetry.finished(job_id, rel, msg, seconds, by)
        fields: dict = {"event": type(msg).__name__.lower(), "path": rel, "job": job_id, "worker": by,
                        "size": job.size if job else None, "seconds": round(seconds, 3)}
        if isinstance(msg, Done):
            self.counters.done += 1
            fields.update(event="done", output=msg.output, archived=msg.archived, resumed=msg.resumed,
                          cached=msg.cached, ms={k: round(v * 1000, 1) for k, v in msg.stages.items()})
            if msg.input_size:
                fields.update(input_size=list(msg.input_size), output_size=list(msg.output_size or ()))
            if msg.resumed:
                log.info("done %s -> %s (delivered by an earlier attempt; original now archived)", rel, msg.output,
                         extra={"fields": fields})
            else:
                extra = f", {' ; '.join(msg.notes)}" if msg.notes else ""
                stages = ", ".join(f"{k} {v * 1000:.0f} ms" for k, v in msg.stages.items())
                log.info(
                    "done %s -> %s (%dx%d -> %dx%d, %.2f s%s%s; %s; %s; %s)", rel, msg.output, *msg.input_size,
                    *msg.output_size, msg.seconds, ", cached" if msg.cached else "", extra, _kb(job),
                    stages, by, extra={"fields": fields},
                )
        elif isinstance(msg, Failed):
            self.counters.quarantined += 1
            fields.update(event="quarantined", reason=msg.reason, error=msg.message, quarantined=msg.quarantined)
            log.warning("quarantined %s: %s: %s (%s)", rel, msg.reason, msg.message, by, extra={"fields": fields})
        elif isinstance(msg, Gone):
            fields.update(event="gone")
            log.warning("%s was removed from the work folder by someone else; nothing to do", rel, extra={"fields": fields})
        if self._bar is not None:
            self._bar.update(1)

    def _after_job(self, worker: Worker) -> None:
        """Recycle a worker that has done its share."""
        limit = self.cfg.pool.max_jobs_per_worker
        if limit and worker.jobs_done >= limit and worker.state is WorkerState.IDLE:
            self.pool.retire(worker)

    def _worker_died(self, worker: Worker, job: Optional[Job]) -> None:
        how = describe_exit(worker.process.exitcode)
        if self.starting is not None and worker in self.starting.workers:
            return  # a loading worker: _step_generation fails the generation
        if worker.state is WorkerState.RETIRING and job is None:
            log.debug("%s retired", worker.name)
            return
        self._schedule_respawn(worker)
        self.owed_restarts += 1
        if job is None:
            log.error("%s died (%s) without a file", worker.name, how)
            return
        self.counters.crashed += 1
        self.telemetry.worker_crashed()
        hint = " (SIGKILL from outside the daemon: perhaps the kernel's OOM killer)" if "SIGKILL" in how else ""
        log.error("%s died (%s) while processing %s (attempt %d)%s", worker.name, how, job.rel, job.attempts, hint)
        decision = self.policy.after_crash(job, how)
        if isinstance(decision, Retry):
            self.queue.appendleft(decision.job)
        else:
            self.doomed[job.id] = decision.error
            self.queue.appendleft(job)

    def _schedule_respawn(self, worker: Worker) -> None:
        """Back off if workers die right after starting (e.g. the model no longer loads)."""
        lived = time.monotonic() - worker.started_at
        if lived < 5.0:
            self.respawn_delay = min(RESPAWN_BACKOFF_MAX, max(0.5, self.respawn_delay * 2))
        else:
            self.respawn_delay = 0.0
        self.next_respawn = time.monotonic() + self.respawn_delay

    def _check_timeouts(self) -> None:
        for worker, error in self.policy.overdue(self.pool.busy(), time.monotonic()):
            log.error("%s exceeded pool.job_timeout on %s; killing it", worker.name, worker.job.rel)
            job = self.pool.kill(worker)
            if job is not None:
                self.doomed[job.id] = error
                self.queue.appendleft(job)

    def _keep_pool_full(self) -> None:
        if self.stopping or self.starting is not None or not self.active:
            return
        current = self.pool.serving(self.active)
        if len(current) < self.cfg.worker_layout()[0] and time.monotonic() >= self.next_respawn:
            self.pool.spawn(self.cfg, self.active)
            if self.owed_restarts:
                self.owed_restarts -= 1
                self.telemetry.worker_restarted()
            self.next_respawn = time.monotonic() + max(0.5, self.respawn_delay)

    def _heartbeat(self) -> None:
        """WATCHDOG=1 only while every worker we want is alive; STATUS= now and then."""
        alive = [w for w in self.pool.serving(self.active) if w.process.is_alive()]
        if self.announced and len(alive) >= self.cfg.worker_layout()[0]:
            self.notifier.watchdog()
        self.telemetry.set_pipeline(self.pipeline())
        now = time.monotonic()
        if now - self._last_status >= STATUS_EVERY:
            self._last_status = now
            self.notifier.status(self.status_line())
            self._write_status()

    def _write_status(self) -> None:
        """The snapshot for `srwatch status`, in the work folder (ours; replaced atomically)."""
        if self.watcher is None:
            return
        try:
            claim.write_status(self.cfg.work_dir, self.telemetry.snapshot())
        except OSError as exc:  # a full or read-only disk: the status file is a nicety
            log.debug("cannot write the status file: %s", exc)

    def pipeline(self) -> Pipeline:
        """The queue and the workers now, for the metrics, the page and the status file."""
        now = time.monotonic()
        busy = self.pool.busy()
        oldest = min(self.taken_at.values(), default=now)
        paused = tuple(f"{name} paused: {pause.reason}" for name, pause in
                       (("claiming", self.claim_pause), ("delivery", self.sink_pause)) if pause.reason)
        workers = tuple(
            WorkerView(w.name, w.pid, w.state.value, w.generation, w.job.rel if w.job else None, w.jobs_done,
                       w.load_seconds)
            for w in self.pool.workers
        )
        state = "stopping" if self.stopping else "running" if self.announced else "starting"
        return Pipeline(
            settling=self.watcher.settling if self.watcher else 0,
            ready=self.watcher.ready_count if self.watcher else 0,
            queued=len(self.queue), in_progress=len(busy), oldest_pending_age=round(now - oldest, 3),
            workers=workers, paused=paused, state=state,
        )

    # -- state ---------------------------------------------------------------------------
    def _outstanding(self) -> int:
        if self.watcher is None:
            return len(self.queue) + len(self.pool.busy())
        return self.watcher.ready_count + len(self.queue) + len(self.pool.busy()) + self.watcher.settling

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
        total = len(self.pool.serving(self.active))
        ready = self.watcher.ready_count if self.watcher else 0
        line = (
            f"{busy}/{total} workers busy, {len(self.queue)} queued, {ready} ready, "
            f"{self.counters.done} done, {self.counters.quarantined} quarantined"
        )
        for name, pause in (("claiming", self.claim_pause), ("delivery", self.sink_pause)):
            if pause.reason:
                line += f"; {name} paused: {pause.reason}"
        if self.watcher is not None and self.watcher.inbox_missing:
            line += "; inbox missing"
        if self.starting is not None:
            line += "; workers loading the model"
        return line

    # -- reload --------------------------------------------------------------------------
    def reload(self) -> None:
        """SIGHUP: read the config again; a bad one is logged and the old one kept.

        Files already claimed keep their place in the queue; a changed model (or any worker
        setting) starts a new generation of workers, and the old ones retire once it holds
        its model (the loop keeps serving meanwhile).
        """
        self.notifier.reloading()
        source = self.cfg.source
        try:
            new = load_config(source)
            check_model_file(new)
            prepare_folders(new)
        except ConfigError as exc:
            log.error("reload of %s failed, keeping the running config:\n%s", source, exc)
            self.notifier.ready(self.status_line())
            return
        if _worker_settings(new) != _worker_settings(self.cfg):
            if self.starting is not None:
                for w in self.starting.workers:
                    self.pool.kill(w)
            self.starting = self._start_generation(new, reload=True)
            log.info("reloading: new workers are loading %s", new.model.path.name)
            return
        self._apply_config(new)
        self.notifier.ready(self.status_line())

    def _apply_config(self, new: Config) -> None:
        old = self.cfg
        self.cfg = new
        self.policy = JobPolicy(new.pool.max_attempts, new.pool.job_timeout)
        if (new.paths.inbox, new.watch, new.work_dir) != (old.paths.inbox, old.watch, old.work_dir) and self.watcher:
            self.watcher.stop()
            self.watcher = InboxWatcher(new.paths.inbox, new.watch, exclude=self._own_folders())
            self.watcher.start()
        if _web_settings(new) != _web_settings(old):
            self._restart_web()
        log.info("configuration reloaded from %s", new.source)

    # -- the HTTP endpoint (metrics.listen) --------------------------------------------------
    def _start_web(self) -> None:
        """Metrics, status page and uploads on metrics.listen, if set; ConfigError if it cannot listen."""
        if not self.cfg.metrics.listen:
            return
        from .web import WebServer  # starlette and uvicorn are loaded only by daemons that serve

        web = WebServer(self.cfg.metrics, self.telemetry, self.cfg.paths.inbox, tuple(self.cfg.watch.ignore))
        web.start()
        self.web = web

    def _stop_web(self) -> None:
        if self.web is not None:
            self.web.stop()
            self.web = None

    def _restart_web(self) -> None:
        """After a reload that changed its settings; an address that cannot be had is logged, not fatal."""
        self._stop_web()
        try:
            self._start_web()
        except ConfigError as exc:
            log.error("reload: the metrics endpoint stays off: %s", exc)

    # -- teardown ------------------------------------------------------------------------
    def teardown(self) -> None:
        """Stop the watcher, retire or kill workers; claimed files stay for the next start."""
        if self.stopping:
            self.notifier.stopping()
        if self.watcher is not None:
            self.watcher.stop()
        for worker in list(self.pool.workers):
            if worker.state is WorkerState.STARTING:
                self.pool.kill(worker)  # still loading its model: nothing to finish
            elif worker.job is not None:
                job = self.pool.kill(worker)
                if job is not None:  # interrupted by us, not by the file: this attempt does not count
                    claim.set_attempts(job, job.attempts - 1)
            else:
                self.pool.retire(worker)
        deadline = time.monotonic() + 5
        for worker in list(self.pool.workers):
            worker.process.join(timeout=max(0.1, deadline - time.monotonic()))
            if worker.process.is_alive():
                self.pool.kill(worker, wait_s=2)
        if self._bar is not None:
            self._bar.close()
        if self.stopping:
            log.info("stopped: %s; %d claimed file(s) wait for the next start", self.status_line(), len(self.queue))
        elif self.queue:
            log.info("exiting with %d claimed file(s) not done", len(self.queue))
        self._stop_web()
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def _open_progress(self) -> None:
        from tqdm import tqdm

        self._bar = tqdm(total=self._outstanding(), unit="file", file=sys.stderr, dynamic_ncols=True)


def _engine_label(cfg: Config) -> str:
    """e.g. 'openvino/bf16', for the build info metric."""
    try:
        return f"{resolve_engine(cfg.model)}/{resolve_precision(cfg.model)}"
    except Exception:  # noqa: BLE001 - a label only
        return cfg.model.engine


def _kb(job: Optional[Job]) -> str:
    size = job.size if job else None
    return f"{size / 1000:.1f} kB" if size is not None else "size unknown"


def _worker_settings(cfg: Config) -> tuple:
    """The parts of the config that a worker process uses."""
    return (cfg.model, cfg.pool, cfg.tile, cfg.limits, cfg.preshrink, cfg.cache, cfg.output, cfg.paths, cfg.on_success, cfg.log,
            bool(cfg.metrics.listen and cfg.metrics.page))  # workers make the page's previews


def _web_settings(cfg: Config) -> tuple:
    """What the HTTP endpoint is built from: a change restarts it on reload."""
    return (cfg.metrics, cfg.paths.inbox, tuple(cfg.watch.ignore))
