"""The worker pool on a Ray cluster (`pool.backend: ray`): each worker is a Ray actor holding the model.

The supervisor stays the only process that touches the folders. It claims, reads the input
(`process.read_claimed`: no links, regular files only, at most the claimed size), sends the
bytes to an actor, and delivers what comes back through the sink with the local workers' own
code (`worker.deliver`, `worker.settle_error`). So the exactly-once steps, the quarantine
reasons and the retry policy are the local pool's: a lost actor (its process killed, its node
gone) is a worker crash, and a job past `pool.job_timeout` is killed with its actor and
quarantined as a timeout, both by the daemon as for a local worker.

Each actor loads the model once. The model file's bytes travel through Ray's object store
and are written to a temp folder on the actor's node for the engine (removed once it has
loaded), so nodes need srwatch installed but no shared folder. An actor renders one job at a
time (`Processor.process_bytes`, the local workers' code); `ray.prefetch` more are sent ahead
so it never waits for the supervisor between files. Every actor also holds one call that never
returns (`watch`, in a concurrency group of its own): it fails the moment the actor is lost,
like a local worker's process sentinel.

Actors are not detached: they belong to the daemon's driver, so a daemon killed with SIGKILL
takes them with it (Ray kills the actors of a driver that died).
"""
from __future__ import annotations

import logging
import os
import re
import shutil
import signal
import tempfile
import threading
import time
from collections import deque
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Optional

from . import claim, sink
from .claim import Job
from .config import CacheConfig, Config, PoolConfig, RayConfig, available_cpus
from .errors import ConfigError
from .messages import JobResult, LoadFailed, Ready
from .pool import Event, WorkerState
from .worker import deliver, settle_error

if TYPE_CHECKING:
    from .process import Rendered
    from .worker import Processors

log = logging.getLogger("srwatch.raypool")

RAY_MISSING = "pool.backend: ray needs `pip install 'srwatch[ray]'`"
WATCH_GROUP = "watch"  # the actor's concurrency group for its never-returning `watch` call
WAKE_POLL = 0.005  # in seconds: the longest wait while the supervisor also waits on a file descriptor (wait)


# -- the actor's side -------------------------------------------------------------------------
class RayActor:
    """A Ray actor's body: the engine, loaded once; renders one job's bytes at a time.

    It never touches srwatch's folders: bytes in, a `process.Rendered` out. JobErrors raised
    here reach the supervisor inside Ray's RayTaskError and quarantine the file there.
    """

    def __init__(self, cfg: Config, model: dict[str, bytes], threads: int) -> None:
        """Write the model to a temp folder on this node, load the engine from it, remove the folder."""
        from .logs import setup_logging

        setup_logging(cfg.log)
        started = time.monotonic()
        self.error: Optional[str] = None
        self.processors: Optional[Processors] = None
        folder = Path(tempfile.mkdtemp(prefix="srwatch-model-"))
        try:
            self.processors = _load(cfg, model, folder, threads)
        except Exception as exc:  # noqa: BLE001 - reported by ready(), as a local worker's LoadFailed
            self.error = str(exc) if hasattr(exc, "reason") else f"{type(exc).__name__}: {exc}"
        finally:
            shutil.rmtree(folder, ignore_errors=True)  # the engine holds the model in memory now
        self.load_seconds = time.monotonic() - started

    def ready(self) -> dict[str, Any]:
        """Where this actor runs and whether it holds its model: pid, node, scale, load time, error."""
        import ray

        context = ray.get_runtime_context()
        scale = self.processors.engine.scale if self.processors is not None else 0
        return {"pid": os.getpid(), "node_id": context.get_node_id(), "ip": ray.util.get_node_ip_address(),
                "scale": scale, "load_seconds": self.load_seconds, "error": self.error}

    def process(self, data: bytes, cfg: Config) -> Rendered:
        """Render one input file's bytes with `cfg`'s output settings (the job's hot folder)."""
        assert self.processors is not None
        return self.processors.get(cfg).process_bytes(data)

    def watch(self) -> None:
        """Never returns: the supervisor learns that the actor is lost when this call fails."""
        threading.Event().wait()


def _load(cfg: Config, model: dict[str, bytes], folder: Path, threads: int) -> Processors:
    """A Processors (worker.py) whose engine loads the model files written into `folder`."""
    from .process import Processor
    from .worker import Processors

    for name, data in model.items():
        (folder / name).write_bytes(data)
    here = cfg.model_copy(update={"model": cfg.model.model_copy(update={"path": folder / cfg.model.path.name})})
    return Processors(Processor(actor_config(here), threads))


def actor_config(cfg: Config) -> Config:
    """`cfg` as an actor uses it: without the result cache, whose folder is on the supervisor's machine."""
    return cfg.model_copy(update={"cache": CacheConfig(enabled=False)})


def model_files(cfg: Config) -> list[Path]:
    """The files the engine reads: model.path, and for precision int8 the IR beside it (.xml and .bin)."""
    path = cfg.model.path
    files = [path]
    if cfg.model.precision == "int8":
        ir = path.with_name(f"{path.stem}-int8.xml")  # engine.openvino.int8_model_path, without importing OpenVINO
        files += [ir, ir.with_suffix(".bin")]
    return files


# -- connecting ---------------------------------------------------------------------------------
def import_ray() -> Any:
    """The ray module, or a ConfigError that says how to install it."""
    try:
        import ray
    except ImportError as exc:
        raise ConfigError(f"{RAY_MISSING} ({exc})") from None
    return ray


@dataclass
class RaySession:
    """This daemon's connection to Ray, and the temp folder of a Ray it started itself (address: local)."""

    ray: Any
    temp_dir: Optional[Path] = None

    def close(self) -> None:
        """Disconnect (a local Ray stops with it); the driver's actors die with the connection."""
        self.ray.shutdown()
        if self.temp_dir is not None:
            shutil.rmtree(self.temp_dir, ignore_errors=True)


def connect(cfg: RayConfig) -> RaySession:
    """ray.init for `ray.address`: local (a Ray of our own), auto (this machine's cluster), host:port, ray://."""
    ray = import_ray()
    options: dict[str, Any] = {"namespace": cfg.namespace, "log_to_driver": True}  # actors' logs in ours
    temp_dir = None
    if cfg.address == "local":
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # a daemon does not report usage
        # Under /tmp, not the work folder: Ray's socket paths must fit in 107 bytes.
        temp_dir = Path(tempfile.mkdtemp(prefix="srwatch-ray-"))
        options.update(address="local", num_cpus=available_cpus(), include_dashboard=False, _temp_dir=str(temp_dir))
    else:
        options["address"] = cfg.address
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    try:
        ray.init(**options)
    except Exception as exc:  # noqa: BLE001 - no cluster, a bad address, a missing ray[client]: say which key
        if temp_dir is not None:
            shutil.rmtree(temp_dir, ignore_errors=True)
        raise ConfigError(f"ray.address: cannot connect to {cfg.address}: {type(exc).__name__}: {exc}") from None
    finally:
        for sig, handler in handlers.items():  # the supervisor alone decides what a signal does
            if handler is not None and signal.getsignal(sig) is not handler:
                signal.signal(sig, handler)
    log_nodes(ray, cfg)
    return RaySession(ray, temp_dir)


def log_nodes(ray: Any, cfg: RayConfig) -> None:
    """One line naming the cluster's live nodes and their CPUs and GPUs."""
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    shown = ", ".join(
        f"{n['NodeManagerAddress']}/{n['NodeID'][:8]} ({n['Resources'].get('CPU', 0):g} CPU, "
        f"{n['Resources'].get('GPU', 0):g} GPU)" for n in nodes
    )
    log.info("ray: connected to %s (namespace %s), %d node(s): %s", cfg.address, cfg.namespace, len(nodes), shown)


# -- the supervisor's side ------------------------------------------------------------------------
class ActorProcess:
    """What the daemon asks of a worker's process (is_alive, join, exitcode), for an actor."""

    def __init__(self) -> None:
        self.ended = False

    @property
    def exitcode(self) -> Optional[int]:
        """None while the actor lives, 1 once it is lost or stopped (RayWorker.how_it_ended says how)."""
        return 1 if self.ended else None

    def is_alive(self) -> bool:
        """False once the actor is lost or stopped."""
        return not self.ended

    def join(self, timeout: Optional[float] = None) -> None:
        """Nothing to wait for: ray.kill ends an actor on its node; no process of ours to reap."""


@dataclass(eq=False)
class Call:
    """One job sent to an actor, or settled by the supervisor before it got there (`result`)."""

    job: Job
    cfg: Config  # the job's hot folder's config: the sink step uses it
    sent: float  # monotonic
    read_seconds: float  # the supervisor's read of the input
    ref: Any = None  # the actor call's ObjectRef; None when `result` was decided at dispatch
    result: Optional[JobResult] = None


@dataclass(eq=False)
class RayWorker:
    """One actor as the supervisor sees it: the daemon's Worker fields, plus its node and calls in flight."""

    name: str
    actor: Any
    generation: int
    started_at: float  # monotonic
    process: ActorProcess = field(default_factory=ActorProcess)
    state: WorkerState = WorkerState.STARTING
    job: Optional[Job] = None  # the job the actor is running (the first of `calls`)
    job_started: float = 0.0  # monotonic: when it became the running one
    jobs_done: int = 0
    load_seconds: Optional[float] = None
    pid: Optional[int] = None  # the actor's process id, on its node
    node: str = ""  # ip/node-id prefix, e.g. 10.0.0.7/e86e7444
    scale: int = 0
    ready_ref: Any = None
    watch_ref: Any = None
    calls: deque[Call] = field(default_factory=deque)
    ended: str = ""
    retired: bool = False  # told to stop: its end is expected

    @property
    def how_it_ended(self) -> str:
        """How the actor was lost, for logs and worker_crash records."""
        return self.ended or "still running"


class RayPool:
    """Ray actors with the interface the daemon uses from pool.Pool; the only place that changes their state."""

    def __init__(self, cfg: Config, requeue: Callable[[Job], None]) -> None:
        """Connects at the first spawn (bootstrap), so a ConfigError stops the start with exit status 2."""
        self.workers: list[RayWorker] = []
        self._cfg = cfg
        self._requeue = requeue
        self._session: Optional[RaySession] = None
        self._actor_class: Any = None
        self._models: dict[tuple, Any] = {}  # model file identity -> ObjectRef of its files' bytes
        self._later: list[Event] = []  # events decided outside wait(), reported by the next wait()
        self._count = 0

    @property
    def ray(self) -> Any:
        """The ray module, connected."""
        return self.connect()

    def connect(self) -> Any:
        """Connect to Ray once (at the first spawn, in bootstrap); the ray module. ConfigError if it cannot."""
        if self._session is None:
            self._session = connect(self._cfg.ray)
            self._actor_class = self._session.ray.remote(concurrency_groups={WATCH_GROUP: 1})(RayActor)
        return self._session.ray

    # -- starting ---------------------------------------------------------------------------
    def spawn(self, cfg: Config, generation: int, threads: Optional[int] = None) -> RayWorker:
        """Start one actor for `cfg`'s model; wait() reports Ready once it holds it.

        Threads per actor: pool.threads_per_worker, or with 'auto' the CPUs Ray reserves for it
        (ray.num_cpus); the daemon's `threads` counts this machine's CPUs, not the node's.
        """
        self.connect()
        self._count += 1
        name = f"ray-{self._count}"
        options: dict[str, Any] = {
            "name": f"srwatch-{claim.HOST_TAG}-{os.getpid()}-{name}",  # whose it is, in `ray list actors`
            "num_cpus": cfg.ray.num_cpus, "num_gpus": cfg.ray.num_gpus, "max_restarts": 0, "max_task_retries": 0,
            "scheduling_strategy": "SPREAD",  # one lost node costs the fewest actors
        }
        if cfg.ray.memory_mb:
            options["memory"] = cfg.ray.memory_mb * 2**20
        actor = self._actor_class.options(**options).remote(cfg, self._model_ref(cfg), actor_threads(cfg))
        worker = RayWorker(name, actor, generation, time.monotonic())
        worker.ready_ref = actor.ready.remote()
        worker.watch_ref = actor.watch.options(concurrency_group=WATCH_GROUP).remote()
        self.workers.append(worker)
        log.debug("%s started (%g CPU, %g GPU, %d thread(s), generation %d)", name, cfg.ray.num_cpus,
                  cfg.ray.num_gpus, actor_threads(cfg), generation)
        self._warn_if_crowded(cfg)
        return worker

    def _model_ref(self, cfg: Config) -> Any:
        """The model's files in the object store, put there once per model file version."""
        files = model_files(cfg)
        try:
            key = tuple((str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in files)
            if key not in self._models:
                self._models[key] = self.ray.put({p.name: p.read_bytes() for p in files})
        except OSError as exc:
            raise ConfigError(f"model.path: cannot read {exc.filename}: {exc.strerror}") from None
        return self._models[key]

    def _warn_if_crowded(self, cfg: Config) -> None:
        """Say so when the cluster has fewer CPUs than the actors ask for: the rest wait for a node."""
        wanted = cfg.ray.num_cpus * len([w for w in self.workers if w.state is not WorkerState.DEAD])
        total = self.ray.cluster_resources().get("CPU", 0.0)
        if wanted > total:
            log.warning("ray: %d actor(s) x %g CPU do not fit the cluster's %g CPU; some wait until a node has room",
                        len(self.workers), cfg.ray.num_cpus, total)

    # -- feeding ----------------------------------------------------------------------------
    def dispatch(self, worker: RayWorker, job: Job, cfg: Config, more_waiting: bool = False) -> bool:
        """Hand `job` to an actor with room (idle, or running fewer than ray.prefetch ahead); False if it is gone.

        The supervisor finishes an earlier attempt's delivery or reads the input here; only
        the bytes go to the actor. `more_waiting` is not used: an actor's threads are fixed.
        """
        if worker.state is WorkerState.DEAD:
            return False
        assert self._has_room(worker)
        call = self._call(worker, job, cfg)
        worker.calls.append(call)
        if worker.job is None:
            worker.job, worker.job_started, worker.state = job, call.sent, WorkerState.BUSY
        return True

    def _call(self, worker: RayWorker, job: Job, cfg: Config) -> Call:
        """resume (an earlier attempt may have delivered it) and read in the supervisor, then send the bytes."""
        from .process import read_claimed  # the local workers' read: O_NOFOLLOW, at most the claimed size

        sent = time.monotonic()
        try:
            result = sink.resume(cfg, job)
            data = read_claimed(job.path, cfg.limits, job.size) if result is None else b""
        except Exception as exc:  # noqa: BLE001 - as worker.compute: the file's fault, a folder's, or a bug
            result, data = settle_error(cfg, job, exc), b""
        read = time.monotonic() - sent
        if result is not None:
            return Call(job, cfg, sent, read, result=result)
        return Call(job, cfg, sent, read, ref=worker.actor.process.remote(data, actor_config(cfg)))

    # -- results and deaths -------------------------------------------------------------------
    def wait(self, timeout: float, wake: Optional[int] = None) -> list[Event]:
        """Actors' readiness, results (delivered here, by the sink) and losses, with states updated.

        ray.wait cannot also wait on a file descriptor: with `wake` given, it waits at most
        WAKE_POLL, so an answer on `wake` is seen that soon.
        """
        if wake is not None:
            timeout = min(timeout, WAKE_POLL)
        events, self._later = self._later, []
        refs = self._refs()
        decided = any(w.calls and w.calls[0].ref is None for w in self.workers)
        if not refs:
            if not events and not decided:
                time.sleep(timeout)
            ready: list[Any] = []
        else:
            quick = bool(events or decided)
            ready, _ = self.ray.wait(refs, num_returns=1, timeout=0 if quick else timeout, fetch_local=False)
            if ready:  # and whatever else is done by now
                ready, _ = self.ray.wait(refs, num_returns=len(refs), timeout=0, fetch_local=False)
        done = set(ready)
        for w in list(self.workers):
            events.extend(self._step(w, done))
        return events

    def _refs(self) -> list[Any]:
        """What may finish: each actor's ready call while it loads, its watch, and the job it runs."""
        refs = []
        for w in self.workers:
            if w.state is WorkerState.DEAD:
                continue
            refs += [r for r in (w.ready_ref, w.watch_ref) if r is not None]
            if w.calls and w.calls[0].ref is not None:
                refs.append(w.calls[0].ref)
        return refs

    def _step(self, w: RayWorker, done: set) -> list[Event]:
        """Events for one actor: ready, finished jobs in order, then its loss or retirement."""
        events: list[Event] = []
        if w.ready_ref is not None and w.ready_ref in done:
            events += self._on_ready(w)
            if w.state is WorkerState.DEAD:
                return events
        lost: Optional[BaseException] = None
        while w.calls and (w.calls[0].ref is None or w.calls[0].ref in done):
            result, lost = self._outcome(w, w.calls[0])
            if result is None:
                break
            events += self._finished(w, result)
        if w.state is WorkerState.RETIRING and not w.calls:
            return events + self._retired(w)
        if lost is None and w.watch_ref in done:
            lost = self._error_of(w.watch_ref)
        if lost is not None:
            events += self._lost(w, lost)
        return events

    def _on_ready(self, w: RayWorker) -> list[Event]:
        """The actor holds its model (Ready) or could not load it (LoadFailed, then its death)."""
        ref, w.ready_ref = w.ready_ref, None
        try:
            info = self.ray.get(ref)
        except Exception as exc:  # noqa: BLE001 - lost while loading (its node died, killed, ...)
            return self._lost(w, exc)
        w.pid, w.scale, w.load_seconds = info["pid"], info["scale"], info["load_seconds"]
        w.node = f"{info['ip']}/{info['node_id'][:8]}"
        if info["error"]:
            events = [Event(w, LoadFailed(info["error"]))]
            return events + self._lost(w, None, f"could not load the model on node {w.node}")
        log.info("%s ready on node %s (pid %d, model loaded in %.1f s)", w.name, w.node, w.pid, w.load_seconds)
        if w.state is WorkerState.STARTING:
            w.state = WorkerState.IDLE
        return [Event(w, Ready(scale=w.scale, load_seconds=w.load_seconds))]

    def _outcome(self, w: RayWorker, call: Call) -> tuple[Optional[JobResult], Optional[BaseException]]:
        """(the job's result after the sink step, None) or (None, the error that says the actor is lost)."""
        if call.ref is None:
            return call.result, None
        ray = self.ray
        try:
            rendered = ray.get(call.ref)
        except ray.exceptions.RayTaskError as exc:  # the actor raised: a JobError is the file's fault
            cause = exc.cause if isinstance(exc.cause, BaseException) else exc
            return settle_error(call.cfg, call.job, cause), None
        except ray.exceptions.RayError as exc:  # lost: its process, its node, or the result with them
            return None, exc
        actor_seconds = sum(rendered.stages.values())
        # 'ray': the round trip less the actor's own work (transfers, scheduling): what Ray adds per file.
        stages = {"read": call.read_seconds, **rendered.stages,
                  "ray": max(0.0, time.monotonic() - w.job_started - actor_seconds)}
        try:
            # Seconds from when it became the running job (a prefetched one waited behind another).
            started = max(call.sent, w.job_started)
            return deliver(call.cfg, call.job, replace(rendered, stages=stages), w.scale, started), None
        except Exception as exc:  # noqa: BLE001 - as worker.finish
            return settle_error(call.cfg, call.job, exc), None

    def _finished(self, w: RayWorker, result: JobResult) -> list[Event]:
        """A job ended: the next call in flight becomes the running one."""
        call = w.calls.popleft()
        w.jobs_done += 1
        if w.calls:
            w.job, w.job_started = w.calls[0].job, time.monotonic()
        else:
            w.job = None
            if w.state is WorkerState.BUSY:
                w.state = WorkerState.IDLE
        return [Event(w, result, call.job)]

    def _error_of(self, ref: Any) -> BaseException:
        """The error a failed call raises (the watch call only ever ends in one)."""
        try:
            self.ray.get(ref, timeout=1)
        except Exception as exc:  # noqa: BLE001 - whatever it is, the actor is gone
            return exc
        return RuntimeError("the actor's watch call returned")

    def _lost(self, w: RayWorker, error: Optional[BaseException], why: str = "") -> list[Event]:
        """The actor is gone: the job it ran is a crash (death event); jobs sent ahead go back to the queue."""
        w.ended = why or describe_loss(w, error)
        self._stop_actor(w)
        head = w.calls.popleft() if w.calls else None
        events = self._give_back(w)
        if head is not None and head.ref is None:  # settled before it reached the actor: a result after all
            events.insert(0, Event(w, head.result, head.job))
            head = None
        self._bury(w)
        return events + [Event(w, None, head.job if head else None)]

    def _give_back(self, w: RayWorker) -> list[Event]:
        """Calls behind the running one: results already settled are reported, unstarted jobs requeued."""
        events = []
        for call in w.calls:
            if call.ref is None:
                events.append(Event(w, call.result, call.job))
            else:  # sent ahead, never started: this attempt did not happen
                log.info("%s goes back to the queue (sent ahead to %s, never started)", call.job.rel, w.name)
                self._requeue(claim.set_attempts(call.job, call.job.attempts - 1))
        w.calls.clear()
        return events

    def _retired(self, w: RayWorker) -> list[Event]:
        self._stop_actor(w)
        w.ended = w.ended or "retired"
        self._bury(w)
        return [Event(w, None, None)]

    def _stop_actor(self, w: RayWorker) -> None:
        if not w.process.ended:
            w.process.ended = True
            try:
                self.ray.kill(w.actor, no_restart=True)
            except Exception as exc:  # noqa: BLE001 - already gone with its node
                log.debug("ray.kill(%s): %s", w.name, exc)

    def _bury(self, w: RayWorker) -> None:
        w.state = WorkerState.DEAD
        w.job = None
        w.ready_ref = w.watch_ref = None
        if w in self.workers:
            self.workers.remove(w)

    # -- stopping -----------------------------------------------------------------------------
    def retire(self, worker: RayWorker) -> None:
        """Let an actor finish the jobs it holds, then stop it (wait() reports the end)."""
        if worker.state is WorkerState.DEAD:
            return
        worker.state = WorkerState.RETIRING
        worker.retired = True
        if not worker.calls:
            self._stop_actor(worker)  # now, so that a join in the daemon's teardown does not wait

    def kill(self, worker: RayWorker, wait_s: float = 5.0) -> Optional[Job]:
        """Kill an actor now; return the job it was running (now the caller's), and forget it.

        Jobs sent ahead go back to the queue (not an attempt); results the supervisor had
        settled come through the next wait().
        """
        head = worker.calls.popleft() if worker.calls else None
        if head is not None and head.ref is None:
            self._later.append(Event(worker, head.result, head.job))
            head = None
        self._later += self._give_back(worker)
        worker.ended = worker.ended or "killed by srwatch"
        self._stop_actor(worker)
        self._bury(worker)
        return head.job if head else None

    def close(self) -> None:
        """Disconnect from Ray; actors still living end with this driver."""
        if self._session is None:
            return
        for w in list(self.workers):
            self._stop_actor(w)
        self._session.close()
        self._session = None

    def reconfigure(self, pool_cfg: PoolConfig) -> None:
        """Nothing changes on reload: actors prefetch by ray.prefetch, read at start."""

    # -- views --------------------------------------------------------------------------------
    def _has_room(self, w: RayWorker) -> bool:
        return w.state is WorkerState.IDLE or (w.state is WorkerState.BUSY and len(w.calls) <= self._cfg.ray.prefetch)

    def of_generation(self, generation: int) -> list[RayWorker]:
        """Living actors of one generation."""
        return [w for w in self.workers if w.generation == generation]

    def with_room(self, generation: int) -> list[RayWorker]:
        """Actors of `generation` that take a job now: idle ones first, then those with room to prefetch."""
        room = [w for w in self.workers if w.generation == generation and self._has_room(w)]
        return sorted(room, key=lambda w: len(w.calls))

    def busy(self) -> list[RayWorker]:
        """Actors holding a job."""
        return [w for w in self.workers if w.job is not None]

    def sent_ahead(self) -> int:
        """Jobs sent to actors behind the one each runs."""
        return sum(max(0, len(w.calls) - 1) for w in self.workers)

    def serving(self, generation: int) -> list[RayWorker]:
        """Actors of `generation` that are not retiring (starting, idle or busy)."""
        return [w for w in self.workers if w.generation == generation and w.state is not WorkerState.RETIRING]


def actor_threads(cfg: Config) -> int:
    """Inference threads per actor: pool.threads_per_worker, or with 'auto' the CPUs Ray reserves for it."""
    threads = cfg.pool.threads_per_worker
    return threads if isinstance(threads, int) else max(1, int(cfg.ray.num_cpus))


def describe_loss(w: RayWorker, error: Optional[BaseException]) -> str:
    """'actor on node 10.0.0.7/e86e7444 (pid 4242) lost: ActorDiedError: <why>', for logs and records."""
    where = f"actor on node {w.node or '?'} (pid {w.pid if w.pid is not None else '?'}) lost"
    return f"{where}: {type(error).__name__}: {ray_reason(error)}" if error is not None else where


def ray_reason(error: BaseException) -> str:
    """The part of a Ray error that says why: 'its worker process has died; SYSTEM_ERROR: <detail>'.

    Ray's messages run to a page of advice; the cause, the exit type and its detail are kept.
    """
    text = " ".join(str(error).split())
    parts = []
    cause = re.search(r"The actor (?:is dead|died) because ([^.]*)", text)
    if cause:
        parts.append(cause.group(1))
    kind = re.search(r"Worker exit type: (\S+)", text)
    detail = re.search(r"Worker exit detail: (.*?)(?= There are some| The actor never| Lease ID|$)", text)
    if kind:
        parts.append(kind.group(1) + (f": {detail.group(1).strip()}" if detail and detail.group(1).strip() else ""))
    return "; ".join(parts) if parts else text[:200]
