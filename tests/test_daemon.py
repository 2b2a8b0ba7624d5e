"""End to end: the real daemon, a real inotify observer, real worker processes, a real model."""
from __future__ import annotations

import datetime
import os
import re
import signal
import time
from pathlib import Path

import cv2
import pytest

from daemon_harness import (
    DaemonProcess,
    Drop,
    Layout,
    assert_each_input_once,
    image_bytes,
    model_for_tests,
    settled,
    wait_for,
    write_config,
)
from mounts import sysctl
from srwatch.worker import DELIVERY_THREADS

pytestmark = pytest.mark.slow



def drop(path: Path, width: int, height: int, seed: int) -> bytes:
    """Write an image (PNG/JPEG by extension) in one go; return the bytes dropped."""
    ext = path.suffix.lower() if path.suffix.lower() in (".png", ".jpg", ".jpeg") else ".png"
    data = image_bytes(width, height, seed, ext)
    path.write_bytes(data)
    return data


def start(layout: Layout, **overrides) -> DaemonProcess:
    config = write_config(layout, **overrides)
    return DaemonProcess(config, layout.root / "daemon.log").start()


def test_drop_gives_scale_times_output_and_archives_original(layout: Layout) -> None:
    daemon = start(layout)
    try:
        original = drop(layout.inbox / "a.png", 48, 40, seed=1)
        b = drop(layout.inbox / "b.jpg", 33, 21, seed=2)
        wait_for(settled(layout, 2), 60, what="two files processed")
    finally:
        assert daemon.stop() == 0
    assert_each_input_once(layout, {"a.png": original, "b.jpg": b})
    a = cv2.imread(str(layout.outbox / "a_x3.png"), cv2.IMREAD_UNCHANGED)
    b = cv2.imread(str(layout.outbox / "b_x3.jpg"), cv2.IMREAD_UNCHANGED)
    assert a.shape == (120, 144, 3)
    assert b.shape == (63, 99, 3)
    assert (layout.archive / "a.png").read_bytes() == original
    assert re.search(r"done a\.png -> .*a_x3\.png \(48x40 -> 144x120", daemon.log())


def test_rename_into_inbox_and_temp_names_ignored(layout: Layout) -> None:
    daemon = start(layout)
    try:
        part = layout.inbox / "c.png.part"
        c = drop(part, 30, 30, seed=3)
        hidden = layout.inbox / ".d.png"
        d = drop(hidden, 30, 30, seed=4)
        time.sleep(2.5)  # longer than settle_seconds: still not taken
        assert layout.files(layout.archive) == [] and part.exists() and hidden.exists()
        os.rename(part, layout.inbox / "c.png")
        outside = layout.root / "e.png"
        e = drop(outside, 20, 20, seed=5)
        os.rename(outside, layout.inbox / "e.png")
        wait_for(settled(layout, 2), 60, what="renamed files processed")
    finally:
        assert daemon.stop() == 0
    # The hidden file is never taken: it stays in the inbox, untouched.
    assert_each_input_once(layout, {"c.png": c, "e.png": e}, left_in_inbox={".d.png": d})


def test_slow_writer_is_never_taken_half_written(layout: Layout) -> None:
    daemon = start(layout)
    data = image_bytes(64, 64, seed=6)
    try:
        with open(layout.inbox / "slow.png", "wb") as fh:
            chunks = [data[i : i + len(data) // 8 + 1] for i in range(0, len(data), len(data) // 8 + 1)]
            for chunk in chunks:  # about 4 s in all, flushed as it goes
                fh.write(chunk)
                fh.flush()
                time.sleep(0.5)
        wait_for(settled(layout, 1), 60, what="slow file processed")
    finally:
        assert daemon.stop() == 0
    assert_each_input_once(layout, {"slow.png": data})
    assert cv2.imread(str(layout.outbox / "slow_x3.png")).shape == (192, 192, 3)


def test_writer_pausing_longer_than_settle_seconds_is_waited_for(layout: Layout) -> None:
    """Unchanged for 4x settle_seconds but still open for writing: the writer check keeps it in the inbox."""
    daemon = start(layout, watch={"settle_seconds": 0.5})
    data = image_bytes(64, 64, seed=7)
    try:
        with open(layout.inbox / "paused.png", "wb") as fh:
            fh.write(data[: len(data) // 2])
            fh.flush()
            time.sleep(2.0)  # a stalled upload: the timing rule alone took it here, half written
            assert (layout.inbox / "paused.png").exists() and layout.files(layout.quarantine) == []
            fh.write(data[len(data) // 2 :])
        wait_for(settled(layout, 1), 60, what="paused file processed")
        renamed = drop(layout.root / "whole.png", 40, 40, seed=8)
        os.rename(layout.root / "whole.png", layout.inbox / "whole.png")  # nobody holds it: taken at once
        wait_for(settled(layout, 2), 60, what="renamed file processed")
    finally:
        assert daemon.stop() == 0
    assert_each_input_once(layout, {"paused.png": data, "whole.png": renamed})
    assert cv2.imread(str(layout.outbox / "paused_x3.png")).shape == (192, 192, 3)


@pytest.fixture
def leases_refused():
    """The kernel refuses every lease while the test runs (fs.leases-enable = 0: EINVAL, the
    answer of NFS, FUSE and other filesystems without leases); restored afterwards."""
    with sysctl("fs.leases-enable", 0):
        yield


def _claimed_at(log: str, name: str) -> float:
    """Wall-clock time of the daemon's 'claimed NAME' line (its timestamp is to the millisecond)."""
    m = re.search(r"^(\S+ \S+) DEBUG srwatch\.daemon: claimed " + re.escape(name) + " as ", log, re.M)
    assert m, f"no claim of {name} in the log"
    return datetime.datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()


def test_without_leases_the_writer_check_gives_way_to_the_timing_rule(layout: Layout, leases_refused) -> None:
    """Where the filesystem refuses leases (EINVAL), the kernel cannot say who writes a file:
    a renamed file is then not taken on its rename alone but after the quiet time, the daemon
    says so once for the filesystem, and every file still ends in the outbox."""
    daemon = start(layout)
    try:
        renamed_at = {}
        dropped = {}
        for i, name in enumerate(("first.png", "second.png")):
            dropped[name] = drop(layout.root / name, 40, 40, seed=30 + i)
            renamed_at[name] = time.time()
            os.rename(layout.root / name, layout.inbox / name)
            wait_for(settled(layout, i + 1), 60, what=f"{name} processed")
        slow = image_bytes(64, 64, seed=32)
        with open(layout.inbox / "slow.png", "wb") as fh:  # written in place, with pauses under settle_seconds
            for i in range(0, len(slow), len(slow) // 4 + 1):
                fh.write(slow[i : i + len(slow) // 4 + 1])
                fh.flush()
                time.sleep(0.4)
        wait_for(settled(layout, 3), 60, what="slow file processed")
    finally:
        assert daemon.stop() == 0
    assert_each_input_once(layout, {**dropped, "slow.png": slow})
    log = daemon.log()
    assert log.count("has no leases, so nobody can tell whether a file there is still open for writing") == 1
    for name, at in renamed_at.items():
        # With leases the rename alone (0.05 s) would do; the log's milliseconds are truncated.
        assert _claimed_at(log, name) - at >= 0.299, name


def test_backlog_at_start_and_subfolders(layout: Layout) -> None:
    layout.inbox.mkdir(parents=True)
    (layout.inbox / "sub" / "deeper").mkdir(parents=True)
    done = {f"old{i}.png": drop(layout.inbox / f"old{i}.png", 24, 16, seed=10 + i) for i in range(5)}
    done["sub/deeper/nested.png"] = drop(layout.inbox / "sub" / "deeper" / "nested.png", 16, 16, seed=20)
    daemon = start(layout, watch={"recursive": True})
    try:
        wait_for(settled(layout, 6), 60, what="backlog processed")
        done["sub/new/n2.png"] = drop(layout.root / "n2.png", 16, 16, seed=21)
        (layout.inbox / "sub" / "new").mkdir()
        os.rename(layout.root / "n2.png", layout.inbox / "sub" / "new" / "n2.png")
        wait_for(settled(layout, 7), 60, what="file in new sub-folder processed")
    finally:
        assert daemon.stop() == 0
    assert_each_input_once(layout, done)


def test_bad_inputs_are_quarantined_with_reasons_while_good_files_flow(layout: Layout) -> None:
    good = image_bytes(40, 40, seed=30)
    # A PNG whose header is fine but whose compressed pixel data is garbage.
    idat = good.index(b"IDAT")
    corrupt = good[: idat + 4] + bytes(b ^ 0x5A for b in good[idat + 4 : idat + 200]) + good[idat + 200 :]
    done = {"good1.png": good, "good2.png": image_bytes(20, 30, seed=31)}
    bad = {
        "corrupt.png": corrupt, "notes.png": b"this is not an image\n", "empty.png": b"",
        "truncated.png": good[: len(good) // 2],
    }
    daemon = start(layout)
    try:
        for name, data in [*done.items(), *bad.items()]:
            (layout.inbox / name).write_bytes(data)
        wait_for(settled(layout, 6), 60, what="six files handled")
    finally:
        assert daemon.stop() == 0
    assert_each_input_once(layout, done, bad)
    reasons = {name: layout.reason(name) for name in bad}
    assert reasons["corrupt.png"]["reason"] == "corrupt"
    assert reasons["truncated.png"]["reason"] == "corrupt"
    assert reasons["notes.png"]["reason"] == "not_image"
    assert reasons["empty.png"]["reason"] == "empty"
    record = reasons["notes.png"]
    for key in ("message", "exception", "attempts", "claimed_at", "failed_at", "srwatch_version"):
        assert record[key] not in (None, ""), key
    assert record["attempts"] == 1
    assert "quarantined notes.png: not_image" in daemon.log()


def _dispatched_pid(daemon: DaemonProcess, name: str, attempt: int) -> int:
    match = re.search(rf"dispatched {re.escape(name)} to worker-\d+ \(pid (\d+), attempt {attempt}\)", daemon.log())
    return int(match.group(1)) if match else 0


def test_worker_killed_mid_file_is_retried_then_succeeds(layout: Layout) -> None:
    daemon = start(layout, pool={"workers": 1})
    try:
        big = drop(layout.inbox / "big.png", 700, 700, seed=40)
        wait_for(lambda: _dispatched_pid(daemon, "big.png", 1), 30, what="dispatch")
        os.kill(_dispatched_pid(daemon, "big.png", 1), signal.SIGKILL)
        wait_for(settled(layout, 1), 120, what="retry")
        assert daemon.proc.poll() is None, "the daemon must survive its worker"
        after = drop(layout.inbox / "after.png", 20, 20, seed=41)
        wait_for(settled(layout, 2), 60, what="a file after the crash")
    finally:
        assert daemon.stop() == 0
    assert_each_input_once(layout, {"after.png": after, "big.png": big})
    assert re.search(r"worker-\d+ died \(signal SIGKILL \(9\)\) while processing big\.png \(attempt 1\)", daemon.log())


def test_worker_killed_on_every_attempt_quarantines_the_file(layout: Layout) -> None:
    daemon = start(layout, pool={"workers": 1, "max_attempts": 2})
    try:
        poison = drop(layout.inbox / "poison.png", 700, 700, seed=42)
        for attempt in (1, 2):
            wait_for(lambda: _dispatched_pid(daemon, "poison.png", attempt), 60, what=f"dispatch {attempt}")
            os.kill(_dispatched_pid(daemon, "poison.png", attempt), signal.SIGKILL)
        wait_for(settled(layout, 1), 60, what="quarantine")
    finally:
        assert daemon.stop() == 0
    assert_each_input_once(layout, {}, {"poison.png": poison})
    record = layout.reason("poison.png")
    assert record["reason"] == "worker_crash"
    assert "SIGKILL" in record["message"] and record["attempts"] == 2


def test_daemon_killed_with_sigkill_and_restarted_loses_nothing(layout: Layout) -> None:
    daemon = start(layout, pool={"workers": 1})
    names = [f"k{i}.png" for i in range(4)]
    done = {names[0]: drop(layout.inbox / names[0], 600, 600, seed=50)}
    for i, name in enumerate(names[1:], 1):
        done[name] = drop(layout.inbox / name, 32, 32, seed=50 + i)
    wait_for(lambda: "dispatched k0.png" in daemon.log(), 30, what="dispatch")
    workers = daemon.children()
    daemon.signal(signal.SIGKILL)
    daemon.wait()
    # The workers die with their supervisor (PR_SET_PDEATHSIG): no orphan keeps working.
    wait_for(lambda: not any(Path(f"/proc/{pid}").exists() for pid in workers), 10, what="workers gone")
    assert layout.work_jobs(), "the claimed file must still be in the work folder"
    restarted = DaemonProcess(daemon.config, layout.root / "daemon2.log").start()
    try:
        wait_for(settled(layout, 4), 120, what="all files after restart")
    finally:
        assert restarted.stop() == 0
    assert_each_input_once(layout, done)
    assert "taking k0.png again" in restarted.log()


def test_sigterm_lets_the_file_in_progress_finish_and_keeps_the_rest_claimed(layout: Layout) -> None:
    daemon = start(layout, pool={"workers": 1, "queue_size": 4})
    done = {"first.png": drop(layout.inbox / "first.png", 500, 500, seed=60)}
    wait_for(lambda: "dispatched first.png" in daemon.log(), 30, what="dispatch")
    for i in range(3):
        done[f"later{i}.png"] = drop(layout.inbox / f"later{i}.png", 24, 24, seed=61 + i)
    wait_for(lambda: not layout.files(layout.inbox), 10, what="later files claimed")
    daemon.signal(signal.SIGTERM)
    assert daemon.wait(60) == 0
    assert (layout.outbox / "first_x3.png").is_file(), "the file in progress must finish"
    waiting = len(layout.work_jobs())
    assert waiting + len(layout.files(layout.archive)) == 4
    again = DaemonProcess(daemon.config, layout.root / "daemon2.log").start()
    try:
        wait_for(settled(layout, 4), 60, what="claimed files after restart")
    finally:
        assert again.stop() == 0
    assert_each_input_once(layout, done)


def test_sighup_reloads_config_and_a_bad_config_is_refused(layout: Layout) -> None:
    daemon = start(layout)
    try:
        before = drop(layout.inbox / "before.png", 20, 20, seed=70)
        wait_for(settled(layout, 1), 60, what="first file")
        text = daemon.config.read_text()
        daemon.config.write_text(text.replace("pool:", "pool:\n  bogus_key: 1"))
        daemon.signal(signal.SIGHUP)
        wait_for(lambda: "reload of" in daemon.log(), 30, what="refused reload")
        assert "pool.bogus_key: unknown key" in daemon.log()
        x2 = Path(__file__).resolve().parents[1].parent / "shared" / "models" / "FSRCNN_x2.pb"
        new = text.replace(str(model_for_tests()), str(x2)) + "output:\n  suffix: _big{scale}\n"
        daemon.config.write_text(new)
        daemon.signal(signal.SIGHUP)
        wait_for(lambda: "configuration reloaded" in daemon.log(), 60, what="reload")
        after = drop(layout.inbox / "after.png", 20, 20, seed=71)
        wait_for(settled(layout, 2), 60, what="file after reload")
        assert daemon.proc.poll() is None
    finally:
        assert daemon.stop() == 0
    assert layout.files(layout.outbox) == ["after_big2.png", "before_x3.png"]
    assert cv2.imread(str(layout.outbox / "after_big2.png")).shape == (40, 40, 3)
    assert_each_input_once(layout, [
        Drop("before.png", before, size=(20, 20)), Drop("after.png", after, size=(20, 20), suffix="_big2"),
    ])


def test_a_burst_is_claimed_only_as_fast_as_the_queue_drains(layout: Layout) -> None:
    layout.inbox.mkdir(parents=True)
    total = 60
    done = {f"burst{i:03d}.png": drop(layout.inbox / f"burst{i:03d}.png", 12, 12, seed=i) for i in range(total)}
    daemon = start(layout, pool={"workers": 1, "queue_size": 3})
    try:
        peak = 0
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not settled(layout, total)():
            peak = max(peak, len(layout.work_jobs()))
            time.sleep(0.02)
    finally:
        assert daemon.stop() == 0
    assert_each_input_once(layout, done)
    # queue_size waiting + what the worker holds: the file it computes, the one sent ahead
    # (pool.prefetch: auto sends one ahead to a worker on short files) and those its delivery
    # threads still write (12x12 files compute in far less time than their fsyncs take);
    # never the whole burst.
    assert peak <= 3 + 1 + 1 + DELIVERY_THREADS, peak


def test_systemd_notify_ready_status_watchdog_and_stopping(layout: Layout) -> None:
    import socket

    address = str(layout.root / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(address)
    sock.settimeout(0.2)
    received: list[str] = []

    def drain() -> str:
        try:
            while True:
                received.append(sock.recv(4096).decode())
        except (socket.timeout, BlockingIOError):
            pass
        return "\n".join(received)

    config = write_config(layout)
    daemon = DaemonProcess(config, layout.root / "daemon.log", env={"NOTIFY_SOCKET": address, "WATCHDOG_USEC": "1000000"})
    try:
        daemon.start(wait_ready=False)
        wait_for(lambda: "READY=1" in drain(), 120, what="READY=1")
        ready_at = len(received)
        # READY=1 comes only once every worker holds its model.
        assert "srwatch ready" in daemon.log() and "2 worker(s)" in daemon.log()
        wait_for(lambda: drain() and "WATCHDOG=1" in "\n".join(received[ready_at:]), 10, what="WATCHDOG=1 after READY")
        drop(layout.inbox / "n.png", 20, 20, seed=80)
        wait_for(settled(layout, 1), 60, what="file")
        wait_for(lambda: "1 done" in drain(), 10, what="STATUS with counts")
        assert re.search(r"STATUS=\d+/2 workers busy, \d+ queued", "\n".join(received))
        daemon.signal(signal.SIGTERM)
        assert daemon.wait(60) == 0
        assert "STOPPING=1" in drain()
    finally:
        daemon.stop()
        sock.close()


def test_short_jobs_are_sent_ahead_and_every_file_ends_once(layout: Layout) -> None:
    """pool.prefetch auto: once a job took under 2 s, the next one waits in the worker's pipe
    (dispatched before the running one is done), so the worker never waits for the supervisor:
    it computes the next file while its delivery thread writes the last one out."""
    daemon = start(layout, pool={"workers": 1}, log={"level": "DEBUG"})
    try:
        dropped = {f"s{i}.png": drop(layout.inbox / f"s{i}.png", 40, 30, seed=60 + i) for i in range(8)}
        wait_for(settled(layout, 8), 60, what="eight small files")
    finally:
        assert daemon.stop() == 0
    assert_each_input_once(layout, dropped)
    log = daemon.log()
    dispatched = {m.group(1): i for i, line in enumerate(log.splitlines())
                  if (m := re.search(r"dispatched (s\d\.png) to", line))}
    done = {m.group(1): i for i, line in enumerate(log.splitlines()) if (m := re.search(r"done (s\d\.png) ->", line))}
    order = sorted(dispatched, key=dispatched.get)
    sent_ahead = [nxt for prev, nxt in zip(order, order[1:]) if dispatched[nxt] < done[prev]]
    assert sent_ahead, f"no file was sent ahead of the one running:\n{log}"
    # ... and the worker computes it while its delivery thread still writes the one before.
    lines = log.splitlines()
    computing = {m.group(1): i for i, line in enumerate(lines) if (m := re.search(r"computing (s\d\.png)$", line))}
    delivered = {m.group(1): i for i, line in enumerate(lines) if (m := re.search(r"delivered (s\d\.png): Done", line))}
    overlapped = [nxt for prev, nxt in zip(order, order[1:]) if computing[nxt] < delivered[prev]]
    assert overlapped, f"no file was computed while the one before was delivered:\n{log}"


def test_a_job_sent_ahead_of_a_killed_worker_is_retried_without_counting_an_attempt(layout: Layout) -> None:
    """The worker dies running big.png with small.png waiting in its pipe: big.png's attempt
    counts (a crash), small.png never started, so it goes back to the queue as attempt 1 again."""
    daemon = start(layout, pool={"workers": 1, "prefetch": 1, "max_attempts": 2}, log={"level": "DEBUG"})
    try:
        big = drop(layout.inbox / "big.png", 1400, 1400, seed=70)
        wait_for(lambda: _dispatched_pid(daemon, "big.png", 1), 30, what="big.png dispatched")
        small = drop(layout.inbox / "small.png", 30, 20, seed=71)
        wait_for(lambda: _dispatched_pid(daemon, "small.png", 1), 30, what="small.png sent ahead")
        assert "done big.png" not in daemon.log(), "big.png finished before the kill: make it bigger"
        os.kill(_dispatched_pid(daemon, "big.png", 1), signal.SIGKILL)
        wait_for(settled(layout, 2), 180, what="both files after the crash")
    finally:
        assert daemon.stop() == 0
    assert_each_input_once(layout, {"big.png": big, "small.png": small})
    log = daemon.log()
    assert re.search(r"died \(signal SIGKILL \(9\)\) while processing big\.png \(attempt 1\)", log)
    assert len(re.findall(r"dispatched small\.png to worker-\d+ \(pid \d+, attempt 1\)", log)) == 2, log
    assert "small.png to worker" in log and not re.search(r"dispatched small\.png .*attempt 2", log)
    assert re.search(r"dispatched big\.png to worker-\d+ \(pid \d+, attempt 2\)", log)


def test_max_jobs_per_worker_recycles_after_exactly_that_many_files(layout: Layout) -> None:
    """Files sent ahead never take a worker past pool.max_jobs_per_worker."""
    daemon = start(layout, pool={"workers": 1, "max_jobs_per_worker": 3, "prefetch": 2})
    try:
        dropped = {f"m{i}.png": drop(layout.inbox / f"m{i}.png", 40, 30, seed=80 + i) for i in range(7)}
        wait_for(settled(layout, 7), 120, what="seven files over three workers")
    finally:
        assert daemon.stop() == 0
    assert_each_input_once(layout, dropped)
    per_worker: dict[str, int] = {}
    for name in re.findall(r"done m\d\.png -> .*; (worker-\d+)\)", daemon.log()):
        per_worker[name] = per_worker.get(name, 0) + 1
    assert sorted(per_worker.values()) == [1, 3, 3], per_worker


def test_auto_layout_runs_a_lone_file_on_two_threads_and_a_burst_on_one(layout: Layout) -> None:
    """pool auto/auto with OpenVINO: two threads for a file alone, one while the other worker is
    busy; a worker killed busy leaves no stale 'busy' behind (its slot on the board is cleared)."""
    pytest.importorskip("openvino")
    if len(os.sched_getaffinity(0)) < 2:
        pytest.skip("one CPU: the auto layout is one worker, never crowded")
    daemon = start(layout, pool={"workers": "auto", "threads_per_worker": "auto", "max_attempts": 2},
                   log={"level": "DEBUG"})

    def threads_of(name: str) -> str:
        m = re.search(rf"done {re.escape(name)} -> .*; (\d+(?: to \d+)?) threads?; worker-\d+\)", daemon.log())
        return m.group(1) if m else ""

    def logged_threads(name: str) -> str:
        """threads_of, once its done line is there (a worker archives before the supervisor logs)."""
        wait_for(lambda: threads_of(name) != "", 30, what=f"{name} logged")
        return threads_of(name)

    try:
        dropped = {"lone.png": drop(layout.inbox / "lone.png", 64, 48, seed=90)}
        wait_for(settled(layout, 1), 60, what="a lone file")
        assert logged_threads("lone.png") == "2"
        dropped["big.png"] = drop(layout.inbox / "big.png", 1400, 1400, seed=91)
        wait_for(lambda: _dispatched_pid(daemon, "big.png", 1), 30, what="big.png dispatched")
        time.sleep(0.5)  # its worker has marked itself busy
        assert "done big.png" not in daemon.log()
        os.kill(_dispatched_pid(daemon, "big.png", 1), signal.SIGKILL)
        wait_for(settled(layout, 2), 180, what="big.png after the crash")
        dropped["lone2.png"] = drop(layout.inbox / "lone2.png", 64, 48, seed=92)
        wait_for(settled(layout, 3), 60, what="a lone file after a crash")
        assert logged_threads("lone2.png") == "2", "the killed worker still counts as busy"
        burst = {f"b{i}.png": image_bytes(96, 80, seed=100 + i) for i in range(8)}
        for name, data in burst.items():
            (layout.root / name).write_bytes(data)
        for name in burst:
            os.rename(layout.root / name, layout.inbox / name)
        dropped.update(burst)
        wait_for(settled(layout, 11), 120, what="a burst")
    finally:
        assert daemon.stop() == 0
    assert_each_input_once(layout, dropped)
    on_one = [name for name in burst if threads_of(name) == "1"]
    assert len(on_one) >= 6, daemon.log()
