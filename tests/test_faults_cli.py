"""`srwatch upscale IN OUT` never replaces OUT and never writes through a link (at OUT, or planted
at a temp name it might use)."""
from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from daemon_harness import REPO, entries, image_bytes, model_for_tests, require_model

pytestmark = pytest.mark.slow


def upscale(src: Path, out: Path, umask: int = 0o022) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "srwatch.cli", "upscale", str(src), str(out), "--model", str(model_for_tests()),
         "--threads", "1"],
        cwd=REPO, capture_output=True, text=True, timeout=120, preexec_fn=lambda: os.umask(umask),
    )


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    require_model()
    src = tmp_path / "in.png"
    src.write_bytes(image_bytes(16, 12, seed=1))
    victim = tmp_path / "victim.txt"
    victim.write_bytes(b"precious, not to be overwritten\n")
    victim.chmod(0o600)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    return {"src": src, "victim": victim, "out": out_dir}


def assert_victim_intact(victim: Path) -> None:
    assert victim.read_bytes() == b"precious, not to be overwritten\n", "srwatch upscale wrote through a link"
    assert stat.S_IMODE(victim.stat().st_mode) == 0o600, "srwatch upscale changed the mode of a link's target"


def no_temp_left(folder: Path, planted: set[str] = frozenset()) -> None:
    temps = [n for n in entries(folder) if n.startswith(".srwatch-tmp-") and n not in planted]
    assert not temps, f"temp files left behind: {temps}"


def test_existing_output_is_not_replaced(files: dict[str, Path]) -> None:
    out = files["out"] / "result.png"
    out.write_bytes(b"an older result\n")
    result = upscale(files["src"], out)
    assert result.returncode != 0, "OUT exists: srwatch upscale must refuse, not replace it"
    assert "exists" in result.stderr, f"the message must say OUT exists:\n{result.stderr}"
    assert out.read_bytes() == b"an older result\n"
    no_temp_left(files["out"])


@pytest.mark.parametrize("dangling", [False, True], ids=["link-to-a-file", "dangling-link"])
def test_a_link_at_the_output_is_never_written_through(files: dict[str, Path], dangling: bool) -> None:
    out = files["out"] / "result.png"
    target = files["out"].parent / "not-yet.png" if dangling else files["victim"]
    os.symlink(target, out)
    result = upscale(files["src"], out)
    assert result.returncode != 0, f"OUT is a link: srwatch upscale must refuse it:\n{result.stdout}{result.stderr}"
    assert result.stderr.strip(), "the refusal needs a message"
    assert os.path.islink(out) and os.readlink(out) == str(target), "the link at OUT was replaced"
    if dangling:
        assert not target.exists(), "srwatch upscale created the file a dangling link at OUT points to"
    assert_victim_intact(files["victim"])
    no_temp_left(files["out"])


def test_links_planted_at_temp_names_are_never_followed(files: dict[str, Path]) -> None:
    """Links planted at the names a temp file could take (the old scheme: .srwatch-tmp-<pid>-<name>,
    for the next few hundred pids) are left alone; the output is written, fresh, mode from the umask."""
    out = files["out"] / "result.png"
    last = int(Path("/proc/sys/kernel/ns_last_pid").read_text()) if Path("/proc/sys/kernel/ns_last_pid").exists() else 0
    planted = set()
    for pid in range(last + 1, last + 400):
        for name in (f".srwatch-tmp-{pid}-{out.name}", f".srwatch-tmp-{pid}-{out.name}.png"):
            os.symlink(files["victim"], files["out"] / name)
            planted.add(name)
    result = upscale(files["src"], out, umask=0o077)
    assert result.returncode == 0, result.stderr
    assert not os.path.islink(out) and out.stat().st_nlink == 1
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert stat.S_IMODE(out.stat().st_mode) == 0o600, "with umask 077 the output must be 0600"
    assert_victim_intact(files["victim"])
    still = {n for n in entries(files["out"]) if n in planted and os.path.islink(files["out"] / n)}
    assert still == planted, "planted links were removed or replaced"
    no_temp_left(files["out"], planted)
