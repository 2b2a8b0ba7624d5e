"""Running the real daemon (`python -m srwatch.cli run`) on folders in a temp dir, and checking
srwatch's central promise afterwards: every input in exactly one place, byte for byte.

The invariant (`account`, `assert_each_input_once`) looks at EVERY entry of the outbox,
archive, quarantine, inbox and work folder, dotfiles and quarantine records included, without
following links; only what a test placed there itself (`preexisting`) is left out, and that
must be unchanged.
"""
from __future__ import annotations

import json
import os
import re
import signal
import socket
import stat
import subprocess
import sys
import time
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator, Mapping, Optional, Sequence, Union

import cv2
import numpy as np
import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
DEFAULT_MODEL = REPO / "models" / "EDSR-srwatch_x3.pb"
#: What srwatch itself may leave in its work folder once every job is finished.
WORK_OWN_FILES = frozenset({".srwatch.lock", ".srwatch-work", "status.json", "status.json.tmp"})  # status: `srwatch status`
TEMP_PREFIX = ".srwatch-tmp-"
NAME_MAX = 255  # in bytes


def model_for_tests() -> Path:
    """The project's default model, as .pb: the dnn_superres path that users' EDSR files take."""
    return DEFAULT_MODEL


#: Watch settings for fault scenarios: the settle floor, and rescans often enough to make up for lost events.
FAST_WATCH = {"settle_seconds": 0.5, "rescan_interval": 2}


def require_model() -> None:
    """Fail on CI, skip elsewhere, when the shipped model is missing."""
    if not model_for_tests().is_file():
        if os.environ.get("CI") == "true":
            pytest.fail(f"model missing: {model_for_tests()}")
        pytest.skip(f"model missing: {model_for_tests()}")


def make_image(path: Path, width: int = 48, height: int = 40, seed: int = 0) -> Path:
    """A small textured colour image (PNG/JPEG by extension), written in one go."""
    path.write_bytes(image_bytes(width, height, seed, path.suffix or ".png"))
    return path


def image_bytes(width: int = 48, height: int = 40, seed: int = 0, ext: str = ".png") -> bytes:
    """Encoded bytes of a textured colour image: gradients plus noise, so the model has work."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack([(x * 5) % 256, (y * 7) % 256, ((x + y) * 3) % 256], axis=-1).astype(np.float64)
    img = np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)
    ok, buf = cv2.imencode(ext, img)
    assert ok
    return buf.tobytes()


# -- folders ------------------------------------------------------------------------------------
@dataclass
class Layout:
    """The folders of one test daemon (each may be moved, e.g. onto a mount)."""

    root: Path
    inbox: Path = None  # type: ignore[assignment]
    outbox: Path = None  # type: ignore[assignment]
    quarantine: Path = None  # type: ignore[assignment]
    archive: Path = None  # type: ignore[assignment]
    work: Path = None  # type: ignore[assignment]

    def __post_init__(self) -> None:
        for name in ("inbox", "outbox", "quarantine", "archive", "work"):
            if getattr(self, name) is None:
                setattr(self, name, self.root / name)

    def files(self, folder: Path) -> list[str]:
        """Relative paths of the VISIBLE regular files in a folder: no dotfiles, no quarantine records.

        What a reader of the outbox sees; for progress checks only. The invariant uses `entries`.
        """
        return sorted(
            rel for rel, entry in entries(folder).items()
            if entry.kind == "file" and not Path(rel).name.startswith(".") and not _looks_like_record(rel)
        )

    def reason(self, rel: str) -> dict:
        """The quarantine record of a quarantined file (by the record's `file` field)."""
        records = quarantine_records(self.quarantine)
        parent, name = _split_rel(rel)
        found = [r for r in records if r.parent == parent and r.data.get("file") == name]
        assert len(found) == 1, f"expected one record for {rel!r} in quarantine, found {[r.rel for r in found]}"
        return found[0].data

    def work_jobs(self) -> list[Path]:
        """Everything in the work folder that is not srwatch's own lock or tag: claimed jobs."""
        if not self.work.is_dir():
            return []
        return [p for p in self.work.iterdir() if p.name not in WORK_OWN_FILES]


@dataclass(frozen=True)
class Entry:
    """One entry found under a folder (links not followed)."""

    path: Path
    kind: str  # file | dir | link | fifo | socket | other
    mode: int

    def content(self) -> Union[bytes, str, None]:
        """Bytes of a regular file, the target of a link, None for anything else (never opened)."""
        if self.kind == "file":
            return self.path.read_bytes()
        if self.kind == "link":
            return os.readlink(self.path)
        return None


def _kind(mode: int) -> str:
    if stat.S_ISLNK(mode):
        return "link"
    if stat.S_ISDIR(mode):
        return "dir"
    if stat.S_ISREG(mode):
        return "file"
    if stat.S_ISFIFO(mode):
        return "fifo"
    if stat.S_ISSOCK(mode):
        return "socket"
    return "other"


def entries(folder: Path, with_dirs: bool = False) -> dict[str, Entry]:
    """Every entry under `folder` by relative path ('/'-separated), dotfiles included; links are not followed."""
    found: dict[str, Entry] = {}
    if not folder.is_dir() or folder.is_symlink():
        return found

    def walk(top: Path, prefix: str) -> None:
        try:
            listing = sorted(os.scandir(top), key=lambda e: e.name)
        except OSError:
            return
        for item in listing:
            rel = prefix + item.name
            try:
                st = os.lstat(item.path)
            except FileNotFoundError:
                continue
            kind = _kind(st.st_mode)
            if kind == "dir":
                if with_dirs:
                    found[rel] = Entry(Path(item.path), kind, st.st_mode)
                walk(Path(item.path), rel + "/")
            else:
                found[rel] = Entry(Path(item.path), kind, st.st_mode)

    walk(folder, "")
    return found


def write_config(layout: Layout, config_name: str = "srwatch.yaml", **overrides) -> Path:
    """A config for the test daemon; `overrides` are merged per section."""
    cfg = {
        "paths": {
            "inbox": str(layout.inbox), "outbox": str(layout.outbox), "quarantine": str(layout.quarantine),
            "archive": str(layout.archive), "work": str(layout.work),
        },
        "model": {"path": str(model_for_tests())},
        "pool": {"workers": 2, "threads_per_worker": 1},
        "watch": {"settle_seconds": 1.0, "rescan_interval": 5},
        "tile": {"size": "off"},
        "log": {"level": "DEBUG"},
        "shutdown_timeout": 30,
    }
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(cfg.get(key), dict):
            cfg[key] = {**cfg[key], **value}
        else:
            cfg[key] = value
    layout.inbox.mkdir(parents=True, exist_ok=True)
    path = layout.root / config_name
    path.write_text(yaml.safe_dump(cfg))
    return path


def wait_for(predicate: Callable[[], bool], timeout: float = 60.0, interval: float = 0.1, what: str = "") -> None:
    """Poll until `predicate()` is true, else fail with `what`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what or predicate}")


# -- the daemon ---------------------------------------------------------------------------------
@dataclass
class DaemonProcess:
    """`srwatch run` in a subprocess, its stderr in a log file."""

    config: Path
    log_path: Path
    proc: Optional[subprocess.Popen] = None
    env: dict = field(default_factory=dict)
    umask: Optional[int] = None
    _log: Optional[object] = None
    _workers_seen: set = field(default_factory=set)

    def start(self, wait_ready: bool = True, timeout: float = 120) -> "DaemonProcess":
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **self.env}
        self._log = open(self.log_path, "ab")
        umask = self.umask
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "srwatch.cli", "run", "-c", str(self.config)],
            stdout=self._log, stderr=subprocess.STDOUT, env=env, cwd=str(REPO),
            preexec_fn=(lambda: os.umask(umask)) if umask is not None else None,
        )
        if wait_ready:
            self.wait_ready(timeout)
        return self

    def wait_ready(self, timeout: float = 120) -> None:
        wait_for(lambda: "srwatch ready" in self.log() or self.proc.poll() is not None, timeout, 0.05, "daemon ready")
        assert self.proc.poll() is None, f"daemon exited early (status {self.proc.returncode}):\n{self.log()[-4000:]}"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def assert_alive(self, when: str = "") -> None:
        assert self.alive(), (
            f"the daemon exited (status {self.proc.returncode if self.proc else None}) {when}; it must stay up:\n"
            f"{self.log()[-4000:]}"
        )

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def wait(self, timeout: float = 60) -> int:
        assert self.proc is not None
        rc = self.proc.wait(timeout=timeout)
        if self._log is not None:
            self._log.close()
        return rc

    def stop(self, timeout: float = 60) -> int:
        """SIGTERM and wait; the exit status."""
        if self.proc is None or self.proc.poll() is not None:
            if self._log is not None:
                self._log.close()
            return self.proc.returncode if self.proc else 0
        self.children()  # remember the workers, to check they are gone
        self.signal(signal.SIGTERM)
        return self.wait(timeout)

    def kill(self) -> None:
        """SIGKILL the daemon (its workers die with it: PR_SET_PDEATHSIG) and reap it."""
        if self.alive():
            self.children()
            self.signal(signal.SIGKILL)
        self.wait(30)

    def close(self) -> None:
        """For `finally`: stop the daemon by its pid (TERM, then KILL), then any worker it left."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            try:
                # A test may have frozen it or its workers (SIGSTOP): a frozen worker cannot finish.
                stop_processes([self.proc.pid, *(p for p in self._workers_seen | set(self.children())
                                                 if _is_our_worker(p))], signal.SIGCONT)
                self.stop(timeout=40)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(30)
        if self._log is not None:
            self._log.close()
        for pid in self._workers_seen:
            if _is_our_worker(pid):
                try:
                    os.kill(pid, signal.SIGCONT)
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass

    def children(self) -> list[int]:
        """PIDs of the daemon's child processes (workers, multiprocessing's resource tracker)."""
        if self.proc is None:
            return []
        pids: list[int] = []
        for task in Path(f"/proc/{self.proc.pid}/task").glob("*"):
            try:
                pids.extend(int(p) for p in (task / "children").read_text().split())
            except OSError:
                pass
        self._workers_seen.update(pids)
        return sorted(set(pids))

    def workers(self) -> list[int]:
        """PIDs of the worker processes (spawned children running srwatch's worker)."""
        return [pid for pid in self.children() if "spawn_main" in _cmdline(pid)]


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _is_our_worker(pid: int) -> bool:
    return "multiprocessing" in _cmdline(pid)


@contextmanager
def running(layout: Layout, log_name: str = "daemon.log", umask: Optional[int] = None, env: Optional[dict] = None,
            wait_ready: bool = True, config_name: str = "srwatch.yaml", **overrides) -> Iterator[DaemonProcess]:
    """A daemon on `layout` for the block; always stopped (by its own pid) on the way out."""
    config = write_config(layout, config_name, **overrides)
    daemon = DaemonProcess(config, layout.root / log_name, umask=umask, env=env or {})
    try:
        daemon.start(wait_ready=wait_ready)
        yield daemon
    finally:
        daemon.close()


def restart(daemon: DaemonProcess, log_name: str, wait_ready: bool = True) -> DaemonProcess:
    """A new daemon on the same config, started (the caller closes it)."""
    again = DaemonProcess(daemon.config, daemon.log_path.with_name(log_name), umask=daemon.umask, env=daemon.env)
    return again.start(wait_ready=wait_ready)


class CreateSpy:
    """inotify on one folder: the names created or moved into it, as they appear.

    Lets a test act (SIGSTOP a worker) within microseconds of srwatch creating a file, which
    polling cannot: e.g. between an output's delivery and its original's archiving.
    """

    IN_MOVED_TO = 0x80
    IN_CREATE = 0x100

    def __init__(self, folder: Path) -> None:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        self.fd = libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        assert self.fd >= 0, f"inotify_init1: errno {ctypes.get_errno()}"
        wd = libc.inotify_add_watch(self.fd, os.fsencode(folder), self.IN_CREATE | self.IN_MOVED_TO)
        assert wd >= 0, f"inotify_add_watch {folder}: errno {ctypes.get_errno()}"
        self._pending: list[str] = []

    def wait(self, match: Callable[[str], bool], timeout: float) -> Optional[str]:
        """The first name created from now on for which `match` is true; None after `timeout` seconds."""
        import select
        import struct

        deadline = time.monotonic() + timeout
        while True:
            while self._pending:
                name = self._pending.pop(0)
                if match(name):
                    return name
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            ready, _, _ = select.select([self.fd], [], [], left)
            if not ready:
                return None
            data = os.read(self.fd, 1 << 16)
            offset = 0
            while offset < len(data):
                _wd, _mask, _cookie, length = struct.unpack_from("iIII", data, offset)
                raw = data[offset + 16 : offset + 16 + length].rstrip(b"\0")
                self._pending.append(os.fsdecode(raw))
                offset += 16 + length

    def close(self) -> None:
        os.close(self.fd)

    def __enter__(self) -> "CreateSpy":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def stop_processes(pids: Iterable[int], sig: int = signal.SIGSTOP) -> list[int]:
    """Send `sig` to each pid that still exists; the pids reached."""
    reached = []
    for pid in pids:
        try:
            os.kill(pid, sig)
            reached.append(pid)
        except ProcessLookupError:
            pass
    return reached


# -- what was dropped -----------------------------------------------------------------------------
@dataclass
class Drop:
    """One entry a test put into the inbox, and where it may end.

    `expect`: the outcomes allowed: "done" (output + archived original), a quarantine reason
    code, "inbox" (must stay where it is, untouched), "claimed" (may still wait in the work
    folder); None allows any of them (the entry must still be in exactly one place).
    """

    rel: str
    data: Optional[bytes] = None  # regular files
    kind: str = "file"  # file | link | fifo | socket | dir
    target: Optional[str] = None  # links
    expect: Union[str, frozenset, None] = "done"
    size: Optional[tuple[int, int]] = None  # input (width, height), when known: the output is 3x
    out_ext: Optional[str] = None  # the output's extension, when known
    suffix: Optional[str] = None  # the output suffix, when not the scenario's (e.g. after a reload)
    any_folder: bool = False  # may rest in any sub-folder of the archive/quarantine (its own is a planted link)

    @property
    def name(self) -> str:
        return self.rel.rsplit("/", 1)[-1]

    @property
    def parent(self) -> str:
        return self.rel.rsplit("/", 1)[0] if "/" in self.rel else ""

    def allows(self, outcome: str) -> bool:
        if self.expect is None:
            return outcome != "lost"
        allowed = {self.expect} if isinstance(self.expect, str) else set(self.expect)
        return outcome in allowed

    def matches(self, entry: Entry, content: Union[bytes, str, None] = None) -> bool:
        """True if `entry` is this drop (same kind, same bytes or same link target)."""
        if entry.kind != self.kind:
            return False
        if self.kind in ("file", "link"):
            content = entry.content() if content is None else content
            return content == (self.data if self.kind == "file" else self.target)
        return True

    def describe(self) -> str:
        return f"{self.rel!r} ({self.kind})"


def place(inbox: Path, drop: Drop, staging: Optional[Path] = None) -> Drop:
    """Put `drop` into the inbox: files written in `staging` (same filesystem) and renamed in, or written in place."""
    path = inbox / drop.rel
    path.parent.mkdir(parents=True, exist_ok=True)
    if drop.kind == "file":
        if staging is not None:
            staging.mkdir(parents=True, exist_ok=True)
            tmp = staging / f"stage-{time.monotonic_ns()}"
            tmp.write_bytes(drop.data or b"")
            os.rename(tmp, path)
        else:
            path.write_bytes(drop.data or b"")
    elif drop.kind == "link":
        os.symlink(drop.target, path)
    elif drop.kind == "fifo":
        os.mkfifo(path)
    elif drop.kind == "dir":
        path.mkdir(exist_ok=True)
    elif drop.kind == "socket":
        _make_socket(path)
    else:
        raise ValueError(drop.kind)
    return drop


def _make_socket(path: Path) -> None:
    """A UNIX socket file at `path` (bound through a relative name: socket paths are short)."""
    here = os.open(".", os.O_RDONLY)
    try:
        os.chdir(path.parent)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.bind(path.name)
        sock.close()
    finally:
        os.fchdir(here)
        os.close(here)


def file_drop(rel: str, width: int = 24, height: int = 20, seed: int = 0, **kw) -> Drop:
    """A good image to drop (PNG or JPEG by the name's extension)."""
    ext = os.path.splitext(rel)[1].lower()
    data = image_bytes(width, height, seed, ext if ext in (".png", ".jpg", ".jpeg") else ".png")
    return Drop(rel, data, size=(width, height), **kw)


# -- quarantine records ---------------------------------------------------------------------------
_RECORD_RE = re.compile(rb"\.error(-[1-9][0-9]*)?\.json\Z")


def _looks_like_record(rel: str) -> bool:
    return bool(_RECORD_RE.search(os.fsencode(rel))) or (rel.endswith(".json") and "~" in rel)


@dataclass(frozen=True)
class Record:
    """One quarantine record: `<F>.error.json` (or -N, or shortened) beside quarantined file F."""

    rel: str
    parent: str
    data: dict


def quarantine_records(folder: Path) -> list[Record]:
    """The quarantine records under `folder`: JSON objects with `file` and `reason`."""
    found = []
    for rel, entry in entries(folder).items():
        if entry.kind != "file" or not rel.endswith(".json"):
            continue
        if _split_rel(rel)[1].startswith(TEMP_PREFIX):
            continue  # a record being written: not one yet (at rest, the invariant reports it as a stray)
        try:
            data = json.loads(entry.path.read_bytes())
        except ValueError:
            continue
        except FileNotFoundError:
            continue  # polled while the daemon runs: renamed or removed since the listing
        if isinstance(data, dict) and isinstance(data.get("file"), str) and "reason" in data:
            found.append(Record(rel, _split_rel(rel)[0], data))
    return found


def _split_rel(rel: str) -> tuple[str, str]:
    return (rel.rsplit("/", 1)[0], rel.rsplit("/", 1)[1]) if "/" in rel else ("", rel)


def _split_name(name: bytes) -> tuple[bytes, bytes]:
    stem, dot, ext = name.rpartition(b".")
    if not dot or not stem:
        return name, b""
    return stem, b"." + ext


def name_fits(actual: str, stem: str, ext: str) -> bool:
    """True if srwatch may have given `actual` to `stem + ext`: itself, `stem-N ext`, or shortened.

    Shortened (the full name over 255 bytes): some start of the full name, `~<8 hex>`, then
    some end of it that keeps the extension; at most 255 bytes.
    """
    a, s, e = os.fsencode(actual), os.fsencode(stem), os.fsencode(ext)
    if re.fullmatch(re.escape(s) + rb"(?:-[1-9][0-9]*)?" + re.escape(e), a, re.S):
        return True
    match = re.fullmatch(rb"(.*)~[0-9a-f]{8}(.*)", a, re.S)
    if not match or len(a) > NAME_MAX or not a.endswith(e):
        return False
    head, tail = match.groups()
    tail = tail[: len(tail) - len(e)] if e else tail
    tail = re.sub(rb"^-[1-9][0-9]*|-[1-9][0-9]*$", b"", tail)
    head = re.sub(rb"-[1-9][0-9]*$", b"", head)
    # Shortening is only for names that do not fit (allowing for a "-N" of up to 4 bytes).
    return s.startswith(head) and s.endswith(tail) and len(s + e) + 4 > NAME_MAX


def _placed_name_fits(actual: str, original: str) -> bool:
    """`actual` is a name srwatch may have given to `original` in the archive or quarantine."""
    stem, ext = _split_name(os.fsencode(original))
    return name_fits(actual, os.fsdecode(stem), os.fsdecode(ext))


def _record_name_fits(actual: str, file_name: str) -> bool:
    return name_fits(actual, file_name + ".error", ".json")


# -- the invariant --------------------------------------------------------------------------------
@dataclass
class Accounting:
    """Where every dropped entry ended, and what broke the invariant."""

    outcomes: dict[int, str] = field(default_factory=dict)  # index of the drop -> outcome
    problems: list[str] = field(default_factory=list)
    duplicated: int = 0
    outputs: dict[int, list[Entry]] = field(default_factory=dict)

    def counts(self, drops: Sequence[Drop]) -> dict:
        quarantined = Counter(o for o in self.outcomes.values() if o not in ("done", "inbox", "claimed", "lost"))
        return {
            "files_in": len([d for d in drops if d.kind != "dir"]),
            "delivered": sum(1 for o in self.outcomes.values() if o == "done"),
            "quarantined": dict(sorted(quarantined.items())),
            "left_in_inbox": sum(1 for o in self.outcomes.values() if o == "inbox"),
            "still_claimed": sum(1 for o in self.outcomes.values() if o == "claimed"),
            "lost": sum(1 for o in self.outcomes.values() if o == "lost"),
            "duplicated": self.duplicated,
        }


def account(layout: Layout, drops: Sequence[Drop], *, suffix: str = "_x3",
            preexisting: Optional[Mapping[Path, Union[bytes, str]]] = None, check_images: bool = True) -> Accounting:
    """Find where each drop ended; collect every breach of "each input exactly once, byte for byte".

    `preexisting`: entries a test placed in srwatch's folders itself (path -> bytes, or link
    target): left out of the scan, and each must be unchanged.
    """
    acc = Accounting()
    pre = {Path(p): v for p, v in (preexisting or {}).items()}
    where: dict[int, list[str]] = {i: [] for i in range(len(drops))}

    def scan(folder: Path) -> dict[str, Entry]:
        return {rel: e for rel, e in entries(folder).items() if e.path not in pre}

    # Things a test placed itself: untouched.
    for path, expected in pre.items():
        try:
            actual = os.readlink(path) if isinstance(expected, str) else path.read_bytes()
        except OSError as exc:
            acc.problems.append(f"a file the test placed in srwatch's folders is gone or changed: {path} ({exc})")
            continue
        if actual != expected:
            acc.problems.append(f"a file the test placed in srwatch's folders was modified: {path}")

    # Inbox: only what the test meant to leave there.
    inbox = scan(layout.inbox)
    for i, drop in enumerate(drops):
        if drop.kind == "dir":
            continue
        entry = inbox.pop(drop.rel, None)
        if entry is not None:
            if drop.matches(entry):
                where[i].append("inbox")
            else:
                acc.problems.append(f"{drop.describe()} is in the inbox but changed (now {entry.kind})")
    kept_dirs = [d.rel + "/" for d in drops if d.kind == "dir"]
    for rel in inbox:
        if not any(rel.startswith(k) for k in kept_dirs):
            acc.problems.append(f"unexpected entry left in the inbox: {rel!r}")

    # Archive: originals, byte-identical, under their name or a -N / shortened variant.
    by_name = _Index(drops, lambda d: d.name)
    for rel, entry in scan(layout.archive).items():
        i = _match(drops, by_name, rel, entry, where, "archive")
        if i is None:
            acc.problems.append(_stray("archive", rel, entry))

    # Quarantine: each file with exactly one record naming it; no other record, no temp file.
    records = [r for r in quarantine_records(layout.quarantine) if layout.quarantine / r.rel not in pre]
    record_rels = {r.rel for r in records}
    by_file: dict[tuple[str, str], list[Record]] = {}
    for r in records:
        by_file.setdefault((r.parent, r.data["file"]), []).append(r)
    reasons: dict[int, str] = {}
    for rel, entry in scan(layout.quarantine).items():
        if rel in record_rels:
            continue
        i = _match(drops, by_name, rel, entry, where, "quarantine")
        if i is None:
            acc.problems.append(_stray("quarantine", rel, entry))
            continue
        parent, name = _split_rel(rel)
        mine = by_file.pop((parent, name), [])
        if len(mine) != 1:
            acc.problems.append(f"quarantined {rel!r} has {len(mine)} records naming it (must be exactly one)")
            reasons[i] = mine[0].data.get("reason", "?") if mine else "no-record"
            continue
        record = mine[0]
        reasons[i] = str(record.data.get("reason"))
        acc.problems.extend(_record_problems(record, name, drops[i]))
    for (parent, name), rs in by_file.items():
        for r in rs:
            acc.problems.append(f"quarantine record {r.rel!r} names {name!r}, which is not in quarantine beside it")

    # Work folder: only srwatch's own lock and tag once everything is finished.
    anywhere = _Index(drops, lambda d: d.name, any_parent=True)
    for rel, entry in scan(layout.work).items():
        if rel in WORK_OWN_FILES:
            continue
        _match(drops, anywhere, rel, entry, where, "work")
    leftovers = [p.name for p in layout.work_jobs()] if layout.work.is_dir() else []

    # Outbox: one output per processed input, decodable, nothing else (no temp file, no stray).
    by_output = _Index([d if d.kind == "file" else Drop(d.rel, kind="dir") for d in drops],
                       lambda d: Path(d.name).stem + (d.suffix or suffix) + _output_ext(d))
    for rel, entry in scan(layout.outbox).items():
        parent, name = _split_rel(rel)
        if name.startswith(TEMP_PREFIX):
            acc.problems.append(f"temp file left in the outbox: {rel!r}")
            continue
        owners = [i for i in by_output.candidates(parent, name) if _output_fits(name, drops[i], suffix)]
        if not owners:
            acc.problems.append(_stray("outbox", rel, entry))
            continue
        free = [i for i in owners if not acc.outputs.get(i)]
        archived = [i for i in free if "archive" in where[i]]
        pool = archived or free or owners
        if len(pool) > 1:  # outputs of several inputs share a name (-N): tell them apart by size
            shape = _shape(entry)
            pool = [i for i in pool if drops[i].size and shape == _scaled(drops[i], suffix)] + pool
        chosen = pool[0]
        acc.outputs.setdefault(chosen, []).append(entry)

    # Outcomes.
    for i, drop in enumerate(drops):
        if drop.kind == "dir":
            continue
        places = where[i]
        outs = acc.outputs.get(i, [])
        if len(places) > 1:
            acc.duplicated += 1
            acc.problems.append(f"{drop.describe()} is in {len(places)} places at once: {places}")
        if len(outs) > 1:
            acc.duplicated += 1
            acc.problems.append(f"{drop.describe()} has {len(outs)} outputs: {[o.path.name for o in outs]}")
        place_ = places[0] if places else None
        if place_ == "archive":
            outcome = "done"
            if not outs:
                acc.problems.append(f"{drop.describe()} was archived but its output is not in the outbox (result lost)")
            elif check_images:
                acc.problems.extend(_output_problems(drop, outs[0], drop.suffix or suffix))
        elif place_ == "quarantine":
            outcome = reasons.get(i, "?")
            if outs:
                acc.duplicated += 1
                acc.problems.append(f"{drop.describe()} is quarantined ({outcome}) AND has an output {outs[0].path.name!r}")
        elif place_ == "inbox":
            outcome = "inbox"
        elif place_ == "work":
            outcome = "claimed"
        else:
            outcome = "lost"
        acc.outcomes[i] = outcome
        if not drop.allows(outcome):
            acc.problems.append(f"{drop.describe()} ended as {outcome!r}; allowed: {drop.expect!r}")
    if leftovers and not any(o == "claimed" and drops[i].allows("claimed") for i, o in acc.outcomes.items()):
        acc.problems.append(f"job folders left in the work folder: {sorted(leftovers)[:10]}")
    return acc


class _Index:
    """Drops by (sub-folder, name) for fast matching: a name, its -N variants, shortened names."""

    def __init__(self, drops: Sequence[Drop], name_of: Callable[[Drop], str], any_parent: bool = False) -> None:
        self.any_parent = any_parent
        self.by_name: dict[tuple[str, str], list[int]] = {}
        self.by_parent: dict[str, list[int]] = {}
        for i, drop in enumerate(drops):
            if drop.kind == "dir":
                continue
            parents = [""] if any_parent else [drop.parent] + (["*"] if drop.any_folder else [])
            for parent in parents:
                self.by_name.setdefault((parent, name_of(drop)), []).append(i)
                self.by_parent.setdefault(parent, []).append(i)

    def candidates(self, parent: str, name: str) -> list[int]:
        found: list[int] = []
        for where in ([""] if self.any_parent else [parent, "*"]):
            found += self.by_name.get((where, name), [])
            match = re.fullmatch(r"(.*)-[1-9][0-9]*(\.[^.]*)?", name, re.S)
            if match:
                found += self.by_name.get((where, match.group(1) + (match.group(2) or "")), [])
            if "~" in name:
                found += self.by_parent.get(where, [])
        return list(dict.fromkeys(found))


def _match(drops: Sequence[Drop], index: _Index, rel: str, entry: Entry, where: dict[int, list[str]],
           region: str) -> Optional[int]:
    """The drop that `entry` (in `region`) is: same sub-folder, a name srwatch may give it, same bytes.

    In the work folder (`index.any_parent`) the sub-folder layout is srwatch's own: the name
    and the drop's relative path must match.
    """
    parent, name = _split_rel(rel)
    content = entry.content() if entry.kind in ("file", "link") else None
    best: Optional[int] = None
    for i in index.candidates(parent, name):
        drop = drops[i]
        if region in where[i]:
            continue
        if index.any_parent:
            if name != drop.name or not ("/" + rel).endswith("/" + drop.rel):
                continue
        elif not _placed_name_fits(name, drop.name):
            continue
        if not drop.matches(entry, content):
            continue
        if name == drop.name:
            best = i
            break
        if best is None:
            best = i
    if best is not None:
        where[best].append(region)
    return best


def _stray(region: str, rel: str, entry: Entry) -> str:
    if _split_rel(rel)[1].startswith(TEMP_PREFIX):
        return f"temp file left in the {region}: {rel!r}"
    return f"unexpected {entry.kind} in the {region}: {rel!r} (no dropped input is this, byte for byte)"


#: The output's extension for an input of this extension holding that format (output.format: same).
_SAME_FORMAT_EXT = {".png": ".png", ".jpg": ".jpg", ".jpeg": ".jpg", ".webp": ".webp", ".tif": ".tiff", ".tiff": ".tiff"}


def _output_ext(drop: Drop) -> str:
    if drop.out_ext:
        return drop.out_ext
    return _SAME_FORMAT_EXT.get(os.path.splitext(drop.name)[1].lower(), ".png")


def _output_fits(name: str, drop: Drop, suffix: str) -> bool:
    stem = Path(drop.name).stem
    return name_fits(name, stem + (drop.suffix or suffix), _output_ext(drop))


def _shape(entry: Entry) -> Optional[tuple[int, int]]:
    """(height, width) of an image file, None if it does not decode."""
    if entry.kind != "file":
        return None
    img = cv2.imdecode(np.frombuffer(entry.path.read_bytes(), np.uint8), cv2.IMREAD_UNCHANGED)
    return None if img is None else img.shape[:2]


def _scale(suffix: str) -> int:
    digits = re.search(r"\d+", suffix)
    return int(digits.group()) if digits else 3


def _scaled(drop: Drop, suffix: str) -> Optional[tuple[int, int]]:
    """(height, width) the output of `drop` must have."""
    scale = _scale(drop.suffix or suffix)
    return (drop.size[1] * scale, drop.size[0] * scale) if drop.size else None


def _output_problems(drop: Drop, out: Entry, suffix: str) -> list[str]:
    if out.kind != "file":
        return [f"output {out.path.name!r} of {drop.describe()} is a {out.kind}, not a file"]
    if len(os.fsencode(out.path.name)) > NAME_MAX:
        return [f"output name over {NAME_MAX} bytes: {out.path.name!r}"]
    shape = _shape(out)
    if shape is None:
        return [f"output {out.path.name!r} of {drop.describe()} does not decode as an image (partial file?)"]
    want = _scaled(drop, suffix)
    if want is not None and shape != want:
        return [f"output {out.path.name!r} of {drop.describe()} is {shape[1]}x{shape[0]}, "
                f"expected {want[1]}x{want[0]} ({_scale(drop.suffix or suffix)}x the input as dropped)"]
    return []


def _record_problems(record: Record, name: str, drop: Drop) -> list[str]:
    problems = []
    record_name = _split_rel(record.rel)[1]
    if not _record_name_fits(record_name, name):
        problems.append(f"record {record.rel!r} is not named <file>.error.json / .error-N.json (file {name!r})")
    if len(os.fsencode(record_name)) > NAME_MAX:
        problems.append(f"record name over {NAME_MAX} bytes: {record.rel!r}")
    for key in ("file", "original_path", "reason", "message", "attempts"):
        if key not in record.data:
            problems.append(f"record {record.rel!r} has no {key!r}")
    original = record.data.get("original_path")
    if isinstance(original, str) and not os.fsencode(original).endswith(os.fsencode(drop.rel)):
        problems.append(f"record {record.rel!r}: original_path {original!r} does not name {drop.rel!r}")
    return problems


def assert_invariant(layout: Layout, drops: Sequence[Drop], **kw) -> Accounting:
    """`account`, failing with every breach listed."""
    acc = account(layout, drops, **kw)
    if acc.problems:
        shown = "\n  ".join(acc.problems[:40])
        more = f"\n  ... and {len(acc.problems) - 40} more" if len(acc.problems) > 40 else ""
        raise AssertionError(
            f"PROMISE BROKEN: every input in exactly one place, byte for byte, nothing else left behind "
            f"({acc.counts(drops)}):\n  {shown}{more}"
        )
    return acc


def assert_each_input_once(
    layout: Layout,
    done: Union[Mapping[str, bytes], Iterable[Drop]],
    quarantined: Optional[Mapping[str, bytes]] = None,
    *,
    left_in_inbox: Optional[Mapping[str, bytes]] = None,
    suffix: str = "_x3",
    preexisting: Optional[Mapping[Path, Union[bytes, str]]] = None,
) -> Accounting:
    """Every input in exactly one place, byte-identical: processed ones (`done`: rel -> the bytes
    dropped) as an output plus the archived original, `quarantined` ones with exactly one record;
    `left_in_inbox` untouched in the inbox; nothing else anywhere (no temp file, no stray record,
    no job folder)."""
    drops: list[Drop] = []
    if isinstance(done, Mapping):
        drops += [Drop(rel, data, expect="done") for rel, data in done.items()]
    else:
        drops += list(done)
    drops += [Drop(rel, data, expect=None) for rel, data in (quarantined or {}).items()]
    drops += [Drop(rel, data, expect="inbox") for rel, data in (left_in_inbox or {}).items()]
    acc = assert_invariant(layout, drops, suffix=suffix, preexisting=preexisting)
    for i, drop in enumerate(drops):
        if drop.expect is None:
            assert acc.outcomes[i] not in ("done", "inbox", "claimed", "lost"), (
                f"{drop.rel!r} must be quarantined, but ended as {acc.outcomes[i]!r}")
    return acc


def settled(layout: Layout, total: int) -> Callable[[], bool]:
    """True once `total` inputs have reached the archive or quarantine and nothing is claimed."""
    def check() -> bool:
        return finished_count(layout) >= total and not layout.work_jobs()
    return check


def finished_count(layout: Layout) -> int:
    """Originals in the archive plus quarantine records: inputs srwatch is done with."""
    archived = sum(1 for rel in entries(layout.archive) if not _split_rel(rel)[1].startswith(TEMP_PREFIX))
    return archived + len(quarantine_records(layout.quarantine))


def leaving(drops: Sequence[Drop]) -> int:
    """How many drops srwatch must take out of the inbox (all but those meant to stay)."""
    return sum(1 for d in drops if d.kind != "dir" and not d.allows("inbox"))


def wait_finished(layout: Layout, total: int, timeout: float, daemons: Sequence[DaemonProcess] = (),
                  what: str = "") -> None:
    """Wait until `total` inputs are archived or quarantined and no job is claimed; fail early if a daemon dies."""
    def check() -> bool:
        for d in daemons:
            d.assert_alive(f"while {what or 'processing'}")
        return finished_count(layout) >= total and not layout.work_jobs()
    try:
        wait_for(check, timeout, 0.1, what or f"{total} inputs finished")
    except AssertionError as exc:
        raise AssertionError(
            f"{exc}: {finished_count(layout)} of {total} finished, claimed: {[p.name for p in layout.work_jobs()][:5]}, "
            f"inbox: {sorted(entries(layout.inbox))[:10]}"
        ) from None


def check_and_report(report: "FaultReport", scenario: str, layout: Layout, drops: Sequence[Drop], **kw) -> Accounting:
    """The invariant, with the scenario's counts reported whether it holds or not."""
    extra = kw.pop("extra", {})
    acc = account(layout, drops, **kw)
    report.add(scenario, drops, acc, **extra)
    if acc.problems:
        shown = "\n  ".join(acc.problems[:40])
        more = f"\n  ... and {len(acc.problems) - 40} more" if len(acc.problems) > 40 else ""
        raise AssertionError(
            f"PROMISE BROKEN in {scenario}: every input in exactly one place, byte for byte, nothing else left behind "
            f"({acc.counts(drops)}):\n  {shown}{more}"
        )
    return acc


# -- the fault report -----------------------------------------------------------------------------
class FaultReport:
    """Counts per scenario: written as JSON lines to $SRWATCH_FAULT_REPORT (if set), summed up at the end."""

    def __init__(self) -> None:
        self.rows: list[dict] = []

    def add(self, scenario: str, drops: Sequence[Drop], acc: Accounting, **extra) -> dict:
        row = {"scenario": scenario, **acc.counts(drops), **extra}
        self.rows.append(row)
        target = os.environ.get("SRWATCH_FAULT_REPORT")
        if target:
            with open(target, "a") as fh:
                fh.write(json.dumps(row) + "\n")
        return row

    def pytest_terminal_summary(self, terminalreporter) -> None:
        if not self.rows:
            return
        terminalreporter.section("srwatch fault scenarios")
        for row in self.rows:
            quarantined = ", ".join(f"{k} {v}" for k, v in row["quarantined"].items()) or "none"
            extra = {k: v for k, v in row.items() if k not in (
                "scenario", "files_in", "delivered", "quarantined", "lost", "duplicated", "left_in_inbox", "still_claimed")}
            terminalreporter.write_line(
                f"{row['scenario']}: {row['files_in']} in, {row['delivered']} delivered, quarantined: {quarantined}, "
                f"{row['left_in_inbox']} left in inbox (on purpose), {row['still_claimed']} still claimed, "
                f"{row['lost']} lost, {row['duplicated']} duplicated" + (f"; {extra}" if extra else "")
            )


_REPORT = FaultReport()


@pytest.fixture(scope="session")
def fault_report(request) -> FaultReport:
    """The session's fault report (registered once as a plugin, so the summary prints at the end)."""
    manager = request.config.pluginmanager
    if not manager.is_registered(_REPORT):
        manager.register(_REPORT, "srwatch-fault-report")
    return _REPORT
