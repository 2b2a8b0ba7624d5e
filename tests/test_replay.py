"""`srwatch quarantine list|retry`: quarantine, fix the cause, retry; the real daemon takes the file
again. Attempts carry over through the retry ledger; names are never replaced; links are never
followed; a kill at any step of a retry loses nothing."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from contextlib import ExitStack
from pathlib import Path

import pytest

from daemon_harness import (
    FAST_WATCH, REPO, Drop, Layout, assert_invariant, entries, file_drop, finished_count, image_bytes, place,
    quarantine_records, running, wait_finished, wait_for, write_config,
)

pytestmark = pytest.mark.slow

WATCH = {**FAST_WATCH, "recursive": True}
TINY = {"max_output_pixels": 20000}  # 40x40 fits (x3: 14,400 pixels); 60x60 does not (32,400)


def cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    """`srwatch ARGS` in a subprocess, as a user runs it."""
    return subprocess.run([sys.executable, "-m", "srwatch.cli", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout)


def quarantine(layout: Layout, drops: list[Drop], **overrides) -> Path:
    """Run the daemon with a tiny output limit on `drops` until each is archived or quarantined; the config."""
    before = finished_count(layout)
    with running(layout, watch=WATCH, limits=TINY, **overrides) as daemon:
        for drop in drops:
            place(layout.inbox, drop)
        wait_finished(layout, before + len(drops), 60, [daemon])
        return daemon.config


def ledgers(layout: Layout) -> list[Path]:
    return sorted(p for p in layout.work.iterdir() if p.name.startswith("retry-"))


def big(rel: str = "big.png", seed: int = 1, **kw) -> Drop:
    """Too large under TINY, fine with the default limits."""
    return file_drop(rel, 60, 60, seed=seed, **kw)


def test_retry_round_trip_after_the_cause_is_fixed(layout: Layout) -> None:
    """Quarantined for too_large; the limit raised; `retry --all` while the daemon runs: the file goes back
    under its sub-folder, then to the outbox; the record and the ledger are gone; every input once."""
    drops = [big("sub/deep/big.png"), file_drop("fits.png", 40, 40, seed=2)]
    quarantine(layout, drops)
    assert layout.reason("sub/deep/big.png")["reason"] == "too_large"
    with running(layout, watch=WATCH) as daemon:  # the cause fixed: the default limits
        result = cli("quarantine", "retry", "-c", str(daemon.config), "--all")
        assert result.returncode == 0, result.stderr
        assert "sub/deep/big.png -> inbox/sub/deep/big.png" in result.stdout
        wait_for(lambda: "sub/deep/big_x3.png" in layout.files(layout.outbox), 60, what="the retried file's output")
        wait_finished(layout, 2, 60, [daemon])
    assert not quarantine_records(layout.quarantine)
    assert not ledgers(layout), "the claim removes the ledger of the file it takes"
    assert_invariant(layout, drops)


def test_a_retried_file_that_fails_again_keeps_counting_its_attempts(layout: Layout) -> None:
    drop = big(expect="too_large")
    with running(layout, watch=WATCH, limits=TINY) as daemon:
        place(layout.inbox, drop)
        wait_finished(layout, 1, 60, [daemon])
        assert layout.reason("big.png")["attempts"] == 1
        for expected in (2, 3):
            result = cli("quarantine", "retry", "-c", str(daemon.config), "big.png")
            assert result.returncode == 0, result.stderr
            wait_for(lambda: _attempts(layout) == expected and not layout.work_jobs(), 60,
                     what=f"the file quarantined again with attempts {expected}")
    record = layout.reason("big.png")
    assert (record["reason"], record["attempts"], record["prior_attempts"]) == ("too_large", 3, 2)
    assert_invariant(layout, [drop])


def _attempts(layout: Layout) -> int:
    records = quarantine_records(layout.quarantine)
    return records[0].data["attempts"] if len(records) == 1 else -1


def test_reason_selects_and_list_shows_the_records(layout: Layout) -> None:
    """With the daemon stopped: `--reason too_large` puts back only that file (the others stay with their
    records); `list` shows them oldest first; the daemon started later takes the retried file."""
    drops = [Drop("bad.png", b"not an image at all\n", expect="not_image"), big(),
             Drop("sub/empty.png", b"", expect="empty")]
    config = quarantine(layout, drops[:1])  # first: the oldest failure
    quarantine(layout, drops[1:])
    listed = cli("quarantine", "list", "-c", str(config), "--json")
    assert listed.returncode == 0, listed.stderr
    items = json.loads(listed.stdout)["quarantined"]
    assert [i["original"] for i in items][0] == "bad.png"
    assert sorted(i["original"] for i in items) == ["bad.png", "big.png", "sub/empty.png"]
    assert [i["failed_at"] for i in items] == sorted(i["failed_at"] for i in items)
    table = cli("quarantine", "list", "-c", str(config))
    assert table.returncode == 0 and table.stdout.splitlines()[0].split()[:3] == ["FAILED", "AT", "(UTC)"]
    assert "not_image" in table.stdout.splitlines()[1] and "sub/empty.png" in table.stdout

    assert cli("quarantine", "retry", "-c", str(config), "--reason", "no_such_reason").returncode == 2
    assert cli("quarantine", "retry", "-c", str(config)).returncode == 2, "nothing chosen is a usage error"
    missing = cli("quarantine", "retry", "-c", str(config), "no-such-file.png")
    assert missing.returncode == 1 and "no-such-file.png" in missing.stderr
    dry = cli("quarantine", "retry", "-c", str(config), "--reason", "too_large", "--dry-run")
    assert dry.returncode == 0 and "would retry big.png" in dry.stdout
    assert layout.files(layout.inbox) == [], "--dry-run moves nothing"

    result = cli("quarantine", "retry", "-c", str(config), "--reason", "too_large")
    assert result.returncode == 0, result.stderr
    assert layout.files(layout.inbox) == ["big.png"]
    assert (layout.inbox / "big.png").read_bytes() == drops[1].data
    assert sorted(r.data["file"] for r in quarantine_records(layout.quarantine)) == ["bad.png", "empty.png"]
    (ledger,) = ledgers(layout)
    assert json.loads(ledger.read_text())["prior_attempts"] == 1
    assert "1 retried file(s)" in cli("quarantine", "list", "-c", str(config)).stdout

    with running(layout, watch=WATCH) as daemon:
        wait_finished(layout, 3, 60, [daemon])
    assert not ledgers(layout)
    assert_invariant(layout, drops)


def test_a_name_taken_in_the_inbox_gets_a_free_name(layout: Layout) -> None:
    old = big()
    config = quarantine(layout, [old])
    new = file_drop("big.png", 30, 30, seed=7)  # a new file of that name dropped meanwhile
    place(layout.inbox, new)
    result = cli("quarantine", "retry", "-c", str(config), "big.png")
    assert result.returncode == 0, result.stderr
    assert "-> inbox/big-1.png" in result.stdout
    assert (layout.inbox / "big.png").read_bytes() == new.data, "a retry never replaces a file"
    assert (layout.inbox / "big-1.png").read_bytes() == old.data
    with running(layout, watch=WATCH) as daemon:
        wait_finished(layout, 2, 60, [daemon])
    assert_invariant(layout, [new, Drop("big-1.png", old.data, size=old.size)])


def test_links_planted_in_quarantine_are_never_followed(layout: Layout, tmp_path: Path) -> None:
    """A link with a record, a linked sub-folder, a record that is a link: none is followed or moved;
    the real quarantined file beside them is still retried (exit 1: some could not be moved)."""
    drop = big()
    config = quarantine(layout, [drop])
    victim = tmp_path / "victim.png"
    victim.write_bytes(image_bytes(20, 20, seed=3))
    decoy = tmp_path / "decoy"
    decoy.mkdir()
    (decoy / "d.png").write_bytes(b"decoy")
    (decoy / "d.png.error.json").write_text(json.dumps(_forged("d.png")))
    os.symlink(victim, layout.quarantine / "evil.png")
    (layout.quarantine / "evil.png.error.json").write_text(json.dumps(_forged("evil.png")))
    os.symlink(decoy, layout.quarantine / "linked")
    (layout.quarantine / "other.png").write_bytes(b"other")
    (tmp_path / "elsewhere.json").write_text(json.dumps(_forged("other.png")))
    os.symlink(tmp_path / "elsewhere.json", layout.quarantine / "other.png.error.json")
    planted = {p.path: p.content() for p in entries(layout.quarantine).values() if p.path.name != "big.png"
               and p.path.name != "big.png.error.json"}
    decoy_before = {rel: e.content() for rel, e in entries(decoy).items()}

    items = json.loads(cli("quarantine", "list", "-c", str(config), "--json").stdout)["quarantined"]
    assert {i["file"]: i["kind"] for i in items} == {"big.png": "file", "evil.png": "link"}
    result = cli("quarantine", "retry", "-c", str(config), "--all")
    assert result.returncode == 1, result.stdout + result.stderr
    assert "evil.png" in result.stderr and "link" in result.stderr
    assert layout.files(layout.inbox) == ["big.png"]
    assert victim.read_bytes() == image_bytes(20, 20, seed=3)
    assert {rel: e.content() for rel, e in entries(decoy).items()} == decoy_before
    with running(layout, watch=WATCH) as daemon:
        wait_finished(layout, 2, 60, [daemon])  # big.png archived + the forged record
    assert_invariant(layout, [drop], preexisting=planted)


def _forged(name: str) -> dict:
    return {"file": name, "original_path": name, "reason": "not_image", "message": "planted", "attempts": 1,
            "failed_at": "2020-01-01T00:00:00.000+00:00", "job_id": f"forged-{name}"}


# -- a kill at every step -----------------------------------------------------------------------------
#: Runs the CLI with every call that changes a folder counted; the process dies (as by SIGKILL: no
#: cleanup) just before call number argv[1].
_KILL_AT = r'''
import os, sys
limit, calls, real_open = int(sys.argv[1]), [0], os.open
def counted(real):
    def call(*args, **kwargs):
        if real is not real_open or args[1] & os.O_CREAT:
            calls[0] += 1
            if calls[0] == limit:
                os._exit(137)
        return real(*args, **kwargs)
    return call
for name in ("link", "unlink", "rename", "replace", "symlink", "mkdir", "rmdir", "open"):
    setattr(os, name, counted(getattr(os, name)))
from srwatch.cli import main
sys.exit(main(sys.argv[2:]))
'''


@pytest.mark.parametrize("cross_fs", [False, True], ids=["same-filesystem", "quarantine-on-another-filesystem"])
def test_a_retry_killed_at_any_step_loses_nothing(tmp_path: Path, cross_fs: bool) -> None:
    """Kill the retry before each of its folder changes in turn; at each kill the file is whole somewhere,
    never visible in the inbox while still in quarantine, never in quarantine without its record; a
    second retry then finishes the job: the file visible once in the inbox, with its ledger."""
    from srwatch import claim

    data = image_bytes(60, 60, seed=4)
    record = {**_forged("big.png"), "original_path": "sub/big.png", "reason": "too_large", "attempts": 2,
              "job_id": "20200101T000000-000000000-abcdef-1-0"}
    with ExitStack() as stack:
        qroot = None
        if cross_fs:
            from mounts import require_mounts, tmpfs

            require_mounts(tmp_path)
            qroot = stack.enter_context(tmpfs(tmp_path / "vol", "16m"))
        for n in range(1, 60):
            root = tmp_path / f"kill-{n}"
            layout = Layout(root, quarantine=(qroot / f"q-{n}") if qroot else None)
            config = write_config(layout, watch=WATCH)
            for folder in (layout.outbox, layout.archive, layout.work, layout.quarantine / "sub"):
                folder.mkdir(parents=True)
            claim.prepare_work_folder(layout.work)
            (layout.quarantine / "sub" / "big.png").write_bytes(data)
            (layout.quarantine / "sub" / "big.png.error.json").write_text(json.dumps(record))
            killed = subprocess.run([sys.executable, "-c", _KILL_AT, str(n), "quarantine", "retry", "-c", str(config),
                                     "--all"], cwd=REPO, capture_output=True, text=True, timeout=60)
            if killed.returncode == 0:
                _assert_retried(layout, data, 2)
                break
            assert killed.returncode == 137, killed.stderr
            _assert_safe_after_kill(layout, data, n)
            again = cli("quarantine", "retry", "-c", str(config), "--all")
            assert again.returncode == 0, f"kill before call {n}: the second retry failed:\n{again.stderr}"
            _assert_retried(layout, data, 2)
        else:
            pytest.fail("the retry never completed")
        assert n > 6, "the kill points must cover the retry's steps"


def _assert_safe_after_kill(layout: Layout, data: bytes, n: int) -> None:
    q_file = layout.quarantine / "sub" / "big.png"
    q_record = layout.quarantine / "sub" / "big.png.error.json"
    visible = [rel for rel in layout.files(layout.inbox)]
    temps = [e for rel, e in entries(layout.inbox).items() if Path(rel).name.startswith(".srwatch-retry-")]
    where = f"killed before call {n}"
    assert not (q_file.exists() and visible), f"{where}: visible in the inbox and still in quarantine"
    assert not q_file.exists() or q_record.exists(), f"{where}: in quarantine without its record"
    whole = [p for p in [q_file, *(layout.inbox / r for r in visible), *(e.path for e in temps)]
             if p.exists() and p.read_bytes() == data]
    assert whole, f"{where}: the file is nowhere whole (quarantine let go of it too early?)"


def _assert_retried(layout: Layout, data: bytes, attempts: int) -> None:
    assert layout.files(layout.inbox) == ["sub/big.png"]
    placed = layout.inbox / "sub" / "big.png"
    assert placed.read_bytes() == data
    assert set(entries(layout.inbox)) == {"sub/big.png"}, "a hidden temp was left in the inbox"
    assert entries(layout.quarantine) == {}, "the file or its record is still in quarantine"
    (ledger,) = [p for p in layout.work.iterdir() if "retry-" in p.name]
    info = json.loads(ledger.read_text())
    st = placed.stat()
    assert (info["ino"], info["prior_attempts"], info["rel"]) == (st.st_ino, attempts, "sub/big.png")


# -- ledgers --------------------------------------------------------------------------------------
def test_ledgers_are_the_work_folders_own_and_swept_a_day_after_their_file_left(tmp_path: Path) -> None:
    from srwatch import claim
    from srwatch.errors import ConfigError

    inbox, work = tmp_path / "inbox", tmp_path / "work"
    inbox.mkdir()
    work.mkdir()
    claim.prepare_work_folder(work)
    waiting = inbox / "waiting.png"
    waiting.write_bytes(b"x")
    gone = inbox / "gone.png"
    gone.write_bytes(b"y")

    def ledger(path: Path) -> claim.RetryLedger:
        st = path.stat()
        entry = claim.RetryLedger(st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, 1, path.name, str(inbox),
                                  ".srwatch-retry-x", path.name + ".error.json", "job", "corrupt", time.time())
        claim.write_ledger(work, entry)
        return entry

    kept, dropped = ledger(waiting), ledger(gone)
    found = claim.find_ledger(work, os.lstat(waiting))
    assert found == kept
    gone.unlink()
    claim.prepare_work_folder(work)  # accepted as srwatch's own
    assert claim.sweep_ledgers(work) == 0, "young ledgers stay"
    assert claim.sweep_ledgers(work, now=time.time() + 2 * claim.LEDGER_MAX_AGE) == 1
    assert [p.name for p in ledgers(Layout(tmp_path))] == [kept.name], f"{dropped.name} must go, {kept.name} stay"
    os.symlink(tmp_path / "elsewhere", work / "retry-1-2.json")
    with pytest.raises(ConfigError):
        claim.prepare_work_folder(work)  # a link with a ledger's name is not ours
