"""The invariant checker itself: it must see every breach (a check that cannot fail proves nothing).

Folders are laid out by hand here, as srwatch would leave them or as a bug would; no daemon.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from daemon_harness import Drop, Layout, account, assert_invariant, image_bytes, name_fits

A = image_bytes(8, 6, seed=1)
B = b"not an image\n"


def record(file: str, reason: str = "not_image", original: str = "") -> bytes:
    return json.dumps({"file": file, "original_path": original or f"/in/{file}", "reason": reason,
                       "message": "m", "attempts": 1}).encode()


def output_of(data: bytes) -> bytes:
    """Stand-in output: a 3x image of the right size for A (8x6)."""
    return image_bytes(24, 18, seed=2)


@pytest.fixture
def layout(tmp_path: Path) -> Layout:
    layout = Layout(tmp_path)
    for folder in (layout.inbox, layout.outbox, layout.archive, layout.quarantine, layout.work):
        folder.mkdir()
    (layout.work / ".srwatch-work").write_text("tag")
    (layout.work / ".srwatch.lock").write_text("1")
    (layout.outbox / "a_x3.png").write_bytes(output_of(A))
    (layout.archive / "a.png").write_bytes(A)
    (layout.quarantine / "b.png").write_bytes(B)
    (layout.quarantine / "b.png.error.json").write_bytes(record("b.png"))
    return layout


DROPS = [Drop("a.png", A, size=(8, 6)), Drop("b.png", B, expect="not_image")]


def problems(layout: Layout, drops=DROPS, **kw) -> str:
    return "\n".join(account(layout, drops, **kw).problems)


def test_a_clean_result_passes(layout: Layout) -> None:
    acc = assert_invariant(layout, DROPS)
    assert acc.counts(DROPS) == {"files_in": 2, "delivered": 1, "quarantined": {"not_image": 1}, "left_in_inbox": 0,
                                 "still_claimed": 0, "lost": 0, "duplicated": 0}


@pytest.mark.parametrize("breach, expected", [
    (lambda l: (l.outbox / ".srwatch-tmp-job.out").write_bytes(b"x"), "temp file left in the outbox"),
    (lambda l: (l.archive / ".srwatch-tmp-job.arc").write_bytes(A), "temp file left in the archive"),
    (lambda l: (l.quarantine / ".hidden").write_bytes(B), "unexpected file in the quarantine"),
    (lambda l: (l.quarantine / "b.png.error-1.json").write_bytes(record("b.png")), "2 records naming it"),
    (lambda l: (l.quarantine / "c.png.error.json").write_bytes(record("c.png")), "which is not in quarantine"),
    (lambda l: (l.archive / "a.png").write_bytes(A + b"\0"), "'a.png' (file) ended as 'lost'"),
    (lambda l: (l.outbox / "a_x3-1.png").write_bytes(output_of(A)), "has 2 outputs"),
    (lambda l: (l.outbox / "b_x3.png").write_bytes(output_of(A)), "AND has an output"),
    (lambda l: (l.outbox / "a_x3.png").write_bytes(b"\x89PNG\r\n\x1a\n half"), "does not decode"),
    (lambda l: (l.outbox / "a_x3.png").write_bytes(image_bytes(16, 12)), "expected 24x18"),
    (lambda l: (l.work / "job-1").mkdir(), "job folders left in the work folder"),
    (lambda l: (l.inbox / "stray.png").write_bytes(A), "unexpected entry left in the inbox"),
    (lambda l: (l.archive / "b.png").write_bytes(B), "in 2 places at once"),
    (lambda l: (l.quarantine / "b.png.error.json").write_bytes(record("b.png", "corrupt")), "ended as 'corrupt'"),
    (lambda l: (l.quarantine / "b.png.error.json").write_bytes(record("b.png", original="/in/zzz")), "does not name"),
    (lambda l: (l.quarantine / "b.png.error.json").unlink(), "0 records naming it"),
    (lambda l: (l.archive / "a.png").unlink(), "'a.png' (file) ended as 'lost'"),
    (lambda l: os.symlink("/etc/hostname", l.outbox / "evil_x3.png"), "unexpected link in the outbox"),
])
def test_every_breach_is_seen(layout: Layout, breach, expected: str) -> None:
    breach(layout)
    found = problems(layout)
    assert expected in found, f"the checker missed a breach ({expected!r}); it said:\n{found}"


def test_links_fifos_and_left_entries(layout: Layout, tmp_path: Path) -> None:
    os.symlink("/etc/shadow", layout.quarantine / "l.png")
    (layout.quarantine / "l.png.error.json").write_bytes(record("l.png", "link"))
    os.mkfifo(layout.quarantine / "p.png")
    (layout.quarantine / "p.png.error.json").write_bytes(record("p.png", "not_a_file"))
    (layout.inbox / ".hidden.png").write_bytes(A)
    drops = DROPS + [Drop("l.png", kind="link", target="/etc/shadow", expect="link"),
                     Drop("p.png", kind="fifo", expect="not_a_file"), Drop(".hidden.png", A, expect="inbox")]
    assert_invariant(layout, drops)
    os.unlink(layout.quarantine / "l.png")
    os.symlink("/etc/passwd", layout.quarantine / "l.png")
    assert "'l.png' (link) ended as 'lost'" in problems(layout, drops), "a link with another target is not the input"


def test_numbered_and_shortened_names(layout: Layout) -> None:
    long = "n" * 250 + ".png"  # output 253 bytes: fits; record 261 bytes: shortened
    (layout.quarantine / long).write_bytes(B)
    (layout.quarantine / ("n" * 230 + "~0123abcd.error.json")).write_bytes(record(long))
    (layout.archive / "a-1.png").write_bytes(A)
    (layout.outbox / "a_x3-1.png").write_bytes(output_of(A))
    drops = DROPS + [Drop(long, B, expect="not_image"), Drop("a.png", A, size=(8, 6))]
    assert_invariant(layout, drops)
    assert name_fits("n" * 239 + "~0123abcd_x3.png", "n" * 251 + "_x3", ".png")
    assert name_fits("n" * 240 + "~0123abcd.png", "n" * 251 + "_x3", ".png")
    assert (layout.quarantine / ("n" * 230 + "~0123abcd.error.json")).exists()
    assert not name_fits("n" * 240 + "~0123abcd.png", "n" * 20 + "_x3", ".png"), "short names are never shortened"
    assert not name_fits("a_x3.jpg", "a_x3", ".png")
