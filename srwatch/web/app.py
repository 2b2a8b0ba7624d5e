"""The HTTP endpoint's routes: /metrics, the status page, its JSON, previews and uploads.

A Starlette app with Jinja2 templates. Everything it shows comes from the daemon's
`Telemetry` (read-only here: the supervisor thread is its one writer); the only thing it
writes is an upload, into the inbox, through `upload.UploadReceiver`.
"""
from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional
from urllib.parse import urlsplit

from jinja2 import Environment, PackageLoader, Undefined, select_autoescape
from prometheus_client import make_asgi_app
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.middleware import Middleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates
from starlette.types import ASGIApp, Receive, Scope, Send

from ..config import MetricsConfig
from ..telemetry import Telemetry
from .upload import (ALLOWED_EXTENSIONS, BadUpload, Limits, Stalled, TooLarge, Unauthorized, UploadReceiver,
                     UploadRefused, boundary_of, token_in_header)

log = logging.getLogger("srwatch.web")

MB = 1 << 20  # in bytes
BODY_SLACK = MB  # in bytes: multipart framing and small fields on top of the files themselves
DRAIN_MAX = 64 * MB  # in bytes: read (and drop) at most this much of a refused body, so the client sees the answer
PREVIEW_NAMES = {"before.jpg": "before", "after.jpg": "after"}
#: The page talks to its own origin only: no inline script, no third-party anything.
PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self'; style-src 'self'; script-src 'self'; "
                               "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}
LOOPBACK_NAMES = ["localhost", "127.0.0.1", "[::1]", "::1"]


@dataclass(frozen=True)
class Target:
    """A hot folder uploads may go to: its profile's name, inbox and watch.ignore."""

    name: str
    inbox: Path
    ignore: tuple[str, ...] = ()


@dataclass(frozen=True)
class Site:
    """What the routes need from the daemon: its figures and where uploads go."""

    telemetry: Telemetry
    metrics: MetricsConfig
    targets: tuple[Target, ...]  # the hot folders; the first is the default for uploads

    @property
    def inbox(self) -> Path:
        """The default target's inbox."""
        return self.targets[0].inbox

    def target(self, profile: Optional[str]) -> Target:
        """The hot folder an upload names (?profile=NAME), or the first; BadUpload for an unknown name."""
        if profile is None or profile == "":
            return self.targets[0]
        for target in self.targets:
            if target.name == profile:
                return target
        raise BadUpload(f"no profile named {profile[:64]!r} (profiles: {', '.join(t.name for t in self.targets)})")

    def limits_for(self, target: Target) -> Limits:
        """Size and count limits, and the names that hot folder's watcher ignores."""
        return Limits(int(self.metrics.max_upload_mb * MB), self.metrics.max_upload_files, target.ignore)

    @property
    def limits(self) -> Limits:
        return self.limits_for(self.targets[0])

    @property
    def max_body(self) -> int:
        """The largest request body an upload may have, in bytes."""
        return self.limits.max_file_bytes * self.limits.max_files + BODY_SLACK


class _Asgi:
    """Wraps an ASGI callable so that Route serves it as is (a bare function would be taken for an endpoint)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.app(scope, receive, send)


def create_app(site: Site) -> Starlette:
    """The ASGI app for one daemon: routes follow metrics.page and metrics.upload."""
    routes = [Route("/metrics", _Asgi(make_asgi_app(registry=site.telemetry.registry)))]
    if site.metrics.page:
        routes += [
            Route("/", page),
            Route("/api/status", api_status),
            Route("/preview/{job_id}/{name}", preview),
            Mount("/static", StaticFiles(packages=[("srwatch.web", "static")]), name="static"),
        ]
    if site.metrics.upload:
        routes.append(Route("/upload", upload, methods=["POST"]))
    middleware = []
    if site.metrics.on_loopback:
        # A loopback endpoint without a token trusts whoever can reach it: refuse other Host
        # names, so a web page whose name resolves to 127.0.0.1 (DNS rebinding) gets nothing.
        middleware.append(Middleware(TrustedHostMiddleware, allowed_hosts=[*LOOPBACK_NAMES, site.metrics.host],
                                     www_redirect=False))
    app = Starlette(routes=routes, middleware=middleware)
    app.state.site = site
    app.state.templates = Jinja2Templates(env=template_env())
    return app


def template_env() -> Environment:
    """Jinja2 with autoescape on, and the few formats the page shows (static/page.js has the same)."""
    env = Environment(loader=PackageLoader("srwatch.web", "templates"), autoescape=select_autoescape(default=True))
    env.filters.update(show=_show, sizes=_sizes, seconds=_seconds, clock=_clock, duration=_duration)
    return env


def _missing(value: object) -> bool:
    return value is None or isinstance(value, Undefined)


def _show(value: object) -> object:
    """None (and a field the row template leaves out) as nothing."""
    return "" if _missing(value) else value


def _sizes(entry: dict) -> str:
    """'48x40 -> 144x120' for a finished file (empty when unknown)."""
    before, after = entry.get("input_size"), entry.get("output_size")
    if not before or not after:
        return ""
    return f"{before[0]}\u00d7{before[1]} \u2192 {after[0]}\u00d7{after[1]}"


def _seconds(value: object) -> str:
    return "" if _missing(value) else f"{float(value):.2f} s"


def _clock(value: object) -> str:
    """Wall-clock time of day (the server's zone: the page's script shows the browser's)."""
    return "" if _missing(value) else time.strftime("%H:%M:%S", time.localtime(float(value)))


def _duration(value: object) -> str:
    """Seconds as '42 s', '3 min 5 s', '2 h 10 min'."""
    if _missing(value):
        return ""
    total = int(float(value))
    if total < 60:
        return f"{float(value):.0f} s"
    if total < 3600:
        return f"{total // 60} min {total % 60} s"
    return f"{total // 3600} h {total % 3600 // 60} min"


def _site(request: Request) -> Site:
    return request.app.state.site


# -- the page -----------------------------------------------------------------------------------
async def page(request: Request) -> Response:
    """The status page: queue, workers, throughput, last outputs and quarantined files, drop zone."""
    site = _site(request)
    snapshot = site.telemetry.snapshot()
    context = {
        "s": snapshot,
        "chart": chart(snapshot["last_hour"]),
        "upload": site.metrics.upload,
        "token_required": site.metrics.token is not None,
        "max_upload_mb": site.metrics.max_upload_mb,
        "max_upload_files": site.metrics.max_upload_files,
        "accept": ",".join(ALLOWED_EXTENSIONS),
        "profiles": [t.name for t in site.targets] if len(site.targets) > 1 else [],
    }
    response = request.app.state.templates.TemplateResponse(request, "index.html", context)
    response.headers.update(PAGE_HEADERS)
    response.headers["Cache-Control"] = "no-store"
    return response


CHART_W, CHART_H = 600, 120  # in SVG units: 60 bars of 10


def chart(last_hour: list[dict]) -> dict:
    """Bar geometry for the throughput chart (files per minute, done and quarantined stacked)."""
    peak = max([1] + [row["done"] + row["quarantined"] for row in last_hour])
    width = CHART_W / max(1, len(last_hour))
    bars = []
    for i, row in enumerate(last_hour):
        done_h = CHART_H * row["done"] / peak
        bad_h = CHART_H * row["quarantined"] / peak
        bars.append({"x": round(i * width, 2), "w": round(width * 0.8, 2), "done_h": round(done_h, 2),
                     "bad_h": round(bad_h, 2), "done_y": round(CHART_H - done_h, 2),
                     "bad_y": round(CHART_H - done_h - bad_h, 2), "row": row})
    return {"w": CHART_W, "h": CHART_H, "peak": peak, "bars": bars, "total": sum(r["done"] for r in last_hour)}


async def api_status(request: Request) -> JSONResponse:
    """telemetry.snapshot() as JSON: what the page polls every 2 s."""
    data = _site(request).telemetry.snapshot()
    data["server_time"] = time.time()
    return JSONResponse(data, headers={"Cache-Control": "no-store"})


async def preview(request: Request) -> Response:
    """The before/after JPEG of a recent output, from memory: the id is a key, never a path."""
    which = PREVIEW_NAMES.get(request.path_params["name"])
    found = _site(request).telemetry.preview(request.path_params["job_id"])
    if which is None or found is None:
        return JSONResponse({"error": "no such preview (only the last outputs keep one)"}, status_code=404)
    return Response(getattr(found, which), media_type="image/jpeg",
                    headers={"Cache-Control": "private, max-age=3600", "X-Content-Type-Options": "nosniff"})


# -- uploads ------------------------------------------------------------------------------------
async def upload(request: Request) -> Response:
    """POST /upload (multipart/form-data, any number of file fields up to the limit) into the inbox."""
    site = _site(request)
    stream = request.stream()
    receiver: Optional[UploadReceiver] = None
    try:
        authorized = _check_request(request, site)
        target = site.target(request.query_params.get("profile"))
        receiver = UploadReceiver(target.inbox, boundary_of(request.headers.get("content-type")),
                                  site.limits_for(target), site.metrics.token, authorized)
        async for chunk in _paced(stream, site.metrics.upload_stall_seconds):
            # Writes go to the inbox, which may be a slow network mount: off the event loop,
            # so that /metrics and the page keep answering during a large upload.
            await run_in_threadpool(receiver.feed, chunk)
        received_at = time.time()  # before the files are visible: the page matches results from here on
        saved = await run_in_threadpool(receiver.finish)
    except UploadRefused as exc:
        if receiver is not None:
            receiver.discard()  # at once: draining the rest of the body may take a while
        log.warning("upload refused (%d): %s", exc.status, exc)
        if isinstance(exc, Stalled):  # nothing more is coming: answer and close, do not drain
            return JSONResponse({"error": str(exc)}, status_code=exc.status, headers={"Connection": "close"})
        await _drain(stream, request)
        return JSONResponse({"error": str(exc)}, status_code=exc.status)
    except ClientDisconnect:
        log.info("upload abandoned by the client; its temp files are removed")
        return Response(status_code=400)  # nobody is there to read it
    finally:
        if receiver is not None:
            receiver.discard()
    for item in saved:
        log.info("upload %r -> %s (%d bytes)%s", item.name, item.saved_as, item.size,
                 "" if len(site.targets) == 1 else f", profile {target.name}")
    return JSONResponse({
        "files": [{"name": s.name, "saved_as": s.saved_as, "size": s.size} for s in saved],
        "profile": target.name,
        "received_at": received_at,
    })


async def _paced(stream, stall_seconds: float):
    """The body's chunks; Stalled (408) when the client sends nothing for `stall_seconds`.

    uvicorn has no timeout for a request body, so a client that stops sending would keep its
    temp file in the inbox until it disconnects.
    """
    chunks = stream.__aiter__()
    while True:
        try:
            chunk = await asyncio.wait_for(chunks.__anext__(), stall_seconds)
        except StopAsyncIteration:
            return
        except asyncio.TimeoutError:
            raise Stalled(f"nothing received for {stall_seconds:g} s (metrics.upload_stall_seconds)") from None
        yield chunk


def _check_request(request: Request, site: Site) -> bool:
    """Refusals that need no body: foreign origin, wrong token, too long. True if the header carries the token."""
    origin = request.headers.get("origin")
    # Behind a reverse proxy the page's own origin is the proxy's name (X-Forwarded-Host); a
    # foreign page can set neither header on a cross-site POST, so either may vouch for it.
    hosts = {request.headers.get("host", ""), request.headers.get("x-forwarded-host", "").split(",")[0].strip()}
    if origin is not None and urlsplit(origin).netloc.lower() not in {h.lower() for h in hosts if h}:
        # A form on another site posting here (CSRF): browsers always say where they come from.
        raise _Forbidden(f"uploads from another origin ({origin}) are refused")
    authorized = token_in_header(request.headers.get("authorization"), site.metrics.token)
    if authorized is False:
        raise Unauthorized("wrong token")
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > site.max_body:
        raise TooLarge(f"the request is over {site.max_body // MB} MB "
                       f"(metrics.max_upload_files x metrics.max_upload_mb)")
    return bool(authorized)


class _Forbidden(BadUpload):
    status = 403


async def _drain(stream, request: Request) -> None:
    """Read the rest of a refused body (bounded), so that the client gets the answer instead of a reset."""
    length = request.headers.get("content-length")
    if length is not None and (not length.isdigit() or int(length) > DRAIN_MAX):
        return
    left = DRAIN_MAX
    try:
        async for chunk in stream:
            left -= len(chunk)
            if left < 0:
                return
    except (ClientDisconnect, RuntimeError):  # gone, or the body was already read to its end
        return
