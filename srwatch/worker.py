"""The worker process: load the engine once, then take jobs one at a time from the supervisor.

This is the child's side of the process boundary (the supervisor's side is pool.py). Every
job ends in exactly one message: Done, Failed (quarantined), Deferred (a folder could not
take a write; the job stays claimed) or Gone. Nothing on a job's path escapes as a crash.
A job has two halves: computing (read, decode, infer, encode: compute()) in the main thread,
then delivering (outbox, archive: finish()) on the delivery threads, so the next jobs'
computing overlaps this one's waits on the disk (Delivery).
"""
from __future__ import annotations

import ctypes
import datetime
import logging
import os
import signal
import threading
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, replace
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

#: Deliveries one worker runs at once. A delivery mostly waits on the disk (six fsyncs in an
#: order the exactly-once promise needs: 8-12 ms per small file on a local disk, 60-200 ms on
#: a slow disk or a network share), so on a slow disk one at a time leaves the worker's core
#: idle while it waits; on a fast one the next job's computing outlasts the delivery and
#: the others stay unused. Each delivery in flight holds one encoded result in memory.
DELIVERY_THREADS = 4
#: Bytes of encoded results one worker's deliveries may hold at once. Four small results are
#: a few MB, but on a slow disk four PNGs of a 6000x6000 result (70-100 MB each) would stay in
#: every worker; past this the next result waits (and the worker computes nothing new, so the
#: pool sends it nothing more) until one is delivered. One result alone always goes, however big.
DELIVERY_BYTES = 256 << 20


def _die_with_parent() -> None:
    """Ask Linux to SIGKILL us if the supervisor dies, so no orphan keeps a claimed file."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):
        pass


class BoardSlot:
    """This worker's two places on the pool's busy board (pool.BusyBoard): board[2 * slot] the
    dispatch number of the job it computes (decode, inference, encode; 0 for none),
    board[2 * slot + 1] the highest dispatch number it has taken from its pipe. A job it holds
    that it took and does not compute is being delivered. The layout is written out here: the
    pool imports this module, not the reverse."""

    def __init__(self, board: Optional[Any], slot: int) -> None:
        import numpy as np  # here: the supervisor imports this module too, and needs no numpy

        self.board = board if slot >= 0 else None
        self.slot = slot
        self._computing = np.frombuffer(board, dtype=np.int64)[0::2] if self.board is not None else None

    def took(self, number: int) -> None:
        """The job of this dispatch number is taken from the pipe and being computed."""
        if self.board is not None:
            # Computing first: a death between the two writes is charged to this job, as it should.
            self.board[2 * self.slot] = number
            self.board[2 * self.slot + 1] = number

    def computed(self) -> None:
        """The job computed last is handed to the delivery threads: none is computed now."""
        if self.board is not None:
            self.board[2 * self.slot] = 0

    def others_busy(self) -> bool:
        """Whether another worker of the pool computes a job now (a delivery is mostly waiting on the disk)."""
        if self._computing is None:
            return False
        return int((self._computing != 0).sum()) - int(self._computing[self.slot] != 0) > 0


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
    delivery = Delivery(conn, mine)
    try:
        while not delivery.broken:
            try:
                item = conn.recv()
            except (EOFError, OSError):
                return
            if item is None:  # the sentinel: retire (after the deliveries in hand)
                return
            job, job_cfg, crowded, number = item
            mine.took(number)  # first: from here on a crash is this job's, not the previous one's
            log.debug("computing %s", job.rel)
            delivery.hand(compute(processors, job_cfg, job, crowded))
    finally:
        delivery.close()


@dataclass
class Computed:
    """A job after the worker's computing half: the rendered output to deliver, or already its result."""

    job: Job
    cfg: Config
    started: float  # monotonic, when the job was taken
    scale: int
    rendered: Optional["Rendered"] = None
    result: Optional[JobResult] = None  # set when there is nothing to deliver (resumed, failed, deferred)
    error: Optional[BaseException] = None  # the file's fault or a bug: settled (quarantined) by the delivery
    threads: tuple[int, ...] = ()


def compute(processors: "Processors", cfg: Config, job: Job, crowded: bool) -> Computed:
    """The CPU half of a job: resume an earlier attempt's delivery, or read, decode, infer and encode."""
    started = time.monotonic()
    try:
        processor = processors.get(cfg)
    except Exception as exc:  # noqa: BLE001 - e.g. its cache folder cannot be opened: not the file's fault
        return Computed(job, cfg, started, processors.engine.scale,
                        result=Deferred(job.id, f"cannot prepare for {cfg.name}: {type(exc).__name__}: {exc}"))
    processors.engine.start_job(crowded)
    done = Computed(job, cfg, started, processor.scale)
    try:
        done.result = sink.resume(cfg, job)  # an earlier attempt may have delivered it already
        if done.result is None:
            done.rendered = processor.process(job.path, max_bytes=job.size)
    except Exception as exc:  # noqa: BLE001 - JobError is the file's fault; anything else a bug: neither loses it
        done.error = exc
    done.threads = tuple(sorted(processors.engine.threads_used))
    return done


def finish(done: Computed) -> JobResult:
    """The I/O half of a job: its output into the outbox, the original archived; or its error settled."""
    if done.result is not None:
        return done.result
    if done.error is not None:
        return settle_error(done.cfg, done.job, done.error)
    assert done.rendered is not None
    try:
        result: JobResult = deliver(done.cfg, done.job, done.rendered, done.scale, done.started)
    except Exception as exc:  # noqa: BLE001 - as in compute(): nothing on a job's path escapes
        return settle_error(done.cfg, done.job, exc)
    if isinstance(result, Done) and done.threads:
        result = replace(result, threads=done.threads)
    return result


class Delivery:
    """The worker's delivery threads: while they write, fsync and link earlier jobs' outputs and
    archive their originals, the main thread computes the next job (sent ahead by the pool).

    A job's deliver and archive steps wait on the disk (six fsyncs: 8-12 ms per small file
    here, far more on a slow disk or a network share) and would leave the worker's core idle.
    Up to `threads` deliveries run at once (DELIVERY_THREADS), holding at most `max_bytes` of
    encoded output between them (DELIVERY_BYTES; one alone may hold more); their results go to the
    supervisor in the order the jobs were handed, which is the order they were sent, so the
    pool always knows which job a result ends. The board says which job is computed and which
    were taken, so the pool knows what a dead worker was computing and what it was delivering.
    """

    def __init__(self, conn: Connection, mine: BoardSlot, threads: int = DELIVERY_THREADS,
                 max_bytes: int = DELIVERY_BYTES) -> None:
        self.conn = conn
        self.mine = mine
        self.broken = False  # the pipe to the supervisor is gone: the worker stops
        self._max_held, self._max_bytes = threads, max_bytes
        # The order queue, its bytes and the pipe (one sender at a time); hand() waits on it for room.
        self._lock = threading.Condition()
        # Deliveries handed whose results are not sent yet, in the order handed: (job's name for
        # the log, its output's bytes, delivery), not the job itself, whose output is let go
        # once delivered.
        self._order: "deque[tuple[str, int, Future[JobResult]]]" = deque()
        self._held_bytes = 0  # their outputs' bytes
        self._threads = ThreadPoolExecutor(threads, thread_name_prefix="delivery")

    def hand(self, done: Computed) -> None:
        """Deliver `done` once a delivery thread and room for its bytes are free; returns at once then."""
        size = len(done.rendered.data) if done.rendered is not None else 0
        with self._lock:
            while self._order and (len(self._order) >= self._max_held
                                   or self._held_bytes + size > self._max_bytes):
                self._lock.wait()
            self._held_bytes += size
            self.mine.computed()  # taken and not computed: delivering, as the pool reads the board
            future = self._threads.submit(_finish_or_die, done)
            self._order.append((done.job.rel, size, future))
        # Outside the lock: on a future already done, the callback runs here, and takes it.
        future.add_done_callback(self._send_in_order)

    def close(self) -> None:
        """Finish the deliveries in hand and send their results, then end the threads."""
        self._threads.shutdown(wait=True)

    def _send_in_order(self, _future: "Future[JobResult]") -> None:
        # Whichever delivery ends sends every result now at the head of the order, its own
        # included once those handed before it are sent.
        with self._lock:
            while self._order and self._order[0][2].done():
                rel, size, future = self._order.popleft()
                result = future.result()
                log.debug("delivered %s: %s", rel, type(result).__name__)
                try:
                    self.conn.send(result)
                except (OSError, ValueError):
                    self.broken = True
                self._held_bytes -= size
                self._lock.notify()


def _finish_or_die(done: Computed) -> JobResult:
    """finish() on a delivery thread; a bug of ours kills the worker, so the pool sees a crash, not a stall."""
    try:
        return finish(done)
    except BaseException:  # noqa: BLE001
        log.exception("delivery of %s failed unexpectedly; worker exits", done.job.rel)
        os._exit(70)


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


def deliver(cfg: Config, job: Job, rendered: "Rendered", scale: int, started: float) -> Done:
    """The sink side of a rendered job: output into the outbox, original archived, job released.

    Shared by the local workers (finish) and the Ray supervisor (raypool), so both keep the
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
