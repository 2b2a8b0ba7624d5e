"""systemd's sd_notify protocol (READY, STATUS, STOPPING, WATCHDOG) without libsystemd."""
from __future__ import annotations

import os
import socket
import time
from typing import Optional


class Notifier:
    """Sends notifications to $NOTIFY_SOCKET; does nothing when not run by systemd."""

    def __init__(self) -> None:
        address = os.environ.get("NOTIFY_SOCKET")
        if address and address.startswith("@"):
            address = "\0" + address[1:]  # abstract namespace
        self.address: Optional[str] = address or None
        usec = os.environ.get("WATCHDOG_USEC")
        pid = os.environ.get("WATCHDOG_PID")
        enabled = usec and usec.isdigit() and (not pid or pid == str(os.getpid()))
        # Ping at half the interval systemd waits for, as sd_watchdog_enabled(3) advises.
        self.watchdog_interval: Optional[float] = int(usec) / 2e6 if enabled else None
        self._last_ping = 0.0

    def send(self, *lines: str) -> bool:
        """Send `KEY=value` lines in one datagram; False if there is no socket or it failed."""
        if not self.address:
            return False
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
                sock.connect(self.address)
                sock.sendall("\n".join(lines).encode())
            return True
        except OSError:
            return False

    def ready(self, status: str) -> None:
        """Startup is complete."""
        self.send("READY=1", f"STATUS={status}", f"MAINPID={os.getpid()}")

    def status(self, status: str) -> None:
        """A one-line status shown by `systemctl status`."""
        self.send(f"STATUS={status}")

    def stopping(self) -> None:
        """Shutdown has begun."""
        self.send("STOPPING=1", "STATUS=stopping: finishing files in progress")

    def reloading(self) -> None:
        """A configuration reload has begun (READY=1 follows when done)."""
        stamp = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        self.send("RELOADING=1", f"MONOTONIC_USEC={stamp}", "STATUS=reloading configuration")

    def watchdog(self) -> None:
        """Heartbeat, rate-limited to the interval systemd asked for."""
        if self.watchdog_interval is None:
            return
        now = time.monotonic()
        if now - self._last_ping >= self.watchdog_interval:
            self._last_ping = now
            self.send("WATCHDOG=1")
