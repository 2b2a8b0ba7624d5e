"""Several hot folders in one daemon: each with its own model, format, naming, hours and webhook.

Real daemon, real observer, real workers and models, a real HTTP receiver for the webhook.
Every profile keeps the invariant: each input exactly once, none half-written.
"""
from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
from datetime import datetime, timedelta
from pathlib import Path

import cv2
import pytest
import yaml

from daemon_harness import (
    FAST_WATCH, REPO, DaemonProcess, Drop, Layout, assert_each_input_once, image_bytes, model_for_tests, wait_for,
)
from webhook_receiver import Received, receiving

pytestmark = pytest.mark.slow

MODELS = REPO / "models"


def _paths(layout: Layout) -> dict:
    return {"inbox": str(layout.inbox), "outbox": str(layout.outbox), "quarantine": str(layout.quarantine),
            "archive": str(layout.archive), "work": str(layout.work)}


def _write(root: Path, profiles: list[dict], **top) -> Path:
    cfg = {"model": {"path": str(model_for_tests())}, "pool": {"threads_per_worker": 1}, "watch": FAST_WATCH,
           "tile": {"size": "off"}, "log": {"level": "DEBUG"}, "shutdown_timeout": 30, "profiles": profiles, **top}
    path = root / "srwatch.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _layouts(root: Path, *names: str) -> dict[str, Layout]:
    layouts = {}
    for name in names:
        layout = Layout(root / name)
        layout.inbox.mkdir(parents=True)
        layouts[name] = layout
    return layouts


@pytest.fixture()
def hook():
    with receiving("/srwatch") as received:
        yield received


def _finished(layout: Layout, n: int) -> bool:
    from daemon_harness import finished_count

    return finished_count(layout) >= n and not layout.work_jobs()


def test_three_profiles_each_with_its_model_format_name_schedule_and_webhook(tmp_path: Path, hook: Received) -> None:
    lay = _layouts(tmp_path, "x2", "x3", "x4")
    opens = (datetime.now() + timedelta(seconds=15)).replace(microsecond=0)
    window = f"{opens:%H:%M:%S}-{opens + timedelta(hours=1):%H:%M:%S}"
    config = _write(tmp_path, [
        {"name": "x2-jpeg", "paths": _paths(lay["x2"]), "model": {"path": str(MODELS / "EDSR-srwatch_x2.pb")},
         "output": {"format": "jpg", "jpeg_quality": 90}, "notify": {"webhook": hook.url}},
        {"name": "x3-png", "paths": _paths(lay["x3"]), "output": {"format": "png", "name": "{stem}-{profile}-x{scale}"}},
        {"name": "x4-night", "paths": _paths(lay["x4"]), "model": {"path": str(MODELS / "EDSR-srwatch_x4.pb")},
         "schedule": {"hours": window}},
    ])
    daemon = DaemonProcess(config, tmp_path / "daemon.log").start()
    inputs = {name: {f"p{i}.png": image_bytes(30 + i, 20 + i, seed=i) for i in range(2)} for name in lay}
    try:
        for name, files in inputs.items():
            for rel, data in files.items():
                (lay[name].inbox / rel).write_bytes(data)
        wait_for(lambda: _finished(lay["x2"], 2) and _finished(lay["x3"], 2), 60, what="x2 and x3 profiles done")
        # The x4 profile is closed until `opens`: its files wait in its inbox, untouched.
        assert datetime.now() < opens - timedelta(seconds=1), "too slow to observe the closed window"
        assert sorted(p.name for p in lay["x4"].inbox.iterdir()) == ["p0.png", "p1.png"]
        assert "hot folder x4-night is closed" in daemon.log()
        def daemon_status() -> dict:
            run = subprocess.run([sys.executable, "-m", "srwatch.cli", "status", "-c", str(config), "--json",
                                  "--profile", "x4-night"], capture_output=True, text=True, timeout=60, cwd=REPO)
            assert run.returncode == 0, run.stderr
            return json.loads(run.stdout)["profiles"]["x4-night"]["daemon"]

        wait_for(lambda: daemon_status() is not None, 10, 0.2, "the daemon's status file")
        folders = {f["name"]: f for f in daemon_status()["folders"]}
        assert folders["x4-night"]["state"] == "closed" and folders["x4-night"]["hours"] == window
        assert folders["x2-jpeg"]["state"] == "open"
        assert datetime.now() < opens, "too slow to observe the closed window"
        wait_for(lambda: _finished(lay["x4"], 2), 60, what="x4 files released when the window opened")
        assert datetime.now() >= opens
        wait_for(lambda: len(hook.bodies) >= 2, 20, what="two webhook POSTs")
    finally:
        assert daemon.stop() == 0
    # Every profile's folders hold exactly what they should (the harness sees every file).
    assert_each_input_once(lay["x2"], [Drop(r, d, out_ext=".jpg") for r, d in inputs["x2"].items()], suffix="_x2")
    assert_each_input_once(lay["x3"], {r: d for r, d in inputs["x3"].items()}, suffix="-x3-png-x3")
    assert_each_input_once(lay["x4"], {r: d for r, d in inputs["x4"].items()}, suffix="_x4")
    for i in range(2):
        w, h = 30 + i, 20 + i
        jpg = cv2.imread(str(lay["x2"].outbox / f"p{i}_x2.jpg"))
        assert jpg is not None and jpg.shape[:2] == (2 * h, 2 * w)  # JPEG, by magic bytes
        assert (lay["x2"].outbox / f"p{i}_x2.jpg").read_bytes()[:2] == b"\xff\xd8"
        png = cv2.imread(str(lay["x3"].outbox / f"p{i}-x3-png-x3.png"))
        assert png.shape[:2] == (3 * h, 3 * w)
        x4 = cv2.imread(str(lay["x4"].outbox / f"p{i}_x4.png"))
        assert x4.shape[:2] == (4 * h, 4 * w)
    bodies = sorted(hook.bodies, key=lambda b: b["input"])
    assert [b["input"] for b in bodies] == ["p0.png", "p1.png"]  # only the profile with a webhook
    assert all(b["profile"] == "x2-jpeg" and b["event"] == "done" and b["output"].endswith("_x2.jpg") for b in bodies)
    assert all(set(b["ms"]) >= {"read", "decode", "infer", "encode"} for b in bodies)
    log = daemon.log()
    assert "hot folder x4-night is open" in log
    assert log.count("srwatch ready: watching") == 3


def test_a_burst_in_one_profile_does_not_starve_another(tmp_path: Path) -> None:
    lay = _layouts(tmp_path, "busy", "quiet")
    config = _write(tmp_path, [  # one model: both share the same workers
        {"name": "busy", "paths": _paths(lay["busy"])},
        {"name": "quiet", "paths": _paths(lay["quiet"])},
    ], pool={"workers": 1, "threads_per_worker": 1, "queue_size": 8})
    daemon = DaemonProcess(config, tmp_path / "daemon.log").start()
    burst = {f"b{i:03d}.png": image_bytes(64, 48, seed=i) for i in range(80)}
    try:
        staging = tmp_path / "staging"
        staging.mkdir()
        for rel, data in burst.items():
            (staging / rel).write_bytes(data)
        for rel in burst:
            (staging / rel).rename(lay["busy"].inbox / rel)
        wait_for(lambda: len(lay["busy"].files(lay["busy"].outbox)) >= 3, 60, what="the burst under way")
        dropped = time.monotonic()
        quiet = image_bytes(40, 30, seed=999)
        (lay["quiet"].inbox / "q.png").write_bytes(quiet)
        wait_for(lambda: lay["quiet"].files(lay["quiet"].outbox) == ["q_x3.png"], 60, what="the quiet profile's file")
        waited = time.monotonic() - dropped
        busy_done = len(lay["busy"].files(lay["busy"].outbox))
        # Between the quiet file's claim and the worker starting on it, the one worker may start
        # the burst's file it was sent ahead and, by turn, one more; a single queue would make it
        # wait for all 8 queued. (Burst files it had computed before the claim may still finish
        # delivering meanwhile, up to worker.DELIVERY_THREADS of them: they are not counted.)
        log = daemon.log()
        claimed_at = log.index("claimed quiet:q.png")
        computing_at = log.index("srwatch.worker: computing q.png")
        overtaken = len(re.findall(r"srwatch\.worker: computing b\d+\.png", log[claimed_at:computing_at]))
        done_meanwhile = log.count("done busy:", claimed_at, log.index("done quiet:q.png"))
        print(f"quiet profile's first output {waited:.2f} s after its drop, {overtaken} burst file(s) started and "
              f"{done_meanwhile} done meanwhile; the busy profile had {busy_done}/80 done")
        assert overtaken <= 3, f"{overtaken} files of the burst were started while the quiet file waited"
        wait_for(lambda: _finished(lay["busy"], 80), 240, what="the burst done")
    finally:
        daemon.signal(signal.SIGTERM)
        assert daemon.wait(60) == 0
    assert_each_input_once(lay["busy"], burst)
    assert_each_input_once(lay["quiet"], {"q.png": quiet})


def test_reload_adds_removes_and_changes_only_the_profiles_that_changed(tmp_path: Path) -> None:
    lay = _layouts(tmp_path, "a", "b", "c")
    profiles = [{"name": "a", "paths": _paths(lay["a"])}, {"name": "b", "paths": _paths(lay["b"])}]
    # pool auto: the new model's group changes the CPU share, yet a's workers must stay.
    config = _write(tmp_path, profiles, pool={"workers": "auto", "threads_per_worker": "auto"})
    daemon = DaemonProcess(config, tmp_path / "daemon.log").start()
    a1, b1 = image_bytes(30, 20, seed=1), image_bytes(30, 20, seed=2)
    a2, b2, c1 = image_bytes(31, 21, seed=3), image_bytes(31, 21, seed=4), image_bytes(32, 22, seed=5)
    try:
        (lay["a"].inbox / "a1.png").write_bytes(a1)
        (lay["b"].inbox / "b1.png").write_bytes(b1)
        wait_for(lambda: _finished(lay["a"], 1) and _finished(lay["b"], 1), 60, what="first files")
        workers_before = set(daemon.workers())
        # a: new output name (no worker restart); b: removed; c: added, with another model.
        cfg = yaml.safe_load(config.read_text())
        cfg["profiles"] = [
            {"name": "a", "paths": _paths(lay["a"]), "output": {"name": "{stem}-again_x{scale}"}},
            {"name": "c", "paths": _paths(lay["c"]), "model": {"path": str(MODELS / "EDSR-srwatch_x2.pb")}},
        ]
        config.write_text(yaml.safe_dump(cfg))
        daemon.signal(signal.SIGHUP)
        wait_for(lambda: "configuration reloaded" in daemon.log(), 60, what="the reload")
        (lay["a"].inbox / "a2.png").write_bytes(a2)
        (lay["b"].inbox / "b2.png").write_bytes(b2)
        (lay["c"].inbox / "c1.png").write_bytes(c1)
        wait_for(lambda: _finished(lay["a"], 2) and _finished(lay["c"], 1), 60, what="files after the reload")
        time.sleep(1.5)  # b2 would be settled and taken by now if b were still watched
        assert workers_before <= set(daemon.workers()), "the workers of the unchanged model were restarted"
    finally:
        assert daemon.stop() == 0
    assert_each_input_once(lay["a"], [Drop("a1.png", a1), Drop("a2.png", a2, suffix="-again_x3")])
    assert_each_input_once(lay["b"], {"b1.png": b1}, left_in_inbox={"b2.png": b2})
    assert_each_input_once(lay["c"], {"c1.png": c1}, suffix="_x2")
    log = daemon.log()
    assert "hot folder c added" in log and "hot folder b removed" in log


def test_uploads_and_metrics_name_the_profile(tmp_path: Path) -> None:
    from web_harness import free_port, multipart, request, sample, scrape, wait_http

    lay = _layouts(tmp_path, "a", "b")
    port = free_port()
    config = _write(tmp_path, [{"name": "a", "paths": _paths(lay["a"])}, {"name": "b", "paths": _paths(lay["b"])}],
                    metrics={"listen": f"127.0.0.1:{port}"}, pool={"workers": 1, "threads_per_worker": 1})
    base = f"http://127.0.0.1:{port}/"
    daemon = DaemonProcess(config, tmp_path / "daemon.log").start()
    data = image_bytes(36, 28, seed=7)
    try:
        wait_http(base)
        body, content_type = multipart([("up.png", data)])
        reply = request(base + "upload?profile=b", data=body, headers={"Content-Type": content_type}, method="POST")
        assert reply.status == 200, reply.body
        assert reply.json()["profile"] == "b" and reply.json()["files"][0]["saved_as"] == "up.png"
        refused = request(base + "upload?profile=nope", data=body, headers={"Content-Type": content_type},
                          method="POST")
        assert refused.status == 400 and "no profile named 'nope'" in refused.json()["error"]
        wait_for(lambda: _finished(lay["b"], 1), 60, what="the upload processed in profile b")
        wait_for(lambda: sample(scrape(base), "srwatch_jobs_total", outcome="done", reason="", profile="b") == 1,
                 10, what="the metric labelled with the profile")
        page = request(base).body.decode()
        assert '<select id="profile">' in page and '<option value="b">b</option>' in page
        done = request(base + "api/status").json()["recent_done"]
        assert [(e["rel"], e["profile"]) for e in done] == [("up.png", "b")]
    finally:
        assert daemon.stop() == 0
    assert_each_input_once(lay["b"], {"up.png": data})
    assert_each_input_once(lay["a"], {})
