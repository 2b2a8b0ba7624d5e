"""Running the real daemon (`python -m srwatch.cli run`) on folders in a temp dir, for tests."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import cv2
import numpy as np
import yaml

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
DEFAULT_MODEL = REPO / "models" / "EDSR-srwatch_x3.pb"


def model_for_tests() -> Path:
    """The project's default model, as .pb: the dnn_superres path that users' EDSR files take."""
    return DEFAULT_MODEL


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


@dataclass
class Layout:
    """The folders of one test daemon."""

    root: Path

    @property
    def inbox(self) -> Path:
        return self.root / "inbox"

    @property
    def outbox(self) -> Path:
        return self.root / "outbox"

    @property
    def quarantine(self) -> Path:
        return self.root / "quarantine"

    @property
    def archive(self) -> Path:
        return self.root / "archive"

    @property
    def work(self) -> Path:
        return self.root / "work"

    def files(self, folder: Path) -> list[str]:
        """Relative paths of the visible files in a folder (reason files excluded)."""
        if not folder.is_dir():
            return []
        return sorted(
            p.relative_to(folder).as_posix()
            for p in folder.rglob("*")
            if p.is_file() and not p.name.startswith(".") and not p.name.endswith(".error.json")
        )

    def reason(self, rel: str) -> dict:
        """The quarantine record of a file."""
        return json.loads((self.quarantine / (rel + ".error.json")).read_text())

    def work_jobs(self) -> list[Path]:
        """Job folders still in the work folder."""
        return [p for p in self.work.iterdir() if p.is_dir()] if self.work.is_dir() else []


def write_config(layout: Layout, **overrides) -> Path:
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
    path = layout.root / "srwatch.yaml"
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


@dataclass
class DaemonProcess:
    """`srwatch run` in a subprocess, its stderr in a log file."""

    config: Path
    log_path: Path
    proc: Optional[subprocess.Popen] = None
    env: dict = field(default_factory=dict)

    def start(self, wait_ready: bool = True) -> "DaemonProcess":
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **self.env}
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "srwatch.cli", "run", "-c", str(self.config)],
            stdout=self._log, stderr=subprocess.STDOUT, env=env, cwd=str(REPO),
        )
        if wait_ready:
            wait_for(lambda: "srwatch ready" in self.log() or self.proc.poll() is not None, 120, what="daemon ready")
            assert self.proc.poll() is None, f"daemon exited early:\n{self.log()}"
        return self

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def wait(self, timeout: float = 60) -> int:
        assert self.proc is not None
        rc = self.proc.wait(timeout=timeout)
        self._log.close()
        return rc

    def stop(self) -> int:
        """SIGTERM and wait; the exit status."""
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.signal(signal.SIGTERM)
        return self.wait()

    def children(self) -> list[int]:
        """PIDs of the worker processes."""
        assert self.proc is not None
        path = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children")
        try:
            return [int(p) for p in path.read_text().split()]
        except OSError:
            return []


def assert_each_input_once(layout: Layout, done: list[str], quarantined: list[str], suffix: str = "_x3") -> None:
    """Every input is in exactly one place: outbox (original archived) or quarantine; none twice."""
    outputs = layout.files(layout.outbox)
    archived = layout.files(layout.archive)
    held = layout.files(layout.quarantine)
    expected_outputs = sorted(_output_name(rel, suffix) for rel in done)
    assert sorted(outputs) == expected_outputs, f"outbox {outputs} != {expected_outputs}"
    assert sorted(archived) == sorted(done), f"archive {archived} != {sorted(done)}"
    assert sorted(held) == sorted(quarantined), f"quarantine {held} != {sorted(quarantined)}"
    assert layout.files(layout.inbox) == [], f"left in inbox: {layout.files(layout.inbox)}"
    assert layout.work_jobs() == [], f"left claimed: {layout.work_jobs()}"
    for rel in quarantined:
        assert (layout.quarantine / (rel + ".error.json")).is_file(), f"no reason file for {rel}"


def _output_name(rel: str, suffix: str) -> str:
    p = Path(rel)
    ext = p.suffix if p.suffix.lower() in (".png", ".jpg", ".jpeg", ".webp", ".tif", ".tiff") else ".png"
    return (p.parent / f"{p.stem}{suffix}{ext}").as_posix() if str(p.parent) != "." else f"{p.stem}{suffix}{ext}"


def settled(layout: Layout, total: int) -> Callable[[], bool]:
    """True once `total` inputs have reached the archive or quarantine and nothing is claimed."""
    def check() -> bool:
        n = len(layout.files(layout.archive)) + len(layout.files(layout.quarantine))
        return n >= total and not layout.work_jobs()
    return check
