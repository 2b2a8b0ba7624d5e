"""Delivery, archive, quarantine, claim and recovery, on real files (and a real tmpfs for cross-device moves)."""
from __future__ import annotations

import errno
import json
import os
import select
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

from srwatch import claim, safefs, sink
from srwatch.claim import Candidate, Job
from srwatch.config import parse_config
from srwatch.errors import ConfigError, CorruptImage, LinkRefused, StorageError, WorkerCrashed
from srwatch.messages import Done, Failed
from srwatch.watcher import CLOSE_QUIET, DUE_MARGIN, RENAME_QUIET, WRITER_RECHECK, Settler, is_ignored, open_for_writing

from mounts import slow_disk


ROOT = Path(__file__).resolve().parents[1]


# -- helpers ----------------------------------------------------------------------------------------
def make_cfg(root: Path, **over) -> object:
    """A validated config whose folders live under `root` (the model path is not opened here)."""
    for name in ("inbox", "outbox", "quarantine", "archive", "work"):
        (root / name).mkdir(exist_ok=True)
    raw = {
        "paths": {k: str(root / k) for k in ("inbox", "outbox", "quarantine", "archive", "work")},
        "model": {"path": str(root / "model.onnx")},
    }
    for key, value in over.items():
        raw[key] = {**raw.get(key, {}), **value}
    return parse_config(raw, root)


def candidate(path: Path) -> Candidate:
    st = os.lstat(path)
    return Candidate(path, claim.entry_kind(st.st_mode), st.st_ino, st.st_size, st.st_mtime_ns)


def claimed(cfg, rel: str, data: bytes = b"data") -> Job:
    src = cfg.paths.inbox / rel
    src.parent.mkdir(parents=True, exist_ok=True)
    src.write_bytes(data)
    job = claim.claim(candidate(src), cfg.paths.inbox, cfg.work_dir)
    assert job is not None
    return job


def every_file(folder: Path) -> list[str]:
    """Every non-folder entry below `folder`, dotfiles included."""
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if not p.is_dir() or p.is_symlink())


@pytest.fixture
def tmpfs(tmp_path: Path):
    """A real second filesystem (tmpfs), unmounted in a finally."""
    mnt = tmp_path / "other-fs"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(mnt)], capture_output=True).returncode:
        pytest.skip("mounting a tmpfs is not permitted here")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


# -- names ------------------------------------------------------------------------------------------
def test_fit_name_keeps_short_names_and_shortens_long_ones_with_a_hash() -> None:
    assert safefs.fit_name("photo_x3", ".png") == "photo_x3.png"
    long_a, long_b = "a" * 300, "a" * 299 + "b"
    fa, fb = safefs.fit_name(long_a, ".png"), safefs.fit_name(long_b, ".png")
    assert len(fa.encode()) <= 255 and fa.endswith(".png") and "~" in fa
    assert fa != fb, "two long names that differ only at the end must not collide"
    accented = safefs.fit_name("é" * 200, ".jpg", "-7")
    assert len(accented.encode()) <= 255 and accented.endswith("-7.jpg")
    accented.encode("utf-8")  # cut on a character boundary


def test_write_new_never_overwrites_and_numbers_from_one_listing(tmp_path: Path) -> None:
    first = sink.write_new(tmp_path, "photo_x3", ".png", b"one")
    second = sink.write_new(tmp_path, "photo_x3", ".png", b"two")
    (tmp_path / "photo_x3-41.png").write_bytes(b"user")
    third = sink.write_new(tmp_path, "photo_x3", ".png", b"three")
    assert [p.name for p in (first, second, third)] == ["photo_x3.png", "photo_x3-1.png", "photo_x3-42.png"]
    assert (tmp_path / "photo_x3-41.png").read_bytes() == b"user"
    assert every_file(tmp_path) == ["photo_x3-1.png", "photo_x3-41.png", "photo_x3-42.png", "photo_x3.png"]


def test_write_new_removes_its_temp_when_placing_fails(tmp_path: Path, monkeypatch) -> None:
    def broken_place(*_a, **_k):
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(safefs, "place", broken_place)
    with pytest.raises(OSError):
        sink.write_new(tmp_path, "x", ".png", b"data")
    assert every_file(tmp_path) == []


def test_place_without_hard_links_never_replaces(tmp_path: Path, monkeypatch) -> None:
    """SMB/FAT: link() fails with EPERM; renameat2(RENAME_NOREPLACE) must still refuse a taken name."""
    real_link = os.link

    def no_links(*a, **k):
        raise OSError(errno.EPERM, "Operation not permitted")

    (tmp_path / "out.png").write_bytes(b"existing")
    (tmp_path / "tmp").write_bytes(b"new")
    monkeypatch.setattr(os, "link", no_links)
    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        name = sink.place_numbered(fd, "tmp", fd, "out", ".png")
    finally:
        os.close(fd)
        monkeypatch.setattr(os, "link", real_link)
    assert name == "out-1.png"
    assert (tmp_path / "out.png").read_bytes() == b"existing" and (tmp_path / "out-1.png").read_bytes() == b"new"
    assert every_file(tmp_path) == ["out-1.png", "out.png"]


def test_open_subdir_refuses_a_planted_link(tmp_path: Path) -> None:
    outbox, elsewhere = tmp_path / "out", tmp_path / "elsewhere"
    outbox.mkdir()
    elsewhere.mkdir()
    (outbox / "sub").symlink_to(elsewhere)
    with pytest.raises(safefs.UnsafePath):
        with safefs.opened_dir(outbox, ["sub", "deeper"], create=True):
            pass
    assert list(elsewhere.iterdir()) == []


# -- the work folder --------------------------------------------------------------------------------
def test_work_folder_with_user_data_is_refused_and_left_untouched(tmp_path: Path) -> None:
    work = tmp_path / "mistyped"
    (work / "x" / "f").mkdir(parents=True)
    (work / "x" / "job.json").write_text(json.dumps({"id": "x", "rel": "a.png", "claimed_at": "now"}))
    (work / "x" / "f" / "a.png").write_bytes(b"precious")
    (work / "notes.txt").write_text("mine")
    before = every_file(work)
    with pytest.raises(ConfigError, match="paths.work"):
        claim.prepare_work_folder(work)
    assert every_file(work) == before and (work / "x" / "f" / "a.png").read_bytes() == b"precious"


def test_empty_work_folder_is_tagged_and_then_accepted(tmp_path: Path) -> None:
    work = tmp_path / "work"
    work.mkdir()
    claim.prepare_work_folder(work, tag=False)
    assert every_file(work) == []  # check-config creates nothing
    claim.prepare_work_folder(work)
    assert (work / claim.WORK_TAG).is_file()
    claim.prepare_work_folder(work)


# -- claiming ---------------------------------------------------------------------------------------
def test_claim_moves_file_and_recover_finds_it(tmp_path: Path) -> None:
    cfg = make_cfg(tmp_path)
    claim.prepare_work_folder(cfg.work_dir)
    job = claimed(cfg, "sub/a.png")
    assert job.path.read_bytes() == b"data" and job.rel == "sub/a.png" and job.size == 4
    assert job.job_dir.name.startswith(claim.JOB_PREFIX)
    gone = Candidate(cfg.paths.inbox / "sub" / "a.png", "file", 1, 4, 0)
    assert claim.claim(gone, cfg.paths.inbox, cfg.work_dir) is None, "a vanished file cannot be claimed twice"
    job = claim.set_attempts(job, 1)
    assert [(j.id, j.rel, j.attempts) for j in claim.recover(cfg.work_dir)] == [(job.id, "sub/a.png", 1)]
    claim.release(job)
    assert claim.recover(cfg.work_dir) == []


def test_claim_refuses_an_entry_rewritten_after_it_settled(tmp_path: Path) -> None:
    cfg = make_cfg(tmp_path)
    src = cfg.paths.inbox / "a.png"
    src.write_bytes(b"first")
    cand = candidate(src)
    src.write_bytes(b"second, longer")
    with pytest.raises(claim.Changed):
        claim.claim(cand, cfg.paths.inbox, cfg.work_dir)
    assert src.read_bytes() == b"second, longer" and list(cfg.work_dir.iterdir()) == []


def test_claim_takes_a_symlink_as_the_link_itself(tmp_path: Path) -> None:
    cfg = make_cfg(tmp_path)
    secret = tmp_path / "secret.png"
    secret.write_bytes(b"secret")
    os.chmod(secret, 0o600)
    (cfg.paths.inbox / "link.png").symlink_to(secret)
    job = claim.claim(candidate(cfg.paths.inbox / "link.png"), cfg.paths.inbox, cfg.work_dir)
    assert job is not None and job.kind == "link" and job.path.is_symlink()
    result = sink.fail(cfg, job, LinkRefused("a link"))
    assert isinstance(result, Failed) and result.reason == "link"
    assert (cfg.paths.quarantine / "link.png").is_symlink()
    assert secret.read_bytes() == b"secret" and oct(secret.stat().st_mode & 0o777) == "0o600"


def test_claim_through_a_swapped_parent_link_takes_nothing(tmp_path: Path) -> None:
    cfg = make_cfg(tmp_path)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "a.png").write_bytes(b"not yours")
    (cfg.paths.inbox / "sub").mkdir()
    (cfg.paths.inbox / "sub" / "a.png").write_bytes(b"x")
    cand = candidate(cfg.paths.inbox / "sub" / "a.png")
    os.rename(cfg.paths.inbox / "sub", tmp_path / "moved-away")
    (cfg.paths.inbox / "sub").symlink_to(outside)
    assert claim.claim(cand, cfg.paths.inbox, cfg.work_dir) is None
    assert (outside / "a.png").read_bytes() == b"not yours"


@pytest.mark.parametrize("fault", ["full", "read-only"])
def test_claim_on_a_broken_work_filesystem_leaves_the_file_in_the_inbox(tmp_path: Path, tmpfs: Path, fault: str) -> None:
    cfg = make_cfg(tmpfs)
    src = cfg.paths.inbox / "a.png"
    src.write_bytes(b"x" * 1000)
    if fault == "full":
        fd = os.open(tmpfs / "ballast", os.O_WRONLY | os.O_CREAT)
        try:
            while True:
                os.write(fd, b"\0" * 65536)
        except OSError as exc:
            assert exc.errno == errno.ENOSPC
        finally:
            os.close(fd)
    else:
        subprocess.run(["mount", "-o", "remount,ro", str(tmpfs)], check=True)
    try:
        with pytest.raises(StorageError):
            claim.claim(candidate(src), cfg.paths.inbox, cfg.work_dir)
    finally:
        subprocess.run(["mount", "-o", "remount,rw", str(tmpfs)], check=True)
    assert src.read_bytes() == b"x" * 1000 and list(cfg.work_dir.iterdir()) == []


# -- delivery, archive, quarantine -----------------------------------------------------------------
def test_deliver_archive_and_a_kill_between_link_and_marker(tmp_path: Path) -> None:
    cfg = make_cfg(tmp_path)
    job = claimed(cfg, "a.png", b"original")
    # A kill after the output's link but before delivered.json: the temp has two names.
    with safefs.opened_dir(cfg.paths.outbox) as fd:
        tmp = sink.temp_name(job, "out")
        safefs.write_exclusive(fd, tmp, b"result")
        os.link(tmp, "a_x3.png", src_dir_fd=fd, dst_dir_fd=fd)
    result = sink.resume(cfg, job)
    assert isinstance(result, Done) and result.resumed and result.output.endswith("a_x3.png")
    assert every_file(cfg.paths.outbox) == ["a_x3.png"], "no temp left, no second output"
    assert every_file(cfg.paths.archive) == ["a.png"] and (cfg.paths.archive / "a.png").read_bytes() == b"original"
    assert not job.job_dir.exists()


def test_a_crash_after_delivery_archives_instead_of_quarantining(tmp_path: Path) -> None:
    cfg = make_cfg(tmp_path)
    job = claimed(cfg, "a.png", b"original")
    output = sink.deliver(cfg, job, b"result", "a_x3", ".png")
    result = sink.fail(cfg, job, WorkerCrashed("died after delivery"))
    assert isinstance(result, Done) and result.output == str(output)
    assert every_file(cfg.paths.quarantine) == []
    assert every_file(cfg.paths.archive) == ["a.png"] and every_file(cfg.paths.outbox) == ["a_x3.png"]


def test_half_done_archive_is_completed_not_repeated(tmp_path: Path) -> None:
    cfg = make_cfg(tmp_path)
    job = claimed(cfg, "a.png", b"original")
    claim.mark_delivered(job, cfg.paths.outbox / "a_x3.png")
    os.link(job.path, cfg.paths.archive / "a.png")  # killed after the link, before the unlink
    assert isinstance(sink.resume(cfg, job), Done)
    assert every_file(cfg.paths.archive) == ["a.png"]


def test_archive_on_another_filesystem_is_copied_safely(tmp_path: Path, tmpfs: Path) -> None:
    cfg = make_cfg(tmp_path, paths={"archive": str(tmpfs / "archive")})
    (tmpfs / "archive").mkdir()
    (tmpfs / "archive" / "a.png").write_bytes(b"older")
    job = claimed(cfg, "a.png", b"original")
    os.chmod(job.path, 0o640)
    archived = sink.finish_original(cfg, job)
    assert archived == tmpfs / "archive" / "a-1.png" and archived.read_bytes() == b"original"
    assert oct(archived.stat().st_mode & 0o777) == "0o640"
    assert (tmpfs / "archive" / "a.png").read_bytes() == b"older"
    assert every_file(tmpfs / "archive") == ["a-1.png", "a.png"] and not job.path.exists()


def test_quarantine_never_replaces_a_users_record_named_file(tmp_path: Path) -> None:
    cfg = make_cfg(tmp_path)
    (cfg.paths.quarantine / "notes.png.error.json").write_text("the user's own file")
    job = claimed(cfg, "notes.png", b"bad")
    result = sink.fail(cfg, job, CorruptImage("cannot decode"))
    assert isinstance(result, Failed) and result.reason == "corrupt"
    assert (cfg.paths.quarantine / "notes.png.error.json").read_text() == "the user's own file"
    assert every_file(cfg.paths.quarantine) == ["notes-1.png", "notes-1.png.error.json", "notes.png.error.json"]
    record = json.loads((cfg.paths.quarantine / "notes-1.png.error.json").read_text())
    assert record["file"] == "notes-1.png" and record["reason"] == "corrupt" and record["original_path"] == "notes.png"


def test_quarantine_interrupted_after_its_record_is_finished_with_one_record(tmp_path: Path) -> None:
    cfg = make_cfg(tmp_path)
    job = claimed(cfg, "bad.png", b"bad")

    def killed_link(*a, **k):
        raise KeyboardInterrupt  # stands for SIGKILL right after the record was placed

    real = sink._move
    sink._move = killed_link
    try:
        with pytest.raises(KeyboardInterrupt):
            sink.fail(cfg, job, CorruptImage("first reason"))
    finally:
        sink._move = real
    assert every_file(cfg.paths.quarantine) == ["bad.png.error.json"]
    result = sink.fail(cfg, job, WorkerCrashed("the retry's reason"))
    assert isinstance(result, Failed) and result.reason == "corrupt", "the first decision stands"
    assert every_file(cfg.paths.quarantine) == ["bad.png", "bad.png.error.json"]
    assert json.loads((cfg.paths.quarantine / "bad.png.error.json").read_text())["file"] == "bad.png"


def test_a_link_planted_in_quarantine_is_not_followed(tmp_path: Path) -> None:
    cfg = make_cfg(tmp_path)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (cfg.paths.quarantine / "sub").symlink_to(elsewhere)
    job = claimed(cfg, "sub/bad.png", b"bad")
    result = sink.fail(cfg, job, CorruptImage("bad"))
    assert isinstance(result, Failed) and list(elsewhere.iterdir()) == []
    assert (cfg.paths.quarantine / "bad.png").read_bytes() == b"bad"
    record = json.loads((cfg.paths.quarantine / "bad.png.error.json").read_text())
    assert record["original_path"] == "sub/bad.png"


def test_a_link_planted_in_the_archive_is_not_followed_and_blocks_nothing(tmp_path: Path) -> None:
    cfg = make_cfg(tmp_path)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (cfg.paths.archive / "sub").symlink_to(elsewhere)
    job = claimed(cfg, "sub/a.png", b"original")
    sink.deliver(cfg, job, b"result", "a_x3", ".png")
    assert sink.finish_original(cfg, job) == cfg.paths.archive / "a.png"
    assert list(elsewhere.iterdir()) == [] and (cfg.paths.archive / "a.png").read_bytes() == b"original"


def test_long_name_quarantine_gets_a_short_record_name(tmp_path: Path) -> None:
    cfg = make_cfg(tmp_path)
    name = "n" * 246 + ".png"
    job = claimed(cfg, name, b"bad")
    sink.fail(cfg, job, CorruptImage("bad"))
    names = every_file(cfg.paths.quarantine)
    assert name in names and len(names) == 2
    record = next(n for n in names if n != name)
    assert record.endswith(".json") and len(record.encode()) <= 255
    assert json.loads((cfg.paths.quarantine / record).read_text())["file"] == name


def test_output_mode_and_umask(tmp_path: Path) -> None:
    cfg = make_cfg(tmp_path, output={"mode": "0640"})
    job = claimed(cfg, "a.png")
    out = sink.deliver(cfg, job, b"result", "a_x3", ".png")
    assert oct(out.stat().st_mode & 0o777) == "0o640"
    second = tmp_path / "second"
    second.mkdir()
    old = os.umask(0o027)
    try:
        cfg2 = make_cfg(second)
        job2 = claimed(cfg2, "b.png")
        out2 = sink.deliver(cfg2, job2, b"result", "b_x3", ".png")
    finally:
        os.umask(old)
    assert oct(out2.stat().st_mode & 0o777) == "0o640"


def test_sweep_removes_only_stale_temps_of_this_host(tmp_path: Path) -> None:
    dead_pid = 2**22 + 12345  # above pid_max: never a live process
    ours = f"{sink.TEMP_PREFIX}20260101T000000-000000001-{claim.HOST_TAG}-{dead_pid}-0.out"
    live = f"{sink.TEMP_PREFIX}20260101T000000-000000002-{claim.HOST_TAG}-{os.getpid()}-0.out"
    other_host = f"{sink.TEMP_PREFIX}20260101T000000-000000003-abcdef-{dead_pid}-0.out"
    for name in (ours, live, other_host, "photo.png"):
        (tmp_path / name).write_bytes(b"x")
    assert sink.sweep_temps([tmp_path], set()) == (0 if claim.HOST_TAG == "abcdef" else 1)
    assert sorted(every_file(tmp_path)) == sorted([live, other_host, "photo.png"])


# -- watching ---------------------------------------------------------------------------------------
def test_ignore_rules_always_hide_dotfiles() -> None:
    patterns = ["*.part"]  # a custom list without ".*"
    for name in ("a.png.part", ".hidden.png", ".git/a.png"):
        assert is_ignored(Path(name), patterns), name
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
    assert s.ready(now + 1.0) == []  # changed at 1.0: the clock restarts there
    assert s.ready(now + 1.75) == []  # 0.75 s quiet < 1 s
    assert [c.path for c in s.ready(now + 2.25)] == [f]  # 1.25 s quiet
    g = tmp_path / "g.png"
    g.write_bytes(b"x")
    s.note(g, "closed", now)
    assert s.ready(now + 0.125) == []  # closed, but not quiet for CLOSE_QUIET (0.3 s) yet
    assert [c.path for c in s.ready(now + 0.5)] == [g]


def test_settler_hands_out_links_and_fifos_at_once_without_opening_them(tmp_path: Path) -> None:
    s = Settler(settle_seconds=5.0)
    link, fifo = tmp_path / "l.png", tmp_path / "p.png"
    link.symlink_to(tmp_path / "missing")
    os.mkfifo(fifo)
    s.note(link, "changed", 10.0)
    s.note(fifo, "changed", 10.0)
    assert sorted((c.path.name, c.kind) for c in s.ready(10.0)) == [("l.png", "link"), ("p.png", "other")]


def test_settler_takes_a_renamed_in_file_quickly_but_waits_for_a_writer(tmp_path: Path) -> None:
    """inotify: a creation without an open is a rename into place; with an open, a writer is at work."""
    s = Settler(settle_seconds=2.0)
    renamed, written = tmp_path / "renamed.png", tmp_path / "written.png"
    renamed.write_bytes(b"complete")
    written.write_bytes(b"part")
    now = 500.0
    s.note(renamed, "created", now)
    s.note(written, "created", now)
    s.note(written, "opened", now)
    assert [c.path for c in s.ready(now + 0.5)] == [renamed]
    assert s.ready(now + 1.5) == []  # the writer never closed it: only settle_seconds of quiet will do
    assert [c.path for c in s.ready(now + 2.5)] == [written]


def test_settler_counts_quiet_from_the_event_and_checks_just_when_it_is_up(tmp_path: Path) -> None:
    """The main thread drains events up to a loop tick late: the 0.3 s quiet after a rename
    counts from the event, and the entry is due exactly then (not at the next 0.25 s check)."""
    s = Settler(settle_seconds=2.0)
    f = tmp_path / "f.png"
    f.write_bytes(b"complete")
    t = 700.0
    s.note(f, "moved_in", t + 0.09, at=t)
    assert s.ready(t + 0.09) == []
    assert s.next_due() == pytest.approx(t + CLOSE_QUIET + DUE_MARGIN)
    assert [c.path for c in s.ready(t + CLOSE_QUIET + DUE_MARGIN)] == [f]
    assert s.next_due() is None
    # A change drained in the same batch as the rename: the quiet time restarts at the change.
    g = tmp_path / "g.png"
    g.write_bytes(b"still being written")
    s.note(g, "moved_in", t + 0.31, at=t)
    s.note(g, "changed", t + 0.31, at=t + 0.25)
    assert s.ready(t + 0.31) == []
    assert s.ready(t + 0.5) == []
    assert s.next_due() == pytest.approx(t + 0.25 + CLOSE_QUIET + DUE_MARGIN)
    assert [c.path for c in s.ready(t + 0.25 + CLOSE_QUIET + DUE_MARGIN)] == [g]


class _Writer:
    """Another process holding `path` open for writing (appending `data` first) until told to close it."""

    def __init__(self, path: Path, data: bytes = b"") -> None:
        code = ("import sys; f = open(sys.argv[1], 'ab', buffering=0); f.write(sys.stdin.buffer.read(int(sys.argv[2]))); "
                "print('open', flush=True); sys.stdin.readline(); f.write(sys.stdin.buffer.read(int(sys.argv[3]))); f.close()")
        self.proc = subprocess.Popen([sys.executable, "-c", code, str(path), str(len(data)), "0"],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        assert self.proc.stdin and self.proc.stdout
        self.proc.stdin.write(data)
        self.proc.stdin.flush()
        assert self.proc.stdout.readline() == b"open\n"

    def close(self) -> None:
        if self.proc.poll() is None:
            assert self.proc.stdin
            self.proc.stdin.write(b"\n")
            self.proc.stdin.flush()
            self.proc.wait(timeout=10)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)


def test_open_for_writing_asks_the_kernel_about_writers_in_other_processes(tmp_path: Path) -> None:
    f = tmp_path / "f.png"
    f.write_bytes(b"complete")
    assert open_for_writing(f) is False
    writer = _Writer(f)
    try:
        assert open_for_writing(f) is True
    finally:
        writer.close()
    assert open_for_writing(f) is False
    reader = open(f, "rb")  # a reader is no writer
    try:
        assert open_for_writing(f) is False
    finally:
        reader.close()
    link = tmp_path / "l.png"
    link.symlink_to(f)
    assert open_for_writing(link) is None  # never followed
    assert open_for_writing(tmp_path / "gone.png") is None


def test_writer_check_takes_a_renamed_file_without_the_quiet_time(tmp_path: Path) -> None:
    """A rename into place that no process holds open is complete: no 0.3 s wait."""
    s = Settler(settle_seconds=2.0, writer_check=True)
    f = tmp_path / "f.png"
    f.write_bytes(b"complete")
    t = 900.0
    s.note(f, "moved_in", t, at=t)
    assert s.ready(t) == []  # the open of a fresh creation may still be on its way
    assert s.next_due() == pytest.approx(t + RENAME_QUIET + DUE_MARGIN)
    [cand] = s.ready(t + RENAME_QUIET + DUE_MARGIN)
    assert s.confirm(cand, t + 0.06)
    # Without the check, the same rename waits out the quiet time.
    old = Settler(settle_seconds=2.0)
    g = tmp_path / "g.png"
    g.write_bytes(b"complete")
    old.note(g, "moved_in", t, at=t)
    assert old.ready(t + RENAME_QUIET + DUE_MARGIN) == []
    assert [c.path for c in old.ready(t + CLOSE_QUIET + DUE_MARGIN)] == [g]
    # An empty creation is not fast: in the instant before its writer's open, it looks closed.
    e = tmp_path / "e.png"
    e.write_bytes(b"")
    s.note(e, "created", t, at=t)
    assert s.ready(t + RENAME_QUIET + DUE_MARGIN) == []
    assert [c.path for c in s.ready(t + CLOSE_QUIET + DUE_MARGIN)] == [e]


def test_writer_check_sends_a_file_still_open_for_writing_back_however_quiet(tmp_path: Path) -> None:
    """A writer pausing longer than settle_seconds, or renaming before it closes: not taken until it closes."""
    s = Settler(settle_seconds=1.0, writer_check=True)
    f = tmp_path / "f.png"
    writer = _Writer(f, b"first half")
    try:
        t = 100.0
        s.note(f, "created", t, at=t)
        s.note(f, "opened", t, at=t)
        [cand] = s.ready(t + 1.5)  # the timing rule: unchanged for settle_seconds
        assert not s.confirm(cand, t + 1.5)  # but still open for writing
        assert list(s.pending) == [f]
        assert s.ready(t + 1.5 + WRITER_RECHECK / 2) == []  # not asked again at once
        [cand] = s.ready(t + 1.5 + WRITER_RECHECK + DUE_MARGIN)
        assert not s.confirm(cand, t + 2.6)
        renamed = tmp_path / "renamed.png"
        os.rename(f, renamed)  # renamed into place before the writer closed it
        s.note(renamed, "moved_in", t + 3.0, at=t + 3.0)
        [cand] = s.ready(t + 3.0 + RENAME_QUIET + DUE_MARGIN)
        assert cand.path == renamed and not s.confirm(cand, t + 3.1)
    finally:
        writer.close()
    [cand] = s.ready(t + 3.1 + WRITER_RECHECK + DUE_MARGIN)
    assert cand.path == renamed and s.confirm(cand, t + 4.2)
    assert list(s.pending) == []


def test_writer_check_falls_back_to_the_timing_rule_where_the_kernel_cannot_tell(tmp_path: Path) -> None:
    """Another user's file, and no CAP_LEASE: the lease is refused, so the 0.3 s quiet decides."""
    if os.geteuid() != 0:
        pytest.skip("needs root, to run the check as another user")
    assert shutil.which("setpriv"), "setpriv (util-linux) runs the check as another user"
    folder = Path(tempfile.mkdtemp(prefix="srwatch-lease-"))  # pytest's tmp_path is not open to other users
    folder.chmod(0o755)
    f = folder / "f.png"
    f.write_bytes(b"complete")
    code = f"""
import sys
sys.path.insert(0, {str(ROOT)!r})
from pathlib import Path
from srwatch.watcher import CLOSE_QUIET, DUE_MARGIN, RENAME_QUIET, Settler, open_for_writing
f = Path({str(f)!r})
assert open_for_writing(f) is None
s = Settler(settle_seconds=2.0, writer_check=True)
s.note(f, "moved_in", 10.0, at=10.0)
assert s.ready(10.0 + RENAME_QUIET + DUE_MARGIN) == []
[c] = s.ready(10.0 + CLOSE_QUIET + DUE_MARGIN)
assert s.confirm(c, 10.31)
print("ok")
"""
    try:
        out = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--inh-caps=-all",
                              "--bounding-set=-all", sys.executable, "-c", code],
                             capture_output=True, text=True, timeout=60)
    finally:
        shutil.rmtree(folder)
    assert out.stdout.strip() == "ok", out.stderr


def test_claims_wait_on_the_disk_side_by_side_and_are_answered_in_order(tmp_path: Path) -> None:
    """Claims.ask runs claims on a few threads: on a disk whose fsyncs take 50 ms their waits
    overlap (the disk sees several at once), yet the answers come back in the order asked."""
    with slow_disk(tmp_path / "backing", tmp_path / "slow", fsync_ms=50) as fs:
        inbox, work = fs.mount / "inbox", fs.mount / "work"
        inbox.mkdir()
        work.mkdir()
        names = [f"c{i}.png" for i in range(8)]
        for name in names:
            (inbox / name).write_bytes(name.encode())
        claims = claim.Claims()
        try:
            before = fs.fsyncs()
            for name in names:
                claims.ask("folder", candidate(inbox / name), inbox, work)
            assert claims.pending() == claims.pending("folder") == len(names) and claims.pending("other") == 0
            answers = []
            while len(answers) < len(names):
                select.select([claims.wake_fd], [], [], 10)
                answers += [(cand.path.name, future.result()) for _, cand, future in claims.answered()]
            assert claims.pending() == 0
        finally:
            assert claims.close() == 0
        assert [name for name, _ in answers] == names
        for name, job in answers:
            assert job is not None and job.path.read_bytes() == name.encode() and not (inbox / name).exists()
        assert fs.fsyncs() - before >= 2 * len(names)  # each job record: the file and its folder
        assert 2 <= fs.most_at_once() <= claim.CLAIM_THREADS


def test_a_worker_delivers_side_by_side_and_reports_in_the_order_it_took_the_jobs(tmp_path: Path) -> None:
    """worker.Delivery runs deliveries on several threads: a job whose outbox is on a disk whose
    fsyncs take 200 ms does not hold up the next job's delivery to a fast disk, yet the
    supervisor hears of the slow one first, as the pool expects (it sent them in that order)."""
    from multiprocessing import Pipe

    from srwatch.process import Rendered
    from srwatch.worker import BoardSlot, Computed, Delivery

    with slow_disk(tmp_path / "backing", tmp_path / "slow", fsync_ms=200) as fs:
        (tmp_path / "fast").mkdir()
        slow_cfg, fast_cfg = make_cfg(fs.mount), make_cfg(tmp_path / "fast")
        first, second = claimed(slow_cfg, "first.png"), claimed(fast_cfg, "second.png")
        rendered = Rendered(data=b"output", ext=".png", input_size=(1, 1), output_size=(3, 3), cached=False,
                            notes=())
        supervisor, worker = Pipe()
        delivery = Delivery(worker, BoardSlot(None, -1))
        try:
            before = fs.fsyncs()
            delivery.hand(Computed(first, slow_cfg, 0.0, 3, rendered=rendered))
            delivery.hand(Computed(second, fast_cfg, 0.0, 3, rendered=rendered))
            fast_output = fast_cfg.paths.outbox / "second_x3.png"
            deadline = time.monotonic() + 10
            while not (fast_output.exists() and (fast_cfg.paths.archive / "second.png").exists()):
                assert time.monotonic() < deadline, "the second delivery waited for the first"
                time.sleep(0.01)
            # Delivered and archived, yet not reported: the first is still on the slow disk.
            assert not supervisor.poll(0.1)
            assert fs.fsyncs() - before < 6
            results = []
            while len(results) < 2:
                assert supervisor.poll(10), f"results so far: {results}"
                results.append(supervisor.recv())
        finally:
            delivery.close()
        assert [type(r).__name__ for r in results] == ["Done", "Done"]
        assert [r.job_id for r in results] == [first.id, second.id]
        assert (slow_cfg.paths.outbox / "first_x3.png").read_bytes() == b"output"
        assert (slow_cfg.paths.archive / "first.png").read_bytes() == b"data"
        assert fs.fsyncs() - before >= 6  # the slow job's delivery and archive


def test_a_worker_holds_no_more_than_its_byte_budget_of_results_waiting_on_the_disk(tmp_path: Path) -> None:
    """worker.Delivery bounds the encoded outputs its threads hold by bytes, not only by count:
    on a disk whose fsyncs take 200 ms, a result that would go past the budget waits (the
    worker's main thread with it, so it computes nothing new) until the one before is delivered
    and reported, though delivery threads are free; a result alone goes however big it is, and
    one that fits goes beside the others at once."""
    from multiprocessing import Pipe

    from srwatch.process import Rendered
    from srwatch.worker import BoardSlot, Computed, Delivery

    def rendered(size: int) -> Rendered:
        return Rendered(data=b"x" * size, ext=".png", input_size=(1, 1), output_size=(3, 3), cached=False, notes=())

    with slow_disk(tmp_path / "backing", tmp_path / "slow", fsync_ms=200):
        cfg = make_cfg(tmp_path / "slow")
        big, next_big, small = (claimed(cfg, f"{name}.png") for name in ("big", "next", "small"))
        supervisor, worker = Pipe()
        delivery = Delivery(worker, BoardSlot(None, -1), threads=4, max_bytes=1000)
        handed = threading.Event()
        second = threading.Thread(target=lambda: (delivery.hand(Computed(next_big, cfg, 0.0, 3, rendered=rendered(600))),
                                                  handed.set()))
        try:
            started = time.monotonic()
            delivery.hand(Computed(big, cfg, 0.0, 3, rendered=rendered(1200)))  # over the budget, but alone
            assert time.monotonic() - started < 0.5
            second.start()
            # 1200 + 600 > 1000: the second waits while the first is on the slow disk (six fsyncs).
            assert not handed.wait(0.6)
            assert not supervisor.poll(0)
            assert supervisor.poll(10)
            first = supervisor.recv()
            assert handed.wait(5), "the second waited on after the first was reported"
            started = time.monotonic()
            delivery.hand(Computed(small, cfg, 0.0, 3, rendered=rendered(300)))  # 600 + 300 fits
            assert time.monotonic() - started < 0.1
            results = [first]
            while len(results) < 3:
                assert supervisor.poll(10), f"results so far: {results}"
                results.append(supervisor.recv())
        finally:
            delivery.close()
            if second.is_alive() or second.ident is not None:
                second.join(10)
        assert [r.job_id for r in results] == [big.id, next_big.id, small.id]
        assert [type(r).__name__ for r in results] == ["Done", "Done", "Done"]
        assert (cfg.paths.outbox / "big_x3.png").stat().st_size == 1200


def test_an_attempt_is_counted_with_one_wait_on_the_disk_and_read_back_at_recovery(tmp_path: Path) -> None:
    """set_attempts runs at every dispatch on the supervisor's main thread: on a disk whose
    fsyncs take 30 ms it waits for one (the attempts file's size, in place), not two (a new
    record and its folder), and recover() reads the count back, down as well as up. A job
    claimed by an srwatch from before the attempts file keeps the count its record holds."""
    with slow_disk(tmp_path / "backing", tmp_path / "slow", fsync_ms=30) as fs:
        cfg = make_cfg(fs.mount)
        claim.prepare_work_folder(cfg.work_dir)
        job = claimed(cfg, "a.png")
        assert [j.attempts for j in claim.recover(cfg.work_dir)] == [0]
        for count in (1, 2, 1):
            before = fs.fsyncs()
            job = claim.set_attempts(job, count)
            assert fs.fsyncs() - before == 1
            assert [(j.id, j.attempts) for j in claim.recover(cfg.work_dir)] == [(job.id, count)]
        assert (job.job_dir / claim.ATTEMPTS).stat().st_size == 1
        assert json.loads((job.job_dir / claim.JOB_RECORD).read_text())["attempts"] == 0  # written once, at the claim

        older = claimed(cfg, "b.png")
        (older.job_dir / claim.ATTEMPTS).unlink()
        record = json.loads((older.job_dir / claim.JOB_RECORD).read_text())
        (older.job_dir / claim.JOB_RECORD).write_text(json.dumps({**record, "attempts": 2}))
        assert {j.id: j.attempts for j in claim.recover(cfg.work_dir)}[older.id] == 2
        before = fs.fsyncs()
        claim.set_attempts(older, 3)
        assert fs.fsyncs() - before == 2  # the new file's size, then its name in the folder
        assert {j.id: j.attempts for j in claim.recover(cfg.work_dir)} == {job.id: 1, older.id: 3}
        claim.release(older)
        assert claim.set_attempts(older, 4).attempts == 4 and not older.job_dir.exists()  # gone: left alone
