"""Faults of processes and of the watcher: kills of workers and of the daemon at any moment,
two daemons on one inbox, large bursts, a lost-events overflow, an inbox replaced under the
daemon, signals during start-up and reload, a mistyped work folder.

After each scenario the invariant (daemon_harness.account); every process a test starts is
stopped by its own pid in a `finally`; kernel settings are restored in a `finally`.
"""
from __future__ import annotations

import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import pytest

from daemon_harness import (
    FAST_WATCH,
    REPO,
    CreateSpy,
    DaemonProcess,
    Drop,
    Layout,
    check_and_report,
    entries,
    fault_report,  # noqa: F401 - fixture
    file_drop,
    image_bytes,
    place,
    require_model,
    restart,
    running,
    stop_processes,
    wait_finished,
    wait_for,
    write_config,
)
from mounts import sysctl

pytestmark = pytest.mark.slow




@contextmanager
def daemons() -> Iterator[list[DaemonProcess]]:
    """Every daemon a test starts goes in this list; each is stopped by its pid on the way out."""
    started: list[DaemonProcess] = []
    try:
        yield started
    finally:
        for daemon in started:
            daemon.close()


def drop_all_at_once(layout: Layout, drops: list[Drop]) -> None:
    """Write every file beside the inbox first, then rename them in as fast as possible."""
    staging = layout.root / "staging"
    staging.mkdir(exist_ok=True)
    for i, drop in enumerate(drops):
        (staging / f"{i:05d}").write_bytes(drop.data)
    for i, drop in enumerate(drops):
        os.rename(staging / f"{i:05d}", layout.inbox / drop.rel)


def assert_gone(pids: list[int], within: float, what: str) -> None:
    def gone() -> bool:
        return not any(Path(f"/proc/{pid}").exists() and "multiprocessing" in _cmdline(pid) for pid in pids)
    wait_for(gone, within, 0.05, what)


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    except OSError:
        return ""


# -- kills ---------------------------------------------------------------------------------------
def test_kill_storm_loses_and_duplicates_nothing(layout: Layout, fault_report) -> None:
    """24 files; for 12 s random SIGKILLs of workers (3 in 4) and of the daemon itself (then
    restarted), fixed seed; then a clean run finishes everything. Each input: output +
    archived original, or quarantine as worker_crash; never lost, never a second output."""
    rng = random.Random(20261125)
    drops = [file_drop(f"storm{i:02d}.png", rng.randrange(40, 240), rng.randrange(40, 240), seed=i,
                       expect=frozenset({"done", "worker_crash"})) for i in range(24)]
    kills = {"worker": 0, "daemon": 0}
    with daemons() as started:
        config = write_config(layout, watch=FAST_WATCH, pool={"workers": 2})
        daemon = DaemonProcess(config, layout.root / "daemon-0.log").start()
        started.append(daemon)
        drop_all_at_once(layout, drops)
        storm_end = time.monotonic() + 12
        while time.monotonic() < storm_end:
            time.sleep(rng.uniform(0.1, 0.6))
            if rng.random() < 0.75:
                workers = daemon.workers()
                if workers:
                    stop_processes([rng.choice(workers)], signal.SIGKILL)
                    kills["worker"] += 1
            else:
                daemon.kill()
                kills["daemon"] += 1
                daemon = restart(daemon, f"daemon-{kills['daemon']}.log")
                started.append(daemon)
        daemon.assert_alive("after the storm")
        wait_finished(layout, len(drops), 120, [daemon], "the clean run after the storm")
        daemon.assert_alive()
    acc = check_and_report(fault_report, "kill storm (24 files)", layout, drops,
                           extra={"worker_kills": kills["worker"], "daemon_kills": kills["daemon"]})
    outputs = [n for n in entries(layout.outbox) if re.search(r"-\d+\.png$", n)]
    assert not outputs, f"a retry after a kill rendered a second output: {outputs}"
    assert kills["worker"] >= 5 and kills["daemon"] >= 1, kills
    assert acc.counts(drops)["delivered"] >= 1


def test_kill_between_delivery_and_archiving_never_gives_a_second_output(layout: Layout, fault_report) -> None:
    """The worker is frozen the instant its output appears in the outbox; if the original is not
    archived yet (the window), it is SIGKILLed (every 3rd time the daemon too, then restarted).
    The retry must only archive: exactly one output per input, whether the window was hit or not."""
    drops: list[Drop] = []
    hits = {"worker": 0, "daemon": 0, "missed": 0}
    with daemons() as started:
        config = write_config(layout, watch=FAST_WATCH, pool={"workers": 1})
        daemon = DaemonProcess(config, layout.root / "daemon-0.log").start()
        started.append(daemon)
        with CreateSpy(layout.outbox) as spy:
            for i in range(9):
                drop = file_drop(f"d{i}.png", 150, 120, seed=i)
                drops.append(drop)
                workers = daemon.workers()
                place(layout.inbox, drop, layout.root / "staging")
                name = spy.wait(lambda n: n == f"d{i}_x3.png", 60)
                assert name, f"no output for {drop.rel}"
                stop_processes(workers)
                if os.path.lexists(layout.archive / drop.rel):
                    hits["missed"] += 1
                    stop_processes(workers, signal.SIGCONT)
                elif (hits["worker"] + hits["daemon"]) % 3 == 2:
                    stop_processes(workers, signal.SIGKILL)
                    daemon.kill()
                    hits["daemon"] += 1
                    daemon = restart(daemon, f"daemon-{hits['daemon']}.log")
                    started.append(daemon)
                else:
                    stop_processes(workers, signal.SIGKILL)
                    hits["worker"] += 1
                wait_finished(layout, len(drops), 60, [daemon], f"{drop.rel} after the kill")
    check_and_report(fault_report, "kill between delivery and archive", layout, drops,
                     extra={"window_hit_worker": hits["worker"], "window_hit_daemon": hits["daemon"],
                            "window_missed": hits["missed"]})
    print(f"window between delivery and archive: {hits}")


def test_kill_while_delivering_one_file_and_computing_the_next(layout: Layout, fault_report) -> None:
    """One worker delivers a file (its delivery thread) while it computes the next, sent ahead.
    It is frozen the instant the first file's output appears in the outbox and, if that file's
    original is not archived yet, SIGKILLed: the death is charged to the file it was computing
    (attempt 1, then 2); the one it was delivering goes back uncharged (attempt 1 again) and its
    retry only archives. Every file ends once."""
    drops: list[Drop] = []
    hits = missed = 0
    with running(layout, watch=FAST_WATCH, pool={"workers": 1, "prefetch": 1, "max_attempts": 2},
                 log={"level": "DEBUG"}) as daemon, CreateSpy(layout.outbox) as spy:
        for i in range(3):
            pair = [file_drop(f"p{i}{x}.png", 640, 640, seed=10 * i + n) for n, x in enumerate("xy")]
            drops += pair
            workers = daemon.workers()
            for drop in pair:
                place(layout.inbox, drop, layout.root / "staging")

            def dispatched(name: str) -> int:
                return daemon.log().find(f"dispatched {name} to")

            wait_for(lambda: all(dispatched(d.rel) >= 0 for d in pair), 30, what=f"pair {i} dispatched")
            first, second = sorted(pair, key=lambda d: dispatched(d.rel))
            assert f"done {first.rel}" not in daemon.log(), "the first was done before the second was sent ahead"
            out = f"{first.rel[:-4]}_x3.png"
            assert spy.wait(lambda n: n == out, 60), f"no output for {first.rel}"
            stop_processes(workers)
            if os.path.lexists(layout.archive / first.rel):
                missed += 1
                stop_processes(workers, signal.SIGCONT)
            else:
                stop_processes(workers, signal.SIGKILL)
                hits += 1
                wait_for(lambda: "died (signal SIGKILL (9)) while processing" in daemon.log()[-20000:], 30,
                         what="the death noticed")
            wait_finished(layout, len(drops), 120, [daemon], f"pair {i} after the kill")
            # A worker releases a job before the supervisor logs it: wait for both lines.
            wait_for(lambda: all(f"done {d.rel} ->" in daemon.log() for d in pair), 30, what=f"pair {i} logged")
            log = daemon.log()

            def attempts(name: str) -> list[str]:
                return re.findall(rf"dispatched {re.escape(name)} to worker-\d+ \(pid \d+, attempt (\d+)\)", log)

            if attempts(first.rel) != ["1"]:  # killed before its archive: charged nothing, only archived after
                assert f"while processing {second.rel} (attempt 1)" in log, log
                assert f"while processing {first.rel}" not in log, log
                assert attempts(first.rel) == ["1", "1"], log
                assert re.search(rf"done {re.escape(first.rel)} -> .*delivered by an earlier attempt", log), log
                assert attempts(second.rel) == ["1", "2"], log
    check_and_report(fault_report, "kill while delivering one file and computing the next", layout, drops,
                     extra={"window_hit": hits, "window_missed": missed})
    assert hits, "the first file was archived before the worker could be stopped, every time: window never hit"


def test_two_daemons_share_one_inbox_outbox_archive_and_quarantine(tmp_path: Path, fault_report) -> None:
    require_model()
    first = Layout(tmp_path, work=tmp_path / "work-a")
    second = Layout(tmp_path, work=tmp_path / "work-b")
    drops = [file_drop(f"shared{i:02d}.png", 40, 40, seed=i) for i in range(27)]
    drops += [Drop(f"bad{i}.png", b"not an image\n" * (i + 1), expect="not_image") for i in range(3)]
    overrides = {"watch": FAST_WATCH, "pool": {"workers": 1, "queue_size": 2}}
    with running(first, "daemon-a.log", config_name="a.yaml", **overrides) as a, \
            running(second, "daemon-b.log", config_name="b.yaml", **overrides) as b:
        drop_all_at_once(first, drops)
        wait_finished(first, len(drops), 90, [a, b], "30 files by two daemons")
        wait_for(lambda: not second.work_jobs(), 30, 0.1, "the second daemon's jobs")
        logs = {"a": a.log(), "b": b.log()}
    took = {k: set(re.findall(r"(?:done|quarantined) (shared\d+\.png|bad\d\.png)", log)) for k, log in logs.items()}
    check_and_report(fault_report, "two daemons, one inbox (30 files)", first, drops,
                     extra={"daemon_a": len(took["a"]), "daemon_b": len(took["b"])})
    assert not second.work_jobs(), f"the second daemon left jobs: {second.work_jobs()}"
    assert took["a"] and took["b"], f"both daemons must have processed some files: {took}"
    assert not took["a"] & took["b"], f"files processed by both daemons: {sorted(took['a'] & took['b'])}"


def test_a_thousand_files_at_once(layout: Layout, fault_report) -> None:
    drops = [file_drop(f"t{i:04d}.png", 8, 8, seed=i) for i in range(1000)]
    with running(layout, watch=FAST_WATCH) as daemon:
        started = time.monotonic()
        drop_all_at_once(layout, drops)
        wait_finished(layout, len(drops), 240, [daemon], "1,000 files")
        seconds = time.monotonic() - started
    check_and_report(fault_report, "1,000 files at once", layout, drops, extra={"seconds": round(seconds, 1)})


def test_inotify_overflow_is_made_up_by_a_rescan(layout: Layout, fault_report) -> None:
    """The daemon's inotify queue holds 8 events; 300 files arrive while it is frozen (SIGSTOP), so
    most events are lost. A rescan must find every file."""
    drops = [file_drop(f"o{i:03d}.png", 8, 8, seed=i) for i in range(300)]
    with sysctl("fs.inotify.max_queued_events", 8) as setting:
        with running(layout, watch={"settle_seconds": 0.5, "rescan_interval": 2}) as daemon:
            setting.restore()  # the daemon's queue keeps its limit; everyone else gets the default back
            daemon.signal(signal.SIGSTOP)
            try:
                drop_all_at_once(layout, drops)
            finally:
                daemon.signal(signal.SIGCONT)
            wait_finished(layout, len(drops), 90, [daemon], "300 files after an inotify overflow")
    check_and_report(fault_report, "inotify overflow (queue of 8, 300 files)", layout, drops)


def test_inbox_removed_and_recreated_is_watched_again(layout: Layout, fault_report) -> None:
    drops = [file_drop("before.png", seed=1)]
    with running(layout, watch={"settle_seconds": 0.5, "rescan_interval": 0}) as daemon:
        place(layout.inbox, drops[0])
        wait_finished(layout, 1, 30, [daemon], "a file before the inbox is replaced")
        for n, how in enumerate(("rm -r + mkdir", "mv away + mkdir")):
            if n == 0:
                shutil.rmtree(layout.inbox)
            else:
                os.rename(layout.inbox, layout.root / "inbox-old")
            layout.inbox.mkdir()
            drop = file_drop(f"after{n}.png", seed=2 + n)
            place(layout.inbox, drop)
            drops.append(drop)
            wait_finished(layout, len(drops), 10, [daemon],
                          f"a file in the recreated inbox ({how}) within 10 s, with no periodic rescan")
    assert not entries(layout.root / "inbox-old"), "nothing may be left in the old inbox"
    check_and_report(fault_report, "inbox removed and recreated", layout, drops)


# -- signals ---------------------------------------------------------------------------------------
SLOW_LOAD = '''
import os
flag = os.environ.get("SRWATCH_TEST_SLOW_LOAD_FLAG")
if flag and os.path.exists(flag):
    with open("/proc/self/cmdline", "rb") as fh:
        if b"spawn_main" in fh.read():  # a worker process, before it loads anything
            import time
            time.sleep(30)
'''


def slow_loading_env(tmp_path: Path) -> tuple[dict, Path]:
    """Environment that makes worker processes take 30 s to start while `flag` exists: a slow model load."""
    site = tmp_path / "slow-site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(SLOW_LOAD)
    flag = tmp_path / "slow-load"
    path = os.pathsep.join(p for p in (str(site), os.environ.get("PYTHONPATH", "")) if p)
    return {"PYTHONPATH": path, "SRWATCH_TEST_SLOW_LOAD_FLAG": str(flag)}, flag


def assert_exits_promptly(daemon: DaemonProcess, what: str) -> None:
    workers = daemon.workers()
    sent = time.monotonic()
    daemon.signal(signal.SIGTERM)
    try:
        rc = daemon.wait(5)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"SIGTERM {what}: the daemon did not exit within 5 s:\n{daemon.log()[-3000:]}") from None
    assert rc == 0, f"SIGTERM {what}: exit status {rc}, expected 0:\n{daemon.log()[-3000:]}"
    assert_gone(workers, 5, f"workers gone after SIGTERM {what}")
    print(f"SIGTERM {what}: exited in {time.monotonic() - sent:.1f} s")


def test_sigterm_while_workers_load_exits_promptly(layout: Layout, tmp_path: Path) -> None:
    env, flag = slow_loading_env(tmp_path)
    flag.touch()
    config = write_config(layout, watch=FAST_WATCH)
    daemon = DaemonProcess(config, layout.root / "daemon.log", env=env)
    try:
        daemon.start(wait_ready=False)
        wait_for(lambda: len(daemon.workers()) >= 2 or not daemon.alive(), 30, 0.05, "workers started")
        time.sleep(1.0)
        daemon.assert_alive("while its workers load")
        assert "srwatch ready" not in daemon.log(), "the workers must still be loading"
        assert_exits_promptly(daemon, "during start-up")
    finally:
        daemon.close()


def test_sigterm_during_a_reload_exits_promptly(layout: Layout, tmp_path: Path) -> None:
    env, flag = slow_loading_env(tmp_path)
    x2 = REPO / "models" / "EDSR-srwatch_x2.pb"
    config = write_config(layout, watch=FAST_WATCH)
    daemon = DaemonProcess(config, layout.root / "daemon.log", env=env)
    try:
        daemon.start()
        old = set(daemon.workers())
        flag.touch()  # the next workers load slowly
        config.write_text(config.read_text().replace("EDSR-srwatch_x3.pb", x2.name))  # a new model: new workers
        daemon.signal(signal.SIGHUP)
        wait_for(lambda: len(set(daemon.workers()) - old) >= 2, 30, 0.05, "new workers for the reload")
        time.sleep(1.0)
        daemon.assert_alive("during the reload")
        assert "configuration reloaded" not in daemon.log(), "the new workers must still be loading"
        assert_exits_promptly(daemon, "during a reload")
    finally:
        daemon.close()


def test_mistyped_work_folder_with_user_data_is_refused_and_untouched(tmp_path: Path) -> None:
    require_model()
    photos = tmp_path / "photos"
    user = {
        "notes.txt": b"my notes\n",
        ".config": b"hidden\n",
        "album/a.png": image_bytes(10, 10, seed=1),
        "x/job.json": b'{"id": "x", "rel": "a.png", "claimed_at": "2020-01-01"}',  # shaped like a job
        "x/f/a.png": image_bytes(12, 12, seed=2),
        "job-20260101T000000-000000000-abcdef-1-0/job.json": b'{"id": "mine"}',  # named like one, too
    }
    for rel, data in user.items():
        (photos / rel).parent.mkdir(parents=True, exist_ok=True)
        (photos / rel).write_bytes(data)

    def snapshot() -> dict:
        return {rel: (e.content(), e.mode, os.lstat(e.path).st_mtime_ns)
                for rel, e in entries(photos, with_dirs=True).items()}

    before = snapshot()
    layout = Layout(tmp_path, work=photos)
    config = write_config(layout, watch=FAST_WATCH)
    waiting = image_bytes(14, 14, seed=3)
    (layout.inbox / "waiting.png").write_bytes(waiting)
    result = subprocess.run([sys.executable, "-m", "srwatch.cli", "run", "-c", str(config)], cwd=REPO,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2, f"a paths.work holding user data must stop the start (exit 2), got {result.returncode}"
    assert "paths.work" in result.stderr, f"the message must name paths.work:\n{result.stderr}"
    assert snapshot() == before, "srwatch touched files in a work folder it did not create"
    assert (layout.inbox / "waiting.png").read_bytes() == waiting

    # An empty folder is fine, and so is the same folder once srwatch has made it its own.
    fresh = Layout(tmp_path, work=tmp_path / "empty-work")
    fresh.work.mkdir()
    for n in range(2):
        with running(fresh, f"daemon-{n}.log", watch=FAST_WATCH) as daemon:
            if n == 1:
                wait_finished(fresh, 1, 30, [daemon], "the waiting file")
    assert (fresh.archive / "waiting.png").read_bytes() == waiting
