"""What the supervisor counts: Prometheus metrics, the recent history the status page shows,
and the snapshot that `srwatch status` and systemd's STATUS= read.

Only the supervisor writes here (workers report their figures in their Done/Failed messages),
so there is one writer and no per-process registry files. The HTTP thread only reads: the
metrics through prometheus_client (thread-safe), the rest through `snapshot()` and
`recent_*()`, which copy under a lock.
"""
from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import asdict, dataclass
from typing import Iterable, Optional

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info
from prometheus_client.core import GaugeMetricFamily

from . import __version__
from .messages import Done, Failed, Preview
from .sink import record_name

#: Buckets in seconds for the stages of one file and for a whole file (drop to output).
STAGE_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 900)
JOB_BUCKETS = (0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 1800, 3600)
HISTORY = 30  # finished files kept for the status page (done and quarantined each)
MINUTES = 60  # throughput kept per minute for the last hour


@dataclass(frozen=True)
class WorkerView:
    """A worker as the page and the metrics show it."""

    name: str
    pid: Optional[int]
    state: str
    generation: int
    job: Optional[str]  # the relative path it is working on
    jobs_done: int
    load_seconds: Optional[float]
    node: str = ""  # the machine, for workers that run elsewhere (Ray)


@dataclass(frozen=True)
class FolderView:
    """One hot folder (profile) as the page and `srwatch status` show it."""

    name: str
    settling: int
    ready: int  # held in the inbox while the folder is closed
    queued: int
    state: str  # open | closed (outside schedule.hours) | removed (draining after a reload)
    hours: Optional[str] = None


@dataclass(frozen=True)
class Pipeline:
    """The queue as the supervisor sees it at one moment."""

    settling: int = 0  # files being written, not yet taken
    ready: int = 0  # settled in the inbox, waiting for room in the queue
    queued: int = 0  # claimed, waiting for a worker (or in its pipe, sent ahead)
    in_progress: int = 0  # held by a worker
    oldest_pending_age: float = 0.0  # in seconds: the oldest file taken but not finished
    workers: tuple[WorkerView, ...] = ()
    paused: tuple[str, ...] = ()  # 'claiming paused: ...', 'delivery paused: ...'
    state: str = "starting"  # starting | running | stopping
    folders: tuple[FolderView, ...] = ()  # per hot folder


@dataclass(frozen=True)
class Finished:
    """One file's outcome, as the status page lists it."""

    id: str
    rel: str
    outcome: str  # done | quarantined
    at: float  # wall-clock time it finished
    seconds: float  # from claim to finished
    output: Optional[str] = None  # the output's name in the outbox
    reason: Optional[str] = None
    message: Optional[str] = None
    record: Optional[str] = None  # the quarantine record's name
    input_size: Optional[tuple[int, int]] = None
    output_size: Optional[tuple[int, int]] = None
    worker: str = ""
    has_preview: bool = False
    profile: str = "default"  # the hot folder it came from


@dataclass
class _Minute:
    minute: int  # unix time // 60
    done: int = 0
    quarantined: int = 0
    output_pixels: int = 0


class Telemetry:
    """The supervisor's figures. Metrics live in a registry of their own (no global state)."""

    def __init__(self, engine: str = "", model: str = "") -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self._lock = threading.Lock()
        self._pipeline = Pipeline()
        self._started = time.time()
        self._done: deque[Finished] = deque(maxlen=HISTORY)
        self._quarantined: deque[Finished] = deque(maxlen=HISTORY)
        self._previews: dict[str, Preview] = {}
        self._minutes: deque[_Minute] = deque(maxlen=MINUTES)
        self.totals = {"detected": 0, "done": 0, "quarantined": 0, "gone": 0, "crashed": 0, "restarts": 0}
        r = self.registry
        self.detected = Counter("srwatch_files_detected", "Files taken from the inbox (claimed), by profile.",
                                ["profile"], registry=r)
        self.jobs = Counter(
            "srwatch_jobs", "Files finished, by outcome (done, quarantined, gone), quarantine reason and profile.",
            ["outcome", "reason", "profile"], registry=r,
        )
        self.quarantined = Counter("srwatch_quarantined", "Files quarantined, by reason and profile.",
                                   ["reason", "profile"], registry=r)
        self.crashes = Counter("srwatch_worker_crashes", "Workers that died while holding a file.", registry=r)
        self.restarts = Counter("srwatch_worker_restarts", "Workers started to replace one that died.", registry=r)
        self.webhook_failures = Counter(
            "srwatch_webhook_failures", "notify.webhook POSTs given up after their retries (or dropped: queue full).",
            ["profile"], registry=r,
        )
        self.stage_seconds = Histogram(
            "srwatch_stage_seconds", "Seconds per stage of one file (read, decode, infer, encode, deliver, archive).",
            ["stage"], buckets=STAGE_BUCKETS, registry=r,
        )
        self.job_seconds = Histogram(
            "srwatch_job_seconds", "Seconds from claim to the file's final place (outbox or quarantine), by profile.",
            ["outcome", "profile"], buckets=JOB_BUCKETS, registry=r,
        )
        self.input_pixels = Counter("srwatch_input_pixels", "Pixels of the inputs upscaled.", registry=r)
        self.output_pixels = Counter("srwatch_output_pixels", "Pixels of the outputs written.", registry=r)
        self.input_bytes = Counter("srwatch_input_bytes", "Bytes of the inputs read.", registry=r)
        self.output_bytes = Counter("srwatch_output_bytes", "Bytes of the outputs written.", registry=r)
        self.model_load = Gauge("srwatch_model_load_seconds", "Seconds the last worker took to load its model.", registry=r)
        self.build = Info("srwatch_build", "srwatch version, engine and model.", registry=r)
        self.build.info({"version": __version__, "engine": engine, "model": model})
        r.register(_PipelineCollector(self))

    # -- events (supervisor only) ---------------------------------------------------------------
    def set_pipeline(self, pipeline: Pipeline) -> None:
        """The queue and workers now (called every tick; the HTTP thread reads the latest)."""
        with self._lock:
            self._pipeline = pipeline

    def claimed(self, profile: str = "default") -> None:
        """A file was taken from the inbox of `profile`."""
        self.detected.labels(profile).inc()
        with self._lock:
            self.totals["detected"] += 1

    def model_loaded(self, seconds: float) -> None:
        """A worker holds its model after `seconds`."""
        self.model_load.set(seconds)

    def webhook_failed(self, profile: str) -> None:
        """A notification could not be delivered (called from the webhook sender's thread)."""
        self.webhook_failures.labels(profile).inc()

    def worker_crashed(self) -> None:
        """A worker died holding a file."""
        self.crashes.inc()
        with self._lock:
            self.totals["crashed"] += 1

    def worker_restarted(self) -> None:
        """A worker was started to replace one that died."""
        self.restarts.inc()
        with self._lock:
            self.totals["restarts"] += 1

    def finished(self, job_id: str, rel: str, msg: object, seconds: float, worker: str = "",
                 profile: str = "default") -> Finished:
        """A file reached its final place: Done, Failed (quarantined) or Gone; returns the entry kept."""
        now = time.time()
        if isinstance(msg, Done):
            entry = self._done_entry(job_id, rel, msg, seconds, worker, now, profile)
        elif isinstance(msg, Failed):
            entry = Finished(
                job_id, rel, "quarantined", now, seconds, reason=msg.reason, message=msg.message,
                record=record_name(_name(msg.quarantined)) if msg.quarantined else None, worker=worker,
                profile=profile,
            )
            self.jobs.labels("quarantined", msg.reason, profile).inc()
            self.quarantined.labels(msg.reason, profile).inc()
            self.job_seconds.labels("quarantined", profile).observe(seconds)
        else:
            self.jobs.labels("gone", "", profile).inc()
            with self._lock:
                self.totals["gone"] += 1
            return Finished(job_id, rel, "gone", now, seconds, worker=worker, profile=profile)
        with self._lock:
            minute = self._minute(now)
            if entry.outcome == "done":
                self.totals["done"] += 1
                minute.done += 1
                minute.output_pixels += _pixels(entry.output_size)
                self._done.append(entry)
                if isinstance(msg, Done) and msg.preview is not None:
                    self._previews[job_id] = msg.preview
                    live = {e.id for e in self._done}
                    for old in [k for k in self._previews if k not in live]:
                        del self._previews[old]
            else:
                self.totals["quarantined"] += 1
                minute.quarantined += 1
                self._quarantined.append(entry)
        return entry

    def _done_entry(self, job_id: str, rel: str, msg: Done, seconds: float, worker: str, now: float,
                    profile: str) -> Finished:
        self.jobs.labels("done", "", profile).inc()
        self.job_seconds.labels("done", profile).observe(seconds)
        for stage, spent in msg.stages.items():
            self.stage_seconds.labels(stage).observe(spent)
        self.input_pixels.inc(_pixels(msg.input_size))
        self.output_pixels.inc(_pixels(msg.output_size))
        self.input_bytes.inc(msg.input_bytes)
        self.output_bytes.inc(msg.output_bytes)
        return Finished(
            job_id, rel, "done", now, seconds, output=_name(msg.output), input_size=msg.input_size,
            output_size=msg.output_size, worker=worker, has_preview=msg.preview is not None, profile=profile,
        )

    def _minute(self, now: float) -> _Minute:
        key = int(now // 60)
        if not self._minutes or self._minutes[-1].minute != key:
            self._minutes.append(_Minute(key))
        return self._minutes[-1]

    # -- reads (any thread) ---------------------------------------------------------------------
    def pipeline(self) -> Pipeline:
        """The latest queue and workers."""
        with self._lock:
            return self._pipeline

    def recent_done(self) -> list[Finished]:
        """The last finished files, newest first."""
        with self._lock:
            return list(reversed(self._done))

    def recent_quarantined(self) -> list[Finished]:
        """The last quarantined files, newest first."""
        with self._lock:
            return list(reversed(self._quarantined))

    def preview(self, job_id: str) -> Optional[Preview]:
        """The before/after JPEGs of a recent output (by job id), or None."""
        with self._lock:
            return self._previews.get(job_id)

    def throughput(self, now: Optional[float] = None) -> list[dict]:
        """Files and output megapixels per minute for the last hour, oldest first, empty minutes included."""
        now = time.time() if now is None else now
        last = int(now // 60)
        with self._lock:
            by_minute = {m.minute: m for m in self._minutes}
        rows = []
        for key in range(last - MINUTES + 1, last + 1):
            m = by_minute.get(key, _Minute(key))
            rows.append({"minute": key * 60, "done": m.done, "quarantined": m.quarantined,
                         "output_megapixels": round(m.output_pixels / 1e6, 3)})
        return rows

    def snapshot(self) -> dict:
        """Everything in plain JSON types: for status.json, `srwatch status` and the page's API."""
        with self._lock:
            pipeline = self._pipeline
            totals = dict(self.totals)
            done = [asdict(e) for e in reversed(self._done)]
            quarantined = [asdict(e) for e in reversed(self._quarantined)]
        data = asdict(pipeline)
        data.update(
            version=__version__,
            started=self._started,
            uptime_seconds=round(time.time() - self._started, 1),
            totals=totals,
            recent_done=done,
            recent_quarantined=quarantined,
            last_hour=self.throughput(),
        )
        return data


class _PipelineCollector:
    """Gauges read from the latest pipeline at scrape time (workers come and go: no stale labels)."""

    def __init__(self, telemetry: Telemetry) -> None:
        self.telemetry = telemetry

    def describe(self) -> Iterable:
        return []

    def collect(self) -> Iterable[GaugeMetricFamily]:
        p = self.telemetry.pipeline()
        depth = GaugeMetricFamily("srwatch_queue_depth", "Files waiting: settling, ready in the inbox, claimed.", labels=["stage"])
        depth.add_metric(["settling"], p.settling)
        depth.add_metric(["ready"], p.ready)
        depth.add_metric(["claimed"], p.queued)
        yield depth
        yield GaugeMetricFamily("srwatch_jobs_in_progress", "Files held by a worker now.", value=p.in_progress)
        yield GaugeMetricFamily(
            "srwatch_oldest_pending_age_seconds", "Age of the oldest file taken and not yet finished.",
            value=p.oldest_pending_age,
        )
        up = GaugeMetricFamily("srwatch_worker_up", "1 for each worker that holds its model and serves.", labels=["worker", "pid", "node"])
        for w in p.workers:
            up.add_metric([w.name, str(w.pid or ""), w.node], 1.0 if w.state in ("idle", "busy") else 0.0)
        yield up
        yield GaugeMetricFamily("srwatch_paused", "1 while claiming or delivery is paused (a folder cannot take a write).",
                                value=1.0 if p.paused else 0.0)


def _pixels(size: Optional[tuple[int, int]]) -> int:
    return int(size[0]) * int(size[1]) if size else 0


def _name(path: str) -> str:
    return path.rsplit("/", 1)[-1]
