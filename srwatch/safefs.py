"""Filesystem primitives that never follow a link, never replace a file, and say whose fault a failure is.

Everything here works relative to directory descriptors opened one component at a time with
O_NOFOLLOW, so a folder swapped for a symlink (in the inbox, or planted under the outbox)
is refused instead of followed. Names are placed with link(2) or renameat2(RENAME_NOREPLACE),
which fail instead of replacing; where a filesystem has neither (SMB, FAT) the final name is
first created exclusively.
"""
from __future__ import annotations

import ctypes
import errno
import hashlib
import os
import re
import stat
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterable, Iterator, Optional, Sequence

from .errors import OutputError, StorageError, is_environmental

NAME_MAX = 255  # in bytes, per path component, on every filesystem srwatch supports
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_RENAME_NOREPLACE = 1
_COPY_CHUNK = 1 << 20  # in bytes


class UnsafePath(OutputError):
    """A folder on the way is a symbolic link (or not a folder): srwatch does not follow it."""


# -- names --------------------------------------------------------------------------------------
def fit_name(stem: str, ext: str, tail: str = "") -> str:
    """`stem + tail + ext`, shortened to NAME_MAX bytes if needed: stem cut, `~<8 hex>` added, ext kept."""
    name = f"{stem}{tail}{ext}"
    if len(os.fsencode(name)) <= NAME_MAX:
        return name
    digest = hashlib.sha256(os.fsencode(stem)).hexdigest()[:8]
    keep = NAME_MAX - len(os.fsencode(f"~{digest}{tail}{ext}"))
    if keep < 1:  # an absurd extension: give up on it rather than on the hash
        return f"{digest}{tail}"[:NAME_MAX]
    cut = stem
    while len(os.fsencode(cut)) > keep:
        cut = cut[:-1]
    return f"{cut}~{digest}{tail}{ext}"


def split_name(name: str) -> tuple[str, str]:
    """('photo', '.jpg') for 'photo.jpg'; dotfiles and extensionless names keep all as stem."""
    stem, dot, ext = name.rpartition(".")
    if not dot or not stem or "/" in ext:
        return name, ""
    return stem, "." + ext


def candidate_names(stem: str, ext: str, start: int = 0) -> Iterator[str]:
    """`stem.ext`, then `stem-1.ext`, `stem-2.ext`, ... (each shortened to fit), from `start`."""
    if start == 0:
        yield fit_name(stem, ext)
        start = 1
    n = start
    while True:
        yield fit_name(stem, ext, f"-{n}")
        n += 1


def highest_counter(dir_fd: int, stem: str, ext: str) -> int:
    """The largest N among `stem-N.ext` in the folder (0 if none): one listing, not N probes."""
    first = fit_name(stem, ext, "-1")
    prefix = first[: first.rfind("-1")] + "-"
    pattern = re.compile(re.escape(prefix) + r"(\d+)" + re.escape(ext) + r"\Z")
    best = 0
    for name in os.listdir(dir_fd):
        match = pattern.match(name)
        if match:
            best = max(best, int(match.group(1)))
    return best


# -- folders ------------------------------------------------------------------------------------
def open_root(folder: Path) -> int:
    """Open one of srwatch's configured folders (the configured path itself may be a link)."""
    return os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)


def open_subdir(root_fd: int, parts: Sequence[str], create: bool, where: str = "") -> int:
    """Open root/parts... one component at a time, never following a link; mkdir missing ones if `create`.

    Raises UnsafePath for a link or non-folder on the way, FileNotFoundError when missing and
    not creating. The caller closes the returned descriptor.
    """
    fd = os.dup(root_fd)
    try:
        for part in parts:
            if part in ("", ".", ".."):
                raise UnsafePath(f"{where or 'path'}: refusing the path component {part!r}")
            try:
                nxt = os.open(part, _DIR_FLAGS, dir_fd=fd)
            except FileNotFoundError:
                if not create:
                    raise
                try:
                    os.mkdir(part, 0o777, dir_fd=fd)
                except FileExistsError:
                    pass
                nxt = os.open(part, _DIR_FLAGS, dir_fd=fd)
            except OSError as exc:
                if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                    raise UnsafePath(
                        f"{where or 'folder'} {'/'.join(parts)}: {part!r} is a symbolic link or not a folder; "
                        "srwatch never follows links in its folders"
                    ) from None
                raise
            os.close(fd)
            fd = nxt
        return fd
    except BaseException:
        os.close(fd)
        raise


def open_subdir_path(folder: Path, parts: Sequence[str] = (), create: bool = False, where: str = "") -> int:
    """A descriptor of folder/parts (see open_subdir); the caller closes it."""
    root = open_root(folder)
    try:
        return open_subdir(root, parts, create, where)
    finally:
        os.close(root)


@contextmanager
def opened_dir(folder: Path, parts: Sequence[str] = (), create: bool = False, where: str = "") -> Iterator[int]:
    """Context manager: a descriptor of folder/parts (see open_subdir)."""
    fd = open_subdir_path(folder, parts, create, where)
    try:
        yield fd
    finally:
        os.close(fd)


def fsync_dir(dir_fd: int) -> None:
    """Make renames and links in a folder durable (some filesystems refuse: best effort)."""
    try:
        os.fsync(dir_fd)
    except OSError:
        pass


# -- writing and placing ------------------------------------------------------------------------
def create_mode(mode: Optional[int]) -> int:
    """The mode to create files with: `mode` exactly when given, else 0666 less the process umask."""
    return 0o666 if mode is None else mode


def write_exclusive(dir_fd: int, name: str, data: bytes, mode: Optional[int] = None) -> None:
    """Create `name` exclusively (never through a link), write, fsync; on failure remove it."""
    fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, create_mode(mode), dir_fd=dir_fd)
    try:
        if mode is not None:
            os.fchmod(fd, mode)  # exact, whatever the umask
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        _unlink_quiet(dir_fd, name)
        raise
    os.close(fd)


def _unlink_quiet(dir_fd: int, name: str) -> None:
    try:
        os.unlink(name, dir_fd=dir_fd)
    except OSError:
        pass


def unlink_if_exists(dir_fd: int, name: str) -> bool:
    """Remove `name` if present; True if it was there."""
    try:
        os.unlink(name, dir_fd=dir_fd)
        return True
    except FileNotFoundError:
        return False


def _renameat2_noreplace(src_fd: int, src: str, dst_fd: int, dst: str) -> None:
    """renameat2(..., RENAME_NOREPLACE); OSError(ENOSYS) where the C library lacks it."""
    libc = ctypes.CDLL(None, use_errno=True)
    func = getattr(libc, "renameat2", None)
    if func is None:
        raise OSError(errno.ENOSYS, "renameat2 not available")
    if func(src_fd, os.fsencode(src), dst_fd, os.fsencode(dst), _RENAME_NOREPLACE) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), dst)


_NO_LINKS = (errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EMLINK)
_NO_NOREPLACE = (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP, errno.ENOTSUP)


def place(src_fd: int, src: str, dst_fd: int, names: Iterable[str], keep_source: bool = False) -> Optional[str]:
    """Give the file `src` (same filesystem) the first free name of `names` in `dst_fd`; never replace.

    Returns the name, or None when every name in `names` is taken (the source is untouched then).

    link(2) first (the source stays until the link exists: a kill in between leaves two names
    of one inode, which recovery recognises); on filesystems without hard links,
    renameat2(RENAME_NOREPLACE); without that either, the final name is created exclusively
    and then renamed over (our own empty placeholder, nothing else). With keep_source the
    source name is left for the caller to remove (only possible with link).
    """
    for name in names:
        try:
            os.link(src, name, src_dir_fd=src_fd, dst_dir_fd=dst_fd, follow_symlinks=False)
        except FileExistsError:
            continue
        except OSError as exc:
            if exc.errno not in _NO_LINKS:
                raise
            if _place_without_link(src_fd, src, dst_fd, name):
                return name
            continue
        if not keep_source:
            os.unlink(src, dir_fd=src_fd)
        return name
    return None


def _place_without_link(src_fd: int, src: str, dst_fd: int, name: str) -> bool:
    """Rename `src` to `name` without replacing; False if `name` is taken."""
    try:
        _renameat2_noreplace(src_fd, src, dst_fd, name)
        return True
    except FileExistsError:
        return False
    except OSError as exc:
        if exc.errno not in _NO_NOREPLACE:
            raise
    try:  # claim the name exclusively, then replace only our own placeholder
        os.close(os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600, dir_fd=dst_fd))
    except FileExistsError:
        return False
    try:
        os.rename(src, name, src_dir_fd=src_fd, dst_dir_fd=dst_fd)
    except BaseException:
        _unlink_quiet(dst_fd, name)
        raise
    return True


def copy_into(src_fd: int, src: str, dst_fd: int, tmp: str) -> None:
    """Copy a regular file (never a link) to `tmp` in another folder, exclusively, with fsync.

    A left-over `tmp` from an interrupted copy is replaced: temp names are the caller's own.
    """
    _unlink_quiet(dst_fd, tmp)
    fin = os.open(src, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=src_fd)
    try:
        mode = stat.S_IMODE(os.fstat(fin).st_mode)
        fout = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=dst_fd)
        try:
            while True:
                chunk = os.read(fin, _COPY_CHUNK)
                if not chunk:
                    break
                view = memoryview(chunk)
                while view:
                    view = view[os.write(fout, view):]
            os.fchmod(fout, mode)
            os.fsync(fout)
        except BaseException:
            os.close(fout)
            _unlink_quiet(dst_fd, tmp)
            raise
        os.close(fout)
    finally:
        os.close(fin)


def copy_link_into(src_fd: int, src: str, dst_fd: int, tmp: str) -> None:
    """Recreate the symbolic link `src` (not its target) as `tmp` in another folder."""
    _unlink_quiet(dst_fd, tmp)
    os.symlink(os.readlink(src, dir_fd=src_fd), tmp, dir_fd=dst_fd)


def same_filesystem(fd_a: int, fd_b: int) -> bool:
    """True if two open folders are on one filesystem (link and rename work between them)."""
    return os.fstat(fd_a).st_dev == os.fstat(fd_b).st_dev


def find_by_inode(dir_fd: int, ino: int, dev: int, skip: Callable[[str], bool] = lambda _n: False) -> Optional[str]:
    """The name in a folder that is the inode (dev, ino), if any (recovery after a kill mid-move)."""
    for name in os.listdir(dir_fd):
        if skip(name):
            continue
        try:
            st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        except OSError:
            continue
        if st.st_ino == ino and st.st_dev == dev:
            return name
    return None


# -- whose fault ----------------------------------------------------------------------------------
def storage_guard(what: str, exc: OSError) -> BaseException:
    """The error to raise for an OSError while writing to srwatch's folders.

    Environmental (full, read-only, I/O, permission): StorageError, the file stays claimed.
    Anything else (a name the filesystem refuses, ...): OutputError, the file is quarantined.
    """
    if is_environmental(exc):
        return StorageError(f"{what}: {exc.strerror or exc}", exc.errno)
    return OutputError(f"{what}: {exc.strerror or exc}")
