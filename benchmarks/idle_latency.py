"""Latency of one small image on an idle daemon: drop, wait for its output, repeat.

    python benchmarks/idle_latency.py                 # 20 files of 256x256, default model
    python benchmarks/idle_latency.py --files 40 --size 512x512 --out bench-out/idle.json

The daemon runs the shipped config/srwatch.yaml (its folders moved to a temp dir, JSON logs).
Each file is dropped the two ways writers do it, alternately: written in place (`open`,
`write`, `close` in the inbox) and renamed in (written elsewhere on the same filesystem, then
`rename`), and only once the previous output is visible, so the daemon is idle at every drop.
Either way the watcher takes the file once it has been quiet for watcher.CLOSE_QUIET (0.3 s)
after its close-after-write or its rename. Latency: drop to the output visible in the outbox
(polled every 2 ms).

Target (issue #9): p95 at most settle time + inference + 0.3 s, where the settle time is
CLOSE_QUIET and inference the engine's p95 time for one such image, from the daemon's own log.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from srwatch.bench import _percentile, shipped_config, start_daemon, stop_daemon, wait_ready  # noqa: E402
from srwatch.watcher import CLOSE_QUIET  # noqa: E402

SLACK = 0.3  # in seconds: the target's allowance on top of settle + inference


def _image(width: int, height: int, seed: int) -> bytes:
    import cv2
    import numpy as np

    rng = np.random.default_rng(seed)
    base = cv2.resize(rng.integers(0, 256, (height // 8 + 1, width // 8 + 1, 3), dtype=np.uint8), (width, height),
                      interpolation=cv2.INTER_CUBIC)
    ok, buf = cv2.imencode(".png", base)
    assert ok
    return buf.tobytes()


def run(files: int, size: tuple[int, int], root: Path) -> dict:
    """Start the daemon, drop `files` images one at a time, return the figures."""
    config = shipped_config(root, None, {"log": {"level": "INFO", "format": "json"}})
    log_path = root / "daemon.log"
    proc = start_daemon(config, log_path)
    latencies: dict[str, list[float]] = {"written": [], "renamed": []}
    try:
        wait_ready(proc, log_path, 300)
        time.sleep(1.0)  # let the workers settle into idle
        for i in range(files):
            how = "written" if i % 2 == 0 else "renamed"
            data = _image(*size, seed=i)
            name = f"f{i:03d}.png"
            output = root / "outbox" / f"f{i:03d}_x3.png"
            if how == "written":
                dropped = time.monotonic()
                with open(root / "inbox" / name, "wb") as f:
                    f.write(data)
            else:
                (root / "staging" / name).write_bytes(data)
                dropped = time.monotonic()
                os.rename(root / "staging" / name, root / "inbox" / name)
            while not output.exists():
                if time.monotonic() - dropped > 120:
                    raise RuntimeError(f"no output for {name}:\n{log_path.read_text()[-3000:]}")
                time.sleep(0.002)
            latencies[how].append(time.monotonic() - dropped)
            time.sleep(0.5)  # idle again before the next drop
    finally:
        stop_daemon(proc)
    infer = [rec["ms"]["infer"] / 1000 for rec in _records(log_path) if rec.get("event") == "done"]
    infer_p95 = _percentile(infer, 95)
    figures: dict = {"files": files, "size": f"{size[0]}x{size[1]}", "infer_p50": statistics.median(infer),
                     "infer_p95": infer_p95}
    for how, values in latencies.items():
        bound = CLOSE_QUIET + infer_p95 + SLACK
        p95 = _percentile(values, 95)
        figures[how] = {"p50": statistics.median(values), "p95": p95, "max": max(values), "bound": bound,
                        "met": p95 <= bound}
    return figures


def _records(log_path: Path) -> list[dict]:
    out = []
    for line in log_path.read_text(errors="replace").splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            pass
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--files", type=int, default=20)
    ap.add_argument("--size", default="256x256")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)
    width, height = (int(v) for v in args.size.split("x"))
    root = Path(tempfile.mkdtemp(prefix="srwatch-idle-"))
    try:
        figures = run(args.files, (width, height), root)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print(f"{args.files} files of {args.size}, one at a time on an idle daemon (shipped config); "
          f"inference p50 {figures['infer_p50'] * 1000:.0f} ms, p95 {figures['infer_p95'] * 1000:.0f} ms")
    for how in ("written", "renamed"):
        f = figures[how]
        print(f"  {how:8s} latency p50 {f['p50']:.3f} s, p95 {f['p95']:.3f} s, max {f['max']:.3f} s; "
              f"target p95 <= {f['bound']:.3f} s: {'met' if f['met'] else 'NOT met'}")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(figures, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
