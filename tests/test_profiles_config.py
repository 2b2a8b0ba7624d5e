"""Profiles in the config, opening hours and webhooks: the parts that need no daemon."""
from __future__ import annotations

import time
from datetime import datetime
from pathlib import Path

import pytest
import yaml

from srwatch.config import load_config
from srwatch.errors import ConfigError
from srwatch.schedule import parse_hours
from srwatch.webhook import Notification, WebhookSender
from webhook_receiver import Received, receiving

BASE = {
    "model": {"path": "EDSR-srwatch_x3.onnx", "engine": "opencv"},
    "output": {"format": "png", "jpeg_quality": 90},
    "pool": {"queue_size": 7},
}


def _profile(name: str, **extra) -> dict:
    return {"name": name, "paths": {"inbox": f"in/{name}", "outbox": f"out/{name}", "quarantine": f"q/{name}",
                                    "archive": f"arch/{name}"}, **extra}


def _load(tmp_path: Path, data: dict):
    path = tmp_path / "srwatch.yaml"
    path.write_text(yaml.safe_dump(data))
    return load_config(path)


def _error(tmp_path: Path, data: dict) -> str:
    with pytest.raises(ConfigError) as info:
        _load(tmp_path, data)
    return str(info.value)


def test_profiles_inherit_top_level_sections_key_by_key(tmp_path: Path) -> None:
    cfg = _load(tmp_path, {**BASE, "profiles": [
        _profile("x2-jpeg", model={"path": "EDSR-srwatch_x2.onnx"}, output={"format": "jpg"}, priority=2),
        _profile("x3-png", output={"name": "{profile}-{stem}-x{scale}"}, pool={"workers": 1}),
    ]})
    a, b = cfg.hot_folders()
    assert (a.name, b.name) == ("x2-jpeg", "x3-png")
    assert a.model.path.name == "EDSR-srwatch_x2.onnx" and a.model.engine == "opencv"  # engine inherited
    assert a.output.format == "jpg" and a.output.jpeg_quality == 90 and a.priority == 2
    assert b.model.path.name == "EDSR-srwatch_x3.onnx" and b.output.format == "png"
    assert b.pool.workers == 1 and b.pool.queue_size == 7
    assert a.paths.inbox == tmp_path / "in" / "x2-jpeg"
    assert a.work_dir != b.work_dir and a.work_dir.parent == b.work_dir.parent  # inboxes share a parent
    assert b.output.stem_for("photo", 3, model="m", profile=b.name, date="2026-11-25") == "x3-png-photo-x3"
    assert a.output.stem_for("photo", 2) == "photo_x2"  # default: today's behaviour


def test_config_without_profiles_is_one_hot_folder_named_default(tmp_path: Path) -> None:
    cfg = _load(tmp_path, {**BASE, "paths": _profile("x")["paths"]})
    assert cfg.hot_folders() == (cfg,) and cfg.name == "default"
    assert cfg.work_dir == tmp_path / "in" / ".srwatch-work"  # unchanged for existing configs


@pytest.mark.parametrize("profiles, expected", [
    ([_profile("a"), _profile("a", paths={"inbox": "i2", "outbox": "o2", "quarantine": "q2", "archive": "a2"})],
     "profiles[1].name: 'a' is used by another profile"),
    ([_profile("a"), _profile("b", paths={"inbox": "in/a/sub", "outbox": "o2", "quarantine": "q2", "archive": "a2"})],
     "profiles[1].paths.inbox"),
    ([_profile("a"), _profile("b", model={"path": "nope.onnx"})], "profiles[1].model.path: no such file"),
    ([_profile("a", output={"name": "{stem}_{colour}"})], "profiles[0].output.name: placeholders are"),
    ([_profile("a", schedule={"hours": "9-17"})], "profiles[0].schedule.hours:"),
    ([_profile("a", notify={"webhook": "ftp://x"})], "profiles[0].notify.webhook: must be an http"),
    ([_profile("a", log={"level": "DEBUG"})], "profiles[0].log: unknown key"),
    ([_profile("a", pool={"queue_size": 3})], "profiles[0].pool.queue_size: unknown key"),
    ([{"name": "a"}], "profiles[0].paths: required key is missing"),
    ([_profile("a b")], "profiles[0].name:"),
])
def test_bad_profiles_name_their_key(tmp_path: Path, profiles: list, expected: str) -> None:
    assert expected in _error(tmp_path, {**BASE, "profiles": profiles})


def test_top_level_paths_with_profiles_is_refused(tmp_path: Path) -> None:
    text = _error(tmp_path, {**BASE, "paths": _profile("x")["paths"], "profiles": [_profile("a")]})
    assert text.startswith("paths: with profiles:")


def test_hours_across_midnight_and_several_windows() -> None:
    night = parse_hours("22:00-06:00")
    assert night.is_open(datetime(2026, 1, 1, 23, 30)) and night.is_open(datetime(2026, 1, 1, 5, 59, 59))
    assert not night.is_open(datetime(2026, 1, 1, 6, 0)) and not night.is_open(datetime(2026, 1, 1, 12, 0))
    assert night.next_opening(datetime(2026, 1, 1, 12, 0)) == datetime(2026, 1, 1, 22, 0)
    assert night.next_opening(datetime(2026, 1, 1, 23, 0)) is None
    office = parse_hours("08:00-12:00, 13:00-17:30:30")
    assert office.is_open(datetime(2026, 1, 1, 17, 30, 29)) and not office.is_open(datetime(2026, 1, 1, 12, 30))
    assert office.next_opening(datetime(2026, 1, 1, 18, 0)) == datetime(2026, 1, 2, 8, 0)
    assert parse_hours("00:00-00:00").is_open(datetime(2026, 1, 1, 3, 0))  # all day
    for bad in ("24:00-01:00", "8-17", "08:00", "08:00-17:00,"):
        with pytest.raises(ValueError):
            parse_hours(bad)


@pytest.fixture()
def receiver():
    with receiving() as received:
        yield received


def test_webhook_retries_then_delivers_in_order(receiver: Received) -> None:
    results = []
    receiver.fail_first = 2
    sender = WebhookSender(on_result=lambda profile, ok: results.append((profile, ok)))
    try:
        for i in range(3):
            assert sender.send(Notification(receiver.url, {"input": f"f{i}"}, timeout=2, retries=3, profile="p"))
        deadline = time.monotonic() + 20
        while len(results) < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        sender.stop()
    assert results == [("p", True)] * 3
    assert [b["input"] for b in receiver.bodies] == ["f0", "f1", "f2"]


def test_webhook_failure_is_counted_and_send_never_blocks(receiver: Received) -> None:
    results = []
    sender = WebhookSender(on_result=lambda profile, ok: results.append(ok))
    dead = "http://127.0.0.1:9/nothing-listens-here"
    try:
        started = time.monotonic()
        for _ in range(50):
            sender.send(Notification(dead, {"input": "x"}, timeout=0.5, retries=1, profile="p"))
        assert time.monotonic() - started < 0.5  # enqueued, not sent inline
        deadline = time.monotonic() + 30
        while len(results) < 1 and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        sender.stop(timeout=2)
    assert results and not any(results)
