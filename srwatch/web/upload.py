"""Browser uploads into the inbox, written the way any careful writer does it.

Each file part of a multipart request is streamed, chunk by chunk, into an exclusive hidden
temp name in the inbox (`.upload-<random>.part`: hidden, so the watcher ignores it), with a
size limit checked on every chunk. Only once the whole request has arrived is each temp file
fsynced and linked into a free visible name (`safefs.place`: never over an existing file;
`-1`, `-2`... when taken). Anything that goes wrong before that (a limit, a bad name, the
client going away) removes every temp file: a partial upload leaves nothing in the inbox.

Names come from the client and are never trusted: basename only, no leading dots, no control
characters, an image extension, at most 255 bytes, and not a name the watcher would ignore.
"""
from __future__ import annotations

import errno
import os
import secrets
import stat
import time
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path, PurePath
from typing import Optional, Sequence

from python_multipart.multipart import MultipartParser, parse_options_header

from .. import safefs
from ..watcher import is_ignored

#: The extensions an upload may have (lower case); the worker still sniffs the content.
ALLOWED_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".tif", ".tiff", ".bmp")
TEMP_PREFIX = ".upload-"
TEMP_SUFFIX = ".part"
STALE_TEMP_SECONDS = 3600.0  # in seconds: an upload temp file untouched this long was abandoned
MAX_FIELD_BYTES = 4096  # in bytes: a non-file form field (the token); more is refused
MAX_PART_HEADER_BYTES = 8192  # in bytes: one header line of a part (a long file name fits)
MAX_PART_HEADERS = 16  # header lines per part
MAX_FIELDS = 8  # non-file fields per request (the page sends one: the token)


class UploadRefused(Exception):
    """An upload that is not taken; `status` is the HTTP status to answer with."""

    status = 400


class BadUpload(UploadRefused):
    """A malformed request, a bad name or extension, no file, too many files."""


class Stalled(UploadRefused):
    """The client sent nothing for metrics.upload_stall_seconds."""

    status = 408


class TooLarge(UploadRefused):
    """A file over metrics.max_upload_mb."""

    status = 413


class Unauthorized(UploadRefused):
    """metrics.token is set and the request does not carry it."""

    status = 401


class InboxUnavailable(UploadRefused):
    """The inbox cannot take a file now (missing, full, read-only)."""

    status = 503


@dataclass(frozen=True)
class Limits:
    """What one request may carry."""

    max_file_bytes: int
    max_files: int
    ignore: tuple[str, ...] = ()  # watch.ignore: a name the watcher would skip is refused


@dataclass(frozen=True)
class Saved:
    """One uploaded file, now visible in the inbox."""

    name: str  # the name the client sent
    saved_as: str  # its name in the inbox
    size: int  # in bytes


# -- names --------------------------------------------------------------------------------------
def clean_name(raw: str, ignore: Sequence[str] = ()) -> str:
    """A safe inbox name for a client's file name, or BadUpload saying why there is none.

    Folders are dropped (`a/b.png`, `..\\x.png` -> the last part), control characters removed,
    leading dots and spaces stripped (a hidden name would never be taken), the extension must
    be an image's, and the result fits NAME_MAX bytes (shortened with a hash, extension kept).
    """
    base = raw.replace("\\", "/").rsplit("/", 1)[-1]
    base = "".join(ch for ch in base if unicodedata.category(ch)[0] != "C")  # controls, surrogates, format chars
    base = base.strip().lstrip(". ").rstrip(". ")
    stem, ext = safefs.split_name(base)
    if not stem or not ext:
        raise BadUpload(f"{raw!r}: no usable file name (expected e.g. photo.jpg)")
    if ext.lower() not in ALLOWED_EXTENSIONS:
        raise BadUpload(f"{raw!r}: {ext!r} is not an image extension ({', '.join(ALLOWED_EXTENSIONS)})")
    name = safefs.fit_name(stem, ext)
    if is_ignored(PurePath(name), ignore):
        raise BadUpload(f"{raw!r}: the name matches watch.ignore; it would never be taken")
    return name


# -- one request --------------------------------------------------------------------------------
@dataclass
class _Part:
    headers: dict[bytes, bytes] = field(default_factory=dict)
    field_name: str = ""
    client_name: Optional[str] = None  # set for file parts
    value: bytearray = field(default_factory=bytearray)  # non-file fields
    temp: Optional[str] = None
    fd: Optional[int] = None
    size: int = 0


class UploadReceiver:
    """Feeds one multipart body into temp files in the inbox; `finish()` makes them visible.

    Use: `feed(chunk)` for each chunk of the body, then `finish()`; `discard()` in every other
    case (it is safe to call after finish). `authorized` says whether the request already
    carries the token in its header; otherwise a `token` field must come before any file.
    """

    def __init__(self, inbox: Path, boundary: bytes, limits: Limits, token: Optional[str], authorized: bool) -> None:
        self.limits = limits
        self.token = token
        self.authorized = authorized or token is None
        self._dir_fd = _open_inbox(inbox)
        self._parts: list[_Part] = []
        self._part = _Part()
        self._header_name = b""
        self._header_value = b""
        self._ended = False
        self._parser = MultipartParser(boundary, {
            "on_part_begin": self._on_part_begin, "on_header_field": self._on_header_field,
            "on_header_value": self._on_header_value, "on_header_end": self._on_header_end,
            "on_headers_finished": self._on_headers_finished, "on_part_data": self._on_part_data,
            "on_part_end": self._on_part_end, "on_end": self._on_end,
        })

    @property
    def files(self) -> list[_Part]:
        return [p for p in self._parts if p.client_name is not None]

    def feed(self, chunk: bytes) -> None:
        """Parse one chunk of the body; file data goes straight to its temp file."""
        try:
            self._parser.write(chunk)
        except UploadRefused:
            raise
        except OSError as exc:
            raise _storage_refusal(exc) from None
        except Exception as exc:  # python_multipart's parse errors
            raise BadUpload(f"not a valid multipart/form-data body: {exc}") from None

    def finish(self) -> list[Saved]:
        """Fsync each temp file and link it into a free visible name; the files, in request order."""
        if not self._ended:
            raise BadUpload("the multipart body ended early")
        files = self.files
        if not files:
            raise BadUpload("no file in the request (send multipart/form-data with a field of type file)")
        saved = []
        try:
            for part in files:
                assert part.fd is not None and part.temp is not None and part.client_name is not None
                os.fsync(part.fd)
                os.close(part.fd)
                part.fd = None
                name = clean_name(part.client_name, self.limits.ignore)
                stem, ext = safefs.split_name(name)
                placed = safefs.place(self._dir_fd, part.temp, self._dir_fd, safefs.candidate_names(stem, ext))
                part.temp = None  # placed: the temp name is gone (linked, then removed)
                assert placed is not None  # candidate_names never runs out
                saved.append(Saved(part.client_name, placed, part.size))
            safefs.fsync_dir(self._dir_fd)
        except OSError as exc:
            raise _storage_refusal(exc) from None
        finally:
            self.discard()
        return saved

    def discard(self) -> None:
        """Remove every temp file not yet placed and close the inbox (idempotent)."""
        for part in self._parts:
            if part.fd is not None:
                os.close(part.fd)
                part.fd = None
            if part.temp is not None and self._dir_fd >= 0:
                safefs.unlink_if_exists(self._dir_fd, part.temp)
                part.temp = None
        if self._dir_fd >= 0:
            os.close(self._dir_fd)
            self._dir_fd = -1

    # -- parser callbacks --------------------------------------------------------------------
    def _on_part_begin(self) -> None:
        if len(self._parts) >= self.limits.max_files + MAX_FIELDS:
            raise BadUpload(f"more than {self.limits.max_files} files in one request (metrics.max_upload_files)")
        self._part = _Part()
        self._parts.append(self._part)

    def _on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._header_name += data[start:end]
        self._check_header_size()

    def _on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._header_value += data[start:end]
        self._check_header_size()

    def _check_header_size(self) -> None:
        # The parser hands headers over in pieces: without a bound, one endless header fills memory.
        if len(self._header_name) + len(self._header_value) > MAX_PART_HEADER_BYTES:
            raise BadUpload(f"a part header is over {MAX_PART_HEADER_BYTES} bytes")

    def _on_header_end(self) -> None:
        if len(self._part.headers) >= MAX_PART_HEADERS:
            raise BadUpload(f"a part has more than {MAX_PART_HEADERS} headers")
        self._part.headers[self._header_name.strip().lower()] = self._header_value.strip()
        self._header_name = self._header_value = b""

    def _on_headers_finished(self) -> None:
        part = self._part
        _kind, options = parse_options_header(part.headers.get(b"content-disposition", b""))
        part.field_name = options.get(b"name", b"").decode("utf-8", "replace")
        if b"filename" not in options:
            return
        part.client_name = options[b"filename"].decode("utf-8", "replace")
        if not self.authorized:
            raise Unauthorized("uploads need the token: an 'Authorization: Bearer <token>' header, "
                               "or a 'token' field before the files")
        if len(self.files) > self.limits.max_files:
            raise BadUpload(f"more than {self.limits.max_files} files in one request (metrics.max_upload_files)")
        clean_name(part.client_name, self.limits.ignore)  # refuse a bad name before storing a byte
        part.temp, part.fd = _create_temp(self._dir_fd)

    def _on_part_data(self, data: bytes, start: int, end: int) -> None:
        part = self._part
        part.size += end - start
        if part.client_name is None:
            if part.size > MAX_FIELD_BYTES:
                raise BadUpload(f"the form field {part.field_name!r} is over {MAX_FIELD_BYTES} bytes")
            part.value += data[start:end]
            return
        if part.size > self.limits.max_file_bytes:
            raise TooLarge(f"{part.client_name!r} is over {_mb(self.limits.max_file_bytes)} (metrics.max_upload_mb)")
        assert part.fd is not None
        view = memoryview(data)[start:end]
        while view:
            view = view[os.write(part.fd, view):]

    def _on_part_end(self) -> None:
        part = self._part
        if part.client_name is None and part.field_name == "token" and self.token is not None:
            self.authorized = self.authorized or _same_secret(bytes(part.value), self.token)
            if not self.authorized:
                raise Unauthorized("wrong token")

    def _on_end(self) -> None:
        self._ended = True


def sweep_stale_temps(inbox: Path, max_age: float) -> int:
    """Remove upload temp files not written for `max_age` seconds (left by a killed daemon); how many.

    Only old ones: another srwatch sharing this inbox may be receiving an upload right now.
    """
    removed = 0
    now = time.time()
    try:
        dir_fd = safefs.open_root(inbox)
    except OSError:
        return 0  # no inbox yet: nothing left over either
    try:
        for name in os.listdir(dir_fd):
            if not (name.startswith(TEMP_PREFIX) and name.endswith(TEMP_SUFFIX)):
                continue
            try:
                st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
                if stat.S_ISREG(st.st_mode) and now - st.st_mtime > max_age:
                    os.unlink(name, dir_fd=dir_fd)
                    removed += 1
            except OSError:
                continue
    finally:
        os.close(dir_fd)
    return removed


def token_in_header(authorization: Optional[str], token: Optional[str]) -> Optional[bool]:
    """True/False when an `Authorization: Bearer` header is present (right/wrong token), None when absent."""
    if token is None or not authorization:
        return None
    scheme, _, given = authorization.partition(" ")
    if scheme.lower() != "bearer":
        return False
    return _same_secret(given.strip().encode(), token)


def boundary_of(content_type: Optional[str]) -> bytes:
    """The multipart boundary of a Content-Type header, or BadUpload."""
    kind, options = parse_options_header(content_type or "")
    if kind != b"multipart/form-data" or not options.get(b"boundary"):
        raise BadUpload("expected Content-Type: multipart/form-data with a boundary")
    return options[b"boundary"]


def _same_secret(given: bytes, token: str) -> bool:
    return secrets.compare_digest(given, token.encode())


def _open_inbox(inbox: Path) -> int:
    try:
        return safefs.open_root(inbox)
    except OSError as exc:
        raise InboxUnavailable(f"the inbox cannot take a file now: {exc.strerror}: {inbox}") from None


def _create_temp(dir_fd: int) -> tuple[str, int]:
    """An exclusive hidden temp file in the inbox (never through a link): its name and descriptor."""
    while True:
        name = f"{TEMP_PREFIX}{secrets.token_hex(8)}{TEMP_SUFFIX}"
        try:
            fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                         safefs.create_mode(None), dir_fd=dir_fd)
        except FileExistsError:
            continue
        return name, fd


def _storage_refusal(exc: OSError) -> UploadRefused:
    """An OSError while writing into the inbox: the folder's fault, said plainly."""
    refusal = InboxUnavailable(f"the inbox cannot take the file: {exc.strerror or exc}")
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        refusal.status = 507
    return refusal


def _mb(size: int) -> str:
    return f"{round(size / (1 << 20), 2):g} MB"
