"""The supervisor's side of the worker pool: start, feed, watch and stop worker processes.

Each worker has its own pipe, so the supervisor always knows which files a worker holds; a
worker that dies is noticed through its process sentinel. A worker busy with short jobs gets
its next one sent ahead (`pool.prefetch`): it waits in the pipe, so the worker starts
computing it the moment it has computed the one before, while its delivery threads still
write the outputs of that one and those before (worker.Delivery), instead of waiting for the
supervisor to take a result in and send the next job. Workers are started with the 'spawn'
method: forking a process whose OpenCV has started threads can deadlock. The child's code
lives in worker.py; what crosses the pipe in messages.py. Besides the pipes, the workers share one thing: the
busy board, two numbers per worker that say which file it computes and which it has taken
from its pipe, which the others read to choose their thread count and the pool reads to
feed it and when it dies (the file it was computing is the one it died on; one still unread
in its pipe is not): BusyBoard.

A worker's state is changed here only (spawn, ready, dispatch, result, retire, death).
"""
from __future__ import annotations

import enum
import logging
import multiprocessing as mp
import signal
import time
from collections import deque
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from typing import TYPE_CHECKING, Callable, Optional

from .claim import Job
from .config import Config, PoolConfig
from .messages import Deferred, Done, Failed, Gone, LoadFailed, Message, Ready
from .worker import worker_main

if TYPE_CHECKING:
    from .raypool import RayPool

log = logging.getLogger("srwatch.pool")

_CTX = mp.get_context("spawn")

#: pool.prefetch auto: a job is sent ahead to a worker whose last job took less than this
#: (in seconds). The wait it saves is a few ms per file; on long jobs that is nothing, while a
#: job sent ahead keeps a later, more urgent file (another hot folder's) behind it.
PREFETCH_BELOW_SECONDS = 2.0


#: Slots on the pool's busy board: one per live worker process (a new one takes a dead one's).
BOARD_SLOTS = 256


class BusyBoard:
    """Two shared numbers per worker process: the dispatch number of the job it computes (0 for
    none) and the highest dispatch number it has taken from its pipe.

    Each worker writes only its own pair (worker.BoardSlot): both the moment it takes a job
    from its pipe, computing cleared when it hands the job to its delivery threads; the pool
    hands pairs out and clears the pair of a worker that is gone. A job the worker holds is
    thus computed (its number in the first), delivered (taken, not computed) or still unread
    in its pipe (above the second). Workers read the others' computing numbers before an
    inference to run on fewer threads while others are busy (engine.prepare_crowded); the pool
    reads a worker's pair to tell how many jobs it still has to compute (to send the next one
    ahead while it delivers others) and which job a dead worker died on (died_on()).
    """

    COMPUTING, TAKEN = 0, 1  # a slot's two lanes: array[2 * slot + lane]

    def __init__(self, size: int = BOARD_SLOTS) -> None:
        self.array = _CTX.RawArray("q", 2 * size)
        self._free = list(range(size - 1, -1, -1))

    def take(self) -> int:
        """A free slot, or -1 when all are taken (that worker then never counts as busy)."""
        return self._free.pop() if self._free else -1

    def lane(self, slot: int, lane: int) -> int:
        """The number a worker's slot holds in `lane` (0: none)."""
        return int(self.array[2 * slot + lane])

    def release(self, slot: int) -> None:
        """The slot of a worker that is gone: cleared (it may have died busy) and free again."""
        if slot >= 0:
            self.array[2 * slot] = self.array[2 * slot + 1] = 0
            self._free.append(slot)


class WorkerState(enum.Enum):
    """Where a worker is in its life."""

    STARTING = "starting"  # loading its model
    IDLE = "idle"  # ready for a job
    BUSY = "busy"  # holding a job
    RETIRING = "retiring"  # told to stop after its job (or now, if it has none)
    DEAD = "dead"


@dataclass
class Worker:
    """One worker process as the supervisor sees it."""

    name: str
    process: mp.Process
    conn: Connection
    generation: int
    started_at: float  # monotonic
    state: WorkerState = WorkerState.STARTING
    job: Optional[Job] = None  # the job it runs
    job_started: float = 0.0  # monotonic: when it became the running one
    ahead: deque[Job] = field(default_factory=deque)  # sent ahead, waiting in its pipe, in order
    last_job_seconds: Optional[float] = None  # how long its last job took
    jobs_done: int = 0
    load_seconds: Optional[float] = None
    retired: bool = False  # told to stop: its exit is expected (its state is DEAD once it is gone)
    slot: int = -1  # its place on the pool's busy board
    numbers: dict[str, int] = field(default_factory=dict)  # job id -> dispatch number, for jobs it holds

    @property
    def pid(self) -> Optional[int]:
        """The process id."""
        return self.process.pid

    @property
    def held(self) -> list[Job]:
        """The jobs it holds, oldest first: the one it runs, then those sent ahead."""
        return ([self.job] if self.job is not None else []) + list(self.ahead)

    @property
    def how_it_ended(self) -> str:
        """Its exit status or signal in words (a Ray worker says how its actor was lost)."""
        return describe_exit(self.process.exitcode)


@dataclass(frozen=True)
class Event:
    """Something a worker said or did: a message (with the job it concerned), or its death (msg None)."""

    worker: Worker
    msg: Optional[Message]
    job: Optional[Job] = None  # for results and deaths: the job the worker held


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
    """The worker processes; the only place that changes a worker's state.

    `requeue` takes back the jobs sent ahead to a worker that dies or is killed before it
    started them; `prefetch` and `max_jobs` come from the pool section (reconfigure()).
    """

    requeue: Callable[[Job], None] = lambda job: None
    prefetch: "int | str" = "auto"
    max_jobs: int = 0
    workers: list[Worker] = field(default_factory=list)
    board: BusyBoard = field(default_factory=BusyBoard)
    # The worker process's code (worker.worker_main); a test gives a fake to check the rules here.
    target: Callable[..., None] = worker_main
    _count: int = 0
    _dispatched: int = 0  # dispatch numbers (0: none)

    def reconfigure(self, pool_cfg: PoolConfig) -> None:
        """Take pool.prefetch and pool.max_jobs_per_worker (at start and on reload)."""
        self.prefetch = pool_cfg.prefetch
        self.max_jobs = pool_cfg.max_jobs_per_worker

    def spawn(self, cfg: Config, generation: int, threads: Optional[int] = None) -> Worker:
        """Start one worker process for `cfg`'s model; it reports Ready once it holds it."""
        threads = threads or cfg.worker_layout()[1]
        parent, child = _CTX.Pipe()
        self._count += 1
        name = f"worker-{self._count}"
        slot = self.board.take()
        process = _CTX.Process(target=self.target, args=(cfg, threads, child, self.board.array, slot),
                               name=f"srwatch-{name}", daemon=True)
        try:
            process.start()
        except BaseException:
            self.board.release(slot)
            raise
        child.close()
        worker = Worker(name, process, parent, generation, time.monotonic(), slot=slot)
        self.workers.append(worker)
        log.debug("%s started (pid %d, %d thread(s), generation %d)", name, process.pid, threads, generation)
        return worker

    def dispatch(self, worker: Worker, job: Job, cfg: Config, more_waiting: bool = False) -> bool:
        """Hand `job` (with its hot folder's config) to a worker with room; False if the worker just died.

        An idle worker starts it at once; a busy one (see _has_room) once it has computed the jobs
        before it (while it delivers those). A death is reported by wait(). The config travels
        with the job, so hot folders that share a model share workers, and a reload that
        changes only output settings restarts nothing. With it goes whether the job will share
        the CPUs (other workers hold jobs, or `more_waiting` files wait): a worker that can runs
        it on fewer threads then.
        """
        assert self._has_room(worker)
        crowded = more_waiting or any(w is not worker and (w.job is not None or w.ahead) for w in self.workers)
        self._dispatched += 1
        try:
            worker.conn.send((job, cfg, crowded, self._dispatched))
        except OSError:
            return False
        worker.numbers[job.id] = self._dispatched
        if worker.job is None:
            worker.job = job
            worker.job_started = time.monotonic()
            worker.state = WorkerState.BUSY
        else:
            worker.ahead.append(job)
        return True

    def _has_room(self, w: Worker) -> bool:
        """Idle; or busy, with fewer jobs still to compute than one plus what pool.prefetch allows.

        Jobs it only delivers do not count: its main thread is free for the next one while its
        delivery threads wait on the disk. With pool.max_jobs_per_worker, never more jobs than
        it may still do: it goes idle at its last one and is recycled then.
        """
        if self.max_jobs and w.jobs_done + len(w.held) >= self.max_jobs:
            return False
        if w.state is WorkerState.IDLE:
            return True
        return w.state is WorkerState.BUSY and self._to_compute(w) < 1 + self._prefetch_for(w)

    def _to_compute(self, w: Worker) -> int:
        """Jobs `w` holds that it computes now or has not taken from its pipe yet (from the board).

        The worker writes computing, then taken (worker.BoardSlot.took); read in the other
        order, and a job counted as computed only once it is also marked taken, a pair read
        while it writes still counts each job once. The count only falls as the worker goes
        on, so a worker found with room still has it when dispatch() checks again. Without a
        board slot: every job it holds.
        """
        held = w.held
        if w.slot < 0:
            return len(held)
        taken = self.board.lane(w.slot, BusyBoard.TAKEN)
        computing = self.board.lane(w.slot, BusyBoard.COMPUTING)
        numbers = [w.numbers.get(j.id, 0) for j in held]
        return sum(1 for n in numbers if n > taken) + (0 < computing <= taken and computing in numbers)

    def _prefetch_for(self, w: Worker) -> int:
        if isinstance(self.prefetch, int):
            return self.prefetch
        fast = w.last_job_seconds is not None and w.last_job_seconds < PREFETCH_BELOW_SECONDS
        return 1 if fast else 0

    def wait(self, timeout: float, wake: Optional[int] = None) -> list[Event]:
        """Messages from workers and their deaths, with worker states updated; waits at most
        `timeout`, and no longer than it takes the file descriptor `wake` to become readable."""
        handles: dict[object, Optional[Worker]] = {}
        for w in self.workers:
            handles[w.conn] = w
            handles[w.process.sentinel] = w
        if wake is not None:
            handles[wake] = None
        if not handles:
            time.sleep(timeout)
            return []
        events: list[Event] = []
        dead: list[Worker] = []
        for handle in wait(list(handles), timeout=timeout):
            w = handles[handle]
            if w is None:
                continue  # the wake-up: its reader drains it
            if handle is w.conn:
                events.extend(self._drain(w))
            elif w not in dead:
                dead.append(w)
        for w in dead:
            events.extend(self._drain(w))  # what it sent before dying (e.g. Done, then a crash on exit)
            w.process.join(timeout=1)
            held = w.held
            job = self.died_on(w, held)
            # Every other file it held goes back first in its queue, uncharged: one still unread
            # in its pipe, or one it was delivering while it computed the one it died on.
            w.job, w.ahead = None, deque(j for j in held if j is not job)
            events.append(Event(w, None, job))
            self._give_back(w)
            self._bury(w)
        return events

    def died_on(self, w: Worker, held: list[Job]) -> Optional[Job]:
        """Of the jobs a dead worker held, the one its death is charged to (None: it had taken none).

        The job it was computing (decode, inference, encode: where a bad file crashes a
        process); if none, the oldest it was delivering. Jobs still unread in its pipe are
        never charged. Without a board slot it cannot tell: the oldest.
        """
        if w.slot < 0:
            return held[0] if held else None
        by_number = {w.numbers[j.id]: j for j in held if j.id in w.numbers}
        computing = by_number.get(self.board.lane(w.slot, BusyBoard.COMPUTING))
        if computing is not None:
            return computing
        taken = self.board.lane(w.slot, BusyBoard.TAKEN)
        delivering = [n for n in by_number if 0 < n <= taken]
        return by_number[min(delivering)] if delivering else None

    def _drain(self, w: Worker) -> list[Event]:
        events: list[Event] = []
        try:
            while w.state is not WorkerState.DEAD and w.conn.poll():
                events.append(self._receive(w, w.conn.recv()))
        except (EOFError, OSError):
            pass
        return events

    def _receive(self, w: Worker, msg: Message) -> Event:
        """Update the worker's state for a message; the event carries the job it concerned."""
        if isinstance(msg, Ready):
            w.load_seconds = msg.load_seconds
            if w.state is WorkerState.STARTING:
                w.state = WorkerState.IDLE
            return Event(w, msg)
        if isinstance(msg, LoadFailed):
            return Event(w, msg)
        job = w.job
        if isinstance(msg, (Done, Failed, Deferred, Gone)):
            if job is not None:
                w.numbers.pop(job.id, None)
            now = time.monotonic()
            w.last_job_seconds = now - w.job_started
            w.jobs_done += 1
            if w.ahead:  # it reads the next one from its pipe now
                w.job, w.job_started = w.ahead.popleft(), now
            else:
                w.job = None
                if w.state is WorkerState.BUSY:
                    w.state = WorkerState.IDLE
                elif w.state is WorkerState.RETIRING:
                    self._send_stop(w)
        return Event(w, msg, job)

    def _give_back(self, w: Worker) -> None:
        """Jobs sent ahead to a worker that is gone: it never started them; first in their queues again."""
        while w.ahead:
            self.requeue(w.ahead.pop())  # last first, so they end up in their order

    def _bury(self, w: Worker) -> None:
        w.state = WorkerState.DEAD
        w.job = None
        w.ahead.clear()
        w.numbers.clear()
        if w in self.workers:
            self.workers.remove(w)
            self.board.release(w.slot)
        w.conn.close()

    def retire(self, worker: Worker) -> None:
        """Let a worker finish its job (and those sent ahead), then stop (sentinel on its pipe)."""
        if worker.state is WorkerState.DEAD:
            return
        busy = worker.job is not None
        worker.state = WorkerState.RETIRING
        worker.retired = True
        if not busy:
            self._send_stop(worker)

    @staticmethod
    def _send_stop(worker: Worker) -> None:
        try:
            worker.conn.send(None)
        except OSError:
            pass

    def kill(self, worker: Worker, wait_s: float = 5.0) -> Optional[Job]:
        """SIGKILL a worker and wait for it; return the job it ran (now the caller's), and forget it.

        Jobs sent ahead go back through `requeue`.
        """
        job = worker.job
        if worker.process.is_alive():
            worker.process.kill()
        worker.process.join(timeout=wait_s)
        self._give_back(worker)
        self._bury(worker)
        return job

    def of_generation(self, generation: int) -> list[Worker]:
        """Living workers of one generation."""
        return [w for w in self.workers if w.generation == generation]

    def with_room(self, generation: int) -> list[Worker]:
        """Workers of `generation` that take a job now: idle ones first, then those with room to prefetch."""
        room = [w for w in self.workers if w.generation == generation and self._has_room(w)]
        return sorted(room, key=lambda w: len(w.held))

    def busy(self) -> list[Worker]:
        """Workers holding a job."""
        return [w for w in self.workers if w.job is not None]

    def sent_ahead(self) -> int:
        """Jobs waiting in workers' pipes behind the one each runs."""
        return sum(len(w.ahead) for w in self.workers)

    def serving(self, generation: int) -> list[Worker]:
        """Workers of `generation` that are not retiring (starting, idle or busy)."""
        return [w for w in self.workers if w.generation == generation and w.state is not WorkerState.RETIRING]

    def close(self) -> None:
        """Nothing to let go of: worker processes are stopped one by one (the Ray pool disconnects here)."""


def make_pool(cfg: Config, requeue: Callable[[Job], None]) -> "Pool | RayPool":
    """The worker pool `pool.backend` names: local processes, or Ray actors (srwatch.raypool).

    `requeue` takes back a job a pool had sent ahead but never started (a worker's or a Ray
    actor's prefetched job when it is lost or killed): this attempt did not happen.
    """
    if cfg.pool.backend == "ray":
        from .raypool import RayPool  # imports ray: only daemons that use it pay for it

        return RayPool(cfg, requeue)
    pool = Pool(requeue=requeue)
    pool.reconfigure(cfg.pool)
    return pool
