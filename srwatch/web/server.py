"""The HTTP endpoint in a thread of the supervisor: uvicorn serving `app.create_app`.

The listening socket is bound in the caller's thread, so a port already in use is a
ConfigError at start (exit 2, `metrics.listen: ...`), not a traceback in a thread. uvicorn
runs in a daemon thread with its own event loop; it installs no signal handlers there (only
the main thread may), so SIGTERM/SIGHUP stay the supervisor's. `stop()` sets `should_exit`
and joins the thread within a bound.
"""
from __future__ import annotations

import errno
import logging
import socket
import threading
from typing import Optional, Sequence

import uvicorn

from ..config import MetricsConfig
from ..errors import ConfigError
from ..telemetry import Telemetry
from .app import Site, Target, create_app
from .upload import STALE_TEMP_SECONDS, sweep_stale_temps

log = logging.getLogger("srwatch.web")

STOP_TIMEOUT = 5.0  # in seconds: for the server thread to finish after should_exit
GRACEFUL_SECONDS = 2  # in seconds: uvicorn waits this long for open requests at stop
BACKLOG = 64  # pending connections the kernel keeps for us


class WebServer:
    """One running endpoint (metrics, page, uploads) for one metrics section."""

    def __init__(self, metrics: MetricsConfig, telemetry: Telemetry, targets: Sequence[Target]) -> None:
        self.metrics = metrics
        self.site = Site(telemetry, metrics, tuple(targets))
        self._server: Optional[uvicorn.Server] = None
        self._thread: Optional[threading.Thread] = None
        self._sock: Optional[socket.socket] = None

    @property
    def url(self) -> str:
        """http://host:port/ as bound (the real port when listen asked for port 0)."""
        host = self.metrics.host
        port = self._sock.getsockname()[1] if self._sock else self.metrics.port
        return f"http://{'[' + host + ']' if ':' in host else host}:{port}/"

    def start(self) -> None:
        """Bind (ConfigError if the address cannot be had), then serve in a daemon thread."""
        self._sock = bind(self.metrics)
        swept = sum(sweep_stale_temps(t.inbox, STALE_TEMP_SECONDS) for t in self.site.targets)
        if swept:
            log.info("removed %d upload temp file(s) abandoned in the inbox", swept)
        # uvicorn's start and stop lines say nothing our own line does not; its warnings stay.
        logging.getLogger("uvicorn.error").setLevel(logging.WARNING)
        config = uvicorn.Config(
            create_app(self.site), log_config=None, access_log=False, lifespan="off", http="h11",
            loop="asyncio", ws="none", timeout_graceful_shutdown=GRACEFUL_SECONDS, server_header=False,
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._serve, name="srwatch-web", daemon=True)
        self._thread.start()
        page = f", status page at {self.url}" if self.metrics.page else ""
        uploads = f", uploads at {self.url}upload" if self.metrics.upload else ""
        log.info("metrics at %smetrics%s%s", self.url, page, uploads)

    def _serve(self) -> None:
        assert self._server is not None and self._sock is not None
        try:
            self._server.run(sockets=[self._sock])
        except Exception:  # noqa: BLE001 - the endpoint is a nicety: the daemon goes on without it
            log.exception("the metrics endpoint stopped")

    def stop(self) -> None:
        """Ask uvicorn to stop, join its thread (bounded), close the socket."""
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(STOP_TIMEOUT)
            if self._thread.is_alive():
                log.warning("the metrics endpoint did not stop within %.0f s; leaving its thread", STOP_TIMEOUT)
        if self._sock is not None:
            self._sock.close()
        self._server = self._thread = self._sock = None


def bind(metrics: MetricsConfig) -> socket.socket:
    """A listening TCP socket on metrics.listen, or ConfigError naming the key."""
    host, port = metrics.host, metrics.port
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise ConfigError(f"metrics.listen: cannot resolve {host!r}: {exc.strerror}") from None
    family, kind, proto, _name, address = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        # A restart finds the port in TIME_WAIT from the last run's connections: take it anyway.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind(address)
        sock.listen(BACKLOG)
    except OSError as exc:
        sock.close()
        raise ConfigError(f"metrics.listen: cannot listen on {metrics.listen}: {exc.strerror}"
                          f"{' (another program, or another srwatch, holds it)' if exc.errno == errno.EADDRINUSE else ''}") from None
    sock.set_inheritable(False)
    return sock
