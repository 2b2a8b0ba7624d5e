"""Delivery, archive, quarantine and claim/recover, on real files."""
from __future__ import annotations

import json
import os
from pathlib import Path

from srwatch import claim, sink
from srwatch.watcher import Settler, is_ignored


def test_write_new_never_overwrites_and_leaves_no_temp(tmp_path: Path) -> None:
    first = sink.write_new(tmp_path, "photo_x3", ".png", b"one")
    second = sink.write_new(tmp_path, "photo_x3", ".png", b"two")
    third = sink.write_new(tmp_path, "photo_x3", ".png", b"three")
    assert [p.name for p in (first, second, third)] == ["photo_x3.png", "photo_x3-1.png", "photo_x3-2.png"]
    assert first.read_bytes() == b"one" and third.read_bytes() == b"three"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["photo_x3-1.png", "photo_x3-2.png", "photo_x3.png"]


def test_write_new_cleans_up_on_failure(tmp_path: Path) -> None:
    try:
        sink.write_new(tmp_path, "x", ".png", None)  # type: ignore[arg-type]
    except TypeError:
        pass
    assert list(tmp_path.iterdir()) == []


def test_quarantine_writes_reason_beside_file(tmp_path: Path) -> None:
    src = tmp_path / "bad.png"
    src.write_bytes(b"x")
    q = tmp_path / "q"
    (q).mkdir()
    (q / "bad.png").write_bytes(b"older")
    final = sink.quarantine(src, q, original_path="bad.png", reason="not_image", message="nope",
                            exception="NotAnImage", attempts=1, claimed_at=sink.utc_now())
    assert final.name == "bad-1.png" and not src.exists()
    record = json.loads((q / "bad-1.png.error.json").read_text())
    assert record["reason"] == "not_image" and record["file"] == "bad-1.png"
    assert (q / "bad.png").read_bytes() == b"older"


def test_claim_moves_file_and_recover_finds_it(tmp_path: Path) -> None:
    inbox, work = tmp_path / "in", tmp_path / "work"
    (inbox / "sub").mkdir(parents=True)
    work.mkdir()
    src = inbox / "sub" / "a.png"
    src.write_bytes(b"data")
    job = claim.claim(src, inbox, work)
    assert job is not None and not src.exists() and job.path.read_bytes() == b"data"
    assert job.rel == "sub/a.png"
    assert claim.claim(src, inbox, work) is None, "a vanished file cannot be claimed twice"
    job = claim.with_attempt(job)
    recovered = claim.recover(work)
    assert [(j.id, j.rel, j.attempts) for j in recovered] == [(job.id, "sub/a.png", 1)]
    claim.release(job)
    assert claim.recover(work) == []


def test_recover_rebuilds_a_job_without_record(tmp_path: Path) -> None:
    work = tmp_path / "work"
    (work / "j1" / "f").mkdir(parents=True)
    (work / "j1" / "f" / "x.png").write_bytes(b"x")
    (work / "empty").mkdir()
    jobs = claim.recover(work)
    assert [j.rel for j in jobs] == ["x.png"]
    assert not (work / "empty").exists()


def test_ignore_rules() -> None:
    patterns = [".*", "*.part", "*.tmp", "*.crdownload", "*.swp", "*~"]
    for name in ("a.png.part", ".hidden.png", "x.tmp", "y.crdownload", ".a.swp", "b.png~"):
        assert is_ignored(Path(name), patterns), name
    assert is_ignored(Path(".git/a.png"), patterns)
    assert not is_ignored(Path("sub/a.png"), patterns)


def test_settler_waits_for_quiet_or_close(tmp_path: Path) -> None:
    s = Settler(settle_seconds=1.0)
    f = tmp_path / "f.png"
    f.write_bytes(b"12")
    now = 1000.0
    os.utime(f)  # fresh mtime: being written
    s.note(f, "changed", now)
    assert s.ready(now + 0.5) == []
    f.write_bytes(b"1234")
    assert s.ready(now + 0.9) == []  # changed: the clock restarts
    assert s.ready(now + 1.5) == []
    assert s.ready(now + 2.0) == [f]
    g = tmp_path / "g.png"
    g.write_bytes(b"x")
    s.note(g, "closed", now)
    assert s.ready(now + 0.3) == []
    assert s.ready(now + 0.7) == [g]
