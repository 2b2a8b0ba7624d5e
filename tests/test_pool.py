"""The pool's supervision rules, with fake worker processes (tests/fake_workers.py): real
processes, real pipes and a real busy board, no model."""
from __future__ import annotations

import time
from collections import deque
from pathlib import Path

import pytest

import fake_workers
from srwatch.claim import Job
from srwatch.config import parse_config
from srwatch.pool import BusyBoard, Event, Pool, Worker, WorkerState


def _cfg(root: Path):
    for name in ("inbox", "outbox", "quarantine", "archive", "work"):
        (root / name).mkdir(exist_ok=True)
    raw = {"paths": {k: str(root / k) for k in ("inbox", "outbox", "quarantine", "archive", "work")},
           "model": {"path": str(root / "model.onnx")}}
    return parse_config(raw, root)


def _job(root: Path, name: str) -> Job:
    return Job(id=name, rel=f"{name}.png", job_dir=root / "work" / name, claimed_at="-", attempts=1)


def _events_until_death(pool: Pool, timeout: float = 30.0) -> list[Event]:
    events: list[Event] = []
    deadline = time.monotonic() + timeout
    while not any(e.msg is None for e in events):
        assert time.monotonic() < deadline, f"no death reported: {events}"
        events += pool.wait(0.1)
    return events


@pytest.mark.parametrize("target, done, charged, requeued_ids", [
    (fake_workers.dies_between_files, ["first"], None, ["second"]),  # the second job never left the pipe
    (fake_workers.dies_on_second_file, ["first"], "second", []),  # the second job was being computed
    # Computing the second while delivering the first: the first goes back uncharged.
    (fake_workers.dies_computing_while_delivering, [], "second", ["first"]),
    (fake_workers.dies_delivering, [], "first", ["second"]),  # computing nothing: its delivery is charged
])
def test_a_dead_worker_is_charged_only_for_the_file_it_was_computing(tmp_path: Path, target, done, charged,
                                                                     requeued_ids) -> None:
    requeued: list[Job] = []
    cfg = _cfg(tmp_path)
    pool = Pool(requeue=requeued.append, prefetch=1, target=target)
    worker = pool.spawn(cfg, generation=1, threads=1)
    try:
        deadline = time.monotonic() + 60
        while worker.state is not WorkerState.IDLE:
            assert time.monotonic() < deadline, "the fake worker never said Ready"
            pool.wait(0.1)
        first, second = _job(tmp_path, "first"), _job(tmp_path, "second")
        assert pool.dispatch(worker, first, cfg)
        assert pool.dispatch(worker, second, cfg)  # sent ahead, waiting in the pipe
        events = _events_until_death(pool)
    finally:
        if worker.process.is_alive():
            worker.process.kill()
        worker.process.join(timeout=10)
    assert [e.job.id for e in events if e.msg is not None] == done
    [death] = [e for e in events if e.msg is None]
    assert (death.job.id if death.job else None) == charged
    assert [j.id for j in requeued] == requeued_ids
    assert pool.board.lane(worker.slot, 0) == pool.board.lane(worker.slot, 1) == 0 and worker not in pool.workers


@pytest.mark.parametrize("target, charged, requeued_ids", [
    # Computing the fourth while delivering three: only the fourth is charged.
    (fake_workers.dies_computing_while_delivering_three, "job4", ["job5", "job3", "job2", "job1"]),
    # Computing nothing: the oldest delivery is charged; the unread ones never are.
    (fake_workers.dies_delivering_three, "job1", ["job5", "job4", "job3", "job2"]),
])
def test_a_worker_gets_its_next_job_while_it_delivers_and_never_more_than_prefetch_to_compute(
        tmp_path: Path, target, charged, requeued_ids) -> None:
    """With pool.prefetch 1 a worker holds at most two jobs to compute (one it computes or will
    take next, one more in its pipe), however many it still delivers: the fakes take the third
    job only once the pool has sent it while the first two were delivering, and the pool sends
    exactly five before the death (a sixth would be a third job to compute)."""
    requeued: list[Job] = []
    cfg = _cfg(tmp_path)
    pool = Pool(requeue=requeued.append, prefetch=1, target=target)
    worker = pool.spawn(cfg, generation=1, threads=1)
    sent: list[str] = []
    events: list[Event] = []
    try:
        deadline = time.monotonic() + 60
        while not any(e.msg is None for e in events):
            assert time.monotonic() < deadline, f"no death reported; sent {sent}"
            for w in pool.with_room(1):
                job = _job(tmp_path, f"job{len(sent) + 1}")
                assert pool.dispatch(w, job, cfg)
                sent.append(job.id)
            events += pool.wait(0.02)
    finally:
        if worker.process.is_alive():
            worker.process.kill()
        worker.process.join(timeout=10)
    assert sent == ["job1", "job2", "job3", "job4", "job5"]
    [death] = [e for e in events if e.msg is None]
    assert death.job is not None and death.job.id == charged
    assert [j.id for j in requeued] == requeued_ids


def test_jobs_to_compute_are_counted_once_even_while_the_worker_writes_its_board_pair(tmp_path: Path) -> None:
    """The pool reads a worker's pair while the worker may be writing it (computing first, then
    taken). Every state on the way, the half-written ones included, counts each job once, and
    the count never rises as the worker goes on: dispatch() checks the room with_room() found
    again, after the attempt is written, and a count that rose in between once stopped the
    daemon (`assert self._has_room(worker)`, 1,000 files at once)."""
    pool = Pool()
    first, second = _job(tmp_path, "first"), _job(tmp_path, "second")
    worker = Worker("worker-1", process=None, conn=None, generation=1, started_at=0.0,  # type: ignore[arg-type]
                    state=WorkerState.BUSY, job=first, ahead=deque([second]), slot=pool.board.take(),
                    numbers={"first": 1, "second": 2})
    states = [  # (computing, taken) as the worker takes, computes and hands on both jobs
        (0, 0), (1, 0), (1, 1), (0, 1), (2, 1), (2, 2), (0, 2),
    ]
    counts = []
    for computing, taken in states:
        pool.board.array[2 * worker.slot + BusyBoard.COMPUTING] = computing
        pool.board.array[2 * worker.slot + BusyBoard.TAKEN] = taken
        counts.append(pool._to_compute(worker))
    assert counts == [2, 2, 2, 1, 1, 1, 0]
