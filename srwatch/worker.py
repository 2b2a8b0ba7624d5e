"""The worker process: load the engine once, then take one job at a time from the supervisor.

This is the child's side of the process boundary (the supervisor's side is pool.py). Every
job ends in exactly one message: Done, Failed (quarantined), Deferred (a folder could not
take a write; the job stays claimed) or Gone. Nothing on a job's path escapes as a crash.
"""
from __future__ import annotations

import ctypes
import datetime
import logging
import signal
import time
from dataclasses import replace
from multiprocessing.connection import Connection
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

from . import claim, sink
from .claim import Job
from .config import Config
from .errors import ModelLoadError, StorageError
from .messages import Deferred, Done, JobResult, LoadFailed, Ready

if TYPE_CHECKING:
    from .process import Rendered

log = logging.getLogger("srwatch.worker")

PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """Ask Linux to SIGKILL us if the supervisor dies, so no orphan keeps a claimed file."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):
        pass


class BoardSlot:
    """This worker's place on the pool's busy board (pool.BusyBoard): the job it holds, 0 for none."""

    def __init__(self, board: Optional[Any], slot: int) -> None:
        import numpy as np  # here: the supervisor imports this module too, and needs no numpy

        self.board = board if slot >= 0 else None
        self.slot = slot
        self._all = np.frombuffer(board, dtype=np.int64) if self.board is not None else None

    def hold(self, number: int) -> None:
        """The job of this dispatch number is taken (0: none any more)."""
        if self.board is not None:
            self.board[self.slot] = number

    def others_busy(self) -> bool:
        """Whether another worker of the pool holds a job now."""
        if self._all is None:
            return False
        return int((self._all != 0).sum()) - int(self._all[self.slot] != 0) > 0


def worker_main(cfg: Config, threads: int, conn: Connection, board: Optional[Any] = None, slot: int = -1) -> None:
    """Entry point of a worker process: load the engine once, then serve jobs until told to stop."""
    _die_with_parent()
    # Ctrl-C, SIGTERM and SIGHUP reach the whole process group; only the supervisor decides.
    for sig in (signal.SIGINT, signal.SIGHUP, signal.SIGTERM):
        signal.signal(sig, signal.SIG_IGN)
    from .logs import setup_logging

    setup_logging(cfg.log)
    from .process import Processor  # imported here: OpenCV is loaded in workers only

    started = time.monotonic()
    try:
        processor = Processor(cfg, threads)
    except ModelLoadError as exc:
        conn.send(LoadFailed(str(exc)))
        return
    except Exception as exc:  # noqa: BLE001 - report any load failure to the supervisor
        conn.send(LoadFailed(f"{type(exc).__name__}: {exc}"))
        return
    mine = BoardSlot(board, slot)
    crowded_threads = cfg.crowded_threads()
    if crowded_threads and mine.board is not None:
        try:
            processor.engine.prepare_crowded(crowded_threads, mine.others_busy)
        except Exception as exc:  # noqa: BLE001 - a second compile failing costs speed, not files
            log.warning("cannot prepare %d-thread inference for busy times (%s); every file uses %d",
                        crowded_threads, exc, processor.engine.threads)
    conn.send(Ready(scale=processor.scale, load_seconds=time.monotonic() - started))
    processors = Processors(processor)
    while True:
        try:
            item = conn.recv()
        except (EOFError, OSError):
            return
        if item is None:  # the sentinel: retire
            return
        job, job_cfg, crowded, number = item
        mine.hold(number)  # first: from here on a crash is this job's, not the previous one's
        try:
            for_job = processors.get(job_cfg)
        except Exception as exc:  # noqa: BLE001 - e.g. its cache folder cannot be opened: not the file's fault
            mine.hold(0)
            conn.send(Deferred(job.id, f"cannot prepare for {job_cfg.name}: {type(exc).__name__}: {exc}"))
            continue
        processors.engine.start_job(crowded)
        result = execute(for_job, job_cfg, job)
        if isinstance(result, Done) and processors.engine.threads_used:
            result = replace(result, threads=tuple(sorted(processors.engine.threads_used)))
        mine.hold(0)
        conn.send(result)


class Processors:
    """One Processor per hot folder's settings, all sharing the worker's one engine (loaded once)."""

    def __init__(self, first) -> None:
        self.engine = first.engine
        self.threads = first.threads
        self._by_settings = {_settings(first.cfg): first}

    def get(self, cfg: Config):
        """The Processor for `cfg`'s output, limits, preshrink and cache settings."""
        key = _settings(cfg)
        processor = self._by_settings.get(key)
        if processor is None:
            from .process import Processor

            processor = self._by_settings[key] = Processor(cfg, self.threads, engine=self.engine)
        return processor


def _settings(cfg: Config) -> str:
    """What a Processor takes from its config besides the model (which the worker's engine fixes)."""
    return cfg.model_dump_json(include={"output", "limits", "preshrink", "cache", "metrics"}) + str(cfg.cache_dir)


def execute(processor, cfg: Config, job: Job) -> JobResult:
    """Process one claimed file to its one final place: outbox + archive, or quarantine."""
    started = time.monotonic()
    try:
        finished = sink.resume(cfg, job)  # an earlier attempt may have delivered it already
        if finished is not None:
            return finished
        rendered = processor.process(job.path, max_bytes=job.size)
        return deliver(cfg, job, rendered, processor.scale, started)
    except Exception as exc:  # noqa: BLE001 - JobError is the file's fault; anything else a bug: neither loses it
        return settle_error(cfg, job, exc)


def deliver(cfg: Config, job: Job, rendered: "Rendered", scale: int, started: float) -> Done:
    """The sink side of a rendered job: output into the outbox, original archived, job released.

    Shared by the local workers (execute) and the Ray supervisor (raypool), so both keep the
    same exactly-once steps. `started` is monotonic; raises like the sink (settle_error maps it).
    """
    stages = dict(rendered.stages)
    mark = time.perf_counter()
    output = sink.deliver(cfg, job, rendered.data, output_stem(cfg, job, scale), rendered.ext)
    stages["deliver"] = time.perf_counter() - mark
    mark = time.perf_counter()
    archived = sink.finish_original(cfg, job)
    claim.release(job)
    stages["archive"] = time.perf_counter() - mark
    return Done(
        job_id=job.id,
        output=str(output),
        archived=str(archived) if archived else None,
        seconds=time.monotonic() - started,
        input_size=rendered.input_size,
        output_size=rendered.output_size,
        cached=rendered.cached,
        notes=tuple(rendered.notes),
        stages=stages,
        input_bytes=rendered.input_bytes,
        output_bytes=len(rendered.data),
        preview=rendered.preview,
    )


def settle_error(cfg: Config, job: Job, exc: BaseException) -> JobResult:
    """How an error ends a job (local worker or Ray supervisor): a folder's defers it, any other quarantines it."""
    if isinstance(exc, StorageError):
        return Deferred(job.id, str(exc))
    if not hasattr(exc, "reason"):  # a bug of ours: the traceback goes into the quarantine record
        log.error("unexpected error on %s: %s: %s (traceback in its quarantine record)", job.rel, type(exc).__name__, exc)
    return _fail(cfg, job, exc)


def _fail(cfg: Config, job: Job, error: BaseException) -> JobResult:
    """Quarantine (or finish an earlier delivery); a folder that cannot take it defers the job."""
    try:
        return sink.fail(cfg, job, error)
    except StorageError as exc:
        return Deferred(job.id, str(exc))
    except Exception as exc:  # noqa: BLE001 - keep the job claimed; the supervisor logs and backs off
        log.error("cannot quarantine %s: %s: %s (it stays claimed)", job.rel, type(exc).__name__, exc)
        log.debug("cannot quarantine %s", job.rel, exc_info=True)
        return Deferred(job.id, f"cannot quarantine: {type(exc).__name__}: {exc}")


def output_stem(cfg: Config, job: Job, scale: int) -> str:
    """The output's stem from `output.name` (default `<stem><suffix>`, e.g. photo_x3); the sink shortens long names."""
    stem = Path(job.name).stem if not job.name.startswith(".") else job.name
    model = cfg.model.path.stem if cfg.model else ""
    return cfg.output.stem_for(stem, scale, model=model, profile=cfg.name, date=datetime.date.today().isoformat())
