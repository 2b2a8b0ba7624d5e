"""What crosses the pipe between the supervisor and a worker process.

Supervisor -> worker: a `claim.Job` to process, or None (retire after this).
Worker -> supervisor: one of the messages below. Plain frozen dataclasses, so both sides
import this module and nothing else of each other.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Union


@dataclass(frozen=True)
class Preview:
    """Two JPEGs of one detail of a result, same size: before (bicubic) and after (the model)."""

    before: bytes
    after: bytes
    width: int
    height: int


@dataclass(frozen=True)
class Ready:
    """The worker holds its model."""

    scale: int
    load_seconds: float


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
    input_size: Optional[tuple[int, int]]  # None when an earlier attempt had delivered it
    output_size: Optional[tuple[int, int]]
    cached: bool = False
    notes: tuple[str, ...] = ()
    resumed: bool = False  # the output was delivered by an earlier attempt; only archived now
    # Seconds per stage: read, decode, infer, encode, deliver, archive (and cache, preview).
    stages: dict[str, float] = field(default_factory=dict)
    input_bytes: int = 0
    output_bytes: int = 0
    preview: Optional[Preview] = None  # before/after JPEGs for the status page, when it is on
    threads: tuple[int, ...] = ()  # the inference thread counts it ran on (empty: not known, e.g. a Ray actor's)


@dataclass(frozen=True)
class Failed:
    """The file is in quarantine with its reason."""

    job_id: str
    reason: str
    message: str
    quarantined: str


@dataclass(frozen=True)
class Deferred:
    """A folder of srwatch's could not take a write (full, read-only, ...): the job stays claimed."""

    job_id: str
    message: str


@dataclass(frozen=True)
class Gone:
    """The claimed entry is no longer in its job folder (removed by hand): nothing to do."""

    job_id: str


Message = Union[Ready, LoadFailed, Done, Failed, Deferred, Gone]
JobResult = Union[Done, Failed, Deferred, Gone]
