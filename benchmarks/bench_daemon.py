"""Throughput of the whole daemon: `srwatch once` on N generated images, end to end.

    python benchmarks/bench_daemon.py --model models/EDSR-srwatch_x3.pb --files 20 --size 256x256

Prints files/s, input and output megapixels per second, and the peak RSS of the largest worker
(RUSAGE_CHILDREN after the run). Each configuration runs in a fresh temp folder.
"""
from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import yaml

REPO = Path(__file__).resolve().parents[1]


def make_inputs(inbox: Path, count: int, width: int, height: int) -> None:
    """Photo-like test images (smooth gradients plus noise), PNG."""
    rng = np.random.default_rng(0)
    for i in range(count):
        base = cv2.resize(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8), (width, height), interpolation=cv2.INTER_CUBIC)
        noisy = np.clip(base.astype(np.int16) + rng.integers(-10, 11, base.shape), 0, 255).astype(np.uint8)
        cv2.imwrite(str(inbox / f"img{i:04d}.png"), noisy)


def run_once(model: Path, files: int, width: int, height: int, workers: int, threads: int, engine: str, tile: str) -> dict:
    """One `srwatch once` run; figures as a dict."""
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "inbox").mkdir()
        make_inputs(root / "inbox", files, width, height)
        cfg = {
            "paths": {k: str(root / k) for k in ("inbox", "outbox", "quarantine", "archive")},
            "model": {"path": str(model.resolve()), "engine": engine},
            "pool": {"workers": workers, "threads_per_worker": threads},
            "watch": {"settle_seconds": 0.5},
            "tile": {"size": tile if tile in ("auto", "off") else int(tile)},
            "log": {"level": "WARNING"},
        }
        (root / "c.yaml").write_text(yaml.safe_dump(cfg))
        before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-m", "srwatch.cli", "once", "-c", str(root / "c.yaml"), "--no-progress"],
                       check=True, cwd=REPO)
        seconds = time.perf_counter() - t0
        peak_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        done = len(list((root / "outbox").iterdir()))
        held = len([p for p in (root / "quarantine").glob("*") if not p.name.endswith(".json")]) if (root / "quarantine").exists() else 0
    scale_out = 9  # x3 area factor; only used for output MP/s of x3 models
    in_mp = files * width * height / 1e6
    return {
        "engine": engine, "workers": workers, "threads": threads, "tile": tile, "files": files, "done": done,
        "quarantined": held, "seconds": seconds, "files_per_s": files / seconds, "in_mp_per_s": in_mp / seconds,
        "out_mp_per_s": in_mp * scale_out / seconds, "peak_rss_mb": max(peak_kb, before) / 1024,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, default=REPO / "models" / "EDSR-srwatch_x3.pb")
    ap.add_argument("--files", type=int, default=20)
    ap.add_argument("--size", default="256x256")
    ap.add_argument("--layouts", default="1x2,2x1", help="workers x threads, comma separated")
    ap.add_argument("--engines", default="opencv,openvino")
    ap.add_argument("--tile", default="auto")
    args = ap.parse_args()
    width, height = (int(v) for v in args.size.split("x"))
    print(f"model {args.model.name}, {args.files} files of {width}x{height} (includes worker start-up)")
    print("| engine | workers x threads | seconds | files/s | input MP/s | output MP/s | peak worker RSS MB |")
    print("|---|---|---|---|---|---|---|")
    for engine in args.engines.split(","):
        for layout in args.layouts.split(","):
            workers, threads = (int(v) for v in layout.split("x"))
            r = run_once(args.model, args.files, width, height, workers, threads, engine, args.tile)
            assert r["done"] == args.files, r
            print(f"| {engine} | {workers} x {threads} | {r['seconds']:.1f} | {r['files_per_s']:.2f} | "
                  f"{r['in_mp_per_s']:.3f} | {r['out_mp_per_s']:.2f} | {r['peak_rss_mb']:.0f} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
