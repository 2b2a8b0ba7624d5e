"""Result cache: byte-identical input + same model file + same settings -> the earlier output.

Keys are sha256 digests (of the input's bytes, of the model file's bytes, of the settings);
never a perceptual hash, so a hit is always the exact result the model would give again.

One file per entry, ``<cache_dir>/<key[:2]>/<key>.entry``: one line of JSON (extension, sizes,
notes, data length and sha256) then the encoded output. Entries are written like
``mailbox.Maildir.add``: an exclusive temp name, write, fsync, rename into place, so a reader in
another worker process sees a whole entry or none. A hit updates the entry's mtime (its "last
used" time); when the folder grows past ``cache.max_mb`` the least recently used entries are
removed, by whichever process holds the eviction lock at that moment.
"""
from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Optional

from .sink import write_temp

log = logging.getLogger(__name__)

#: Bump when the entry layout or anything that changes results without a settings change does.
CACHE_FORMAT = 1

#: Eviction brings the folder down to this fraction of max_mb, so it does not run on every put.
EVICT_TO = 0.9

#: Temp files older than this (in seconds) were left by a killed writer; eviction removes them.
STALE_TMP_SECONDS = 3600.0

ENTRY_SUFFIX = ".entry"
TMP_SUFFIX = ".tmp"


@dataclass(frozen=True)
class CachedResult:
    """An entry: the encoded output and what the processor reports about it."""

    data: bytes
    ext: str
    input_size: tuple[int, int]
    output_size: tuple[int, int]
    notes: tuple[str, ...]


def sha256_bytes(data: bytes) -> str:
    """Hex sha256 of a byte string."""
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file's content, read in chunks (model files can be hundreds of MB)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


def settings_digest(settings: dict[str, Any]) -> str:
    """Hex sha256 of settings as canonical JSON (sorted keys), with the cache format."""
    text = json.dumps({"cache_format": CACHE_FORMAT, **settings}, sort_keys=True, default=str)
    return sha256_bytes(text.encode())


def cache_key(input_digest: str, model_digest: str, settings: str) -> str:
    """The entry key of one input under one model and one settings digest."""
    return sha256_bytes(f"{input_digest}:{model_digest}:{settings}".encode())


class ResultCache:
    """A size-bounded folder of results, safe to share between worker processes."""

    def __init__(self, folder: Path, max_mb: int) -> None:
        self.folder = Path(folder)
        self.max_bytes = int(max_mb) * 2**20
        self.folder.mkdir(parents=True, exist_ok=True)

    def path_for(self, key: str) -> Path:
        """Where the entry of ``key`` lives."""
        return self.folder / key[:2] / f"{key}{ENTRY_SUFFIX}"

    def get(self, key: str) -> Optional[CachedResult]:
        """The entry of ``key``, or None (missing, evicted meanwhile, or damaged)."""
        path = self.path_for(key)
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:  # unreadable cache: run the model instead
            log.warning("cannot read cache entry %s: %s", path.name, exc)
            return None
        result = _parse_entry(raw)
        if result is None:
            log.warning("cache entry %s is damaged; removing it", path.name)
            _unlink_quietly(path)
            return None
        _touch(path)
        return result

    def put(self, key: str, result: CachedResult) -> None:
        """Store an entry atomically, then evict if the folder is over its bound.

        Cache problems (disk full, permissions) are logged, never raised: the job itself worked.
        """
        path = self.path_for(key)
        try:
            path.parent.mkdir(exist_ok=True)
            _write_atomic(path, _format_entry(result))
            self.evict()
        except OSError as exc:
            log.warning("cannot write cache entry %s: %s", path.name, exc)

    def files(self, suffix: str) -> Iterator[os.DirEntry[str]]:
        """Files in the key folders whose names end in ``suffix`` (scandir entries, for their stat)."""
        with os.scandir(self.folder) as top:
            subs = [sub.path for sub in top if sub.is_dir(follow_symlinks=False)]
        for sub in subs:
            with os.scandir(sub) as it:
                yield from (e for e in it if e.name.endswith(suffix))

    def evict(self) -> None:
        """Remove least recently used entries while the folder is over max_mb (one process at a time)."""
        lock_path = self.folder / ".evict.lock"
        with open(lock_path, "a") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                if exc.errno in (errno.EAGAIN, errno.EACCES):
                    return  # another worker is evicting right now
                raise
            try:
                self._evict_locked()
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _evict_locked(self) -> None:
        stale = time.time() - STALE_TMP_SECONDS
        for tmp in self.files(TMP_SUFFIX):
            try:
                if tmp.stat(follow_symlinks=False).st_mtime < stale:
                    _unlink_quietly(Path(tmp.path))
            except FileNotFoundError:
                continue
        stats = []
        for entry in self.files(ENTRY_SUFFIX):
            try:
                st = entry.stat(follow_symlinks=False)
            except FileNotFoundError:
                continue
            stats.append((st.st_mtime, st.st_size, entry.path))
        total = sum(size for _, size, _ in stats)
        if total <= self.max_bytes:
            return
        target = self.max_bytes * EVICT_TO
        for _, size, path in sorted(stats):
            if total <= target:
                break
            _unlink_quietly(Path(path))
            total -= size


def _format_entry(result: CachedResult) -> bytes:
    """One JSON header line, then the data."""
    header = {
        "ext": result.ext,
        "input_size": list(result.input_size),
        "output_size": list(result.output_size),
        "notes": list(result.notes),
        "length": len(result.data),
        "sha256": sha256_bytes(result.data),
    }
    return json.dumps(header).encode() + b"\n" + result.data


def _parse_entry(raw: bytes) -> Optional[CachedResult]:
    """The entry's result, or None when the header or the data's checksum does not match."""
    head, sep, data = raw.partition(b"\n")
    if not sep:
        return None
    try:
        header = json.loads(head)
        if header["length"] != len(data) or header["sha256"] != sha256_bytes(data):
            return None
        return CachedResult(
            data=data,
            ext=str(header["ext"]),
            input_size=(int(header["input_size"][0]), int(header["input_size"][1])),
            output_size=(int(header["output_size"][0]), int(header["output_size"][1])),
            notes=tuple(str(n) for n in header["notes"]),
        )
    except (ValueError, KeyError, TypeError, IndexError):
        return None


def _write_atomic(path: Path, data: bytes) -> None:
    """Exclusive temp name (time, pid, counter, host), write, fsync, rename into place."""
    tmp = write_temp(path.parent, TMP_SUFFIX, data)
    try:
        os.replace(tmp, path)
    except BaseException:
        _unlink_quietly(tmp)
        raise


def _touch(path: Path) -> None:
    """Mark an entry as just used (mtime), for least-recently-used eviction."""
    try:
        os.utime(path)
    except OSError:
        pass  # evicted meanwhile, or a read-only cache: the hit still counts


def _unlink_quietly(path: Path) -> None:
    try:
        path.unlink()
    except FileNotFoundError:
        pass
