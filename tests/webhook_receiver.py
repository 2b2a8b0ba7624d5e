"""A real HTTP server on loopback that records webhook POSTs (JSON bodies), for the tests."""
from __future__ import annotations

import http.server
import json
import threading
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Iterator


@dataclass
class Received:
    """What the receiver got, and how it answers: the first `fail_first` POSTs get a 503."""

    url: str = ""
    bodies: list = field(default_factory=list)
    fail_first: int = 0


@contextmanager
def receiving(path: str = "/hook") -> Iterator[Received]:
    """Serve on a free loopback port until the block ends; the server is shut down and joined."""
    state = Received()
    lock = threading.Lock()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - http.server's name
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            with lock:
                refuse = state.fail_first > 0
                if refuse:
                    state.fail_first -= 1
                else:
                    state.bodies.append(body)
            self.send_response(503 if refuse else 204)
            self.end_headers()

        def log_message(self, *args) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    state.url = f"http://127.0.0.1:{server.server_address[1]}{path}"
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
