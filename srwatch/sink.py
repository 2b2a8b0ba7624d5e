"""Where files end: the outbox (result), the archive (original) and quarantine (with a reason).

Delivery follows Maildir: write under an exclusive hidden temp name in the target folder,
fsync, then link into place (link never overwrites), so a reader of the outbox never sees a
partial file and an existing file is never replaced.
"""
from __future__ import annotations

import errno
import json
import os
import socket
import time
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from itertools import count
from pathlib import Path
from typing import Iterator, Optional

from . import __version__

#: Prefix of temp files in the outbox; readers should ignore dotfiles.
TEMP_PREFIX = ".srwatch-tmp-"
_temp_counter = count()


def candidate_names(folder: Path, stem: str, ext: str) -> Iterator[Path]:
    """`stem.ext`, then `stem-1.ext`, `stem-2.ext`, ...: the names we may deliver to."""
    yield folder / f"{stem}{ext}"
    for n in count(1):
        yield folder / f"{stem}-{n}{ext}"


def _fsync_dir(folder: Path) -> None:
    """Make a rename in `folder` durable (best effort: some filesystems refuse)."""
    try:
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _temp_name(folder: Path, ext: str) -> Path:
    """A unique hidden name: time, pid, counter and host, as Maildir does."""
    unique = f"{time.time_ns()}.{os.getpid()}.{next(_temp_counter)}.{socket.gethostname()}"
    return folder / f"{TEMP_PREFIX}{unique}{ext}"


def write_temp(folder: Path, ext: str, data: bytes) -> Path:
    """Write `data` to a new hidden temp file in `folder` (exclusive create, fsync); return it.

    The caller renames or links it into place; on failure nothing is left behind.
    """
    tmp = _temp_name(folder, ext)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return tmp


def write_new(folder: Path, stem: str, ext: str, data: bytes) -> Path:
    """Write `data` to a new file `folder/stem[-N]ext` atomically; never overwrite; return it."""
    folder.mkdir(parents=True, exist_ok=True)
    tmp = write_temp(folder, ext, data)
    try:
        final = _place(tmp, folder, stem, ext)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(folder)
    return final


def _place(tmp: Path, folder: Path, stem: str, ext: str) -> Path:
    """Give `tmp` its final name `stem[-N]ext` in `folder` without replacing anything; `tmp` is gone after."""
    for final in candidate_names(folder, stem, ext):
        try:
            os.link(tmp, final)
        except FileExistsError:
            continue
        except OSError as exc:
            if exc.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EXDEV):
                raise
            # No hard links here (some SMB/FAT mounts): rename after an existence check.
            if final.exists():
                continue
            os.rename(tmp, final)
            return final
        tmp.unlink()
        return final
    raise AssertionError("unreachable")


def move_new(src: Path, folder: Path, name: str) -> Path:
    """Move `src` into `folder` under `name` (or `name-N`), never replacing a file."""
    folder.mkdir(parents=True, exist_ok=True)
    stem, ext = _split_name(name)
    final = _place(src, folder, stem, ext)
    _fsync_dir(folder)
    return final


def _split_name(name: str) -> tuple[str, str]:
    """('photo', '.jpg') for 'photo.jpg'; dotfiles and extensionless names keep all as stem."""
    stem, dot, ext = name.rpartition(".")
    if not dot or not stem:
        return name, ""
    return stem, "." + ext


@dataclass(frozen=True)
class QuarantineRecord:
    """What `<name>.error.json` holds beside a quarantined file."""

    file: str
    original_path: str
    reason: str
    message: str
    exception: str
    attempts: int
    claimed_at: str
    failed_at: str
    srwatch_version: str = __version__


def utc_now() -> str:
    """ISO 8601 timestamp in UTC."""
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def quarantine(
    src: Path,
    folder: Path,
    *,
    original_path: str,
    reason: str,
    message: str,
    exception: str,
    attempts: int,
    claimed_at: str,
) -> Path:
    """Move `src` into quarantine `folder` and write `<name>.error.json` beside it.

    The file is moved first: once it is in quarantine the input is accounted for, and the
    reason file (written atomically) follows.
    """
    final = move_new(src, folder, src.name)
    record = QuarantineRecord(
        file=final.name,
        original_path=original_path,
        reason=reason,
        message=message,
        exception=exception,
        attempts=attempts,
        claimed_at=claimed_at,
        failed_at=utc_now(),
    )
    data = (json.dumps(asdict(record), indent=2) + "\n").encode()
    reason_path = final.with_name(final.name + ".error.json")
    os.replace(write_temp(folder, ".json", data), reason_path)
    return final


def finish_original(src: Path, on_success: str, archive_folder: Optional[Path]) -> Optional[Path]:
    """After a successful delivery: archive the original (returns its new path) or delete it."""
    if on_success == "delete":
        src.unlink(missing_ok=True)
        return None
    assert archive_folder is not None
    return move_new(src, archive_folder, src.name)
