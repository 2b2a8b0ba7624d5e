"""Faults that arrive through the inbox: hostile content, names and entry kinds, links, bursts,
files rewritten after they settled, output limits and permissions.

The real daemon, real inotify observer, real worker processes and the shipped model; after
every scenario the invariant (daemon_harness.account): each input in exactly one place, byte
for byte, no temp file, no stray record, no job left, the daemon alive.
"""
from __future__ import annotations

import os
import re
import signal
import stat
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from daemon_harness import (
    FAST_WATCH,
    Drop,
    Layout,
    check_and_report,
    entries,
    fault_report,  # noqa: F401 - fixture
    file_drop,
    image_bytes,
    leaving,
    place,
    quarantine_records,
    running,
    stop_processes,
    wait_finished,
    wait_for,
)

pytestmark = pytest.mark.slow




def snapshot(path: Path) -> tuple:
    """What must not change about a link's target: content (or listing) and mode."""
    st = os.lstat(path)
    if stat.S_ISDIR(st.st_mode):
        return ("dir", st.st_mode, sorted((rel, e.content()) for rel, e in entries(path).items()))
    return ("file", st.st_mode, path.read_bytes())


def bmp_bytes(width: int, height: int, seed: int) -> bytes:
    img = cv2.imdecode(np.frombuffer(image_bytes(width, height, seed), np.uint8), cv2.IMREAD_COLOR)
    ok, buf = cv2.imencode(".bmp", img)
    assert ok
    return buf.tobytes()


def no_worker_crash(log: str) -> None:
    died = [line for line in log.splitlines() if re.search(r"worker-\d+ died", line)]
    assert not died, "a hostile input must never kill a worker:\n" + "\n".join(died[:5])


# -- hostile content, names and kinds -------------------------------------------------------------
def name_and_kind_drops(tmp_path: Path) -> tuple[list[Drop], dict[Path, tuple]]:
    """Inbox entries that are hostile by name or by kind, and the outside paths links point at."""
    outside = tmp_path / "outside"
    outside.mkdir()
    private = outside / "private.png"
    private.write_bytes(image_bytes(16, 16, seed=90))
    private.chmod(0o600)
    folder = outside / "folder"
    folder.mkdir()
    (folder / "inner.png").write_bytes(image_bytes(12, 12, seed=91))
    hard_source = outside / "hard-source.png"
    hard_source.write_bytes(image_bytes(14, 14, seed=92))
    # The inbox is not recursive here: claiming renames the link itself, whatever it points to,
    # so a real secret is safe to point at. (Folder links point at decoys only.)
    secret = Path("/etc/shadow")
    if not secret.is_file():
        secret = outside / "shadow"
        secret.write_bytes(b"root:*:19000:0:99999:7:::\n")
        secret.chmod(0o600)
    targets = {p: snapshot(p) for p in (private, folder, hard_source, secret)}
    good = [
        file_drop("my photo 1.png", seed=1),
        file_drop("фото ünï 写真.png", seed=2),
        file_drop("new\nline.png", seed=3),
        file_drop("tab\tname.png", seed=4),
        file_drop("-rf.png", seed=5),
        file_drop("--help.jpg", seed=6),
        file_drop("quote\"s 'and' \\back.png", seed=7),
        file_drop(os.fsdecode(b"caf\xe9 latin-1.png"), seed=8),  # not UTF-8
        file_drop(" lead and trail .png", seed=9),
        file_drop("SHOUT.PNG", seed=10),
        file_drop("a.b.c.jpeg", seed=11),
        Drop("noext", image_bytes(20, 18, seed=12), size=(20, 18), out_ext=".png"),
        # Two inputs whose outputs want the same name: one gets -1.
        file_drop("same.png", seed=13),
        Drop("same.bmp", bmp_bytes(22, 20, seed=14), size=(22, 20), out_ext=".png"),
        file_drop("target-in-inbox.png", seed=15),
    ]
    bad = [
        Drop("notes.png.error.json", b'{"file": "x", "note": "a user file that looks like a record"}\n', expect="not_image"),
        Drop("pipe.png", kind="fifo", expect="not_a_file"),
        Drop("sock.png", kind="socket", expect="not_a_file"),
        Drop("link-private.png", kind="link", target=str(private), expect="link"),
        Drop("link-secret.png", kind="link", target=str(secret), expect="link"),
        Drop("link-dangling.png", kind="link", target=str(outside / "nothing-here.png"), expect="link"),
        Drop("link-folder.png", kind="link", target=str(folder), expect="link"),
        Drop("link-in-inbox.png", kind="link", target="target-in-inbox.png", expect="link"),
    ]
    stay = [
        Drop("x.png", kind="dir", expect="inbox"),  # a folder named like an image (not recursive)
        Drop("x.png/inside.png", image_bytes(10, 10, seed=16), expect="inbox"),
        Drop(".srwatch-tmp-evil.png", image_bytes(10, 10, seed=17), expect="inbox"),  # hidden
        Drop(".hidden.png", image_bytes(10, 10, seed=18), expect="inbox"),
        Drop("y.png.part", image_bytes(10, 10, seed=19), expect="inbox"),
        Drop("backup.png~", image_bytes(10, 10, seed=20), expect="inbox"),
    ]
    return good + bad + stay, targets


def test_hostile_inputs_each_end_in_exactly_one_place(layout: Layout, tmp_path: Path, fault_report) -> None:
    """tests/hostile.py's contents plus hostile names and entry kinds, all at once: each ends where
    it must (processed, quarantined with its reason, or left alone), no worker dies, links are never
    followed (their targets unchanged), a FIFO is never opened (the daemon does not hang)."""
    from hostile import HOSTILE

    drops = [
        Drop(case.filename, case.data, expect="done" if case.expect is None else case.expect,
             size=case.size, out_ext=case.ext)
        for case in HOSTILE
    ]
    named, targets = name_and_kind_drops(tmp_path)
    drops += named
    hard = Drop("hard-link.png", (tmp_path / "outside" / "hard-source.png").read_bytes(), size=(14, 14))
    drops.append(hard)
    assert len(drops) >= 30
    with running(layout, watch=FAST_WATCH) as daemon:
        staging = layout.root / "staging"
        # The FIFO first: a daemon that opens it blocks, and nothing after it would finish.
        for drop in sorted(drops, key=lambda d: d.kind != "fifo"):
            if drop is hard:
                os.link(tmp_path / "outside" / "hard-source.png", layout.inbox / hard.rel)
            else:
                place(layout.inbox, drop, staging if drop.kind == "file" and "/" not in drop.rel else None)
        vanish = layout.inbox / "vanish.png"  # seen, then gone before it settles
        vanish.write_bytes(image_bytes(10, 10, seed=21))
        vanish.unlink()
        wait_finished(layout, leaving(drops), 120, [daemon], "hostile inputs")
        daemon.assert_alive("after the hostile inputs")
        log = daemon.log()
    no_worker_crash(log)
    check_and_report(fault_report, "hostile inputs (hostile.py + names + kinds)", layout, drops)
    for path, before in targets.items():
        assert snapshot(path) == before, f"the target of an inbox link was changed: {path}"
    for drop in drops:
        if drop.kind == "link":
            found = [e for e in entries(layout.quarantine).values() if e.kind == "link" and e.content() == drop.target]
            assert found, f"{drop.rel!r} must be in quarantine AS A LINK (os.path.islink), pointing where it did"
    assert (tmp_path / "outside" / "hard-source.png").read_bytes() == hard.data


def test_symlinked_folders_in_a_recursive_inbox_are_never_descended(layout: Layout, tmp_path: Path,
                                                                    fault_report) -> None:
    # Link targets are decoys under tmp_path, never a system folder: a daemon that descends a
    # linked folder claims (moves) every file in it.
    outside = tmp_path / "outside"
    (outside / "deep").mkdir(parents=True)
    (outside / "deep" / "img.png").write_bytes(image_bytes(12, 12, seed=30))
    private = outside / "private.png"
    private.write_bytes(image_bytes(12, 12, seed=31))
    private.chmod(0o600)
    system_like = tmp_path / "etc"
    (system_like / "ssl").mkdir(parents=True)
    (system_like / "passwd").write_bytes(b"root:x:0:0:root:/root:/bin/bash\n")
    (system_like / "ssl" / "openssl.cnf").write_bytes(b"[ req ]\n")
    before = snapshot(outside), snapshot(system_like)
    drops = [
        Drop("linked-folder", kind="link", target=str(outside), expect="link"),
        Drop("real/etc-link", kind="link", target=str(system_like), expect="link"),
        Drop("real/private.png", kind="link", target=str(private), expect="link"),
        file_drop("real/sub/ok.png", seed=32),
        file_drop("top.png", seed=33),
    ]
    with running(layout, watch={**FAST_WATCH, "recursive": True}) as daemon:
        for drop in drops:
            place(layout.inbox, drop)
        wait_finished(layout, leaving(drops), 60, [daemon], "a recursive inbox with linked folders")
        time.sleep(1.0)  # a daemon that descends the links would take their files now
        daemon.assert_alive()
    check_and_report(fault_report, "recursive inbox with symlinked folders", layout, drops)
    assert (snapshot(outside), snapshot(system_like)) == before, (
        "a symlinked folder in the inbox was descended: its files were moved")


def test_quarantine_records_never_replace_a_file(layout: Layout, fault_report) -> None:
    """Records are <F>.error.json, or .error-1.json when that name is taken; user files that
    happen to have those names (in quarantine, archive, outbox) stay byte-identical."""
    for folder in (layout.quarantine, layout.archive, layout.outbox):
        folder.mkdir(parents=True)
    user_files = {
        layout.quarantine / "notes.png.error.json": b"my own notes about notes.png, not srwatch's\n",
        layout.quarantine / "other.png": b"a user file already in quarantine\n",
        layout.archive / "good.png": b"a user file already in the archive\n",
        layout.outbox / "good_x3.png": b"a user file already in the outbox\n",
    }
    for path, data in user_files.items():
        path.write_bytes(data)
    notes = Drop("notes.png", b"this is not an image\n", expect="not_image")
    drops = [notes, Drop("other.png", b"not an image either\n", expect="not_image"), file_drop("good.png", seed=40)]
    with running(layout, watch=FAST_WATCH) as daemon:
        for drop in drops:
            place(layout.inbox, drop)
        # (The archive already holds one user file: it counts as finished.)
        wait_finished(layout, 1 + 3, 60, [daemon], "three files")
        # A user file named like a record is an input like any other: not an image.
        late = place(layout.inbox, Drop("notes.png.error.json", b'{"file": "notes.png"}\n', expect="not_image"))
        drops.append(late)
        wait_finished(layout, 1 + 4, 60, [daemon], "the file named like a record")
    check_and_report(fault_report, "records never replace a file", layout, drops,
                     preexisting={p: d for p, d in user_files.items()})
    mine = [r for r in quarantine_records(layout.quarantine) if r.data["original_path"].endswith("notes.png")]
    assert len(mine) == 1 and mine[0].rel != "notes.png.error.json", (
        f"notes.png needs a record of its own, beside the user's notes.png.error.json: {[r.rel for r in mine]}")


def test_long_names_are_processed_or_quarantined_without_a_crash(layout: Layout, fault_report) -> None:
    """Names of 240-255 bytes: outputs and records that would pass 255 bytes are shortened
    (extension kept, ~<8 hex> added); the worker never dies on a name; no temp file is left."""
    drops = [file_drop("l" * (n - 4) + ".png", seed=n) for n in (240, 250, 253, 255)]
    drops += [Drop("b" * (n - 4) + ".png", b"not an image\n", expect="not_image") for n in (240, 250, 255)]
    drops.append(file_drop("é" * 125 + "x.png", seed=1))  # 255 bytes of 2-byte characters
    with running(layout, watch=FAST_WATCH) as daemon:
        for drop in drops:
            place(layout.inbox, drop)
        wait_finished(layout, len(drops), 60, [daemon], "long names")
        log = daemon.log()
    no_worker_crash(log)
    check_and_report(fault_report, "names of 240-255 bytes", layout, drops)
    outputs = sorted(entries(layout.outbox))
    for drop in drops[:2]:  # 240 and 250 bytes: the output name (243, 253 bytes) fits as it is
        assert drop.name[:-4] + "_x3.png" in outputs
    for name in outputs:
        assert len(os.fsencode(name)) <= 255 and name.endswith(".png"), name
    assert sum(1 for name in outputs if name.endswith("_x3.png")) >= 2
    for rel in entries(layout.quarantine):
        assert len(os.fsencode(rel)) <= 255, rel


# -- bursts and names ---------------------------------------------------------------------------
def test_camera_burst_of_one_name_numbers_every_result(layout: Layout, fault_report) -> None:
    """A camera that writes scan.jpg again and again: scan_x3.jpg, scan_x3-1.jpg, ... scan_x3-49.jpg, nothing lost."""
    drops = []
    with running(layout, watch=FAST_WATCH) as daemon:
        target = layout.inbox / "scan.jpg"
        for i in range(50):
            drop = file_drop("scan.jpg", 16, 12, seed=100 + i)
            place(layout.inbox, drop, layout.root / "staging")
            drops.append(drop)
            wait_for(lambda: not os.path.lexists(target), 20, 0.01, f"scan.jpg #{i} claimed")
        wait_finished(layout, 50, 60, [daemon], "the burst")
    check_and_report(fault_report, "camera burst, 50 x scan.jpg", layout, drops)
    expected = ["scan_x3.jpg"] + [f"scan_x3-{n}.jpg" for n in range(1, 50)]
    assert sorted(entries(layout.outbox)) == sorted(expected)


def test_custom_ignore_list_still_never_takes_hidden_files(layout: Layout, fault_report) -> None:
    drops = [
        Drop(".hidden.png", image_bytes(10, 10, seed=50), expect="inbox"),
        Drop(".srwatch-tmp-lookalike.png", image_bytes(10, 10, seed=51), expect="inbox"),
        Drop("half.png.part", image_bytes(10, 10, seed=52), expect="inbox"),
        file_drop("visible.png", seed=53),
        file_drop("backup.png.tmp", seed=54, out_ext=".png"),  # *.tmp is no longer ignored: taken
    ]
    with running(layout, watch={**FAST_WATCH, "ignore": ["*.part"]}) as daemon:
        for drop in drops:
            place(layout.inbox, drop)
        wait_finished(layout, leaving(drops), 30, [daemon], "visible files")
        time.sleep(2.0)  # four settle times more: hidden files would be taken by now
    check_and_report(fault_report, "watch.ignore without '.*'", layout, drops)


def test_output_over_max_output_pixels_is_too_large(layout: Layout, fault_report) -> None:
    # 40x40 -> 120x120 = 14,400 output pixels: fits 20,000; 60x60 -> 180x180 = 32,400: does not.
    drops = [file_drop("fits.png", 40, 40, seed=60), Drop("too-big.png", image_bytes(60, 60, seed=61), expect="too_large")]
    with running(layout, watch=FAST_WATCH, limits={"max_output_pixels": 20000}) as daemon:
        for drop in drops:
            place(layout.inbox, drop)
        wait_finished(layout, 2, 60, [daemon], "two files")
    check_and_report(fault_report, "limits.max_output_pixels", layout, drops)
    assert "max_output_pixels" in layout.reason("too-big.png")["message"]


# -- permissions ----------------------------------------------------------------------------------
def test_created_files_follow_the_umask(layout: Layout, fault_report) -> None:
    drops = [file_drop("a.png", seed=70), Drop("bad.png", b"not an image\n", expect="not_image")]
    with running(layout, umask=0o027, watch=FAST_WATCH) as daemon:
        for drop in drops:
            place(layout.inbox, drop)
        wait_finished(layout, 2, 60, [daemon], "two files")
    check_and_report(fault_report, "umask 027", layout, drops)
    made = {"output": layout.outbox / "a_x3.png"}
    made.update({f"record {r.rel}": layout.quarantine / r.rel for r in quarantine_records(layout.quarantine)})
    for what, path in made.items():
        mode = stat.S_IMODE(path.stat().st_mode)
        assert mode & 0o007 == 0, f"{what} is {oct(mode)}: with umask 027 nothing srwatch creates may be world-accessible"
        assert mode & 0o020 == 0, f"{what} is {oct(mode)}: umask 027 forbids group write"


def test_output_mode_sets_result_permissions(layout: Layout, fault_report) -> None:
    drops = [file_drop("a.png", seed=71), file_drop("b.jpg", seed=72)]
    with running(layout, umask=0o077, watch=FAST_WATCH, output={"mode": "0640"}) as daemon:
        for drop in drops:
            place(layout.inbox, drop)
        wait_finished(layout, 2, 60, [daemon], "two files")
    check_and_report(fault_report, "output.mode 0640", layout, drops)
    for name in ("a_x3.png", "b_x3.jpg"):
        mode = stat.S_IMODE((layout.outbox / name).stat().st_mode)
        assert mode == 0o640, f"output.mode '0640' must give {name} mode 0o640, not {oct(mode)}"


# -- rewritten after it settled -------------------------------------------------------------------
def test_file_rewritten_in_place_after_settling_is_never_taken_mid_write(layout: Layout, fault_report) -> None:
    """The file settles and waits for room in the queue (the only worker is frozen, the queue
    full). The daemon is frozen while the writer starts rewriting the file in place with a
    bigger picture, then continued; room appears (the worker is continued) while the writer
    is still writing. srwatch must take the final content, never a half-written one."""
    blockers = [file_drop("blocker1.png", 30, 30, seed=80), file_drop("blocker2.png", 30, 30, seed=81)]
    first = image_bytes(20, 20, seed=89)
    final = Drop("rewritten.png", image_bytes(90, 70, seed=90), size=(90, 70))
    target = layout.inbox / final.rel
    with running(layout, watch=FAST_WATCH, pool={"workers": 1, "queue_size": 1}) as daemon:
        workers = daemon.workers()
        stop_processes(workers)  # holds blocker1; blocker2 fills the queue
        try:
            for drop in blockers:
                place(layout.inbox, drop, layout.root / "staging")
            wait_for(lambda: not entries(layout.inbox), 30, 0.02, "both blockers claimed")
            target.write_bytes(first)
            time.sleep(1.2)  # it settles, and waits for room in the queue
            assert os.path.lexists(target), "the file must be waiting in the inbox"
            chunks = [final.data[i : i + 1500] for i in range(0, len(final.data), 1500)]
            with open(target, "r+b") as fh:
                daemon.signal(signal.SIGSTOP)
                try:
                    fh.truncate(0)
                    fh.write(chunks[0])
                    fh.flush()
                finally:
                    daemon.signal(signal.SIGCONT)
                stop_processes(workers, signal.SIGCONT)  # room in the queue, mid-write
                for chunk in chunks[1:]:
                    time.sleep(0.2)  # slower than nothing, faster than settle_seconds
                    fh.write(chunk)
                    fh.flush()
        finally:
            stop_processes(workers, signal.SIGCONT)
        wait_finished(layout, len(blockers) + 1, 60, [daemon], "the blockers and the rewritten file")
    check_and_report(fault_report, "file rewritten in place after settling", layout, blockers + [final])
