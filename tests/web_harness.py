"""Talking to a test daemon's HTTP endpoint (metrics.listen): free ports, GETs, scrapes, uploads.

Plain urllib and a multipart body built here, so a test controls every byte it sends (file
names such as `../x.png` go out as written).
"""
from __future__ import annotations

import json
import os
import secrets
import socket
import urllib.error
import urllib.request
from dataclasses import dataclass
from email.message import Message
from typing import Iterable, Mapping, Optional, Sequence

from prometheus_client.parser import text_string_to_metric_families

from daemon_harness import wait_for


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now (the kernel's pick)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass(frozen=True)
class Reply:
    """One HTTP answer."""

    status: int
    headers: Message  # case-insensitive look-ups
    body: bytes

    def json(self) -> dict:
        return json.loads(self.body)


def request(url: str, data: Optional[bytes] = None, headers: Optional[Mapping[str, str]] = None,
            method: Optional[str] = None, timeout: float = 30) -> Reply:
    """GET (or POST with `data`); an HTTP error status is returned, not raised."""
    req = urllib.request.Request(url, data=data, headers=dict(headers or {}), method=method)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return Reply(resp.status, resp.headers, resp.read())
    except urllib.error.HTTPError as err:
        return Reply(err.code, err.headers, err.read())


def wait_http(base: str, timeout: float = 30) -> None:
    """Wait until the endpoint answers /metrics."""
    def up() -> bool:
        try:
            return request(base + "metrics", timeout=2).status == 200
        except OSError:
            return False
    wait_for(up, timeout, 0.1, f"{base}metrics answering")


Samples = dict[tuple[str, frozenset], float]


def scrape(base: str) -> Samples:
    """/metrics parsed by prometheus_client: (sample name, labels) -> value."""
    reply = request(base + "metrics")
    assert reply.status == 200, reply
    assert reply.headers.get("Content-Type", "").startswith("text/plain"), reply.headers
    samples: Samples = {}
    for family in text_string_to_metric_families(reply.body.decode()):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def sample(samples: Samples, name: str, **labels: str) -> Optional[float]:
    """The value of one sample (exact label set), None if absent."""
    return samples.get((name, frozenset(labels.items())))


def matching(samples: Samples, name: str) -> dict[frozenset, float]:
    """Every label set of one sample name."""
    return {labels: value for (n, labels), value in samples.items() if n == name}


def multipart(files: Sequence[tuple[str, bytes]], fields: Iterable[tuple[str, str]] = (),
              field_name: str = "file") -> tuple[bytes, str]:
    """A multipart/form-data body and its Content-Type: `fields` first, then one part per (file name, bytes)."""
    boundary = "srwatch-test-" + secrets.token_hex(12)
    parts: list[bytes] = []
    for name, value in fields:
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode())
    for filename, data in files:
        quoted = filename.replace("\\", "\\\\").replace('"', '\\"')
        head = (f'--{boundary}\r\nContent-Disposition: form-data; name="{field_name}"; filename="{quoted}"\r\n'
                f"Content-Type: application/octet-stream\r\n\r\n")
        parts.append(head.encode() + data + b"\r\n")
    parts.append(f"--{boundary}--\r\n".encode())
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"


def upload(base: str, files: Sequence[tuple[str, bytes]], token: Optional[str] = None,
           fields: Iterable[tuple[str, str]] = (), headers: Optional[Mapping[str, str]] = None) -> Reply:
    """POST /upload with a real multipart body (the token as a Bearer header when given)."""
    body, content_type = multipart(files, fields)
    sent = {"Content-Type": content_type, **(headers or {})}
    if token is not None:
        sent["Authorization"] = f"Bearer {token}"
    return request(base + "upload", data=body, headers=sent, method="POST")


def upload_temps(inbox: os.PathLike) -> list[str]:
    """Upload temp files left in the inbox (there must never be any once a request is answered)."""
    return sorted(n for n in os.listdir(inbox) if n.startswith(".upload-"))
