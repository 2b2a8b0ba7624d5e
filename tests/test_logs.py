"""Logs: one line per file at INFO, as text or as one JSON object per line, with the same fields."""
from __future__ import annotations

import json
import re

import pytest

from daemon_harness import DaemonProcess, Layout, assert_each_input_once, image_bytes, settled, wait_for, write_config

pytestmark = pytest.mark.slow

STAGES = {"read", "decode", "infer", "encode", "deliver", "archive"}


def _run_batch(layout: Layout, log_format: str) -> tuple[str, dict[str, bytes]]:
    config = write_config(layout, log={"level": "INFO", "format": log_format}, watch={"recursive": True})
    daemon = DaemonProcess(config, layout.root / "daemon.log").start()
    good = image_bytes(40, 30, seed=1)
    bad = b"this is not an image\n"
    try:
        (layout.inbox / "sub").mkdir()
        (layout.inbox / "sub" / "good.png").write_bytes(good)
        (layout.inbox / "bad.png").write_bytes(bad)
        wait_for(settled(layout, 2), 60, what="two files finished")
    finally:
        assert daemon.stop() == 0
    assert_each_input_once(layout, {"sub/good.png": good}, quarantined={"bad.png": bad})
    return daemon.log(), {"sub/good.png": good, "bad.png": bad}


def test_json_log_is_one_object_per_line_with_the_fields_of_each_file(layout: Layout) -> None:
    log, inputs = _run_batch(layout, "json")
    lines = [line for line in log.splitlines() if line.strip()]
    records = []
    for line in lines:
        try:
            records.append(json.loads(line))
        except ValueError:
            pytest.fail(f"a log line is not JSON: {line!r}")
    done = [r for r in records if r.get("event") == "done"]
    quarantined = [r for r in records if r.get("event") == "quarantined"]
    assert len(done) == 1 and len(quarantined) == 1, records
    d = done[0]
    assert d["level"] == "INFO" and d["path"] == "sub/good.png"
    assert d["size"] == len(inputs["sub/good.png"])
    assert d["input_size"] == [40, 30] and d["output_size"] == [120, 90]
    assert STAGES <= set(d["ms"]), d["ms"]
    assert all(isinstance(v, (int, float)) and v >= 0 for v in d["ms"].values())
    assert re.fullmatch(r"worker-\d+", d["worker"]) and d["output"].endswith("good_x3.png")
    q = quarantined[0]
    assert q["level"] == "WARNING" and q["path"] == "bad.png" and q["reason"] == "not_image"
    assert q["size"] == len(inputs["bad.png"]) and q["error"] and q["message"].startswith("quarantined bad.png")
    assert not any("Traceback" in line for line in lines)


def test_text_log_names_stages_size_and_worker(layout: Layout) -> None:
    log, _ = _run_batch(layout, "text")
    line = next(line for line in log.splitlines() if " done sub/good.png " in line)
    assert re.search(r"\(40x30 -> 120x90, [\d.]+ s; [\d.]+ kB; read \d+ ms, decode \d+ ms, infer \d+ ms, "
                     r"encode \d+ ms.*; worker-\d+\)", line), line
    assert re.search(r"quarantined bad\.png: not_image: .*\(worker-\d+\)", log)
    assert "Traceback" not in log
