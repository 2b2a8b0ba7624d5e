"""The supervisor: watcher -> claim -> bounded queue -> worker pool -> sink, with signals.

Reads top to bottom like rq's worker: `run()` = bootstrap, a loop of small named steps
(take signals, watch, claim, dispatch, collect, heartbeat), teardown in `finally`. Signal
handlers only set flags (gunicorn's rule); a starting generation of workers is a state of
the loop, never a wait, so a stop is handled within one tick even while models load.

One daemon runs one or more hot folders (profiles, hotfolder.HotFolder), each with its own
folders, lock, watcher and claimed queue. Hot folders whose model settings match share one
group of workers (Group); a job carries its folder's config to the worker, which keeps one
engine for the group. Claims and dispatches take turns across folders (higher priority
first), so a burst in one folder never starves another.
"""
from __future__ import annotations

import logging
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime
from typing import Iterable, Optional

from . import claim, sink
from .claim import Job
from .config import (
    Config, available_cpus, check_model_file, layout_for, load_config, prepare_folders, resolve_engine,
    resolve_precision,
)
from .errors import ConfigError, JobError, LinkRefused, NotAFile, StorageError
from .hotfolder import HotFolder
from .messages import Deferred, Done, Failed, Gone, LoadFailed, Ready
from .notify import Notifier
from .policy import JobPolicy, Retry
from .pool import Event, Worker, WorkerState, make_pool
from .telemetry import FolderView, Pipeline, Telemetry, WorkerView
from .webhook import Notification, WebhookSender

log = logging.getLogger("srwatch.daemon")

TICK = 0.1  # in seconds: longest wait in the main loop
STARTUP_TIMEOUT = 300.0  # in seconds: for a generation of workers to load their model
RESPAWN_BACKOFF_MAX = 30.0  # in seconds, between restarts of a worker that keeps dying at once
STATUS_EVERY = 2.0  # in seconds, between STATUS= updates to systemd and status-file writes
# In seconds: the longest the loop asks for claims in one go before it dispatches and collects
# results again. The claims themselves wait on the disk on their own threads (claim.Claims),
# but each ask first runs the writer check (an open and a lease: round trips on a network
# share), and a burst of queue_size of them in a row would hold up the workers' results.
CLAIM_BURST = 0.02
# In seconds: the same for dispatching. Each dispatch counts the attempt in the job folder (an
# fdatasync: tens of ms on a slow disk), and a worker that only delivers takes its next file at
# once, so on a slow disk a queue of small files could be dispatched for a second in a row
# while the results waited.
DISPATCH_BURST = 0.02


@dataclass
class Generation:
    """Workers started together for one group; they serve once every one of them holds its model."""

    number: int
    cfg: Config
    deadline: float  # monotonic
    size: tuple[int, int] = (1, 1)  # (workers, threads per worker)
    workers: list[Worker] = field(default_factory=list)
    reload: bool = False  # started by SIGHUP (a failure keeps the running workers)


@dataclass(eq=False)
class Group:
    """Workers that hold one model (one set of worker settings), serving the hot folders that use it."""

    key: tuple
    cfg: Config  # the config of a hot folder it serves: what its workers load
    size: tuple[int, int]  # (workers, threads per worker)
    active: int = 0  # the generation that serves (0: none yet)
    starting: Optional[Generation] = None
    respawn_delay: float = 0.0
    next_respawn: float = 0.0
    owed_restarts: int = 0  # workers that died and are to be replaced
    requested: tuple = ("auto", "auto")  # pool.workers and threads_per_worker as its folders set them

    @property
    def label(self) -> str:
        """e.g. 'EDSR-srwatch_x3.onnx', for logs."""
        return self.cfg.model.path.name


class Daemon:
    """One running srwatch: hot folders, worker groups and their bookkeeping."""

    def __init__(self, cfg: Config, once: bool = False, progress: bool = False) -> None:
        self.cfg = cfg  # the whole file: pool, log, metrics, shutdown_timeout are daemon-wide
        self.once = once
        self.progress = progress
        self.pool = make_pool(cfg, requeue=self._take_back)  # pool.backend: local processes or Ray actors
        self.policy = JobPolicy(cfg.pool.max_attempts, cfg.pool.job_timeout)
        self.folders: list[HotFolder] = [HotFolder(f) for f in cfg.hot_folders()]
        self.groups: dict[tuple, Group] = {}
        self.owner: dict[str, HotFolder] = {}  # job id -> the hot folder it was claimed from
        self.notifier = Notifier()
        self.webhooks = WebhookSender(on_result=self._webhook_result)
        first = self.folders[0].cfg
        self.telemetry = Telemetry(engine=_engine_label(first), model=first.model.path.name)
        self.taken_at: dict[str, float] = {}  # job id -> monotonic time it was claimed (or recovered)
        self.opened = False  # folders, locks and watchers are open (after the first models loaded)
        self.announced = False  # READY=1 sent
        self.stopping = False
        self.force_stop = False
        self.reload_requested = False
        self.stop_deadline = 0.0
        self._turn = 0  # rotates the first folder among equal priorities
        self._claim_cut = False  # the last claim burst ended on time with files left to claim
        self._dispatch_cut = False  # the last dispatch burst ended on time with files left to send
        self.claims = claim.Claims()  # claims on a few threads; answers taken in the main loop
        self._generations = 0
        self.pending: Optional[Config] = None  # a reloaded config waiting for its new workers
        self._last_status = 0.0
        self._bar = None
        self.web = None  # the HTTP endpoint (srwatch.web.WebServer) while metrics.listen is set

    # -- bootstrap -----------------------------------------------------------------------
    def bootstrap(self) -> None:
        """Check the config, start every group's workers loading; folders come once they hold their models.

        Nothing is created or taken before the models have loaded: a config whose model does
        not load (exit 2) leaves the folders as they were.
        """
        for folder in self.folders:
            check_model_file(folder.cfg)
            prepare_folders(folder.cfg, create=False)  # checks only
        self._start_web()  # before the model loads: a taken port is exit 2 at once; /metrics shows the start
        for group in plan_groups(self.cfg).values():
            self.groups[group.key] = group
            group.starting = self._start_generation(group, reload=False)
        for folder in self.folders:
            folder.group = group_key(folder.cfg)

    def _open_folders(self) -> None:
        """Folders, locks, recovered jobs and watchers: the daemon starts taking files."""
        for folder in self.folders:
            self._open_folder(folder)
        self.opened = True
        if self.progress:
            self._open_progress()

    def _open_folder(self, folder: HotFolder) -> None:
        for job in folder.open(self.policy, self.once):
            self.taken_at[job.id] = time.monotonic()
            self.owner[job.id] = folder

    def _start_generation(self, group: Group, reload: bool, size: Optional[tuple[int, int]] = None) -> Generation:
        """Start a full set of workers for `group`; they serve once all hold their model (see _step_generations)."""
        number = self._next_generation()
        size = size or group.size
        gen = Generation(number, group.cfg, time.monotonic() + STARTUP_TIMEOUT, size=size, reload=reload)
        gen.workers = [self.pool.spawn(gen.cfg, number, threads=size[1]) for _ in range(size[0])]
        return gen

    def _next_generation(self) -> int:
        """Generation numbers are unique across groups: a worker's number names its group."""
        self._generations += 1
        return self._generations

    # -- signals -------------------------------------------------------------------------
    def install_signals(self) -> None:
        """TERM/INT: graceful stop (a second one forces it). HUP: reload the config."""
        import signal

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
                self._step_generations()
                self._watch()
                self._claim()
                self._dispatch()
                self._collect()
                self._check_timeouts()
                self._keep_pool_full()
                self._close_retired_folders()
                self._heartbeat()
            return 0
        finally:
            self.teardown()

    def _take_reload(self) -> None:
        if self.reload_requested and not self.stopping:
            self.reload_requested = False
            self.reload()

    def _step_generations(self) -> None:
        """Promote a starting generation once every worker holds its model; fail it if one cannot."""
        for group in list(self.groups.values()):
            gen = group.starting
            if gen is None:
                continue
            late = time.monotonic() > gen.deadline
            if late or any(w.state is WorkerState.DEAD for w in gen.workers):
                why = (f"workers did not load {gen.cfg.model.path} within {STARTUP_TIMEOUT:.0f} s" if late
                       else "a worker died while loading")
                self._abort_generation(group, gen, why)
            elif all(w.state is WorkerState.IDLE for w in gen.workers):
                self._promote(group, gen)

    def _promote(self, group: Group, gen: Generation) -> None:
        for w in self.pool.workers:
            if w.generation == group.active:
                self.pool.retire(w)
        group.starting = None
        group.active = gen.number
        group.size = gen.size
        group.cfg = gen.cfg
        if gen.reload:
            log.info("reloaded: new workers hold %s", group.label)
            if self.pending is not None and not any(g.starting is not None for g in self.groups.values()):
                self._apply_config(self.pending)
            return
        if any(g.starting is not None and not g.starting.reload for g in self.groups.values()):
            return  # first start: the other groups are still loading
        if not self.opened:
            self._open_folders()
            self._announce(gen)

    def _announce(self, gen: Generation) -> None:
        loads = [w.load_seconds for w in self.pool.workers if w.load_seconds is not None]
        for folder in self.folders:
            workers, threads = self.groups[folder.group].size
            crowded = folder.cfg.crowded_threads()
            log.info(
                "srwatch ready: watching %s (%s), %d worker(s) x %d thread(s)%s, model %s (loaded in %.1f s)%s",
                folder.cfg.paths.inbox, "polling" if folder.cfg.watch.polling else "inotify", workers, threads,
                f" ({crowded} while others are busy)" if crowded else "",
                folder.cfg.model.path.name, max(loads, default=0.0),
                "" if folder.name == "default" else f", profile {folder.name}",
            )
        self.announced = True
        self.notifier.ready(self.status_line())

    def _abort_generation(self, group: Group, gen: Generation, why: str) -> None:
        for w in gen.workers:
            if w.state is not WorkerState.DEAD:
                self.pool.kill(w)
        group.starting = None
        if not gen.reload:
            prefix = "model.path" if len(self.folders) == 1 else f"model.path ({group.label})"
            raise ConfigError(f"{prefix}: {why}")
        log.error("reload failed, keeping the running workers and config: %s", why)
        self._cancel_reload()  # the whole reload is off, not only this group's part
        self.pending = None
        self.notifier.ready(self.status_line())

    def _cancel_reload(self) -> None:
        """Stop the workers a reload is loading; forget the groups it added (they never served)."""
        for group in self.groups.values():
            if group.starting is not None and group.starting.reload:
                for w in group.starting.workers:
                    self.pool.kill(w)
                group.starting = None
        for key in [k for k, g in self.groups.items() if not g.active]:
            del self.groups[key]

    def _watch(self) -> None:
        if not self.opened or self.stopping:
            return
        for folder in self.folders:
            if folder.watcher is not None and not folder.retiring:
                folder.watcher.poll()
        if self._bar is not None:
            totals = self.telemetry.totals
            self._bar.total = totals["done"] + totals["quarantined"] + self._outstanding()
            self._bar.refresh()

    def _claim(self) -> None:
        """Take the answered claims; ask for more while each folder's queue has room: a burst never floods memory."""
        self._take_claims()
        if self.stopping or not self.opened:
            return
        now = time.monotonic()
        wall = datetime.now()
        self._claim_cut = False
        until = now + CLAIM_BURST
        for folder in self._in_turn(self.folders):
            if folder.retiring or folder.watcher is None or folder.claim_pause.waiting(now):
                continue
            if not folder.is_open(wall):
                self._log_held(folder, wall)
                continue
            if folder.held_logged:
                folder.held_logged = False
                log.info("hot folder %s is open (schedule.hours %s)", folder.name, folder.cfg.schedule.hours)
            if not self._claim_from(folder, until):
                self._claim_cut = True  # the rest next time round, first thing (see _sleep_for)
                break
        self._turn += 1

    def _claim_from(self, folder: HotFolder, until: float) -> bool:
        """Ask for claims of `folder`'s ready entries while its queue has room; False if time ran out first."""
        assert folder.watcher is not None
        while len(folder.queue) + self.claims.pending(folder) < self.cfg.pool.queue_size:
            if time.monotonic() >= until and folder.watcher.ready_count:
                return False
            cand = folder.watcher.take()
            if cand is None:
                return True
            self.claims.ask(folder, cand, folder.cfg.paths.inbox, folder.cfg.work_dir)
        return True

    def _take_claims(self) -> None:
        """The claims answered so far, in the order asked: queue the jobs, put back what could not be claimed."""
        now = time.monotonic()
        for folder, cand, answer in self.claims.answered():
            # A reload may have removed the folder or moved its inbox meanwhile: entries of the
            # old inbox are no longer ours to settle again or put back.
            watcher = folder.watcher
            if watcher is not None and (folder.retiring or not cand.path.is_relative_to(watcher.inbox)):
                watcher = None
            try:
                job = answer.result()
            except claim.Changed:
                log.debug("%s changed after it settled; waiting for it again", cand.path)
                if watcher is not None:
                    watcher.resettle(cand.path)
                continue
            except StorageError as exc:
                if watcher is not None:
                    watcher.put_back(cand)
                if folder.claim_pause.failed(now, str(exc)):
                    log.error("claiming paused: %s; the files wait in the inbox, retrying with back-off", exc)
                continue
            if folder.claim_pause.succeeded():
                log.warning("claiming resumed")
            if watcher is not None:
                watcher.claimed(cand)
            if job is None:
                continue
            log.debug("claimed %s as %s", folder.show(job.rel), job.id)
            self.telemetry.claimed(folder.name)
            self.taken_at[job.id] = time.monotonic()
            self.owner[job.id] = folder
            if job.kind == "link":
                folder.doomed[job.id] = LinkRefused("a symbolic link in the inbox; srwatch never follows links")
            elif job.kind == "other":
                folder.doomed[job.id] = NotAFile("not a regular file (a FIFO, socket or device); never opened")
            folder.queue.append(job)
            if len(folder.queue) == 1:
                # The queue was empty, so a worker may be idle: hand it this file now rather than
                # after taking the rest of a burst.
                self._dispatch()

    def _log_held(self, folder: HotFolder, wall: datetime) -> None:
        if not folder.held_logged:
            folder.held_logged = True
            opening = folder.hours.next_opening(wall) if folder.hours else None
            log.info("hot folder %s is closed (schedule.hours %s): new files wait in the inbox%s", folder.name,
                     folder.cfg.schedule.hours, f" until {opening:%Y-%m-%d %H:%M:%S}" if opening else "")

    def _in_turn(self, folders: Iterable[HotFolder]) -> list[HotFolder]:
        """Higher priority first; folders of equal priority take turns being first (round robin)."""
        by_priority: dict[int, list[HotFolder]] = {}
        for f in folders:
            by_priority.setdefault(f.cfg.priority, []).append(f)
        ordered: list[HotFolder] = []
        for priority in sorted(by_priority, reverse=True):
            same = by_priority[priority]
            k = self._turn % len(same)
            ordered.extend(same[k:] + same[:k])
        return ordered

    def _dispatch(self) -> None:
        """Quarantine doomed jobs; give each worker with room the next job of the folders its group serves."""
        self._dispatch_cut = False
        if self.stopping:
            return
        now = time.monotonic()
        for folder in self.folders:
            if not folder.sink_pause.waiting(now):
                self._settle_doomed(folder)
        for group in self.groups.values():
            if not group.active:
                continue
            folders = [f for f in self._in_turn(self.folders) if f.group == group.key and f.queue
                       and not f.sink_pause.waiting(now)]
            until = time.monotonic() + DISPATCH_BURST  # each group's own, so none waits behind another's
            while folders:
                room = self.pool.with_room(group.active)
                if not room:
                    break
                if time.monotonic() >= until:
                    self._dispatch_cut = True  # the rest next time round, after the results (see _sleep_for)
                    break
                folder = folders.pop(0)
                if not self._dispatch_one(folder, room[0]):
                    break
                if folder.queue:
                    folders.append(folder)  # round robin: its next job after the others' first

    def _settle_doomed(self, folder: HotFolder) -> None:
        """Doomed jobs (links, crashes, timeouts) at the head of the queue go to quarantine here."""
        while folder.queue and folder.queue[0].id in folder.doomed:
            job = folder.queue.popleft()
            if not self._settle_here(folder, job, folder.doomed[job.id]):
                return

    def _dispatch_one(self, folder: HotFolder, worker: Worker) -> bool:
        head = folder.queue[0]
        if head.id in folder.doomed:
            return self._settle_here(folder, folder.queue.popleft(), folder.doomed[head.id])
        job = claim.set_attempts(folder.queue.popleft(), head.attempts + 1)
        more_waiting = any(f.queue or f.ready for f in self.folders)
        if self.pool.dispatch(worker, job, folder.cfg, more_waiting):
            log.debug("dispatched %s to %s (pid %d, attempt %d)", folder.show(job.rel), worker.name, worker.pid,
                      job.attempts)
            return True
        # It just died: its death comes through _collect; this attempt did not happen.
        folder.queue.appendleft(claim.set_attempts(job, job.attempts - 1))
        return False

    def _settle_here(self, folder: HotFolder, job: Job, error: JobError) -> bool:
        """Quarantine a job in the supervisor (a link, a crash, a timeout); False if a folder cannot take it now."""
        try:
            result = sink.fail(folder.cfg, job, error)
        except StorageError as exc:
            folder.queue.appendleft(job)
            self._pause_sink(folder, str(exc))
            return False
        folder.doomed.pop(job.id, None)
        self._report(job, result)
        return True

    def _collect(self) -> None:
        # With claims under way, an answered one ends the wait too.
        wake = self.claims.wake_fd if self.claims.pending() else None
        for event in self.pool.wait(self._sleep_for(), wake=wake):
            self._handle(event)

    def _sleep_for(self) -> float:
        """How long the loop may wait for workers: a tick, or less when a settling file is due sooner
        (nothing when the last claim or dispatch burst left files to claim or send)."""
        if (self._claim_cut or self._dispatch_cut) and not self.stopping:
            return 0.0
        due = [d for f in self.folders if f.watcher is not None and not f.retiring
               and (d := f.watcher.next_due()) is not None]
        if not due or self.stopping:
            return TICK
        return max(0.0, min(TICK, min(due) - time.monotonic()))

    def _handle(self, event: Event) -> None:
        """A message from a worker, or its death (msg None)."""
        msg, worker = event.msg, event.worker
        if isinstance(msg, Ready):
            self.telemetry.model_loaded(msg.load_seconds)
            group = self._group_of(worker)
            if group is not None and worker.generation == group.active:
                group.respawn_delay = 0.0
        elif isinstance(msg, LoadFailed):
            log.error("%s could not load the model: %s", worker.name, msg.message)
        elif isinstance(msg, Deferred):
            assert event.job is not None
            folder = self._folder_of(event.job)
            folder.queue.appendleft(claim.set_attempts(event.job, event.job.attempts - 1))  # not the file's fault
            self._pause_sink(folder, msg.message)
            self._after_job(worker)
        elif isinstance(msg, (Done, Failed, Gone)):
            folder = self._folder_of(event.job) if event.job else None
            if folder is not None and folder.sink_pause.succeeded():
                log.warning("writing resumed")
            self._report(event.job, msg, worker)
            self._after_job(worker)
        elif msg is None:
            self._worker_died(worker, event.job)

    def _folder_of(self, job: Job) -> HotFolder:
        return self.owner.get(job.id) or self.folders[0]

    def _take_back(self, job: Job) -> None:
        """A job the pool sent ahead but never started (a lost or killed worker's prefetched one).

        First in its queue again; its attempt (counted when it was sent) did not happen.
        """
        self._folder_of(job).queue.appendleft(claim.set_attempts(job, job.attempts - 1))

    def _group_of(self, worker: Worker) -> Optional[Group]:
        for group in self.groups.values():
            if worker.generation == group.active or (group.starting and worker.generation == group.starting.number):
                return group
        return None

    def _pause_sink(self, folder: HotFolder, why: str) -> None:
        if folder.sink_pause.failed(time.monotonic(), why):
            log.error("delivery paused: %s; files stay claimed, retrying with back-off", why)

    def _report(self, job: Optional[Job], msg, worker: Optional[Worker] = None) -> None:
        """Count, log and notify one finished job: one line per file (with fields for log.format: json)."""
        job_id = job.id if job else getattr(msg, "job_id", "?")
        folder = self.owner.pop(job_id, None) or self.folders[0]
        rel = job.rel if job else job_id
        shown = folder.show(rel)
        seconds = time.monotonic() - self.taken_at.pop(job_id, time.monotonic())
        by = worker.name if worker else "supervisor"
        self.telemetry.finished(job_id, rel, msg, seconds, by, folder.name)
        fields: dict = {"event": type(msg).__name__.lower(), "path": rel, "profile": folder.name, "job": job_id,
                        "worker": by, "size": job.size if job else None, "seconds": round(seconds, 3)}
        if isinstance(msg, Done):
            fields.update(event="done", output=msg.output, archived=msg.archived, resumed=msg.resumed,
                          cached=msg.cached, ms={k: round(v * 1000, 1) for k, v in msg.stages.items()})
            if msg.threads:
                fields["threads"] = list(msg.threads)
            if msg.input_size:
                fields.update(input_size=list(msg.input_size), output_size=list(msg.output_size or ()))
            if msg.resumed:
                log.info("done %s -> %s (delivered by an earlier attempt; original now archived)", shown, msg.output,
                         extra={"fields": fields})
            else:
                extra = f", {' ; '.join(msg.notes)}" if msg.notes else ""
                stages = ", ".join(f"{k} {v * 1000:.0f} ms" for k, v in msg.stages.items())
                if msg.threads:  # the inference threads it ran on: "1 thread", "2 threads", "1 to 2 threads"
                    fewest, most = msg.threads[0], msg.threads[-1]
                    counts = str(most) if fewest == most else f"{fewest} to {most}"
                    stages += f"; {counts} thread{'s' if most > 1 else ''}"
                log.info(
                    "done %s -> %s (%dx%d -> %dx%d, %.2f s%s%s; %s; %s; %s)", shown, msg.output, *msg.input_size,
                    *msg.output_size, msg.seconds, ", cached" if msg.cached else "", extra, _kb(job),
                    stages, by, extra={"fields": fields},
                )
        elif isinstance(msg, Failed):
            fields.update(event="quarantined", reason=msg.reason, error=msg.message, quarantined=msg.quarantined)
            log.warning("quarantined %s: %s: %s (%s)", shown, msg.reason, msg.message, by, extra={"fields": fields})
        elif isinstance(msg, Gone):
            fields.update(event="gone")
            log.warning("%s was removed from the work folder by someone else; nothing to do", shown,
                        extra={"fields": fields})
        self._notify(folder, fields)
        if self._bar is not None:
            self._bar.update(1)

    def _notify(self, folder: HotFolder, fields: dict) -> None:
        """notify.webhook: queued for the sender thread; never waits."""
        hook = folder.cfg.notify
        if hook.webhook and fields["event"] in ("done", "quarantined"):
            body = {"profile": folder.name, "event": fields["event"], "input": fields["path"],
                    "output": fields.get("output"), "archived": fields.get("archived"),
                    "quarantined": fields.get("quarantined"), "reason": fields.get("reason"),
                    "message": fields.get("error"), "input_size": fields.get("input_size"),
                    "output_size": fields.get("output_size"), "size": fields.get("size"),
                    "seconds": fields["seconds"], "ms": fields.get("ms"), "time": time.time()}
            self.webhooks.send(Notification(hook.webhook, body, hook.timeout, hook.retries, folder.name))

    def _webhook_result(self, profile: str, delivered: bool) -> None:
        # Called from the sender's thread: prometheus_client counters are thread-safe.
        if not delivered:
            self.telemetry.webhook_failed(profile)

    def _after_job(self, worker: Worker) -> None:
        """Recycle a worker that has done its share."""
        limit = self.cfg.pool.max_jobs_per_worker
        if limit and worker.jobs_done >= limit and worker.state is WorkerState.IDLE:
            self.pool.retire(worker)

    def _worker_died(self, worker: Worker, job: Optional[Job]) -> None:
        how = worker.how_it_ended
        group = self._group_of(worker)
        if group is not None and group.starting is not None and worker in group.starting.workers:
            return  # a loading worker: _step_generations fails the generation
        if worker.retired and job is None:
            log.debug("%s retired", worker.name)
            return
        if group is not None:
            self._schedule_respawn(group, worker)
            group.owed_restarts += 1
        if job is None:
            log.error("%s died (%s) without a file", worker.name, how)
            return
        folder = self._folder_of(job)
        self.telemetry.worker_crashed()
        hint = " (SIGKILL from outside the daemon: perhaps the kernel's OOM killer)" if "SIGKILL" in how else ""
        log.error("%s died (%s) while processing %s (attempt %d)%s", worker.name, how, folder.show(job.rel),
                  job.attempts, hint)
        decision = self.policy.after_crash(job, how)
        if isinstance(decision, Retry):
            folder.queue.appendleft(decision.job)
        else:
            folder.doomed[job.id] = decision.error
            folder.queue.appendleft(job)

    @staticmethod
    def _schedule_respawn(group: Group, worker: Worker) -> None:
        """Back off if workers die right after starting (e.g. the model no longer loads)."""
        lived = time.monotonic() - worker.started_at
        if lived < 5.0:
            group.respawn_delay = min(RESPAWN_BACKOFF_MAX, max(0.5, group.respawn_delay * 2))
        else:
            group.respawn_delay = 0.0
        group.next_respawn = time.monotonic() + group.respawn_delay

    def _check_timeouts(self) -> None:
        for worker, error in self.policy.overdue(self.pool.busy(), time.monotonic()):
            folder = self._folder_of(worker.job)
            log.error("%s exceeded pool.job_timeout on %s; killing it", worker.name, folder.show(worker.job.rel))
            job = self.pool.kill(worker)
            if job is not None:
                folder.doomed[job.id] = error
                folder.queue.appendleft(job)

    def _keep_pool_full(self) -> None:
        if self.stopping:
            return
        for group in self.groups.values():
            if not group.active or (group.starting is not None and not group.starting.reload):
                continue
            current = self.pool.serving(group.active)
            if len(current) < group.size[0] and time.monotonic() >= group.next_respawn:
                self.pool.spawn(group.cfg, group.active, threads=group.size[1])
                group.next_respawn = time.monotonic() + max(0.5, group.respawn_delay)
                if group.owed_restarts:
                    group.owed_restarts -= 1
                    self.telemetry.worker_restarted()

    def _close_retired_folders(self) -> None:
        """Folders removed by a reload close once their claimed files are done; unused groups retire."""
        for folder in [f for f in self.folders if f.retiring]:
            if folder.queue or self.claims.pending(folder) or any(o is folder for o in self.owner.values()):
                continue
            folder.close()
            self.folders.remove(folder)
            log.info("hot folder %s closed (removed from the config)", folder.name)
        if self.pending is not None:
            return  # a reload is loading its workers: the folders have not moved to them yet
        used = {f.group for f in self.folders}
        for key in [k for k, g in self.groups.items() if k not in used and g.starting is None]:
            group = self.groups.pop(key)
            for w in self.pool.of_generation(group.active):
                self.pool.retire(w)
            log.info("workers of %s retired (no hot folder uses that model any more)", group.label)

    def _heartbeat(self) -> None:
        """WATCHDOG=1 only while every worker we want is alive; STATUS= now and then."""
        if self.announced and all(
            len([w for w in self.pool.serving(g.active) if w.process.is_alive()]) >= g.size[0]
            for g in self.groups.values() if g.active
        ):
            self.notifier.watchdog()
        self.telemetry.set_pipeline(self.pipeline())
        now = time.monotonic()
        if now - self._last_status >= STATUS_EVERY:
            self._last_status = now
            self.notifier.status(self.status_line())
            self._write_status()

    def _write_status(self) -> None:
        """The snapshot for `srwatch status`, in each work folder (ours; replaced atomically)."""
        if not self.opened:
            return
        snapshot = self.telemetry.snapshot()
        for folder in self.folders:
            try:
                claim.write_status(folder.cfg.work_dir, snapshot)
            except OSError as exc:  # a full or read-only disk: the status file is a nicety
                log.debug("cannot write the status file: %s", exc)

    def pipeline(self) -> Pipeline:
        """The queue and the workers now, for the metrics, the page and the status file."""
        now = time.monotonic()
        busy = self.pool.busy()
        oldest = min(self.taken_at.values(), default=now)
        paused = tuple(
            f"{name} paused{'' if f.name == 'default' else f' ({f.name})'}: {pause.reason}"
            for f in self.folders for name, pause in (("claiming", f.claim_pause), ("delivery", f.sink_pause))
            if pause.reason
        )
        workers = tuple(
            WorkerView(w.name, w.pid, w.state.value, w.generation, w.job.rel if w.job else None, w.jobs_done,
                       w.load_seconds, node=getattr(w, "node", ""))
            for w in self.pool.workers
        )
        state = "stopping" if self.stopping else "running" if self.announced else "starting"
        wall = datetime.now()
        folders = tuple(
            FolderView(f.name, f.settling, f.ready, len(f.queue),
                       "removed" if f.retiring else "open" if f.is_open(wall) else "closed", f.cfg.schedule.hours)
            for f in self.folders
        )
        return Pipeline(
            settling=sum(f.settling for f in self.folders),
            ready=sum(f.ready for f in self.folders),
            queued=sum(len(f.queue) for f in self.folders) + self.pool.sent_ahead(), in_progress=len(busy),
            oldest_pending_age=round(now - oldest, 3), workers=workers, paused=paused, state=state, folders=folders,
        )

    # -- state ---------------------------------------------------------------------------
    def _outstanding(self) -> int:
        """Files taken or to be taken now (held ones, outside their folder's hours, do not count)."""
        wall = datetime.now()
        waiting = sum(f.ready + f.settling for f in self.folders if f.is_open(wall) and not f.retiring)
        return waiting + self.claims.pending() + sum(len(f.queue) for f in self.folders) + len(self.pool.busy())

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
        total = sum(len(self.pool.serving(g.active)) for g in self.groups.values() if g.active)
        queued = sum(len(f.queue) for f in self.folders) + self.pool.sent_ahead()
        ready = sum(f.ready for f in self.folders)
        line = (
            f"{busy}/{total} workers busy, {queued} queued, {ready} ready, "
            f"{self.telemetry.totals['done']} done, {self.telemetry.totals['quarantined']} quarantined"
        )
        wall = datetime.now()
        for f in self.folders:
            where = "" if f.name == "default" else f" ({f.name})"
            for name, pause in (("claiming", f.claim_pause), ("delivery", f.sink_pause)):
                if pause.reason:
                    line += f"; {name} paused{where}: {pause.reason}"
            if f.watcher is not None and f.watcher.inbox_missing:
                line += f"; inbox missing{where}"
            if not f.is_open(wall):
                line += f"; {f.ready} held{where} (schedule.hours {f.cfg.schedule.hours})"
        if any(g.starting is not None for g in self.groups.values()):
            line += "; workers loading the model"
        return line

    # -- reload --------------------------------------------------------------------------
    def reload(self) -> None:
        """SIGHUP: read the config again; a bad one is logged and the old one kept.

        Only what changed is touched: a hot folder whose settings changed takes them for its
        next files (its claimed files keep their place), a new one opens, a removed one stops
        claiming and closes once its claimed files are done. A model (or any worker setting)
        that changed starts a new generation of workers for it; the old workers serve until
        it holds its model, then retire.
        """
        self.notifier.reloading()
        source = self.cfg.source
        try:
            new = load_config(source)
            for f in new.hot_folders():
                check_model_file(f)
                prepare_folders(f)
        except ConfigError as exc:
            log.error("reload of %s failed, keeping the running config:\n%s", source, exc)
            self.notifier.ready(self.status_line())
            return
        if self._reload_groups(new):
            self.pending = new  # applied once the new workers hold their model (_promote)
            return
        self._apply_config(new)

    def _apply_config(self, new: Config) -> None:
        """Take the new config for the hot folders, the policy and the endpoint."""
        old = self.cfg
        self.cfg = new
        self.pending = None
        self.policy = JobPolicy(new.pool.max_attempts, new.pool.job_timeout)
        self.pool.reconfigure(new.pool)
        self._reload_folders(new)
        if _web_settings(new) != _web_settings(old):
            self._restart_web()
        log.info("configuration reloaded from %s", new.source)
        self.notifier.ready(self.status_line())

    def _reload_groups(self, new: Config) -> bool:
        """Start new workers for groups whose model or layout changed; True if any are loading."""
        if self.pending is not None:  # a reload during a reload: the newest config wins
            self._cancel_reload()
        loading = False
        for key, planned in plan_groups(new).items():
            group = self.groups.get(key)
            if group is not None and (group.size == planned.size or group.requested == planned.requested):
                # Unchanged settings keep their workers, even when 'auto' would now share the
                # CPUs differently (another model came or went): the share is redone at start.
                continue
            if group is None:  # a new model: a group of its own
                group = self.groups[key] = planned
            # else: same model, another layout: a new generation replaces the old one
            group.starting = self._start_generation(planned, reload=True)
            log.info("reloading: new workers are loading %s", group.label)
            loading = True
        return loading

    def _reload_folders(self, new: Config) -> None:
        current = {f.name: f for f in self.folders if not f.retiring}
        for cfg in new.hot_folders():
            folder = current.pop(cfg.name, None)
            if folder is None:
                folder = HotFolder(cfg, group=group_key(cfg))
                self.folders.append(folder)
                if self.opened:
                    try:
                        self._open_folder(folder)
                    except ConfigError as exc:
                        log.error("hot folder %s cannot open: %s", folder.name, exc)
                        self.folders.remove(folder)
                        continue
                log.info("hot folder %s added", folder.name)
                continue
            old = folder.cfg
            folder.cfg = cfg
            folder.__dict__.pop("hours", None)  # schedule may have changed
            folder.group = group_key(cfg)
            if (cfg.paths.inbox, cfg.watch, cfg.work_dir) != (old.paths.inbox, old.watch, old.work_dir) and folder.watcher:
                folder.watcher.stop()
                folder.start_watcher(self.once)
        for folder in current.values():  # removed from the config
            folder.retiring = True
            if folder.watcher is not None:
                folder.watcher.stop()
            log.info("hot folder %s removed: it takes no new files and closes once its %d claimed file(s) are done",
                     folder.name, len(folder.queue))

    # -- the HTTP endpoint (metrics.listen) --------------------------------------------------
    def _start_web(self) -> None:
        """Metrics, status page and uploads on metrics.listen, if set; ConfigError if it cannot listen."""
        if not self.cfg.metrics.listen:
            return
        from .web import WebServer  # starlette and uvicorn are loaded only by daemons that serve

        from .web.app import Target

        targets = [Target(f.name, f.cfg.paths.inbox, tuple(f.cfg.watch.ignore)) for f in self.folders if not f.retiring]
        web = WebServer(self.cfg.metrics, self.telemetry, targets)
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
        """Stop the watchers, retire or kill workers; claimed files stay for the next start."""
        if self.stopping:
            self.notifier.stopping()
        for folder in self.folders:
            if folder.watcher is not None:
                folder.watcher.stop()
        unanswered = self.claims.close()  # claims under way end first; their files wait in the work folder
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
        self.pool.close()  # a Ray pool disconnects: actors still living end with this driver
        if self._bar is not None:
            self._bar.close()
        left = sum(len(f.queue) for f in self.folders) + unanswered
        if self.stopping:
            log.info("stopped: %s; %d claimed file(s) wait for the next start", self.status_line(), left)
        elif left:
            log.info("exiting with %d claimed file(s) not done", left)
        self._stop_web()
        self.webhooks.stop(timeout=2.0)
        for folder in self.folders:
            folder.close()

    def _open_progress(self) -> None:
        from tqdm import tqdm

        self._bar = tqdm(total=self._outstanding(), unit="file", file=sys.stderr, dynamic_ncols=True)


# -- worker groups ------------------------------------------------------------------------------
def group_key(cfg: Config) -> tuple:
    """What a worker process is built from: hot folders with equal keys share workers.

    Everything else (output, limits, paths, ...) travels with each job, so changing it never
    restarts a worker.
    """
    return (cfg.model, cfg.tile, cfg.log, bool(cfg.metrics.listen and cfg.metrics.page))


def plan_groups(root: Config) -> dict[tuple, Group]:
    """One group per distinct model settings, in the order of the hot folders, with its layout.

    A group's size is the largest `pool.workers` / `pool.threads_per_worker` its folders set;
    'auto' shares the CPUs fairly among the groups (all of them for a single hot folder,
    which is exactly `Config.worker_layout()`).
    """
    folders: dict[tuple, list[Config]] = {}
    for cfg in root.hot_folders():
        folders.setdefault(group_key(cfg), []).append(cfg)
    share = max(1, available_cpus() // len(folders))
    groups = {}
    for key, members in folders.items():
        workers = _largest([m.pool.workers for m in members])
        threads = _largest([m.pool.threads_per_worker for m in members])
        groups[key] = Group(key, members[0], layout_for(workers, threads, share, resolve_engine(members[0].model)),
                            requested=(workers, threads))
    return groups


def _largest(values: list) -> object:
    numbers = [v for v in values if isinstance(v, int)]
    return max(numbers) if numbers else "auto"


def _engine_label(cfg: Config) -> str:
    """e.g. 'openvino/bf16', for the build info metric."""
    try:
        return f"{resolve_engine(cfg.model)}/{resolve_precision(cfg.model)}"
    except Exception:  # noqa: BLE001 - a label only
        return cfg.model.engine


def _kb(job: Optional[Job]) -> str:
    size = job.size if job else None
    return f"{size / 1000:.1f} kB" if size is not None else "size unknown"


def _web_settings(cfg: Config) -> tuple:
    """What the HTTP endpoint is built from: a change restarts it on reload."""
    return (cfg.metrics, tuple((f.name, f.paths.inbox, tuple(f.watch.ignore)) for f in cfg.hot_folders()))
