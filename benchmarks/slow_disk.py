"""The daemon on a slow disk: every fsync waits, as on a spinning disk or a network share.

    python benchmarks/slow_disk.py                       # 48 files of 256x256, fsync 10 ms, default model
    python benchmarks/slow_disk.py --fsync-ms 20 --files 96 --out bench-out/slow.json
    PYTHONPATH=/path/to/other/checkout python benchmarks/slow_disk.py   # the same on other code (A/B)

No device-mapper delay target here, so the slow disk is a FUSE filesystem (tests/slowfs.py:
fusepy over libfuse2, root for the mount) that passes every call to a folder on the local disk
and, on each fsync of a file or a folder, does the real fsync and then sleeps --fsync-ms. All
of srwatch's folders are on it (a claim is a rename, a delivery a link: one filesystem). Where
the kernel refuses leases on it, the writer check falls back to the timing rule (0.3 s after a
rename) and the figures say so (no_leases_noticed). Every call goes through a Python process,
which takes some CPU of its own: compare runs of this script with each other (A/B on the same
settings), not with `srwatch bench`.

Reports files/s (first rename to the last output visible), the fsyncs counted, and the most
that waited at once. libfuse2 serves at most 10 requests at a time (FUSE_MAX_WORKERS), each
waiting fsync holding one: where that figure reaches 10 (at 60 ms and slower), the filesystem,
not srwatch, sets the pace, unlike a network share, which waits on many at once.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from slowfs import mounted  # noqa: E402 - the slow disk is test tooling (tests/slowfs.py)


# -- the run --------------------------------------------------------------------------------------------
def run(files: int, side: int, fsync_ms: float, model: Path, work: Path) -> dict:
    """Mount the slow filesystem, run the daemon on it, drop `files` images; figures."""
    # The daemon runs the srwatch imported here: another checkout on PYTHONPATH for an A/B run.
    from srwatch.bench import Workload, make_inputs, shipped_config, start_daemon, stop_daemon, wait_ready

    proc = None
    with mounted(work / "backing", work / "mnt", fsync_ms) as fs:
        try:
            root = fs.mount / "srwatch"
            root.mkdir()
            config = shipped_config(root, model)
            inputs = make_inputs(work / "inputs", Workload("small", ((side, side),) * files))
            staged = []
            for path in inputs:  # on the inbox's filesystem, so the drop is one rename
                staged.append(root / "staging" / path.name)
                staged[-1].write_bytes(path.read_bytes())
            log_path = work / "daemon.log"
            proc = start_daemon(config, log_path)
            wait_ready(proc, log_path, 300)
            time.sleep(1.0)
            before = fs.fsyncs()
            started = time.monotonic()
            for path in staged:
                os.rename(path, root / "inbox" / path.name)
            outbox = root / "outbox"
            deadline = time.monotonic() + 1800
            while sum(1 for e in os.scandir(outbox) if not e.name.startswith(".")) < files:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"outputs missing:\n{log_path.read_text()[-3000:]}")
                time.sleep(0.01)
            seconds = time.monotonic() - started
            fsyncs = fs.fsyncs() - before
            at_once = fs.most_at_once()
        finally:
            if proc is not None:
                stop_daemon(proc)
    log = log_path.read_text(errors="replace")
    return {"files": files, "side": side, "model": model.name, "fsync_ms": fsync_ms, "seconds": seconds,
            "files_per_s": files / seconds, "fsyncs": fsyncs, "fsyncs_per_file": fsyncs / files,
            "most_fsyncs_at_once": at_once,
            "no_leases_noticed": "has no leases" in log, "stages_ms": _stages(log)}


def _stages(log: str) -> dict[str, float]:
    """Mean milliseconds per stage, from the daemon's done lines ("decode 2 ms, infer 60 ms, ...")."""
    spent: dict[str, list[float]] = {}
    for m in re.finditer(r"^.* done .*?; ((?:[a-z]+ \d+ ms(?:, )?)+)", log, re.M):
        for stage, ms in re.findall(r"([a-z]+) (\d+) ms", m.group(1)):
            spent.setdefault(stage, []).append(float(ms))
    return {stage: round(sum(v) / len(v), 1) for stage, v in spent.items()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=48)
    parser.add_argument("--side", type=int, default=256, help="input images are side x side")
    parser.add_argument("--fsync-ms", type=float, default=10.0, help="what each fsync of a file or folder waits")
    parser.add_argument("--model", type=Path, default=None, help="default: the shipped default model")
    parser.add_argument("--out", type=Path, default=None, help="also write the figures here (JSON)")
    args = parser.parse_args()
    from srwatch.bench import DEFAULT_MODEL

    with tempfile.TemporaryDirectory(prefix="srwatch-slow-") as tmp:
        figures = run(args.files, args.side, args.fsync_ms, args.model or DEFAULT_MODEL, Path(tmp))
    print(f"{figures['files']} files of {args.side}x{args.side}, {figures['model']}, fsync {args.fsync_ms:g} ms: "
          f"{figures['files_per_s']:.2f} files/s ({figures['seconds']:.2f} s; "
          f"{figures['fsyncs_per_file'] or 0:.1f} fsyncs per file, at most {figures['most_fsyncs_at_once']} at once)")
    print("mean ms per file: " + ", ".join(f"{k} {v:g}" for k, v in figures["stages_ms"].items()))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(figures, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
