"""/metrics of a real daemon after a known batch: every count matches what the folders show."""
from __future__ import annotations

import signal
import socket
import time

import cv2
import pytest
import yaml

import srwatch
from daemon_harness import (
    FAST_WATCH,
    DaemonProcess,
    Drop,
    Layout,
    assert_invariant,
    file_drop,
    place,
    running,
    wait_finished,
    wait_for,
    write_config,
)
from web_harness import free_port, matching, request, sample, scrape, wait_http

pytestmark = pytest.mark.slow

NOT_AN_IMAGE = b"plain text, certainly not an image\n" * 20


def batch() -> list[Drop]:
    """Three good images of different sizes and one file that only pretends to be a PNG."""
    return [
        file_drop("a.png", 40, 30, seed=1),
        file_drop("b.jpg", 24, 20, seed=2),
        file_drop("c.png", 33, 17, seed=3),
        Drop("fake.png", NOT_AN_IMAGE, expect="not_image"),
    ]


def test_metrics_count_a_known_batch(layout: Layout) -> None:
    port = free_port()
    base = f"http://127.0.0.1:{port}/"
    drops = batch()
    with running(layout, watch=FAST_WATCH, metrics={"listen": f"127.0.0.1:{port}"}) as daemon:
        wait_http(base)
        for drop in drops:
            place(layout.inbox, drop)
        wait_finished(layout, len(drops), 90, [daemon])
        # The folders are final a tick before the supervisor has counted the last message.
        wait_for(lambda: sample(scrape(base), "srwatch_jobs_total", outcome="done", reason="", profile="default") == 3, 10,
                 what="three files counted as done")
        samples = scrape(base)
        assert daemon.stop() == 0

    assert sample(samples, "srwatch_files_detected_total", profile="default") == 4
    assert sample(samples, "srwatch_jobs_total", outcome="quarantined", reason="not_image", profile="default") == 1
    assert sample(samples, "srwatch_quarantined_total", reason="not_image", profile="default") == 1
    assert sum(matching(samples, "srwatch_quarantined_total").values()) == 1
    assert sample(samples, "srwatch_stage_seconds_count", stage="infer") == 3
    assert sample(samples, "srwatch_stage_seconds_count", stage="decode") == 3
    assert sample(samples, "srwatch_job_seconds_count", outcome="done", profile="default") == 3
    assert sample(samples, "srwatch_job_seconds_count", outcome="quarantined", profile="default") == 1
    assert sample(samples, "srwatch_job_seconds_sum", outcome="done", profile="default") > 0

    outputs = [cv2.imread(str(layout.outbox / name), cv2.IMREAD_UNCHANGED) for name in layout.files(layout.outbox)]
    assert len(outputs) == 3
    assert sample(samples, "srwatch_output_pixels_total") == sum(img.shape[0] * img.shape[1] for img in outputs)
    assert sample(samples, "srwatch_input_pixels_total") == 40 * 30 + 24 * 20 + 33 * 17
    assert sample(samples, "srwatch_input_bytes_total") == sum(len(d.data) for d in drops[:3])
    assert sample(samples, "srwatch_output_bytes_total") == sum((layout.outbox / n).stat().st_size
                                                                for n in layout.files(layout.outbox))

    up = matching(samples, "srwatch_worker_up")
    assert len(up) == 2 and set(up.values()) == {1.0}, up
    assert all(dict(labels)["pid"].isdigit() for labels in up)
    info = matching(samples, "srwatch_build_info")
    assert len(info) == 1 and dict(next(iter(info)))["version"] == srwatch.__version__
    assert sample(samples, "srwatch_model_load_seconds") > 0
    assert sample(samples, "srwatch_jobs_in_progress") == 0
    assert {dict(k)["stage"]: v for k, v in matching(samples, "srwatch_queue_depth").items()} == \
        {"settling": 0, "ready": 0, "claimed": 0}
    assert sample(samples, "srwatch_paused") == 0
    assert sample(samples, "srwatch_worker_crashes_total") == 0

    assert_invariant(layout, drops)


def test_port_in_use_is_a_configuration_error(layout: Layout) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        config = write_config(layout, metrics={"listen": f"127.0.0.1:{port}"})
        daemon = DaemonProcess(config, layout.root / "daemon.log")
        try:
            daemon.start(wait_ready=False)
            assert daemon.wait(60) == 2
        finally:
            daemon.close()
    log = daemon.log()
    assert f"metrics.listen: cannot listen on 127.0.0.1:{port}" in log, log
    assert "Traceback" not in log, log
    assert not layout.outbox.exists(), "nothing is created when the port cannot be had"


def test_reload_moves_the_endpoint(layout: Layout) -> None:
    first, second = free_port(), free_port()
    with running(layout, watch=FAST_WATCH, metrics={"listen": f"127.0.0.1:{first}"}) as daemon:
        wait_http(f"http://127.0.0.1:{first}/")
        cfg = yaml.safe_load(daemon.config.read_text())
        cfg["metrics"]["listen"] = f"127.0.0.1:{second}"
        daemon.config.write_text(yaml.safe_dump(cfg))
        daemon.signal(signal.SIGHUP)
        wait_http(f"http://127.0.0.1:{second}/")
        with pytest.raises(OSError):
            request(f"http://127.0.0.1:{first}/metrics", timeout=5)
        # Turned off: nothing listens any more, and the daemon carries on.
        del cfg["metrics"]
        daemon.config.write_text(yaml.safe_dump(cfg))
        daemon.signal(signal.SIGHUP)
        deadline = time.monotonic() + 30

        def closed() -> bool:
            try:
                request(f"http://127.0.0.1:{second}/metrics", timeout=2)
                return False
            except OSError:
                return True
        wait_for(closed, deadline - time.monotonic(), 0.2, "the endpoint closed by the reload")
        daemon.assert_alive("after reloads that moved and closed the endpoint")
        assert daemon.stop() == 0
