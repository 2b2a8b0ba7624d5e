"""How many files per second one daemon moves when the model costs next to nothing.

    python benchmarks/supervisor_pace.py                       # 400 files of 32x32, FSRCNN-small_x2
    python benchmarks/supervisor_pace.py --files 1000 --out bench-out/pace.json

Every file still takes the whole path (claim with its job record, dispatch, decode, inference,
encode, delivery with its fsyncs, archive, log line), but the inference of a 32x32 image by
FSRCNN-small_x2 (upstream, from ../shared/models) takes well under a millisecond: what is left
is srwatch's own cost per file. The daemon runs the shipped config/srwatch.yaml with its
folders in a temp dir and that model; all files are renamed into the inbox at once. Reports
files per second (first rename to the last output visible) and the supervisor's CPU time per
file (from /proc), which bounds how many files one supervisor can feed on a machine with more
cores than this one.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

# The daemon runs the srwatch imported here: another checkout on PYTHONPATH for an A/B run.
from srwatch.bench import shipped_config, start_daemon, stop_daemon, wait_ready

MODEL = Path(__file__).resolve().parents[2] / "shared" / "models" / "FSRCNN-small_x2.pb"


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of one process (not its children)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _tiny_pngs(folder: Path, count: int, side: int) -> list[Path]:
    import cv2
    import numpy as np

    rng = np.random.default_rng(3)
    paths = []
    for i in range(count):
        path = folder / f"t{i:05d}.png"
        cv2.imwrite(str(path), rng.integers(0, 256, (side, side, 3), dtype=np.uint8))
        paths.append(path)
    return paths


def run(files: int, side: int, root: Path, model: Path) -> dict:
    """Start the daemon, rename `files` tiny images in at once, return the figures."""
    config = shipped_config(root, model)
    staged = _tiny_pngs(root / "staging", files, side)
    log_path = root / "daemon.log"
    proc = start_daemon(config, log_path)
    try:
        wait_ready(proc, log_path, 300)
        time.sleep(1.0)  # the workers settle into idle
        cpu_before = _cpu_seconds(proc.pid)
        started = time.monotonic()
        for path in staged:
            os.rename(path, root / "inbox" / path.name)
        outbox = root / "outbox"
        deadline = time.monotonic() + 600
        while len(os.listdir(outbox)) < files:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{len(os.listdir(outbox))} of {files} outputs:\n{log_path.read_text()[-3000:]}")
            time.sleep(0.005)
        seconds = time.monotonic() - started
        cpu = _cpu_seconds(proc.pid) - cpu_before
    finally:
        stop_daemon(proc)
    return {"files": files, "side": side, "model": model.name, "seconds": seconds,
            "files_per_s": files / seconds, "supervisor_cpu_ms_per_file": cpu * 1000 / files,
            "supervisor_bound_files_per_s": files / cpu if cpu else None}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=400)
    parser.add_argument("--side", type=int, default=32, help="square images of this many pixels a side")
    parser.add_argument("--model", type=Path, default=MODEL)
    parser.add_argument("--out", type=Path, help="write the figures as JSON here")
    args = parser.parse_args()
    if not args.model.exists():
        print(f"model not found: {args.model} (../shared/models beside the checkout)", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="srwatch-pace-") as tmp:
        result = run(args.files, args.side, Path(tmp), args.model)
    print(f"{result['files']} files of {args.side}x{args.side}, {result['model']}: "
          f"{result['files_per_s']:.0f} files/s; supervisor CPU {result['supervisor_cpu_ms_per_file']:.2f} ms "
          f"per file (one supervisor alone: at most {result['supervisor_bound_files_per_s']:.0f} files/s)")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
