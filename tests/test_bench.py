"""`srwatch bench` end to end on a few small files: every contender really runs (real daemon,
real worker processes, the upstream FSRCNN_x3 model) and the report holds what the docs say."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from conftest import SHARED, require

REPO = Path(__file__).resolve().parents[1]


def bench(out: Path, files: int, contenders: str) -> subprocess.CompletedProcess:
    """`srwatch bench` of FSRCNN_x3 on `files` small images, OpenVINO only, no backlog run."""
    require(SHARED / "models" / "FSRCNN_x3.pb")
    return subprocess.run(
        [sys.executable, "-m", "srwatch.cli", "bench", "--models", "fsrcnn", "--workloads", "small",
         "--max-files", str(files), "--engines", "openvino", "--contenders", contenders, "--backlog", "0",
         "--out", str(out)],
        cwd=REPO, capture_output=True, text=True, timeout=600,
    )


def test_bench_runs_every_contender_and_reports_the_pipeline_between_the_limit_and_srwatch(tmp_path: Path) -> None:
    out = tmp_path / "bench-out"
    proc = bench(out, 6, "naive,engine,pipeline,srwatch")
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((out / "bench.json").read_text())
    [case] = report["cases"]
    results = case["results"]
    assert set(results) == {"naive", "engine_limit", "pipeline", "srwatch"}
    for name, figures in results.items():
        assert figures["files"] == 6, name
        assert figures["images_per_s"] > 0, name
    # The pipeline runs on the engine limit's best layout, and its ratios are the ones printed.
    assert results["pipeline"]["layout"] == results["engine_limit"]["layout"]
    ratios = case["ratios"]
    assert ratios["srwatch_vs_pipeline"] == results["srwatch"]["images_per_s"] / results["pipeline"]["images_per_s"]
    assert ratios["pipeline_vs_engine_limit"] == (
        results["pipeline"]["images_per_s"] / results["engine_limit"]["images_per_s"])
    header, _, row = proc.stdout.strip().splitlines()[:3]
    columns = [c.strip() for c in header.strip("|").split("|")]
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[columns.index("pipeline img/s")] == f"{results['pipeline']['images_per_s']:.2f}"
    assert cells[columns.index("srwatch/pipeline")] == f"{ratios['srwatch_vs_pipeline']:.2f}x"
    assert (out / "bench.png").stat().st_size > 0  # matplotlib is a test dependency


def test_bench_refuses_the_pipeline_without_the_engine_limit(tmp_path: Path) -> None:
    proc = bench(tmp_path / "o", 2, "pipeline")
    assert proc.returncode != 0
    assert "pipeline runs on the engine limit's best layout; add engine" in proc.stderr


def test_bench_without_the_daemon_still_writes_its_report_and_chart(tmp_path: Path) -> None:
    out = tmp_path / "o"
    proc = bench(out, 2, "engine,pipeline")
    assert proc.returncode == 0, proc.stderr[-3000:]
    [case] = json.loads((out / "bench.json").read_text())["cases"]
    assert set(case["results"]) == {"engine_limit", "pipeline"}
    assert (out / "bench.png").stat().st_size > 0


def test_gpu_bench_runs_every_contender_on_the_cpu_and_writes_its_record(tmp_path: Path) -> None:
    """benchmarks/bench_gpu.py is meant for a CUDA machine (none here, none in CI): its CPU run
    exercises the same code, so the script a lent GPU session starts is known to work."""
    out = tmp_path / "gpu.json"
    proc = subprocess.run(
        [sys.executable, "benchmarks/bench_gpu.py", "--device", "cpu", "--models", "default", "--sizes", "32x32,48x40",
         "--mixed", "3", "--repeat", "1", "--out", str(out)],
        cwd=REPO, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    record = json.loads(out.read_text())
    assert record["environment"]["device"] == "cpu"
    rows = record["rows"]
    assert [(r["size"], r["contender"]) for r in rows] == [
        (size, contender) for size in ("32x32", "48x40", "3 sizes")  # 3 sizes: around the first, each once
        for contender in ("torch bf16 (no copies)", "torch bf16 (copies)", "srwatch f32", "srwatch f16")
    ]
    assert all(r["error"] is None and r["seconds"] > 0 for r in rows), rows
    for r in rows:
        if "x" in r["size"]:
            width, height = (int(v) for v in r["size"].split("x"))
            assert abs(r["seconds_per_mp"] - r["seconds"] / (width * height / 1e6)) < 1e-9
        else:  # sizes within 20 % of 32x32 a side: between 0.64x and 1.44x its pixels
            assert 0.64 * 32 * 32 / 1e6 <= r["seconds"] / r["seconds_per_mp"] <= 1.44 * 32 * 32 / 1e6
        # srwatch's rows are compared with PyTorch's run with the same copies; PyTorch's own are not.
        assert (r["ratio_to_torch"] is not None) == r["contender"].startswith("srwatch")
    assert "| default | 48x40 | srwatch f16 |" in proc.stdout
