"""Real mounts and kernel settings for the fault tests, each undone in a `finally`.

    with tmpfs(tmp_path / "vol", "256k") as vol:     # a tiny filesystem of its own
        remount(vol, "size=64m")                       # grow it; remount(vol, "ro") / "rw"
    with fat(tmp_path / "fat") as folder:              # a FAT filesystem: no hard links
    with sysctl("fs.inotify.max_queued_events", 8):    # restored on the way out
    with slow_disk(tmp_path / "b", tmp_path / "mnt", 40) as fs:  # every fsync waits 40 ms (FUSE)

Mounting is a property of the machine, not of srwatch: where it is not permitted (not root, no
CAP_SYS_ADMIN, no FAT driver) the test is skipped with the reason, under CI=true as well.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Optional, Union

import pytest

_mount_refusal: Optional[str] = None
_mount_checked = False


def _run(*argv: str, timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout)


def mount_refusal(scratch: Path) -> Optional[str]:
    """Why tmpfs cannot be mounted here (None when it can); checked once per session."""
    global _mount_refusal, _mount_checked
    if _mount_checked:
        return _mount_refusal
    _mount_checked = True
    if shutil.which("mount") is None or shutil.which("umount") is None:
        _mount_refusal = "no mount/umount commands on this machine"
        return _mount_refusal
    probe = scratch / ".mount-probe"
    probe.mkdir(parents=True, exist_ok=True)
    result = _run("mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(probe))
    if result.returncode != 0:
        _mount_refusal = f"mounting tmpfs is not permitted here: {result.stderr.strip() or result.returncode}"
    else:
        unmount(probe)
    probe.rmdir()
    return _mount_refusal


def require_mounts(scratch: Path) -> None:
    """Skip the test when this machine does not let us mount (an environment property)."""
    refusal = mount_refusal(scratch)
    if refusal:
        pytest.skip(f"needs tmpfs mounts (root with CAP_SYS_ADMIN): {refusal}")


def is_mountpoint(path: Path) -> bool:
    """True while something is mounted on `path`."""
    target = os.path.realpath(path)
    with open("/proc/self/mounts") as fh:
        return any(line.split()[1].encode().decode("unicode_escape") == target for line in fh)


def unmount(path: Path) -> None:
    """Unmount `path`; a busy mount is detached lazily (umount -l) rather than left behind."""
    for _ in range(20):
        if not is_mountpoint(path):
            return
        if _run("umount", str(path)).returncode == 0:
            continue
        time.sleep(0.1)
    if is_mountpoint(path):
        _run("umount", "-l", str(path))


@contextmanager
def tmpfs(path: Path, size: str, mode: str = "0755") -> Iterator[Path]:
    """A tmpfs of `size` (e.g. "256k", "8m") mounted on `path` (created), unmounted afterwards."""
    require_mounts(path.parent)
    path.mkdir(parents=True, exist_ok=True)
    result = _run("mount", "-t", "tmpfs", "-o", f"size={size},mode={mode}", "tmpfs", str(path))
    assert result.returncode == 0, f"mount tmpfs on {path}: {result.stderr}"
    try:
        yield path
    finally:
        unmount(path)


def remount(path: Path, options: str) -> None:
    """`mount -o remount,<options>`: "size=64m", "ro", "rw"."""
    result = _run("mount", "-o", f"remount,{options}", str(path))
    assert result.returncode == 0, f"remount {path} {options}: {result.stderr}"


def fill(folder: Path, name: str = "ballast") -> Path:
    """Write zeros into `folder/name` until the filesystem is full (ENOSPC); return the file."""
    ballast = folder / name
    block = bytes(64 * 1024)
    with open(ballast, "wb", buffering=0) as fh:
        try:
            while True:
                fh.write(block)
        except OSError:
            pass
        small = bytes(512)
        try:
            while True:
                fh.write(small)
        except OSError:
            pass
    return ballast


@contextmanager
def fat(path: Path, size_mb: int = 16) -> Iterator[Path]:
    """A FAT filesystem (no hard links, case-insensitive names) mounted on `path`.

    The kernel's vfat through a loop device when the kernel has it, else fusefat (FUSE, Debian
    package fusefat); skipped when neither is available or mkfs.vfat (dosfstools) is missing.
    """
    require_mounts(path.parent)
    mkfs = shutil.which("mkfs.vfat") or shutil.which("mkfs.fat")
    if mkfs is None:
        pytest.skip("no FAT filesystem to test on: mkfs.vfat missing (apt-get install dosfstools)")
    image = path.parent / (path.name + ".img")
    with open(image, "wb") as fh:
        fh.truncate(size_mb * 2**20)
    made = _run(mkfs, str(image))
    assert made.returncode == 0, made.stderr
    path.mkdir(parents=True, exist_ok=True)
    fuse: Optional[subprocess.Popen] = None
    if "vfat" in Path("/proc/filesystems").read_text():
        result = _run("mount", "-t", "vfat", "-o", "loop", str(image), str(path))
        if result.returncode != 0:
            pytest.skip(f"cannot loop-mount a vfat image here: {result.stderr.strip()}")
    elif shutil.which("fusefat") and os.path.exists("/dev/fuse"):
        # -f: in the foreground, so the process is ours to stop by its pid.
        fuse = subprocess.Popen(["fusefat", "-f", "-o", "rw+", str(image), str(path)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while not is_mountpoint(path) and time.monotonic() < deadline and fuse.poll() is None:
            time.sleep(0.05)
        if not is_mountpoint(path):
            fuse.kill()
            fuse.wait()
            pytest.skip("fusefat could not mount the FAT image")
    else:
        pytest.skip("no FAT filesystem to test on: the kernel has no vfat driver (loop mount impossible) "
                    "and fusefat is not installed (apt-get install fusefat)")
    try:
        yield path
    finally:
        if fuse is not None:
            _run("fusermount", "-u", str(path))
        unmount(path)
        if fuse is not None:
            try:
                fuse.wait(timeout=10)
            except subprocess.TimeoutExpired:
                fuse.kill()
                fuse.wait()
        image.unlink(missing_ok=True)


@contextmanager
def slow_disk(backing: Path, mount: Path, fsync_ms: float) -> Iterator["slowfs.SlowFS"]:
    """`backing` seen at `mount` through a FUSE pass-through whose fsyncs wait `fsync_ms`
    (tests/slowfs.py: a spinning disk or a network share). Skipped where FUSE cannot be
    mounted (not root, no /dev/fuse); fusepy missing fails under CI=true (a test dependency)."""
    import slowfs

    why = slowfs.refusal()
    if why and why.startswith("fusepy is not installed") and os.environ.get("CI") == "true":
        pytest.fail(f"the slow disk needs fusepy and libfuse2: {why}")
    if why:
        pytest.skip(f"no slow disk here: {why}")
    try:
        with slowfs.mounted(backing, mount, fsync_ms) as fs:
            yield fs
    except slowfs.Refused as exc:
        pytest.skip(f"no slow disk here: {exc}")


def _sysctl_path(name: str) -> Path:
    return Path("/proc/sys") / name.replace(".", "/")


@contextmanager
def sysctl(name: str, value: Union[int, str]) -> Iterator["SysctlHandle"]:
    """Set a kernel setting for the block; the old value is put back in `finally`.

    `handle.restore()` puts it back early (e.g. once the process that needed it has started),
    so that other programs on the machine are exposed to the odd value as briefly as possible.
    """
    path = _sysctl_path(name)
    try:
        old = path.read_text().strip()
        path.write_text(f"{value}\n")
    except OSError as exc:
        pytest.skip(f"cannot set {name} here: {exc}")
    handle = SysctlHandle(path, old)
    try:
        yield handle
    finally:
        handle.restore()


class SysctlHandle:
    """The original value of one kernel setting, put back once."""

    def __init__(self, path: Path, old: str) -> None:
        self.path = path
        self.old = old
        self.restored = False

    def restore(self) -> None:
        if not self.restored:
            self.path.write_text(f"{self.old}\n")
            self.restored = True
