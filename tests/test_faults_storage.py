"""Faults of srwatch's own folders: other filesystems, full or read-only disks, a filesystem
without hard links, links planted in the outbox, temp files left by a kill.

Real tmpfs (and FAT) mounts under the test's tmp_path, always unmounted in a `finally`; skipped
with the reason where this machine does not allow mounting. The folder is to blame, never the
file: nothing here may be quarantined for a full or read-only disk, and the daemon never exits.
"""
from __future__ import annotations

import os
import re
import signal
import time
from pathlib import Path

import pytest

from daemon_harness import (
    FAST_WATCH,
    CreateSpy,
    DaemonProcess,
    Drop,
    Layout,
    check_and_report,
    entries,
    fault_report,  # noqa: F401 - fixture
    file_drop,
    finished_count,
    image_bytes,
    leaving,
    place,
    quarantine_records,
    require_model,
    running,
    stop_processes,
    wait_finished,
    wait_for,
)
from mounts import fat, fill, remount, slow_disk, tmpfs

pytestmark = pytest.mark.slow

RECOVERY_S = 45  # in seconds: a paused step resumes within this once the folder is usable again


@pytest.fixture(autouse=True)
def _model() -> None:
    require_model()


def assert_paused_not_blamed(daemon: DaemonProcess, layout: Layout, what: str) -> None:
    """While a folder cannot take writes: daemon up, nothing quarantined, the pause in the log."""
    daemon.assert_alive(f"while {what}")
    records = quarantine_records(layout.quarantine)
    assert not records, f"{what} is the folder's fault, not the files': quarantined {[r.rel for r in records]}"
    assert re.search(r"paus", daemon.log(), re.I), f"the log must say that delivery is paused while {what}"
    assert "Traceback" not in daemon.log(), f"no traceback for an expected condition ({what}):\n{daemon.log()[-3000:]}"


def test_archive_and_quarantine_on_another_filesystem(tmp_path: Path, fault_report) -> None:
    """Originals cross filesystems by copy, fsync, link, unlink: byte-identical, nothing left behind."""
    with tmpfs(tmp_path / "other", "64m") as other:
        layout = Layout(tmp_path, archive=other / "archive", quarantine=other / "quarantine")
        outside = tmp_path / "outside.png"
        outside.write_bytes(image_bytes(10, 10, seed=1))
        drops = [file_drop(f"good{i}.png", 20 + i, 16, seed=i) for i in range(5)]
        drops += [
            file_drop("medium.jpg", 200, 150, seed=7),
            Drop("bad.png", b"not an image\n", expect="not_image"),
            Drop("big-garbage.png", os.urandom(3 * 2**20), expect="not_image"),  # copied in chunks
            Drop("empty.png", b"", expect="empty"),
            Drop("link.png", kind="link", target=str(outside), expect="link"),
            Drop("pipe.png", kind="fifo", expect="not_a_file"),
            file_drop("sub-not-recursive.png", seed=9),
        ]
        with running(layout, watch=FAST_WATCH) as daemon:
            for drop in drops:
                place(layout.inbox, drop)
            wait_finished(layout, leaving(drops), 90, [daemon], "files archived on another filesystem")
        check_and_report(fault_report, "archive + quarantine on another filesystem", layout, drops)
        dev = os.stat(other).st_dev
        for rel, entry in entries(layout.archive).items():
            assert os.lstat(entry.path).st_dev == dev, rel
        assert os.stat(layout.inbox).st_dev != dev, "the test needs the archive on another filesystem"


def test_full_outbox_pauses_delivery_and_resumes_when_it_grows(tmp_path: Path, fault_report) -> None:
    with tmpfs(tmp_path / "outbox", "96k") as outbox:
        layout = Layout(tmp_path, outbox=outbox)
        # Outputs of 120x120 noisy inputs are 300+ KB as PNG: none fits in 96 KB.
        drops = [file_drop(f"f{i}.png", 120, 120, seed=i) for i in range(4)]
        drops.append(Drop("bad.png", b"not an image\n", expect="not_image"))  # may wait, or go to quarantine
        with running(layout, watch=FAST_WATCH) as daemon:
            for drop in drops:
                place(layout.inbox, drop)
            wait_for(lambda: not entries(layout.inbox), 20, 0.1, "all files claimed")
            time.sleep(4.0)  # several delivery attempts against the full outbox
            records = [r for r in quarantine_records(layout.quarantine) if r.data["file"] != "bad.png"]
            assert not records, f"a full outbox is not the files' fault: quarantined {[r.rel for r in records]}"
            daemon.assert_alive("while the outbox is full")
            assert re.search(r"paus", daemon.log(), re.I), "the log must say that delivery is paused"
            assert len(layout.work_jobs()) >= 1, "the files must stay claimed while the outbox is full"
            remount(outbox, "size=64m")
            wait_finished(layout, len(drops), RECOVERY_S, [daemon], "delivery after the outbox grew")
            daemon.assert_alive()
        assert "Traceback" not in daemon.log()
        check_and_report(fault_report, "outbox full, then grown", layout, drops)


def test_read_only_outbox_pauses_delivery_and_resumes_when_writable(tmp_path: Path, fault_report) -> None:
    with tmpfs(tmp_path / "outbox", "64m") as outbox:
        layout = Layout(tmp_path, outbox=outbox)
        drops = [file_drop(f"r{i}.png", 30, 30, seed=i) for i in range(4)]
        with running(layout, watch=FAST_WATCH) as daemon:
            remount(outbox, "ro")
            try:
                for drop in drops:
                    place(layout.inbox, drop)
                wait_for(lambda: not entries(layout.inbox), 20, 0.1, "all files claimed")
                time.sleep(3.0)
                assert_paused_not_blamed(daemon, layout, "the outbox is read-only")
                assert len(layout.work_jobs()) == len(drops), "the files must stay claimed while the outbox is read-only"
            finally:
                remount(outbox, "rw")
            wait_finished(layout, len(drops), RECOVERY_S, [daemon], "delivery after the outbox became writable")
            daemon.assert_alive()
        check_and_report(fault_report, "outbox read-only, then rw", layout, drops)


def test_full_work_filesystem_leaves_files_in_the_inbox(tmp_path: Path, fault_report) -> None:
    """Inbox and work folder on one tiny filesystem, filled up: claims pause, files wait in the
    inbox, no traceback, no exit; with room again everything is processed."""
    with tmpfs(tmp_path / "vol", "2m") as vol:
        layout = Layout(tmp_path, inbox=vol / "inbox", work=vol / "work")
        drops = [file_drop(f"w{i}.png", 24, 24, seed=i) for i in range(3)]
        with running(layout, watch=FAST_WATCH) as daemon:
            daemon.signal(signal.SIGSTOP)  # nothing is claimed while we fill the disk
            try:
                for drop in drops:
                    place(layout.inbox, drop)
                ballast = fill(vol)
            finally:
                daemon.signal(signal.SIGCONT)
            time.sleep(4.0)  # settle, then several claim attempts
            daemon.assert_alive("while the work filesystem is full")
            left = sorted(entries(layout.inbox))
            assert left == sorted(d.rel for d in drops), (
                f"with the work folder's filesystem full the files must wait in the inbox; inbox now: {left}")
            assert not quarantine_records(layout.quarantine), "a full work folder is not the files' fault"
            assert "Traceback" not in daemon.log(), daemon.log()[-3000:]
            assert re.search(r"paus", daemon.log(), re.I), "the log must say that claiming is paused"
            ballast.unlink()
            wait_finished(layout, len(drops), RECOVERY_S, [daemon], "claims after the ballast was removed")
            daemon.assert_alive()
        check_and_report(fault_report, "work filesystem full, then freed", layout, drops)


def test_outbox_without_hard_links_never_overwrites(tmp_path: Path, fault_report) -> None:
    """A FAT outbox (no hard links, names case-insensitive): a taken name gets -1, -2; user files stay."""
    with fat(tmp_path / "fat") as outbox:
        layout = Layout(tmp_path, outbox=outbox)
        user = {outbox / "A_X3.PNG": b"user file A\n", outbox / "b_x3.png": b"user file b\n"}
        for path, data in user.items():
            path.write_bytes(data)
        drops = [file_drop("a.png", seed=1), file_drop("b.png", seed=2), file_drop("c.png", seed=3)]
        with running(layout, watch=FAST_WATCH) as daemon:
            for drop in drops:
                place(layout.inbox, drop)
            wait_finished(layout, 3, 60, [daemon], "three files")
            again = file_drop("c.png", seed=4)
            place(layout.inbox, again)
            drops.append(again)
            wait_finished(layout, 4, 60, [daemon], "c.png again")
        check_and_report(fault_report, "outbox on FAT (no hard links)", layout, drops, preexisting=user)
        names = {n.lower() for n in entries(outbox)} - {p.name.lower() for p in user}
        assert names == {"a_x3-1.png", "b_x3-1.png", "c_x3.png", "c_x3-1.png"}, names


def test_links_planted_in_outbox_archive_and_quarantine_are_never_followed(tmp_path: Path, fault_report) -> None:
    """Sub-folders replaced by links (recursive mode): nothing is ever written through them,
    and no input is lost (it is quarantined, or waits)."""
    layout = Layout(tmp_path)
    elsewhere = {name: tmp_path / f"elsewhere-{name}" for name in ("outbox", "archive", "quarantine")}
    planted = {}
    for name, target in elsewhere.items():
        target.mkdir()
        folder = getattr(layout, name)
        folder.mkdir(parents=True)
        os.symlink(target, folder / f"via-{name}")
        planted[folder / f"via-{name}"] = str(target)
    drops = [
        file_drop("via-outbox/a.png", seed=1, expect=None, any_folder=True),
        file_drop("via-archive/b.png", seed=2, expect=None, any_folder=True),
        Drop("via-quarantine/bad.png", b"not an image\n", expect=None, any_folder=True),
        file_drop("plain/ok.png", seed=3),
    ]
    with running(layout, watch={**FAST_WATCH, "recursive": True}) as daemon:
        for drop in drops:
            place(layout.inbox, drop)
        wait_for(lambda: not any(e.kind == "file" for e in entries(layout.inbox).values()), 30, 0.1, "files claimed")
        wait_for(lambda: finished_count(layout) >= 1, 30, 0.1, "plain/ok.png processed")
        time.sleep(3.0)  # time to write through a link, if srwatch would
        daemon.assert_alive("with links planted in its folders")
    for name, target in elsewhere.items():
        found = sorted(entries(target))
        assert not found, f"srwatch wrote through a link planted in its {name}: {found} appeared in {target}"
    check_and_report(fault_report, "links planted under outbox/archive/quarantine", layout, drops, preexisting=planted)


def test_temp_file_of_a_killed_run_is_swept_at_the_next_start(tmp_path: Path, fault_report) -> None:
    """The worker is frozen the moment its output temp file appears, then it and the daemon are
    killed: the temp file stays. The next start takes the job again, which removes it."""
    layout = Layout(tmp_path)
    drops: list[Drop] = []
    caught: list[str] = []
    with running(layout, watch=FAST_WATCH, pool={"workers": 1}) as daemon:
        with CreateSpy(layout.outbox) as spy:
            for attempt in range(4):
                drop = file_drop(f"big{attempt}.png", 400, 400, seed=attempt)
                drops.append(drop)
                workers = daemon.workers()
                place(layout.inbox, drop)
                name = spy.wait(lambda n: n.startswith(".srwatch-tmp-") or n.endswith("_x3.png"), 60)
                if name and name.startswith(".srwatch-tmp-"):
                    stop_processes(workers)
                    if os.path.lexists(layout.outbox / name):
                        caught.append(name)
                        break
                    stop_processes(workers, signal.SIGCONT)
                wait_finished(layout, len(drops), 60, [daemon], f"{drop.rel}")
        if not caught:
            pytest.skip("never caught srwatch with a temp file in the outbox (the window was missed 4 times)")
        for pid in workers:
            os.kill(pid, signal.SIGKILL)
        daemon.kill()
    assert any(n.startswith(".srwatch-tmp-") for n in entries(layout.outbox)), "the killed run must leave its temp file"
    again = DaemonProcess(daemon.config, layout.root / "daemon2.log")
    try:
        again.start()
        # The job is live again: its own next attempt removes the temp (the start-up sweep keeps
        # a live job's temps), so look once that attempt is over, not the moment it is ready.
        wait_finished(layout, len(drops), 60, [again], "the interrupted job after the restart")
        left = [n for n in entries(layout.outbox) if n in caught]
        assert not left, f"temp files of the killed run are still in the outbox after the restart: {left}"
    finally:
        again.close()
    check_and_report(fault_report, "temp file swept after a kill", layout, drops, extra={"caught": len(caught)})


def _staged(folder: Path, drops: list[Drop]) -> list[Path]:
    """The drops written into `folder` beforehand (on the inbox's filesystem), to be renamed in all at once."""
    folder.mkdir(parents=True, exist_ok=True)
    for drop in drops:
        (folder / drop.rel).write_bytes(drop.data or b"")
    return [folder / drop.rel for drop in drops]


def test_on_a_slow_disk_results_are_read_while_a_burst_is_claimed(tmp_path: Path, fault_report) -> None:
    """Every fsync waits 40 ms (a slow disk, a network share), so each claim takes about 0.1 s.
    While a burst is being claimed, a worker's result is still read at once (and its next file
    sent). Claiming the whole burst in a row, as srwatch once did, left the results unread, the
    workers idle, for as many claims as there were files."""
    with slow_disk(tmp_path / "backing", tmp_path / "slow", fsync_ms=40) as fs:
        layout = Layout(fs.mount / "srw")
        drops = [file_drop(f"s{i:02d}.png", 24, 24, seed=60 + i) for i in range(24)]
        staged = _staged(fs.mount / "staging", drops)
        with running(layout, log_name="../daemon.log", watch=FAST_WATCH) as daemon:
            for path in staged:
                os.rename(path, layout.inbox / path.name)
            wait_finished(layout, len(drops), 120, [daemon], "the burst on the slow disk")
            log = daemon.log()
        # Nine per file: the claim's record (file, folder), the attempt at dispatch, the delivery's six.
        assert fs.fsyncs() >= 9 * len(drops), "the daemon's fsyncs went through the slow disk"
        check_and_report(fault_report, "a burst on a disk whose fsyncs take 40 ms", layout, drops)
    # For each file: claims the supervisor logged after the worker had delivered it and before
    # the supervisor read that result (the lines of all processes go to one log, as they happen).
    lines = log.splitlines()
    unread_during = {}
    for drop in drops:
        delivered = next(i for i, line in enumerate(lines) if f"srwatch.worker: delivered {drop.rel}: Done" in line)
        read = next(i for i, line in enumerate(lines) if re.search(rf"srwatch\.daemon: done {drop.rel} ->", line))
        unread_during[drop.rel] = sum(" claimed s" in line for line in lines[delivered:read])
    assert sum(" claimed s" in line for line in lines) == len(drops)
    assert max(unread_during.values()) <= 8, f"results left unread while files were claimed: {unread_during}"


def test_stopped_while_claims_wait_on_a_slow_disk_nothing_is_lost(tmp_path: Path, fault_report) -> None:
    """SIGTERM while claims are under way on their threads (every fsync 100 ms, so a claim takes
    a quarter of a second): the daemon waits for them and exits 0, the files it claimed wait in
    the work folder, the rest in the inbox, and the next start takes all of them up."""
    with slow_disk(tmp_path / "backing", tmp_path / "slow", fsync_ms=100) as fs:
        layout = Layout(fs.mount / "srw")
        drops = [file_drop(f"t{i:02d}.png", 24, 24, seed=90 + i) for i in range(12)]
        staged = _staged(fs.mount / "staging", drops)
        with running(layout, log_name="../first.log", watch=FAST_WATCH) as daemon:
            for path in staged:
                os.rename(path, layout.inbox / path.name)
            wait_for(lambda: layout.work_jobs(), 30, 0.005, "the first claim under way")
            assert daemon.stop() == 0
            first = daemon.log()
        stopped = re.search(r"stopped: .*; (\d+) claimed file\(s\) wait for the next start", first)
        assert stopped, first[-3000:]
        left_claimed = len(layout.work_jobs())
        assert int(stopped.group(1)) >= 1 and left_claimed >= 1, "the stop came while files were claimed"
        assert entries(layout.inbox), "the stop came before the whole burst was claimed"
        with running(layout, log_name="../second.log", watch=FAST_WATCH) as daemon:
            wait_finished(layout, len(drops), 120, [daemon], "the files left by the stop")
        check_and_report(fault_report, "stopped while claims waited on a slow disk", layout, drops,
                         extra={"claimed at the stop": left_claimed})
