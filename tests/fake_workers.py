"""Fake worker processes for the pool's supervision rules (the real one is srwatch.worker.worker_main).

Each takes worker_main's arguments, speaks the same messages and marks the busy board the same
way (worker.BoardSlot), but does no image work: it only acts out one way of dying.
"""
from __future__ import annotations

import os
import time

from srwatch.messages import Done, Ready
from srwatch.worker import BoardSlot


def _done(job) -> Done:
    return Done(job_id=job.id, output="-", archived=None, seconds=0.0, input_size=None, output_size=None)


def _wait_for_next(conn, timeout: float = 30.0) -> None:
    """Until the supervisor has sent the next job ahead (it waits in the pipe, unread)."""
    deadline = time.monotonic() + timeout
    while not conn.poll(0.01):
        if time.monotonic() > deadline:
            os._exit(4)


def _take(conn, mine: BoardSlot) -> tuple:
    """Take the next job from the pipe and start computing it (as worker_main does); (job, number)."""
    job, _cfg, _crowded, number = conn.recv()
    mine.took(number)
    return job, number


def _hand_to_delivery(mine: BoardSlot) -> None:
    """What worker.Delivery.hand marks: computing cleared (the job stays taken)."""
    mine.computed()


def _first_job_handed(conn, board, slot) -> tuple:
    """Ready; take the first job, wait until the next one is sent ahead, hand the first to delivery.

    Returns (the worker's board slot, the first job)."""
    mine = BoardSlot(board, slot)
    conn.send(Ready(scale=3, load_seconds=0.0))
    job, _number = _take(conn, mine)
    _wait_for_next(conn)
    _hand_to_delivery(mine)
    return mine, job


def _first_job_then_wait(conn, board, slot) -> BoardSlot:
    """As _first_job_handed, then report the first done (its delivery over)."""
    mine, job = _first_job_handed(conn, board, slot)
    conn.send(_done(job))
    return mine


def dies_between_files(cfg, threads, conn, board, slot) -> None:
    """Finishes its first job, then dies before taking the next one from its pipe."""
    _first_job_then_wait(conn, board, slot)
    os._exit(3)


def dies_on_second_file(cfg, threads, conn, board, slot) -> None:
    """Finishes its first job, takes the next one, and dies computing it."""
    mine = _first_job_then_wait(conn, board, slot)
    _take(conn, mine)
    os._exit(3)


def dies_computing_while_delivering(cfg, threads, conn, board, slot) -> None:
    """Computes its first job and hands it to delivery, takes the next one, and dies computing
    that one while the first is still being delivered (no result sent)."""
    mine, _job = _first_job_handed(conn, board, slot)
    _take(conn, mine)
    os._exit(3)


def dies_delivering(cfg, threads, conn, board, slot) -> None:
    """Computes its first job, hands it to delivery and dies there, the next one unread in its pipe."""
    _first_job_handed(conn, board, slot)
    os._exit(3)


def _three_handed(conn, board, slot) -> BoardSlot:
    """Ready; take three jobs one after the other, each handed to delivery once the next one is
    sent ahead, and none delivered: the pool had to feed it while it delivered."""
    mine = BoardSlot(board, slot)
    conn.send(Ready(scale=3, load_seconds=0.0))
    for _ in range(3):
        _take(conn, mine)
        _wait_for_next(conn)
        _hand_to_delivery(mine)
    return mine


def dies_computing_while_delivering_three(cfg, threads, conn, board, slot) -> None:
    """Delivers three jobs at once, takes the fourth and dies computing it, the fifth unread."""
    mine = _three_handed(conn, board, slot)
    _take(conn, mine)
    _wait_for_next(conn)
    os._exit(3)


def dies_delivering_three(cfg, threads, conn, board, slot) -> None:
    """Delivers three jobs at once and dies there, computing nothing, two more unread in its pipe
    (it read the fourth from the pipe but died before marking it taken)."""
    _three_handed(conn, board, slot)
    conn.recv()
    _wait_for_next(conn)
    os._exit(3)
