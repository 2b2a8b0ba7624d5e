"""The worker pool: processes that each load the model once and then take one job at a time.

The supervisor (daemon.py) talks to each worker over its own pipe, so it always knows which
file a worker holds; a worker that dies is noticed through its process sentinel. Workers are
started with the 'spawn' method: forking a process whose OpenCV has started threads can
deadlock.
"""
from __future__ import annotations

import ctypes
import logging
import multiprocessing as mp
import signal
import time
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from pathlib import Path
from typing import Optional, Union

from . import claim, sink
from .claim import Job
from .config import Config
from .errors import JobError, ModelLoadError, OutputError

log = logging.getLogger("srwatch.pool")

_CTX = mp.get_context("spawn")
PR_SET_PDEATHSIG = 1


# -- messages (worker -> supervisor) -------------------------------------------------------
@dataclass(frozen=True)
class Ready:
    """The worker holds its model."""

    scale: int


@dataclass(frozen=True)
class LoadFailed:
    """The worker could not load the model."""

    message: str


@dataclass(frozen=True)
class Done:
    """The result is in the outbox and the original archived (or deleted)."""

    job_id: str
    output: str
    archived: Optional[str]
    seconds: float
    input_size: tuple[int, int]
    output_size: tuple[int, int]
    cached: bool
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class Failed:
    """The file is in quarantine with its reason."""

    job_id: str
    reason: str
    message: str
    quarantined: str


Message = Union[Ready, LoadFailed, Done, Failed]


# -- the worker process ----------------------------------------------------------------------
def _die_with_parent() -> None:
    """Ask Linux to SIGKILL us if the supervisor dies, so no orphan keeps a claimed file."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):
        pass


def worker_main(cfg: Config, threads: int, conn: Connection) -> None:
    """Entry point of a worker process: load the engine once, then serve jobs until told to stop."""
    _die_with_parent()
    # Ctrl-C and SIGHUP reach the whole process group; only the supervisor decides what to do.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    from .logs import setup_logging

    setup_logging(cfg.log)
    from .process import Processor  # imported here: OpenCV is loaded in workers only

    try:
        processor = Processor(cfg, threads)
    except ModelLoadError as exc:
        conn.send(LoadFailed(str(exc)))
        return
    except Exception as exc:  # noqa: BLE001 - report any load failure to the supervisor
        conn.send(LoadFailed(f"{type(exc).__name__}: {exc}"))
        return
    conn.send(Ready(scale=processor.scale))
    while True:
        try:
            job = conn.recv()
        except (EOFError, OSError):
            return
        if job is None:  # the sentinel: retire
            return
        conn.send(execute(processor, cfg, job))


def execute(processor, cfg: Config, job: Job) -> Union[Done, Failed]:
    """Process one claimed file to its one final place: outbox + archive, or quarantine."""
    started = time.monotonic()
    try:
        if job.delivered and Path(job.delivered).is_file():
            # An earlier run delivered the result and died before archiving: finish that.
            output, rendered = Path(job.delivered), None
        else:
            rendered = processor.process(job.path)
            output = deliver(cfg, job, rendered, processor.scale)
            job = claim.with_delivery(job, output)
    except JobError as exc:
        return _quarantine(cfg, job, exc.reason, str(exc), type(exc).__name__)
    except Exception as exc:  # noqa: BLE001 - an unexpected bug must not lose the file
        log.exception("unexpected error on %s", job.rel)
        return _quarantine(cfg, job, "error", f"{type(exc).__name__}: {exc}", type(exc).__name__)
    archived = sink.finish_original(job.path, cfg.on_success, _archive_dir(cfg, job))
    claim.release(job)
    return Done(
        job_id=job.id,
        output=str(output),
        archived=str(archived) if archived else None,
        seconds=time.monotonic() - started,
        input_size=rendered.input_size if rendered else (0, 0),
        output_size=rendered.output_size if rendered else (0, 0),
        cached=rendered.cached if rendered else False,
        notes=tuple(rendered.notes) if rendered else (),
    )


def output_stem(cfg: Config, job: Job, scale: int) -> str:
    """`<stem><suffix>`, e.g. photo_x3."""
    return Path(job.rel).stem + cfg.output.suffix.format(scale=scale)


def deliver(cfg: Config, job: Job, rendered, scale: int) -> Path:
    """Write the result to outbox/<relative folder>/<stem><suffix><ext>, atomically."""
    folder = cfg.paths.outbox / Path(job.rel).parent
    stem = output_stem(cfg, job, scale)
    try:
        return sink.write_new(folder, stem, rendered.ext, rendered.data)
    except OSError as exc:
        raise OutputError(f"cannot write the result to {folder}: {exc.strerror or exc}") from exc


def _archive_dir(cfg: Config, job: Job) -> Optional[Path]:
    return cfg.paths.archive / Path(job.rel).parent if cfg.on_success == "archive" else None


def _quarantine(cfg: Config, job: Job, reason: str, message: str, exception: str) -> Failed:
    path = quarantine_job(cfg, job, reason, message, exception)
    return Failed(job_id=job.id, reason=reason, message=message, quarantined=str(path))


def quarantine_job(cfg: Config, job: Job, reason: str, message: str, exception: str) -> Path:
    """Move a claimed file to quarantine/<relative path> with its reason; release the job."""
    folder = cfg.paths.quarantine / Path(job.rel).parent
    path = sink.quarantine(
        job.path, folder, original_path=job.rel, reason=reason, message=message,
        exception=exception, attempts=job.attempts, claimed_at=job.claimed_at,
    )
    claim.release(job)
    return path


# -- the supervisor's view of a worker ----------------------------------------------------------
@dataclass
class Worker:
    """One worker process as the supervisor sees it."""

    name: str
    process: mp.Process
    conn: Connection
    generation: int
    started_at: float
    ready: bool = False
    job: Optional[Job] = None
    job_started: float = 0.0
    jobs_done: int = 0
    retiring: bool = False

    @property
    def idle(self) -> bool:
        """Ready for a job."""
        return self.ready and self.job is None and not self.retiring and self.process.is_alive()


def describe_exit(exitcode: Optional[int]) -> str:
    """'exit status 3' or 'signal SIGKILL (9)', for logs and quarantine reasons."""
    if exitcode is None:
        return "still running"
    if exitcode < 0:
        try:
            name = signal.Signals(-exitcode).name
        except ValueError:
            name = "signal"
        return f"signal {name} ({-exitcode})"
    return f"exit status {exitcode}"


@dataclass
class Pool:
    """Starts, feeds, watches and stops worker processes."""

    cfg: Config
    workers: list[Worker] = field(default_factory=list)
    generation: int = 0
    _count: int = 0

    def spawn(self, cfg: Optional[Config] = None, generation: Optional[int] = None) -> Worker:
        """Start one worker process for `cfg` (default: the pool's config)."""
        cfg = cfg or self.cfg
        _, threads = cfg.worker_layout()
        parent, child = _CTX.Pipe()
        self._count += 1
        name = f"worker-{self._count}"
        process = _CTX.Process(target=worker_main, args=(cfg, threads, child), name=f"srwatch-{name}", daemon=True)
        process.start()
        child.close()
        worker = Worker(name, process, parent, self.generation if generation is None else generation, time.monotonic())
        self.workers.append(worker)
        log.debug("%s started (pid %d, %d thread(s))", name, process.pid, threads)
        return worker

    def dispatch(self, worker: Worker, job: Job) -> None:
        """Hand `job` to an idle worker."""
        worker.job = job
        worker.job_started = time.monotonic()
        worker.conn.send(job)

    def wait(self, timeout: float) -> list[tuple[Worker, Optional[Message]]]:
        """Messages from workers, and (worker, None) for each worker that died."""
        handles = {}
        for w in self.workers:
            handles[w.conn] = w
            handles[w.process.sentinel] = w
        if not handles:
            time.sleep(timeout)
            return []
        out: list[tuple[Worker, Optional[Message]]] = []
        dead: list[Worker] = []
        for handle in wait(list(handles), timeout=timeout):
            w = handles[handle]
            if handle is w.conn:
                try:
                    while w.conn.poll():
                        out.append((w, w.conn.recv()))
                except (EOFError, OSError):
                    pass
            elif w not in dead:
                dead.append(w)
        for w in dead:
            # Read what it managed to send before dying (e.g. Done, then a crash on exit).
            try:
                while w.conn.poll():
                    out.append((w, w.conn.recv()))
            except (EOFError, OSError):
                pass
            w.process.join(timeout=1)
            out.append((w, None))
        return out

    def remove(self, worker: Worker) -> None:
        """Forget a dead worker."""
        if worker in self.workers:
            self.workers.remove(worker)
        worker.conn.close()

    def retire(self, worker: Worker) -> None:
        """Let a worker finish its job, then stop (sentinel on its pipe)."""
        worker.retiring = True
        if worker.job is None:
            try:
                worker.conn.send(None)
            except OSError:
                pass

    def kill(self, worker: Worker) -> None:
        """SIGKILL a worker (timeout, forced shutdown); its death is reported by wait()."""
        if worker.process.is_alive():
            worker.process.kill()

    def alive(self) -> list[Worker]:
        """Workers whose process is running."""
        return [w for w in self.workers if w.process.is_alive()]

    def busy(self) -> list[Worker]:
        """Workers holding a job."""
        return [w for w in self.workers if w.job is not None]


def pool_size(cfg: Config) -> int:
    """How many workers the config asks for."""
    return cfg.worker_layout()[0]
