"""The daemon's HTTP endpoint (metrics.listen): Prometheus metrics, the status page, uploads.

`server.WebServer` runs it in a thread of the supervisor; `app` holds the routes and
`upload` the one thing it writes (an uploaded file, into the inbox). Templates and the
page's script and style are package data (templates/, static/): no CDN, no network.
"""
from .server import WebServer

__all__ = ["WebServer"]
