"""pool.backend: ray against local workers on one machine, and the supervisor's own ceiling.

    python benchmarks/ray_overhead.py                     # mixed photos, default model, 2 rounds
    python benchmarks/ray_overhead.py --workload small --rounds 3 --out bench-out/ray.json

1. **local vs ray**: `srwatch run` (srwatch.bench.run_daemon: the shipped config, files renamed
   into the inbox at once, timed from the first drop to the last output visible) with
   pool.workers 2 x 1 thread, then the same files and model with pool.backend: ray and
   ray.address: local (a Ray the daemon starts on this machine: its GCS, raylet and two
   actors share the same cores). Rounds alternate local, ray, local, ray: the machine is
   shared and noisy, so only ratios within one run mean anything.
2. **what Ray adds per file**: from the daemon's 'done' lines, the 'ray' stage (the round trip
   to the actor less the actor's own work: transfers and scheduling) and the supervisor's read.
3. **the supervisor's ceiling**: claim + read + deliver + archive of N files in one process
   with a precomputed result (a model that costs nothing): the files per second one
   supervisor can take from an inbox and deliver, however many nodes render for it.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from srwatch.bench import resolve_models, run_daemon, workloads  # noqa: E402
from srwatch.bench import make_inputs  # noqa: E402

DONE = re.compile(r"srwatch\.daemon: done \S+ -> .*; (read [^;]*); ((?:ray|worker)-\d+)\)$", re.M)


def stages_from_log(text: str) -> list[dict[str, float]]:
    """Milliseconds per stage of each 'done' line: read, decode, infer, encode, ray, deliver, archive."""
    out = []
    for match in DONE.finditer(text):
        out.append({name: float(ms) for name, ms in re.findall(r"(\w+) (\d+(?:\.\d+)?) ms", match.group(1))})
    return out


def one_run(backend: str, model, files: list[Path], tmp: Path, index: int) -> dict:
    """One daemon run with 2 workers (local) or 2 actors (ray, a Ray of its own); figures and stages."""
    pool = {"workers": 2, "threads_per_worker": 1, "backend": backend}
    overrides: dict = {"pool": pool}
    if backend == "ray":
        overrides["ray"] = {"address": "local", "num_cpus": 1, "prefetch": 1}
    root = tmp / f"{backend}-{index}"
    figures = run_daemon(model, files, root, overrides)
    stages = stages_from_log((root / "daemon.log").read_text(errors="replace"))
    mean = {k: statistics.mean(s.get(k, 0.0) for s in stages) for k in sorted({k for s in stages for k in s})}
    return {"backend": backend, "images_per_s": figures["images_per_s"], "seconds": figures["seconds"],
            "latency_p50": figures["latency_p50"], "latency_p95": figures["latency_p95"],
            "cpu_utilisation": figures.get("cpu_utilisation"), "stage_ms_mean": mean, "files": len(stages)}


def supervisor_ceiling(count: int, tmp: Path, sample: Path, label: str) -> dict:
    """Files/s one supervisor claims, reads, delivers and archives `sample`, with a precomputed result."""
    from srwatch import claim
    from srwatch.config import parse_config, prepare_folders
    from srwatch.process import Processor, read_claimed
    from srwatch.worker import deliver

    root = tmp / f"ceiling-{label}"
    (root / "inbox").mkdir(parents=True)
    cfg = parse_config({"paths": {k: str(root / k) for k in ("inbox", "outbox", "quarantine", "archive")},
                        "model": {"path": str(REPO / "models" / "EDSR-srwatch_x3.onnx")}}, root)
    prepare_folders(cfg)
    data = sample.read_bytes()
    rendered = Processor(cfg, 1).process_bytes(data)  # the 'model' of every file below: already done
    for i in range(count):
        (root / "inbox" / f"f{i:05d}.png").write_bytes(data)
    per_file = []
    for i in range(count):
        path = root / "inbox" / f"f{i:05d}.png"
        started = time.perf_counter()
        st = os.lstat(path)
        job = claim.claim(claim.Candidate(path, "file", st.st_ino, st.st_size, st.st_mtime_ns), cfg.paths.inbox,
                          cfg.work_dir)
        assert job is not None
        read_claimed(job.path, cfg.limits, job.size)
        deliver(cfg, job, rendered, 3, time.monotonic())
        per_file.append(time.perf_counter() - started)
    return {"sample": label, "files": count, "input_bytes": len(data), "output_bytes": len(rendered.data),
            "ms_per_file_mean": 1000 * statistics.mean(per_file), "ms_per_file_p95": 1000 * sorted(per_file)[
                int(0.95 * (count - 1))], "files_per_s": count / sum(per_file)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workload", default="mixed", help="mixed | small | large (srwatch bench's)")
    parser.add_argument("--rounds", type=int, default=2, help="local/ray pairs, alternating")
    parser.add_argument("--ceiling-files", type=int, default=300)
    parser.add_argument("--out", type=Path, default=None, help="write the figures as JSON here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="srwatch-raybench-") as name:
        tmp = Path(name)
        model = resolve_models(["default"], tmp)[0]
        (tmp / "in").mkdir()
        files = make_inputs(tmp / "in", workloads([args.workload], heavy=False)[0])
        runs = []
        for i in range(args.rounds):
            for backend in ("local", "ray"):
                run = one_run(backend, model, files, tmp, i)
                runs.append(run)
                print(f"{backend:5s} round {i + 1}: {run['images_per_s']:.2f} images/s, p50 latency "
                      f"{run['latency_p50']:.2f} s, stages (ms, mean) {json.dumps(run['stage_ms_mean'])}", flush=True)
        (tmp / "small").mkdir()
        small = make_inputs(tmp / "small", workloads(["small"], heavy=True)[0])[0]  # 128x128
        ceilings = [supervisor_ceiling(args.ceiling_files, tmp, small, "128x128"),
                    supervisor_ceiling(max(20, args.ceiling_files // 10), tmp, files[0], "photo from the workload")]
    local = [r["images_per_s"] for r in runs if r["backend"] == "local"]
    ray = [r["images_per_s"] for r in runs if r["backend"] == "ray"]
    ray_ms = [r["stage_ms_mean"].get("ray", 0.0) for r in runs if r["backend"] == "ray"]
    summary = {
        "workload": args.workload, "files": len(files), "model": model.name, "cpus": len(os.sched_getaffinity(0)),
        "local_images_per_s": statistics.mean(local), "ray_images_per_s": statistics.mean(ray),
        "ratio_ray_to_local": statistics.mean(ray) / statistics.mean(local),
        "ray_added_ms_per_file": statistics.mean(ray_ms), "supervisor": ceilings, "runs": runs,
    }
    print(f"ray/local throughput: {summary['ratio_ray_to_local']:.2f}x ({summary['ray_images_per_s']:.2f} vs "
          f"{summary['local_images_per_s']:.2f} images/s); Ray adds {summary['ray_added_ms_per_file']:.1f} ms per file")
    for c in ceilings:
        print(f"supervisor alone, {c['sample']} (claim+read+deliver+archive, {c['input_bytes'] // 1000} kB in, "
              f"{c['output_bytes'] // 1000} kB out): {c['files_per_s']:.0f} files/s "
              f"({c['ms_per_file_mean']:.1f} ms per file, p95 {c['ms_per_file_p95']:.1f} ms)")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
