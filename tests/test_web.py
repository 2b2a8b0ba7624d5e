"""The status page's API, previews and uploads against a real daemon, over real HTTP, with real files.

Every upload must end like any file dropped into the inbox (output + archived original, or
quarantine), and a refused or broken upload must leave nothing at all in the inbox.
"""
from __future__ import annotations

import http.client
import os
import socket
import time
from contextlib import contextmanager

import cv2
import numpy as np
import pytest

from daemon_harness import FAST_WATCH, Drop, Layout, assert_invariant, image_bytes, place, running, wait_finished, wait_for
from srwatch.web.upload import BadUpload, clean_name
from web_harness import Reply, free_port, multipart, request, upload, upload_temps, wait_http

pytestmark = pytest.mark.slow

TOKEN = "test-token-0123456789abcdef"


def serve(layout: Layout, **metrics):
    """A daemon with its endpoint on a free loopback port: (context manager, base URL)."""
    port = free_port()
    return running(layout, watch=FAST_WATCH, metrics={"listen": f"127.0.0.1:{port}", **metrics}), f"http://127.0.0.1:{port}/"


def saved(reply: Reply) -> list[str]:
    assert reply.status == 200, (reply.status, reply.body)
    return [f["saved_as"] for f in reply.json()["files"]]


def inbox_visible(layout: Layout) -> list[str]:
    return sorted(n for n in os.listdir(layout.inbox) if not n.startswith("."))


def valid_jpeg(data: bytes) -> np.ndarray:
    assert data[:2] == b"\xff\xd8" and data[-2:] == b"\xff\xd9", "not a complete JPEG"
    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    assert img is not None and img.size, "a JPEG that does not decode"
    return img


@pytest.mark.parametrize(("raw", "clean"), [
    ("photo.jpg", "photo.jpg"), ("../../etc/x.png", "x.png"), ("C:\\Users\\me\\p.webp", "p.webp"),
    ("..hidden.tif", "hidden.tif"), (" spaced .bmp", "spaced .bmp"), ("r\u202egnp.png", "rgnp.png"),
    ("a" * 300 + ".jpeg", None),
])
def test_clean_name(raw: str, clean) -> None:
    got = clean_name(raw)
    assert got == clean if clean else (len(got.encode()) <= 255 and got.endswith(".jpeg"))


@pytest.mark.parametrize("raw", ["x.exe", "noext", ".png", "..", "a/", "x.png.part", "photo.png~", "", "\x00.png"])
def test_clean_name_refuses(raw: str) -> None:
    with pytest.raises(BadUpload):
        clean_name(raw, ["*.part", "*~"])


def test_clean_name_refuses_what_the_watcher_ignores() -> None:
    with pytest.raises(BadUpload, match="watch.ignore"):
        clean_name("draft-1.png", ["draft-*"])


def test_upload_is_processed_and_the_page_shows_it(layout: Layout) -> None:
    a, b = image_bytes(40, 32, seed=1), image_bytes(30, 22, seed=2, ext=".jpg")
    context, base = serve(layout)
    with context as daemon:
        wait_http(base)
        # The page's figures follow the supervisor's loop: one tick after "srwatch ready".
        wait_for(lambda: request(base + "api/status").json()["state"] == "running", 10, what="state running")
        status = request(base + "api/status").json()
        assert len(status["workers"]) == 2
        assert {w["state"] for w in status["workers"]} == {"idle"}
        assert status["totals"]["done"] == 0 and len(status["last_hour"]) == 60

        names = saved(upload(base, [("photo.png", a), ("holiday.jpg", b)]))
        assert names == ["photo.png", "holiday.jpg"]
        wait_finished(layout, 2, 60, [daemon])
        wait_for(lambda: request(base + "api/status").json()["totals"]["done"] == 2, 10, what="both counted")
        status = request(base + "api/status").json()

        done = {e["rel"]: e for e in status["recent_done"]}
        assert set(done) == {"photo.png", "holiday.jpg"}
        assert done["photo.png"]["output"] == "photo_x3.png" and done["photo.png"]["output_size"] == [120, 96]
        for entry in done.values():
            assert entry["has_preview"]
            before = request(f"{base}preview/{entry['id']}/before.jpg")
            after = request(f"{base}preview/{entry['id']}/after.jpg")
            assert before.status == after.status == 200
            assert before.headers["Content-Type"] == "image/jpeg"
            assert valid_jpeg(before.body).shape == valid_jpeg(after.body).shape
        assert request(base + "preview/no-such-job/before.jpg").status == 404
        assert request(f"{base}preview/{done['photo.png']['id']}/../../srwatch.yaml").status == 404

        page = request(base)
        assert page.status == 200 and page.headers["Content-Type"].startswith("text/html")
        assert "default-src 'self'" in page.headers["Content-Security-Policy"]
        html = page.body.decode()
        assert 'id="file-input"' in html and "photo.png" in html and "preview/" in html
        for asset in ("static/page.js", "static/page.css"):
            assert request(base + asset).status == 200
        assert daemon.stop() == 0
    assert_invariant(layout, [Drop("photo.png", a, size=(40, 32)), Drop("holiday.jpg", b, size=(30, 22))])
    assert upload_temps(layout.inbox) == []


def test_upload_limits_and_names(layout: Layout) -> None:
    small = image_bytes(20, 16, seed=3)
    too_big = image_bytes(400, 400, seed=4)  # noise: ~470 kB as PNG
    assert len(too_big) > 0.1 * (1 << 20) > len(small)
    context, base = serve(layout, max_upload_mb=0.1, max_upload_files=2)
    with context as daemon:
        wait_http(base)
        refused = {
            "too big": (upload(base, [("big.png", too_big)]), 413),
            "too many": (upload(base, [("1.png", small), ("2.png", small), ("3.png", small)]), 400),
            "no file": (upload(base, [], fields=[("note", "hello")]), 400),
            "exe": (upload(base, [("x.exe", small)]), 400),
            "no name": (upload(base, [(".png", small)]), 400),
            "part": (upload(base, [("a.png", small), ("x.png.part", small)]), 400),
            "not multipart": (request(base + "upload", data=small, headers={"Content-Type": "image/png"}), 400),
            "other origin": (upload(base, [("o.png", small)], headers={"Origin": "http://evil.example"}), 403),
            "other host": (upload(base, [("h.png", small)], headers={"Host": "evil.example:80"}), 400),
        }
        for what, (reply, status) in refused.items():
            assert reply.status == status, (what, reply.status, reply.body)
            assert reply.headers["Content-Type"].startswith("application/json") or what == "other host", what
        assert refused["too big"][0].json()["error"].endswith("(metrics.max_upload_mb)")
        assert upload_temps(layout.inbox) == [] and inbox_visible(layout) == [], "a refused upload left something"

        # Names from the client are cut down to a safe basename in the inbox, never followed.
        names = {
            "../escape.png": "escape.png",
            "sub/dir.png": "dir.png",
            "..\\..\\win.png": "win.png",
            ".hidden.png": "hidden.png",
            "c\x01tl\x7f.png": "ctl.png",
            "UPPER.PNG": "UPPER.PNG",
        }
        got = [saved(upload(base, [(name, image_bytes(18, 14, seed=10 + i))]))[0] for i, name in enumerate(names)]
        assert got == list(names.values())
        # Through a reverse proxy: the browser's origin is the proxy's name, which it passes on.
        proxied = image_bytes(18, 14, seed=30)
        assert saved(upload(base, [("proxied.png", proxied)], headers={
            "Origin": "https://srwatch.example", "X-Forwarded-Host": "srwatch.example"})) == ["proxied.png"]
        wait_finished(layout, len(names) + 1, 60, [daemon])
        assert daemon.stop() == 0
    assert not (layout.root / "escape.png").exists() and not (layout.root.parent / "escape.png").exists()
    drops = [Drop(saved_as, image_bytes(18, 14, seed=10 + i), size=(18, 14)) for i, saved_as in enumerate(names.values())]
    drops.append(Drop("proxied.png", proxied, size=(18, 14)))
    assert_invariant(layout, drops)


def test_token_is_required_when_set(layout: Layout) -> None:
    img = image_bytes(20, 16, seed=5)
    context, base = serve(layout, token=TOKEN)
    with context as daemon:
        wait_http(base)
        assert upload(base, [("a.png", img)]).status == 401
        assert upload(base, [("a.png", img)], token="wrong-token-0123456789").status == 401
        assert upload(base, [("a.png", img)], fields=[("token", "wrong-token-0123456789")]).status == 401
        # The form field works only before the files: the file would otherwise be stored unchecked.
        body, ctype = multipart([("a.png", img)])
        boundary = ctype.split("boundary=")[1]
        late = (body[: -len(f"--{boundary}--\r\n")]
                + f'--{boundary}\r\nContent-Disposition: form-data; name="token"\r\n\r\n{TOKEN}\r\n--{boundary}--\r\n'.encode())
        assert request(base + "upload", data=late, headers={"Content-Type": ctype}, method="POST").status == 401
        assert upload_temps(layout.inbox) == [] and inbox_visible(layout) == []
        assert request(base + "metrics").status == 200, "reading needs no token"

        first = saved(upload(base, [("a.png", img)], token=TOKEN))
        second = saved(upload(base, [("b.png", img)], fields=[("token", TOKEN)]))
        wait_finished(layout, 2, 60, [daemon])
        assert daemon.stop() == 0
    assert (first, second) == (["a.png"], ["b.png"])
    assert_invariant(layout, [Drop("a.png", img, size=(20, 16)), Drop("b.png", img, size=(20, 16))])


def test_a_taken_name_gets_a_free_one(layout: Layout) -> None:
    one, two, three = (image_bytes(22, 18, seed=s) for s in (6, 7, 8))
    context, base = serve(layout)
    taken = place(layout.inbox, Drop("taken.png", kind="dir", expect="inbox"))  # a folder srwatch leaves alone
    with context as daemon:
        wait_http(base)
        assert saved(upload(base, [("taken.png", one)])) == ["taken-1.png"]
        # Two files of one name in one request: both are placed before the watcher can take either.
        assert saved(upload(base, [("twin.png", two), ("twin.png", three)])) == ["twin.png", "twin-1.png"]
        wait_finished(layout, 3, 60, [daemon])
        assert daemon.stop() == 0
    assert (layout.inbox / "taken.png").is_dir()
    assert_invariant(layout, [taken, Drop("taken-1.png", one, size=(22, 18)), Drop("twin.png", two, size=(22, 18)),
                              Drop("twin-1.png", three, size=(22, 18))])


@contextmanager
def partial_upload(layout: Layout, port: int, body: bytes, ctype: str, sent: int, timeout: float):
    """A raw connection that POSTs the headers and the first `sent` bytes of `body`, once its temp file is in the inbox."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        head = (f"POST /upload HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: {ctype}\r\n"
                f"Content-Length: {len(body)}\r\n\r\n").encode()
        sock.sendall(head + body[:sent])
        wait_for(lambda: upload_temps(layout.inbox) != [], 10, 0.05, "the upload's temp file in the inbox")
        yield sock


def test_a_broken_upload_leaves_nothing(layout: Layout) -> None:
    context, base = serve(layout, max_upload_mb=50)
    port = int(base.rsplit(":", 1)[1].strip("/"))
    with context as daemon:
        wait_http(base)
        body, ctype = multipart([("half.png", os.urandom(4 << 20))])
        with partial_upload(layout, port, body, ctype, len(body) // 2, timeout=10):
            pass  # the client goes away mid-file
        wait_for(lambda: upload_temps(layout.inbox) == [], 10, 0.05, "the temp file removed")
        # Same for a body that ends early but says it is complete (a broken client).
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        cut = body[: 3000] + f"\r\n--{ctype.split('boundary=')[1]}--\r\n".encode()
        conn.request("POST", "/upload", body=cut[:2000], headers={"Content-Type": ctype})
        assert conn.getresponse().status == 400
        conn.close()
        time.sleep(1.0)  # FAST_WATCH: anything visible would be taken by now
        assert upload_temps(layout.inbox) == [] and inbox_visible(layout) == []
        daemon.assert_alive("after broken uploads")
        assert daemon.stop() == 0
    assert_invariant(layout, [])


def test_a_stalled_upload_is_dropped_and_leaves_nothing(layout: Layout) -> None:
    context, base = serve(layout, upload_stall_seconds=1.0)
    port = int(base.rsplit(":", 1)[1].strip("/"))
    with context as daemon:
        wait_http(base)
        body, ctype = multipart([("slow.png", os.urandom(1 << 20))])
        with partial_upload(layout, port, body, ctype, len(body) // 4, timeout=15) as sock:
            # Then nothing: the client stalls, connected.
            answer = b""
            while chunk := sock.recv(4096):  # the server answers unasked, then closes
                answer += chunk
            answer = answer.decode(errors="replace")
            assert answer.startswith("HTTP/1.1 408"), answer
            assert "metrics.upload_stall_seconds" in answer
            wait_for(lambda: upload_temps(layout.inbox) == [], 5, 0.05, "the stalled upload's temp file removed")
        time.sleep(1.0)  # FAST_WATCH: anything visible would be taken by now
        assert inbox_visible(layout) == []
        assert request(base + "api/status").status == 200  # the endpoint kept serving
        daemon.assert_alive("after a stalled upload")
        assert daemon.stop() == 0
    assert_invariant(layout, [])


def test_page_and_upload_can_be_off(layout: Layout) -> None:
    context, base = serve(layout, page=False, upload=False)
    with context as daemon:
        wait_http(base)
        assert request(base).status == 404
        assert request(base + "api/status").status == 404
        assert upload(base, [("a.png", image_bytes(10, 10))]).status in (404, 405)
        assert daemon.stop() == 0
    assert inbox_visible(layout) == [] and upload_temps(layout.inbox) == []


def test_abandoned_upload_temps_are_swept_at_start(layout: Layout) -> None:
    """A daemon killed mid-upload leaves a hidden temp file: the next start removes it once it is old."""
    layout.inbox.mkdir(parents=True)
    stale, fresh = layout.inbox / ".upload-0123456789abcdef.part", layout.inbox / ".upload-fedcba9876543210.part"
    stale.write_bytes(b"half an upload")
    fresh.write_bytes(b"an upload of another srwatch, going on")
    two_hours_ago = time.time() - 7200
    os.utime(stale, (two_hours_ago, two_hours_ago))
    other = layout.inbox / ".upload-notes.txt"  # not our temp name: never touched
    other.write_bytes(b"x")
    context, base = serve(layout)
    with context as daemon:
        wait_http(base)
        assert upload_temps(layout.inbox) == sorted([fresh.name, other.name])
        assert "removed 1 upload temp file(s)" in daemon.log()
        assert daemon.stop() == 0
    assert_invariant(layout, [Drop(fresh.name, fresh.read_bytes(), expect="inbox"),
                              Drop(other.name, b"x", expect="inbox")])
