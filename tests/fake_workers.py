"""Fake worker processes for the pool's supervision rules (the real one is srwatch.worker.worker_main).

Each takes worker_main's arguments, speaks the same messages and marks the busy board the same
way, but does no image work: it only acts out one way of dying.
"""
from __future__ import annotations

import os
import time

from srwatch.messages import Done, Ready


def _done(job) -> Done:
    return Done(job_id=job.id, output="-", archived=None, seconds=0.0, input_size=None, output_size=None)


def _wait_for_next(conn, timeout: float = 30.0) -> None:
    """Until the supervisor has sent the next job ahead (it waits in the pipe, unread)."""
    deadline = time.monotonic() + timeout
    while not conn.poll(0.01):
        if time.monotonic() > deadline:
            os._exit(4)


def _first_job_then_wait(conn, board, slot) -> None:
    """Ready; take the first job, wait until the next one is sent ahead, report the first done."""
    conn.send(Ready(scale=3, load_seconds=0.0))
    job, _cfg, _crowded, number = conn.recv()
    board[slot] = number
    _wait_for_next(conn)
    board[slot] = 0
    conn.send(_done(job))


def dies_between_files(cfg, threads, conn, board, slot) -> None:
    """Finishes its first job, then dies before taking the next one from its pipe."""
    _first_job_then_wait(conn, board, slot)
    os._exit(3)


def dies_on_second_file(cfg, threads, conn, board, slot) -> None:
    """Finishes its first job, takes the next one, and dies running it."""
    _first_job_then_wait(conn, board, slot)
    _job, _cfg, _crowded, number = conn.recv()
    board[slot] = number
    os._exit(3)
