"""`notify.webhook`: a POST with a JSON body after each file, from a thread of its own.

The pipeline only enqueues (never waits): a slow or dead receiver costs a bounded queue and
a log line, never a file or a delay. Each POST has a timeout and a bounded number of retries
with back-off; what could not be sent is counted (srwatch_webhook_failures_total) and logged.
"""
from __future__ import annotations

import json
import logging
import queue
import threading
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Callable, Optional

from . import __version__

log = logging.getLogger("srwatch.webhook")

QUEUE_SIZE = 1000  # notifications waiting; more are dropped (and counted), files never wait
BACKOFF = (0.5, 1.0, 2.0, 4.0, 8.0)  # in seconds, between attempts


@dataclass(frozen=True)
class Notification:
    """One POST: where to, what, and how patiently."""

    url: str
    body: dict
    timeout: float
    retries: int
    profile: str


class WebhookSender:
    """A daemon thread that POSTs notifications in order; `send` never blocks."""

    def __init__(self, on_result: Optional[Callable[[str, bool], None]] = None) -> None:
        self._queue: queue.Queue[Optional[Notification]] = queue.Queue(QUEUE_SIZE)
        self._on_result = on_result  # (profile, delivered) for the metrics
        self._thread: Optional[threading.Thread] = None
        self._stopping = threading.Event()
        self._dropped_logged = False

    def start(self) -> None:
        """Start the sending thread (idempotent)."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="srwatch-webhook", daemon=True)
            self._thread.start()

    def send(self, note: Notification) -> bool:
        """Queue a notification; False (logged once, counted) when the queue is full."""
        self.start()
        try:
            self._queue.put_nowait(note)
            return True
        except queue.Full:
            if not self._dropped_logged:
                log.error("webhook queue full (%d waiting): %s is not keeping up; dropping notifications", QUEUE_SIZE, note.url)
                self._dropped_logged = True
            self._report(note.profile, False)
            return False

    def stop(self, timeout: float = 5.0) -> None:
        """Send what is queued for at most `timeout` seconds, then give up on the rest."""
        if self._thread is None:
            return
        self._stopping.set()
        try:
            self._queue.put_nowait(None)
        except queue.Full:
            pass
        self._thread.join(timeout)
        self._thread = None

    def _run(self) -> None:
        while True:
            note = self._queue.get()
            if note is None:
                return
            self._report(note.profile, self._deliver(note))

    def _deliver(self, note: Notification) -> bool:
        data = json.dumps(note.body).encode()
        for attempt in range(note.retries + 1):
            if attempt:
                if self._stopping.wait(BACKOFF[min(attempt - 1, len(BACKOFF) - 1)]):
                    break  # stopping: do not hold the shutdown for retries
            try:
                request = urllib.request.Request(
                    note.url, data=data, method="POST",
                    headers={"Content-Type": "application/json", "User-Agent": f"srwatch/{__version__}"},
                )
                with urllib.request.urlopen(request, timeout=note.timeout) as response:  # noqa: S310 - configured URL
                    if 200 <= response.status < 300:
                        return True
                    why = f"HTTP {response.status}"
            except urllib.error.HTTPError as exc:
                why = f"HTTP {exc.code}"
            except (urllib.error.URLError, OSError, ValueError) as exc:
                why = str(getattr(exc, "reason", exc))
            log.debug("webhook %s attempt %d failed: %s", note.url, attempt + 1, why)
        log.warning("webhook %s failed after %d attempt(s) for %s: %s", note.url, attempt + 1,
                    note.body.get("input"), why)
        return False

    def _report(self, profile: str, delivered: bool) -> None:
        if self._on_result is not None:
            try:
                self._on_result(profile, delivered)
            except Exception:  # noqa: BLE001 - metrics must not stop the sender
                log.debug("webhook result hook failed", exc_info=True)
