"""`srwatch bench`: the naive loop, the engine limit and the running daemon, on the same files and model.

    srwatch bench                                   # default model, mixed/small/large workloads
    srwatch bench --models default,fsrcnn,standin --out bench-out

Contenders, each in fresh processes, one after another (never side by side):

1. **naive**: the ten-line loop srwatch replaces: one process, ``cv2.dnn_superres``
   ``upsample()`` then ``imwrite()`` per file, in order, OpenCV's default threads.
2. **engine limit**: inference only, images already decoded in memory, on the best engine
   installed, with every worker/thread layout tried; the best is this machine's ceiling.
3. **pipeline**: a worker's computing half without the daemon around it: each file's bytes,
   already in memory, through srwatch's own header check, decode, inference and encode
   (``Processor.process_bytes``, the shipped config), on the engine limit's best layout;
   nothing written. What the file formats cost beside inference; srwatch/pipeline is what the
   daemon itself costs (claims, job records, dispatch, delivery with its fsyncs, archive).
4. **srwatch**: ``srwatch run`` with the shipped ``config/srwatch.yaml`` (only folders, model
   and log level changed), files renamed into its inbox all at once, timed from the first drop
   to the last output visible in the outbox; latency per file is drop -> output visible.

Figures: images/s, output megapixels/s, latency p50/p95, CPU utilisation (CPU seconds of the
whole process tree / wall seconds / cores), peak RSS per worker, and the ratios srwatch/naive,
srwatch/engine-limit, srwatch/pipeline and pipeline/engine-limit (within one run only: these
machines are shared and noisy). With 10 files or more also srwatch's steady pace, from its
first output to its last (without the settle wait before the first file is taken), against
the engine limit. Written to ``bench.json`` and ``bench.png`` in ``--out``.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional, Sequence

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
DEFAULT_MODEL = REPO / "models" / "EDSR-srwatch_x3.onnx"
SHIPPED_CONFIG = REPO / "config" / "srwatch.yaml"


@dataclass(frozen=True)
class Workload:
    """A set of input sizes (width, height), dropped at once."""

    name: str
    sizes: tuple[tuple[int, int], ...]


def workloads(names: Sequence[str], heavy: bool) -> list[Workload]:
    """The named workloads; `heavy` (the EDSR-shaped stand-in) gets fewer, smaller images."""
    import numpy as np

    rng = np.random.default_rng(7)
    out = []
    for name in names:
        if name == "mixed":  # every image a different size, 0.1 to 0.25 megapixels, as users drop them
            count = 6 if heavy else 42
            sizes = []
            for _ in range(count):
                mp = rng.uniform(0.1, 0.25) / (16 if heavy else 1)
                aspect = rng.uniform(0.6, 1.7)
                w = int(round((mp * 1e6 * aspect) ** 0.5))
                sizes.append((w, int(round(mp * 1e6 / w))))
            out.append(Workload("mixed", tuple(sizes)))
        elif name == "small":
            out.append(Workload("small", ((128, 128),) * 4 if heavy else ((256, 256),) * 48))
        elif name == "large":
            out.append(Workload("large", ((500, 500),) if heavy else ((2000, 2000),) * 3))
        else:
            raise SystemExit(f"unknown workload {name!r} (mixed, small, large)")
    return out


def make_inputs(folder: Path, workload: Workload) -> list[Path]:
    """Photo-like PNG files of the workload's sizes in `folder` (made here): crops of BSD100/Set5
    photos, else noise."""
    import cv2
    import numpy as np

    folder.mkdir(parents=True, exist_ok=True)

    photos = sorted((SHARED / "datasets" / "BSD100" / "HR").glob("*.png")) or sorted(
        (SHARED / "datasets" / "Set5" / "HR").glob("*.png"))
    rng = np.random.default_rng(11)
    paths = []
    for i, (w, h) in enumerate(workload.sizes):
        if photos:
            img = cv2.imread(str(photos[i % len(photos)]), cv2.IMREAD_COLOR)
            img = cv2.resize(img, (w, h), interpolation=cv2.INTER_AREA if w * h < img.shape[0] * img.shape[1] else cv2.INTER_CUBIC)
        else:
            img = cv2.resize(rng.integers(0, 256, (9, 9, 3), dtype=np.uint8), (w, h), interpolation=cv2.INTER_CUBIC)
        path = folder / f"{workload.name}-{i:03d}.png"
        cv2.imwrite(str(path), img)
        paths.append(path)
    return paths


# -- models ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class BenchModel:
    """One model under test: what srwatch and the engine run, and what the naive loop runs."""

    name: str
    path: Path  # for srwatch and the engine limit
    naive_pb: Path  # dnn_superres reads only .pb
    algorithm: str
    scale: int
    heavy: bool = False


def resolve_models(names: Sequence[str], tmp: Path) -> list[BenchModel]:
    """default: the shipped EDSR-srwatch_x3; fsrcnn: ../shared FSRCNN_x3.pb; standin: EDSR 32x256 random."""
    models = []
    for name in names:
        if name == "default":
            models.append(BenchModel("default", DEFAULT_MODEL, DEFAULT_MODEL.with_suffix(".pb"), "edsr", 3))
        elif name == "fsrcnn":
            pb = SHARED / "models" / "FSRCNN_x3.pb"
            if not pb.is_file():
                raise SystemExit(f"missing {pb}")
            models.append(BenchModel("fsrcnn", pb, pb, "fsrcnn", 3))
        elif name == "standin":
            pb, onnx_path = build_standin(tmp)
            models.append(BenchModel("standin", onnx_path, pb, "edsr", 3, heavy=True))
        else:
            raise SystemExit(f"unknown model {name!r} (default, fsrcnn, standin)")
    return models


def build_standin(out_dir: Path, blocks: int = 32, filters: int = 256) -> tuple[Path, Path]:
    """An EDSR with the upstream EDSR_x3.pb's layers and random weights, as .pb and .onnx."""
    import torch

    from .train.export import export_all
    from .train.model import EDSR, EDSRSpec

    torch.manual_seed(0)
    model = EDSR(EDSRSpec(scale=3, blocks=blocks, filters=filters, res_scale=0.1))
    return export_all(model, out_dir, f"EDSR-standin{blocks}x{filters}_x3")


# -- contender 1: the naive loop -------------------------------------------------------------------
NAIVE_LOOP = textwrap.dedent('''
    import cv2, json, sys, time
    model, algorithm, scale, out = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
    files = sys.argv[5:]
    sr = cv2.dnn_superres.DnnSuperResImpl_create()
    sr.readModel(model)
    sr.setModel(algorithm, scale)
    start = time.perf_counter()
    done = []
    for f in files:
        img = cv2.imread(f)
        result = sr.upsample(img)
        cv2.imwrite(out + "/" + f.rsplit("/", 1)[-1], result)
        done.append(time.perf_counter() - start)
    print(json.dumps({"seconds": time.perf_counter() - start, "done_at": done}))
''')


def run_naive(model: BenchModel, files: list[Path], out: Path) -> dict:
    """The naive loop in a fresh process; files 'dropped' at its start."""
    out.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-c", NAIVE_LOOP, str(model.naive_pb), model.algorithm, str(model.scale), str(out),
           *map(str, files)]
    usage0 = os.times()
    proc = subprocess.run(cmd, capture_output=True, text=True, check=True)
    usage1 = os.times()
    data = json.loads(proc.stdout.strip().splitlines()[-1])
    cpu = (usage1.children_user - usage0.children_user) + (usage1.children_system - usage0.children_system)
    return _figures("naive", files, model.scale, data["seconds"], data["done_at"], cpu, [])


# -- contender 2: the engine limit -----------------------------------------------------------------
ENGINE_CHILD = textwrap.dedent('''
    import cv2, json, sys, time
    from srwatch.config import ModelConfig, TileConfig
    from srwatch.engine import load_engine
    model, engine, threads, start_file = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
    images = [cv2.imread(f, cv2.IMREAD_COLOR) for f in sys.argv[5:]]
    eng = load_engine(ModelConfig(path=model, engine=engine), TileConfig(), threads)
    eng.upscale(images[0][:64, :64])  # load-time work (first compile) is not inference
    print("ready", flush=True)
    while not __import__("os").path.exists(start_file):
        time.sleep(0.002)
    t0 = time.time()
    for img in images:
        eng.upscale(img)
    print(json.dumps({"start": t0, "end": time.time()}), flush=True)
''')


def run_engine_limit(model: BenchModel, files: list[Path], engines: Sequence[str], tmp: Path) -> dict:
    """Inference only on decoded images: every engine x layout; the best one."""
    cpus = len(os.sched_getaffinity(0))
    layouts = sorted({(1, cpus), (cpus, 1)} | ({(2, cpus // 2)} if cpus >= 4 else set()))
    best: Optional[dict] = None
    tried = []
    for engine in engines:
        if engine == "opencv" and model.path.suffix == ".onnx" and model.heavy:
            continue  # cv2.dnn is 2x slower than the others on this net: minutes for nothing
        for workers, threads in layouts:
            seconds = _engine_layout(model, files, engine, workers, threads, tmp)
            tried.append({"engine": engine, "workers": workers, "threads": threads, "seconds": seconds})
            if best is None or seconds < best["seconds"]:
                best = tried[-1]
    assert best is not None
    figures = _figures("engine_limit", files, model.scale, best["seconds"], [], None, [])
    figures["layout"] = best
    figures["tried"] = tried
    return figures


def _engine_layout(model: BenchModel, files: list[Path], engine: str, workers: int, threads: int, tmp: Path) -> float:
    """Seconds for `workers` processes x `threads` to upscale all files (split round robin)."""
    return _timed_children(ENGINE_CHILD, [str(model.path), engine, str(threads)], files, workers, tmp)


def _timed_children(script: str, args: list[str], files: list[Path], workers: int, tmp: Path) -> float:
    """Seconds for `workers` processes of `script` (args, a start file, its share of the files,
    split round robin) from the first one's start to the last one's end; all start at once."""
    start_file = tmp / f"go-{workers}-{time.time_ns()}"
    shares = [files[i::workers] for i in range(workers)]
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    procs = [subprocess.Popen([sys.executable, "-c", script, *args, str(start_file), *map(str, share)],
                              stdout=subprocess.PIPE, text=True, env=env) for share in shares if share]
    try:
        for p in procs:
            assert p.stdout is not None and p.stdout.readline().strip() == "ready"
        start_file.touch()
        results = [json.loads(p.stdout.readline()) for p in procs if p.stdout is not None]
    finally:
        for p in procs:
            p.wait()
    return max(r["end"] for r in results) - min(r["start"] for r in results)


# -- contender 3: the pipeline (a worker's computing half, no daemon) ---------------------------------
PIPELINE_CHILD = textwrap.dedent('''
    import json, os, sys, time
    import cv2
    from srwatch.config import load_config
    from srwatch.process import Processor
    config, engine, threads, start_file = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
    cfg = load_config(config)
    cfg = cfg.model_copy(update={"model": cfg.model.model_copy(update={"engine": engine})})
    blobs = [open(f, "rb").read() for f in sys.argv[5:]]
    processor = Processor(cfg, threads)
    processor.engine.upscale(cv2.imread(sys.argv[5], cv2.IMREAD_COLOR)[:64, :64])  # first compile: load time
    print("ready", flush=True)
    while not os.path.exists(start_file):
        time.sleep(0.002)
    t0 = time.time()
    for blob in blobs:
        processor.process_bytes(blob)
    print(json.dumps({"start": t0, "end": time.time()}), flush=True)
''')


def run_pipeline(model: BenchModel, files: list[Path], root: Path, layout: dict) -> dict:
    """Header check, decode, inference and encode of every file's bytes in memory, on `layout`
    (the engine limit's best: engine, workers, threads) with the shipped config: no daemon, nothing written."""
    config = shipped_config(root, model.path)
    seconds = _timed_children(PIPELINE_CHILD, [str(config), layout["engine"], str(layout["threads"])], files,
                              layout["workers"], root)
    figures = _figures("pipeline", files, model.scale, seconds, [], None, [])
    figures["layout"] = layout
    return figures


# -- contender 4: the daemon --------------------------------------------------------------------------
def run_daemon(model: BenchModel, files: list[Path], root: Path, overrides: Optional[dict] = None) -> dict:
    """`srwatch run` on the shipped config; files renamed into its inbox at once; outputs timed as they appear."""
    from .config import load_config

    config = shipped_config(root, model.path, {"log": {"level": "INFO"}}, overrides or {})
    cfg = load_config(config)
    staged = []
    for f in files:  # on the inbox's filesystem, so the drop is one rename
        dst = root / "staging" / f.name
        dst.write_bytes(f.read_bytes())
        staged.append(dst)
    log_path = root / "daemon.log"
    proc = start_daemon(config, log_path)
    try:
        wait_ready(proc, log_path)
        expected = {f.stem + cfg.output.suffix.format(scale=model.scale) + ".png": i for i, f in enumerate(files)}
        seen: dict[str, float] = {}
        watcher = threading.Thread(target=_watch_outbox, args=(root / "outbox", expected, seen), daemon=True)
        cpu0 = _tree_cpu(proc.pid)
        watcher.start()
        dropped = []
        for path in staged:
            os.rename(path, root / "inbox" / path.name)
            dropped.append(time.time())
        watcher.join(timeout=3600)
        cpu1 = _tree_cpu(proc.pid)
        rss = _worker_peaks(proc.pid)
    finally:
        stop_daemon(proc)
    if len(seen) != len(files):
        raise RuntimeError(f"only {len(seen)} of {len(files)} outputs appeared; see {log_path}")
    t0 = dropped[0]
    done_at = sorted(seen[name] - t0 for name in seen)
    latencies = [seen[name] - dropped[expected[name]] for name in seen]
    figures = _figures("srwatch", files, model.scale, max(done_at), done_at, cpu1 - cpu0, rss)
    figures["latency_p50"] = statistics.median(latencies)
    figures["latency_p95"] = _percentile(latencies, 95)
    figures["latencies"] = latencies
    # From the first output to the last: the pipeline's own pace, without the drop's settle wait
    # (a fixed 0.3 s or more before anything is taken) and the first file's start-up.
    if len(done_at) >= STEADY_MIN_FILES:
        figures["steady_images_per_s"] = (len(done_at) - 1) / (done_at[-1] - done_at[0])
    figures["layout"] = _layout_from_log(log_path.read_text(errors="replace"))
    return figures


#: Outputs needed for a steady-state rate (a few large files finish too close together to say).
STEADY_MIN_FILES = 10


def run_backlog(model: BenchModel, count: int, root: Path) -> dict:
    """`count` small files already in the inbox when the daemon starts: seconds from start to the first output."""
    import cv2
    import numpy as np

    config = shipped_config(root, model.path)
    rng = np.random.default_rng(3)
    ok, png = cv2.imencode(".png", rng.integers(0, 256, (48, 48, 3), dtype=np.uint8))
    assert ok
    data = png.tobytes()
    old = time.time() - 3600  # written an hour ago: a backlog, not files being written
    for i in range(count):
        path = root / "inbox" / f"backlog-{i:05d}.png"
        path.write_bytes(data)
        os.utime(path, (old, old))
    log_path = root / "daemon.log"
    started = time.time()
    proc = start_daemon(config, log_path)
    try:
        _wait(lambda: any(e.name.endswith(".png") for e in os.scandir(root / "outbox")) or proc.poll() is not None, 600)
        first = time.time() - started
        ready = re.search(r"loaded in ([\d.]+) s", log_path.read_text(errors="replace"))
    finally:
        stop_daemon(proc)
    return {"files": count, "first_output_s": first, "model_load_s": float(ready.group(1)) if ready else None}


def shipped_config(root: Path, model_path: Optional[Path] = None, *overrides: dict) -> Path:
    """The shipped config/srwatch.yaml with its folders under `root` (made here, and a staging
    folder beside them), `model_path` and `overrides` ({section: {key: value}}, applied in
    order); written to root/srwatch.yaml, whose path is returned. Shared with benchmarks/."""
    import yaml

    folders = ("inbox", "outbox", "archive", "quarantine")
    for name in (*folders, "staging"):
        (root / name).mkdir(parents=True, exist_ok=True)
    raw = yaml.safe_load(SHIPPED_CONFIG.read_text())
    raw["paths"] = {**raw["paths"], **{k: str(root / k) for k in folders}, "work": str(root / ".work")}
    if model_path is not None:
        raw["model"] = {**raw["model"], "path": str(model_path)}
    for layer in overrides:
        for section, values in layer.items():
            raw[section] = {**raw.get(section, {}), **values} if isinstance(values, dict) else values
    config = root / "srwatch.yaml"
    config.write_text(yaml.safe_dump(raw))
    return config


def start_daemon(config: Path, log_path: Path) -> subprocess.Popen:
    """`srwatch run -c config` of this checkout (REPO: the srwatch imported, so PYTHONPATH picks
    the code for an A/B run), its output to `log_path`. Stop it with stop_daemon()."""
    with open(log_path, "wb") as log_file:
        return subprocess.Popen([sys.executable, "-m", "srwatch.cli", "run", "-c", str(config)],
                                stdout=log_file, stderr=subprocess.STDOUT, cwd=REPO)


def wait_ready(proc: subprocess.Popen, log_path: Path, timeout: float = 600) -> None:
    """Until the daemon logs that it is ready; RuntimeError with its log if it exits first."""
    _wait(lambda: "srwatch ready" in log_path.read_text(errors="replace") or proc.poll() is not None, timeout)
    if proc.poll() is not None:
        raise RuntimeError(f"daemon exited:\n{log_path.read_text()}")


def stop_daemon(proc: subprocess.Popen) -> None:
    """SIGTERM the daemon and wait for it (SIGKILL after 120 s)."""
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=120)
    except subprocess.TimeoutExpired:
        proc.kill()


def _watch_outbox(outbox: Path, expected: dict[str, int], seen: dict[str, float]) -> None:
    """Record when each expected output first appears (every 5 ms)."""
    while len(seen) < len(expected):
        now = time.time()
        for entry in os.scandir(outbox):
            if entry.name in expected and entry.name not in seen:
                seen[entry.name] = now
        time.sleep(0.005)


def _wait(predicate, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError("timed out")
        time.sleep(0.05)


def _tree(pid: int) -> list[int]:
    pids = [pid]
    try:
        for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split():
            pids.extend(_tree(int(child)))
    except OSError:
        pass
    return pids


def _tree_cpu(pid: int) -> float:
    """CPU seconds (user + system) of a process and its children so far."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for p in _tree(pid):
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12]) + int(fields[13]) + int(fields[14])) / tick
        except (OSError, IndexError, ValueError):
            pass
    return total


def _worker_peaks(pid: int) -> list[float]:
    """Peak RSS (VmHWM, MB) of each worker process."""
    peaks = []
    for p in _tree(pid)[1:]:
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    peaks.append(int(line.split()[1]) / 1024)
        except OSError:
            pass
    return peaks


def _layout_from_log(text: str) -> str:
    match = re.search(r"(\d+) worker\(s\) x (\d+) thread\(s\)(?: \((\d+) while others are busy\))?", text)
    engine = re.search(r"engine (\w+)", text)
    layout = f"{match.group(1)}x{match.group(2)}" + (f"/{match.group(3)}" if match.group(3) else "") if match else "?"
    return layout + (f" {engine.group(1)}" if engine else "")


# -- figures --------------------------------------------------------------------------------------------
def _percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    k = (len(ordered) - 1) * q / 100
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def _figures(name: str, files: list[Path], scale: int, seconds: float, done_at: Sequence[float],
             cpu_seconds: Optional[float], worker_rss: Sequence[float]) -> dict:
    import cv2

    out_mp = 0.0
    for f in files:
        h, w = cv2.imread(str(f), cv2.IMREAD_UNCHANGED).shape[:2]
        out_mp += w * h * scale * scale / 1e6
    figures = {
        "contender": name, "files": len(files), "seconds": seconds, "images_per_s": len(files) / seconds,
        "output_mp_per_s": out_mp / seconds,
        "cpu_utilisation": (cpu_seconds / seconds / len(os.sched_getaffinity(0))) if cpu_seconds is not None else None,
        "peak_rss_per_worker_mb": max(worker_rss) if worker_rss else None,
    }
    if done_at:
        figures["latency_p50"] = statistics.median(done_at)
        figures["latency_p95"] = _percentile(done_at, 95)
    return figures


@dataclass
class Case:
    """One model x workload: the contenders and their ratios."""

    model: str
    workload: str
    files: int
    results: dict = field(default_factory=dict)

    def ratios(self) -> dict:
        """srwatch against each other contender, and the pipeline against the limit (None where one was not run)."""
        def ratio(a: Optional[float], b: str) -> Optional[float]:
            return a / self.results[b]["images_per_s"] if a and b in self.results else None

        srwatch = self.results.get("srwatch", {})
        s, steady = srwatch.get("images_per_s"), srwatch.get("steady_images_per_s")
        return {
            "srwatch_vs_naive": ratio(s, "naive"),
            "srwatch_vs_engine_limit": ratio(s, "engine_limit"),
            "srwatch_steady_vs_engine_limit": ratio(steady, "engine_limit"),
            "pipeline_vs_engine_limit": ratio(self.results.get("pipeline", {}).get("images_per_s"), "engine_limit"),
            "srwatch_vs_pipeline": ratio(s, "pipeline"),
        }


def run_case(model: BenchModel, workload: Workload, engines: Sequence[str], tmp: Path, contenders: Sequence[str],
             overrides: Optional[dict] = None) -> Case:
    """Every contender on the same files, one after another."""
    case_dir = Path(tempfile.mkdtemp(prefix=f"{model.name}-{workload.name}-", dir=tmp))
    (case_dir / "inputs").mkdir()
    files = make_inputs(case_dir / "inputs", workload)
    case = Case(model.name, workload.name, len(files))
    if "naive" in contenders:
        case.results["naive"] = run_naive(model, files, case_dir / "naive-out")
        _say(case, "naive")
    if "engine" in contenders:
        case.results["engine_limit"] = run_engine_limit(model, files, engines, case_dir)
        _say(case, "engine_limit")
    if "pipeline" in contenders:
        best = case.results["engine_limit"]["layout"]
        case.results["pipeline"] = run_pipeline(model, files, case_dir / "pipeline", best)
        _say(case, "pipeline")
    if "srwatch" in contenders:
        case.results["srwatch"] = run_daemon(model, files, case_dir / "daemon", overrides)
        _say(case, "srwatch")
    return case


def _say(case: Case, name: str) -> None:
    r = case.results[name]
    extra = f" ({r['layout']})" if "layout" in r and isinstance(r["layout"], str) else (
        f" ({r['layout']['engine']} {r['layout']['workers']}x{r['layout']['threads']})" if "layout" in r else "")
    print(f"  {case.model}/{case.workload} {name}{extra}: {r['images_per_s']:.2f} img/s, "
          f"{r['output_mp_per_s']:.2f} out MP/s", file=sys.stderr, flush=True)


def table(cases: Sequence[Case]) -> str:
    """Markdown table of every case."""
    lines = ["| model | workload | files | naive img/s | engine limit img/s (layout) | pipeline img/s | "
             "srwatch img/s (layout) | srwatch out MP/s | latency p50 / p95 s | CPU % | peak worker RSS MB | "
             "srwatch/naive | srwatch/limit | steady/limit | pipeline/limit | srwatch/pipeline |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for c in cases:
        n, e, p, s = (c.results.get(k) for k in ("naive", "engine_limit", "pipeline", "srwatch"))
        r = c.ratios()
        fmt = lambda v, f="{:.2f}": "-" if v is None else f.format(v)  # noqa: E731
        layout = f" ({e['layout']['engine']} {e['layout']['workers']}x{e['layout']['threads']})" if e else ""
        lines.append(
            f"| {c.model} | {c.workload} | {c.files} | {fmt(n and n['images_per_s'])} | "
            f"{fmt(e and e['images_per_s'])}{layout} | {fmt(p and p['images_per_s'])} | "
            f"{fmt(s and s['images_per_s'])}{' (' + s['layout'] + ')' if s else ''} | "
            f"{fmt(s and s['output_mp_per_s'])} | "
            f"{fmt(s and s.get('latency_p50'))} / {fmt(s and s.get('latency_p95'))} | "
            f"{fmt(s and s['cpu_utilisation'] and 100 * s['cpu_utilisation'], '{:.0f}')} | "
            f"{fmt(s and s['peak_rss_per_worker_mb'], '{:.0f}')} | "
            f"{fmt(r.get('srwatch_vs_naive'))}x | {fmt(r.get('srwatch_vs_engine_limit'))}x | "
            f"{fmt(r.get('srwatch_steady_vs_engine_limit'))}x | {fmt(r.get('pipeline_vs_engine_limit'))}x | "
            f"{fmt(r.get('srwatch_vs_pipeline'))}x |")
    return "\n".join(lines)


def chart(cases: Sequence[Case], path: Path) -> Optional[Path]:
    """Throughput per contender and case, and the srwatch latency distribution (matplotlib, bench extra)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed (pip install srwatch[bench]): no chart", file=sys.stderr)
        return None
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 5))
    labels = [f"{c.model}\n{c.workload}" for c in cases]
    names = ("naive", "engine_limit", "pipeline", "srwatch")
    width = 0.8 / len(names)
    for i, name in enumerate(names):
        values = [c.results.get(name, {}).get("output_mp_per_s", 0) for c in cases]
        ax1.bar([x + (i - (len(names) - 1) / 2) * width for x in range(len(cases))], values, width,
                label=name.replace("_", " "))
    ax1.set_xticks(range(len(cases)), labels, fontsize=8)
    ax1.set_ylabel("output megapixels / s")
    ax1.set_title("throughput (higher is better)")
    ax1.legend()
    data = [c.results["srwatch"].get("latencies", [0]) for c in cases if "srwatch" in c.results]
    if data:
        ax2.boxplot(data, tick_labels=[lab for lab, c in zip(labels, cases) if "srwatch" in c.results])
    else:  # --contenders without srwatch: no latencies to show
        ax2.text(0.5, 0.5, "srwatch not run", ha="center", va="center", transform=ax2.transAxes)
    ax2.set_ylabel("seconds, drop -> output visible")
    ax2.set_title("srwatch latency per file (all dropped at once)")
    ax2.tick_params(axis="x", labelsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def build_parser() -> argparse.ArgumentParser:
    """Arguments of `srwatch bench`."""
    p = argparse.ArgumentParser(prog="srwatch bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default="default,fsrcnn", help="default, fsrcnn, standin (comma separated)")
    p.add_argument("--workloads", default="mixed,small,large", help="mixed, small, large")
    p.add_argument("--contenders", default="naive,engine,pipeline,srwatch",
                   help="naive, engine, pipeline (needs engine), srwatch")
    p.add_argument("--engines", default="openvino,opencv", help="engines tried for the engine limit")
    p.add_argument("--out", type=Path, default=Path("bench-out"))
    p.add_argument("--max-files", type=int, default=0, help="at most this many files per workload (a quick look)")
    p.add_argument("--backlog", type=int, default=10000,
                   help="also time the first output with this many files waiting at start (0: skip)")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override a config key for the srwatch contender (YAML value), e.g. pool.workers=1")
    return p


def _overrides(items: Sequence[str]) -> dict:
    import yaml

    out: dict = {}
    for item in items:
        key, _, value = item.partition("=")
        section, _, name = key.partition(".")
        out.setdefault(section, {})[name] = yaml.safe_load(value)
    return out


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the benchmark; print a table, write bench.json and bench.png."""
    args = build_parser().parse_args(argv)
    contenders = args.contenders.split(",")
    if "pipeline" in contenders and "engine" not in contenders:
        raise SystemExit("--contenders: pipeline runs on the engine limit's best layout; add engine")
    args.out.mkdir(parents=True, exist_ok=True)
    engines = [e for e in args.engines.split(",") if _engine_available(e)]
    cases: list[Case] = []
    with tempfile.TemporaryDirectory(prefix="srwatch-bench-") as tmp_name:
        tmp = Path(tmp_name)
        for model in resolve_models(args.models.split(","), tmp):
            for workload in workloads(args.workloads.split(","), heavy=model.heavy):
                if args.max_files:
                    workload = Workload(workload.name, workload.sizes[: args.max_files])
                cases.append(run_case(model, workload, engines, tmp, contenders, _overrides(args.set)))
        backlog = None
        if args.backlog:
            backlog = run_backlog(resolve_models(["default"], tmp)[0], args.backlog, tmp / "backlog")
            print(f"  backlog of {args.backlog} files: first output {backlog['first_output_s']:.2f} s after start "
                  f"(model loaded in {backlog['model_load_s']} s)", file=sys.stderr, flush=True)
    report = {
        "machine": {"cpus": len(os.sched_getaffinity(0)), "python": sys.version.split()[0]},
        "overrides": args.set,
        "backlog": backlog,
        "cases": [{**asdict(c), "ratios": c.ratios()} for c in cases],
    }
    (args.out / "bench.json").write_text(json.dumps(report, indent=1))
    chart(cases, args.out / "bench.png")
    print(table(cases))
    if backlog:
        print(f"\nbacklog: {backlog['files']} files waiting at start -> first output after "
              f"{backlog['first_output_s']:.2f} s (model load {backlog['model_load_s']} s)")
    return 0


def _engine_available(name: str) -> bool:
    if name == "opencv":
        return True
    try:
        __import__({"openvino": "openvino", "onnxruntime": "onnxruntime"}[name])
        return True
    except ImportError:
        return False


if __name__ == "__main__":
    raise SystemExit(main())
