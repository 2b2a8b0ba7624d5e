"""`srwatch status`: counts from the folders when the daemon is stopped (changing nothing, on a
read-only tree too), the daemon's own figures while it runs, and a frozen daemon said to be stuck."""
from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from daemon_harness import (
    FAST_WATCH, REPO, Drop, Layout, entries, file_drop, make_image, place, running, wait_finished, wait_for,
    write_config,
)

pytestmark = pytest.mark.slow

WATCH = {**FAST_WATCH, "recursive": True}


def cli(*args: str) -> subprocess.CompletedProcess:
    """`srwatch ARGS` in a subprocess, as a user runs it."""
    return subprocess.run([sys.executable, "-m", "srwatch.cli", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=60)


def status(config: Path) -> tuple[dict, str]:
    """`srwatch status --json` parsed, and the text form; both must exit 0."""
    as_json, text = cli("status", "-c", str(config), "--json"), cli("status", "-c", str(config))
    assert as_json.returncode == 0 and text.returncode == 0, as_json.stderr + text.stderr
    return json.loads(as_json.stdout), text.stdout


def listing(root: Path) -> dict:
    """Every entry under `root`, folders included: kind, mode, inode, size, mtime and content."""
    found = {}
    for rel, entry in entries(root, with_dirs=True).items():
        st = os.lstat(entry.path)
        content = entry.content() if entry.kind in ("file", "link") else None
        digest = hashlib.sha256(content).hexdigest() if isinstance(content, bytes) else content
        found[rel] = (entry.kind, st.st_mode, st.st_ino, st.st_size, st.st_mtime_ns, digest)
    st = os.lstat(root)
    found["."] = (st.st_mode, st.st_ino, st.st_mtime_ns)
    return found


def leave_claimed(layout: Layout, name: str) -> None:
    """A job left in the work folder, as a daemon killed after claiming leaves it (the real claim)."""
    from srwatch import claim

    path = make_image(layout.inbox / name, seed=9)
    st = os.lstat(path)
    assert claim.claim(claim.Candidate(path, "file", st.st_ino, st.st_size, st.st_mtime_ns), layout.inbox, layout.work)


def fill_inbox(inbox: Path) -> None:
    """Waiting: two files (one in a sub-folder), a link, a FIFO; a hidden file and a temporary name apart."""
    make_image(inbox / "new.png", seed=5)
    (inbox / "sub").mkdir(exist_ok=True)
    make_image(inbox / "sub" / "deep.png", seed=6)
    os.symlink("/nonexistent/target.png", inbox / "link.png")
    os.mkfifo(inbox / "pipe.png")
    (inbox / ".hidden.png").write_bytes(b"hidden")
    (inbox / "copying.png.part").write_bytes(b"half")


WAITING = {"waiting": 4, "files": 2, "links": 1, "other": 1, "temporary": 1, "not_watched": 0}


def test_status_with_the_daemon_stopped_counts_from_the_folders_and_changes_nothing(layout: Layout) -> None:
    drops = [file_drop("a.png", seed=1), file_drop("b.png", seed=2), Drop("bad.png", b"not an image\n", expect="not_image")]
    with running(layout, watch=WATCH) as daemon:
        for drop in drops:
            place(layout.inbox, drop)
        wait_finished(layout, len(drops), 60, [daemon])
        config = daemon.config
    fill_inbox(layout.inbox)
    leave_claimed(layout, "left.png")
    before = listing(layout.root)
    report, text = status(config)
    assert listing(layout.root) == before, "srwatch status changed something"

    assert (report["running"], report["pid"], report["daemon"]) == (False, None, None)
    folders = report["folders"]
    assert folders["inbox"] == WAITING
    assert [(j["rel"], j["state"]) for j in folders["claimed"]] == [("left.png", "waiting")]
    assert (folders["outbox"], folders["archive"]) == (2, 2)
    assert folders["quarantine"]["by_reason"] == {"not_image": 1}
    assert folders["quarantine"]["recent"][0]["original"] == "bad.png"
    assert "not running" in text and "inbox: 4 waiting" in text and "left.png" in text and "not_image 1" in text


def test_status_works_on_a_read_only_tree(tmp_path: Path) -> None:
    from mounts import remount, tmpfs
    from srwatch import claim

    with tmpfs(tmp_path / "vol", "16m") as vol:
        layout = Layout(vol)
        config = write_config(layout, watch=WATCH)
        for folder in (layout.outbox, layout.archive, layout.quarantine, layout.work):
            folder.mkdir()
        claim.prepare_work_folder(layout.work)
        (layout.work / claim.LOCK_NAME).write_text("12345\n")  # left by a daemon that stopped
        fill_inbox(layout.inbox)
        leave_claimed(layout, "left.png")
        remount(vol, "ro")
        try:
            report, text = status(config)
        finally:
            remount(vol, "rw")
    assert report["running"] is False and report["folders"]["inbox"] == WAITING
    assert len(report["folders"]["claimed"]) == 1 and "not running" in text


def test_status_of_a_running_daemon_and_of_a_stuck_one(layout: Layout) -> None:
    from srwatch import claim

    good = [file_drop(f"p{i}.png", seed=i) for i in range(3)]
    with running(layout, watch=WATCH) as daemon:
        for drop in [*good, Drop("bad.png", b"junk\n", expect="not_image")]:
            place(layout.inbox, drop)
        wait_finished(layout, 4, 60, [daemon])
        wait_for(lambda: (claim.read_status(layout.work) or {}).get("totals", {}).get("done") == 3, 10,
                 what="the status file counting the batch")
        report, text = status(daemon.config)
        assert (report["running"], report["pid"], report["stuck"]) == (True, daemon.pid, False)
        snap = report["daemon"]
        assert {w["pid"] for w in snap["workers"]} == set(daemon.workers())
        assert all(w["load_seconds"] > 0 and w["state"] == "idle" for w in snap["workers"])
        assert sum(w["jobs_done"] for w in snap["workers"]) == 4
        assert (snap["totals"]["done"], snap["totals"]["quarantined"]) == (3, 1)
        assert sorted(e["rel"] for e in snap["recent_done"]) == [d.rel for d in good]
        assert snap["recent_quarantined"][0]["reason"] == "not_image"
        assert f"running (pid {daemon.pid})" in text and "since start: 3 done, 1 quarantined" in text
        assert "workers:" in text and "not_image" in text

        # Frozen supervisor: its status file stops being rewritten.
        daemon.signal(signal.SIGSTOP)
        try:
            wait_for(lambda: _state(daemon.pid) == "T", 5, what="the supervisor stopped")
            # As if it had run for two minutes and been frozen for the last one (no 60 s wait in a test).
            now = time.time()
            os.utime(layout.work / claim.LOCK_NAME, (now - 120, now - 120))
            os.utime(layout.work / claim.STATUS_NAME, (now - 60, now - 60))
            report, text = status(daemon.config)
        finally:
            daemon.signal(signal.SIGCONT)
        assert report["running"] and report["stuck"] and report["status_age_seconds"] >= 59
        assert "seems stuck" in text


def _state(pid: int) -> str:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]


def test_a_bad_config_exits_2(tmp_path: Path) -> None:
    assert cli("status", "-c", str(tmp_path / "missing.yaml")).returncode == 2
    bad = tmp_path / "bad.yaml"
    bad.write_text("paths: {inbox: in}\nno_such_key: 1\n")
    result = cli("status", "-c", str(bad))
    assert result.returncode == 2 and "no_such_key" in result.stderr
