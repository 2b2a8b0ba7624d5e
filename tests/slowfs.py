"""A slow disk for tests and benchmarks: a FUSE pass-through whose fsyncs wait.

    with mounted(backing, mount, fsync_ms=30) as fs:   # mount/ shows backing/; every fsync sleeps 30 ms
        ...                                           # fs.fsyncs(), fs.most_at_once()
    python tests/slowfs.py BACKING MOUNT FSYNC_MS COUNTER   # the server itself (what mounted() runs)

This machine has no device-mapper delay target and no null_blk, so a disk whose syncs are slow
(a spinning disk, a network share) is played by a FUSE filesystem: fusepy over the system's
libfuse2 (the package fusefat, a system test dependency, pulls it in), root and /dev/fuse for
the mount. Every call goes to a folder on the local disk; an fsync of a file or a folder does
the real fsync, then sleeps. This machine's kernel (6.18) grants local leases on it, so
srwatch's writer check works there as on the local disk (a filesystem that refuses them, as
NFS does, is played in tests/test_daemon.py with fs.leases-enable = 0). The server is a Python
process and takes CPU of its own for every call: compare runs on it with each other, not with
runs on the local disk.
"""
from __future__ import annotations

import errno
import importlib
import os
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Optional


class Refused(RuntimeError):
    """The slow filesystem cannot be mounted here (no fusepy, libfuse2, /dev/fuse or root)."""


def serve(backing: str, mount: str, fsync_ms: float, counter: str) -> None:
    """Mount a pass-through of `backing` at `mount` whose fsyncs sleep `fsync_ms`; returns once unmounted.

    The file `counter` holds the number of fsyncs so far and the most that waited at once.
    """
    from fuse import FUSE, FuseOSError, Operations

    delay = fsync_ms / 1000.0
    lock = threading.Lock()
    fsyncs = [0, 0, 0]  # fsyncs so far, under way now, most ever under way at once

    class SlowSync(Operations):
        def __init__(self) -> None:
            self.root = os.path.realpath(backing)

        def _full(self, path: str) -> str:
            return os.path.join(self.root, path.lstrip("/"))

        def __call__(self, op, path, *args):
            return super().__call__(op, self._full(path) if path is not None else path, *args)

        def _slow(self) -> None:
            with lock:
                fsyncs[0] += 1
                fsyncs[1] += 1
                fsyncs[2] = max(fsyncs[2], fsyncs[1])
                # Whole or not at all: a reader must never find the file truncated (it read 0).
                Path(counter + ".tmp").write_text(f"{fsyncs[0]} {fsyncs[2]}")
                os.replace(counter + ".tmp", counter)
            time.sleep(delay)
            with lock:
                fsyncs[1] -= 1

        def access(self, path, mode):
            if not os.access(path, mode):
                raise FuseOSError(errno.EACCES)

        chmod = os.chmod

        def chown(self, path, uid, gid):
            os.lchown(path, uid, gid)

        def create(self, path, mode, fi=None):
            return os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, mode)

        def flush(self, path, fh):
            return 0

        def fsync(self, path, datasync, fh):
            os.fdatasync(fh) if datasync else os.fsync(fh)
            self._slow()
            return 0

        def fsyncdir(self, path, datasync, fh):
            fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
            self._slow()
            return 0

        def getattr(self, path, fh=None):
            st = os.lstat(path)
            return {key: getattr(st, key) for key in ("st_atime", "st_ctime", "st_gid", "st_mode", "st_mtime",
                                                        "st_nlink", "st_size", "st_uid", "st_ino")}

        def link(self, target, source):
            # fusepy passes (new name, existing name); only the first came through __call__.
            os.link(self._full(source), target)

        mkdir = os.mkdir

        def mknod(self, path, mode, dev):
            os.mknod(path, mode, dev)

        def open(self, path, flags):
            return os.open(path, flags)

        def read(self, path, size, offset, fh):
            return os.pread(fh, size, offset)

        def readdir(self, path, fh):
            return [".", "..", *os.listdir(path)]

        readlink = os.readlink

        def release(self, path, fh):
            return os.close(fh)

        def rename(self, old, new):
            os.rename(old, self._full(new))

        rmdir = os.rmdir

        def statfs(self, path):
            stv = os.statvfs(path)
            return {key: getattr(stv, key) for key in ("f_bavail", "f_bfree", "f_blocks", "f_bsize", "f_favail",
                                                         "f_ffree", "f_files", "f_flag", "f_frsize", "f_namemax")}

        def symlink(self, target, source):
            os.symlink(source, target)

        def truncate(self, path, length, fh=None):
            if fh is not None:
                os.ftruncate(fh, length)
            else:
                os.truncate(path, length)

        unlink = os.unlink

        def utimens(self, path, times=None):
            os.utime(path, ns=None if times is None else tuple(int(t * 1e9) for t in times))

        def write(self, path, data, offset, fh):
            return os.pwrite(fh, data, offset)

    Path(counter).write_text("0 0")
    # use_ino: srwatch tells files apart by inode; big_writes: 128 KB per write call, not 4 KB.
    FUSE(SlowSync(), mount, foreground=True, nothreads=False, use_ino=True, big_writes=True)


class SlowFS:
    """A mounted slow filesystem (see mounted())."""

    def __init__(self, mount: Path, counter: Path) -> None:
        self.mount = mount
        self._counter = counter

    def fsyncs(self) -> int:
        """fsyncs of files and folders on it so far."""
        return self._read()[0]

    def most_at_once(self) -> int:
        """The most fsyncs ever waiting at the same time (from any processes or threads)."""
        return self._read()[1]

    def _read(self) -> tuple[int, int]:
        try:
            count, most = self._counter.read_text().split()
            return int(count), int(most)
        except (OSError, ValueError):
            return 0, 0


def refusal() -> Optional[str]:
    """Why the slow filesystem cannot be mounted here; None if it can (as far as can be told)."""
    if os.geteuid() != 0:
        return "not root"
    if not os.path.exists("/dev/fuse"):
        return "no /dev/fuse"
    try:
        importlib.import_module("fuse")  # fusepy; loading it also finds libfuse2
    except ImportError:
        return "fusepy is not installed (pip install fusepy)"
    except OSError as exc:  # fusepy raises EnvironmentError('Unable to find libfuse')
        return f"libfuse2 not found ({exc}; apt-get install libfuse2)"
    return None


def _mounted(path: Path) -> bool:
    with open("/proc/self/mounts") as fh:
        return any(line.split()[1] == os.path.realpath(path) for line in fh)


@contextmanager
def mounted(backing: Path, mount: Path, fsync_ms: float) -> Iterator[SlowFS]:
    """`backing` seen at `mount` with slow fsyncs, for the block; unmounted and its server
    stopped (by its pid) in `finally`. Raises Refused where it cannot be mounted."""
    why = refusal()
    if why:
        raise Refused(why)
    backing.mkdir(parents=True, exist_ok=True)
    mount.mkdir(parents=True, exist_ok=True)
    counter = backing.parent / f".{mount.name}.fsyncs"
    errors = backing.parent / f".{mount.name}.log"
    with open(errors, "wb") as err:
        server = subprocess.Popen([sys.executable, __file__, str(backing), str(mount), str(fsync_ms), str(counter)],
                                  stdout=subprocess.DEVNULL, stderr=err)
    try:
        deadline = time.monotonic() + 30
        while not _mounted(mount):
            if server.poll() is not None or time.monotonic() > deadline:
                raise Refused(f"the FUSE server did not mount {mount}: {errors.read_text(errors='replace')[-500:]}")
            time.sleep(0.05)
        yield SlowFS(mount, counter)
    finally:
        if _mounted(mount):
            subprocess.run(["fusermount", "-u", str(mount)], capture_output=True, timeout=30)
        if _mounted(mount):
            subprocess.run(["umount", "-l", str(mount)], capture_output=True, timeout=30)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        counter.unlink(missing_ok=True)
        errors.unlink(missing_ok=True)


if __name__ == "__main__":
    serve(*sys.argv[1:3], float(sys.argv[3]), sys.argv[4])
