"""Soak: the real daemon under a steady trickle for a long while; memory and descriptors must stay flat.

    python benchmarks/soak.py                       # 30 minutes, one image every 3 s
    python benchmarks/soak.py --minutes 2 --warmup-minutes 0.5 --out /tmp/soak-short

Starts `srwatch run` (as tests/daemon_harness.py does) on fresh folders with the shipped
config/srwatch.yaml (only the folders, the model and the log level changed), drops a small
textured image (96..256 px a side, PNG or JPEG) every --interval seconds under a hidden temp
name and renames it into the inbox, and samples every process of the daemon's tree (the
supervisor, its workers, replacements of dead workers, multiprocessing's helper) every
--sample-every seconds: VmRSS and Threads from /proc/<pid>/status, open descriptors from
/proc/<pid>/fd. At the end it waits for the backlog, stops the daemon with SIGTERM and checks
that every input is in exactly one place: lost = 0, duplicated = 0, quarantined = 0, nothing
else in the outbox, archive or quarantine (dotfiles included: a leftover temp file fails), and
no job left claimed.

Growth, per process and for the whole tree: the mean over the first third of the time after
--warmup-minutes against the mean over the last third; flat when within 10 %, and a failure only
when it grows. A process's warm-up starts at its first sample, a worker's at its first files
(the pool may keep a spare worker idle until another dies; it then grows to its working size),
the tree's at the start. Writes to --out: soak.json (every sample, the accounting and the
verdicts), soak.png (RSS, descriptors and files over time, one line per pid) and daemon.log.
Exit status 0 when everything passed, 1 otherwise.
Needs matplotlib: pip install -e '.[bench]'.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional

import cv2
import numpy as np
import yaml

REPO = Path(__file__).resolve().parents[1]
SHIPPED_CONFIG = REPO / "config" / "srwatch.yaml"
DEFAULT_MODEL = REPO / "models" / "EDSR-srwatch_x3.onnx"
FLAT_TOLERANCE = 0.10  # relative growth, last third against first third after warm-up
MIN_SAMPLES = 3  # per third of the time after warm-up, below which no verdict is given
READY_TIMEOUT = 300.0  # in seconds: every worker loads its model before "srwatch ready"
DRAIN_TIMEOUT = 600.0  # in seconds, after the last drop, for the backlog
BUSY_CPU_S = 0.5  # in CPU seconds since its first sample: a worker has taken its first files
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")  # units of utime/stime in /proc/<pid>/stat
SIZES = (96, 256)  # in pixels, the range of each side of an input
EXTENSIONS = (".png", ".png", ".jpg")  # cycled: mostly PNG, some JPEG


# --- the daemon's processes ---------------------------------------------------------------------


@dataclass
class ProcSample:
    """One process at one instant."""

    n: int  # sample round: every process sampled in one round has the same n
    t: float  # in seconds since the daemon was ready
    pid: int
    ppid: int
    role: str  # main | worker | helper | child
    rss_kb: int
    fds: int
    threads: int
    cpu_s: float  # user + system CPU time so far, in seconds


def _stat(pid: int) -> Optional[list[str]]:
    """The fields of /proc/<pid>/stat after the command name (which may hold spaces and parentheses)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat[stat.rindex(")") + 2:].split()  # [0] is field 3 (state), [1] ppid, [11] utime, [12] stime


def _ppid(pid: int) -> Optional[int]:
    fields = _stat(pid)
    return int(fields[1]) if fields else None


def process_tree(root: int) -> dict[int, int]:
    """{pid: ppid} of `root` and all its descendants."""
    parents = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            ppid = _ppid(int(entry))
            if ppid is not None:
                parents[int(entry)] = ppid
    tree = {root: parents.get(root, 0)}
    grew = True
    while grew:
        grew = False
        for pid, ppid in parents.items():
            if ppid in tree and pid not in tree:
                tree[pid] = ppid
                grew = True
    return tree


def _role(pid: int, root: int) -> str:
    if pid == root:
        return "main"
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return "child"
    if "resource_tracker" in cmdline or "forkserver" in cmdline:
        return "helper"
    if "multiprocessing" in cmdline or "spawn_main" in cmdline:
        return "worker"
    return "child"


def sample_tree(root: int, n: int, t: float) -> list[ProcSample]:
    """VmRSS, threads and open descriptors of every process in the tree; vanished ones skipped."""
    samples = []
    for pid, ppid in sorted(process_tree(root).items()):
        try:
            status = Path(f"/proc/{pid}/status").read_text()
            fds = len(os.listdir(f"/proc/{pid}/fd"))
        except OSError:
            continue  # exited between the listing and the read
        stat = _stat(pid)
        if stat is None:
            continue
        fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
        if "VmRSS" not in fields:
            continue  # a zombie
        samples.append(ProcSample(
            n=n, t=round(t, 2), pid=pid, ppid=ppid, role=_role(pid, root),
            rss_kb=int(fields["VmRSS"].split()[0]), fds=fds, threads=int(fields["Threads"].split()[0]),
            cpu_s=round((int(stat[11]) + int(stat[12])) / CLOCK_TICKS, 2),
        ))
    return samples


# --- inputs and folders ---------------------------------------------------------------------------


@dataclass
class Folders:
    """The soak daemon's folders."""

    root: Path

    @property
    def inbox(self) -> Path:
        return self.root / "inbox"

    @property
    def outbox(self) -> Path:
        return self.root / "outbox"

    @property
    def archive(self) -> Path:
        return self.root / "archive"

    @property
    def quarantine(self) -> Path:
        return self.root / "quarantine"

    @property
    def work(self) -> Path:
        return self.root / "work"

    def count(self, folder: Path) -> int:
        """Visible files in a folder (reason files excluded), cheap enough to call every sample."""
        try:
            return sum(1 for p in folder.iterdir() if not p.name.startswith(".") and not p.name.endswith(".error.json"))
        except OSError:
            return 0


def textured_image(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """Photo-like BGR: a smooth random field, some edges, and noise, so the model has work."""
    base = cv2.resize(rng.integers(0, 256, (6, 6, 3), dtype=np.uint8), (width, height), interpolation=cv2.INTER_CUBIC)
    y, x = np.mgrid[0:height, 0:width]
    stripes = ((x // int(rng.integers(4, 16)) + y // int(rng.integers(4, 16))) % 2 * 40)[..., None]
    noise = rng.normal(0, 8, base.shape)
    return np.clip(base.astype(np.float64) + stripes + noise, 0, 255).astype(np.uint8)


def drop(inbox: Path, index: int, rng: np.random.Generator) -> str:
    """Write one input under a hidden temp name, then rename it into the inbox; its name."""
    width, height = (int(v) for v in rng.integers(SIZES[0], SIZES[1] + 1, 2))
    ext = EXTENSIONS[index % len(EXTENSIONS)]
    name = f"soak{index:05d}_{width}x{height}{ext}"
    ok, buf = cv2.imencode(ext, textured_image(rng, width, height))
    assert ok, name
    tmp = inbox / f".{name}.tmp"
    tmp.write_bytes(buf.tobytes())
    os.rename(tmp, inbox / name)
    return name


def write_config(folders: Folders, model: Path, workers: Optional[str]) -> Path:
    """The shipped config with the soak's folders and model (everything else as shipped)."""
    cfg = yaml.safe_load(SHIPPED_CONFIG.read_text())
    cfg["paths"].update({name: str(getattr(folders, name)) for name in ("inbox", "outbox", "quarantine", "archive", "work")})
    cfg["model"]["path"] = str(model.resolve())
    cfg["log"]["level"] = "INFO"
    if workers is not None:
        cfg["pool"]["workers"] = int(workers) if workers.isdigit() else workers
    folders.inbox.mkdir(parents=True, exist_ok=True)
    path = folders.root / "srwatch.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def output_name(name: str, suffix: str) -> str:
    """The outbox name of an input, with output.format: same (PNG and JPEG keep their format)."""
    stem, ext = os.path.splitext(name)
    return f"{stem}{suffix}{ext}"


def account(folders: Folders, dropped: list[str], suffix: str) -> dict:
    """Every input in exactly one place? Counts, and the names behind every failure."""
    def listing(folder: Path) -> list[str]:
        if not folder.is_dir():
            return []
        return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if not p.is_dir())

    outbox, archive, quarantine = listing(folders.outbox), listing(folders.archive), listing(folders.quarantine)
    outbox_set, archive_set, quarantine_set = set(outbox), set(archive), set(quarantine)
    done = [n for n in dropped if n in archive_set and output_name(n, suffix) in outbox_set]
    held = [n for n in dropped if n in quarantine_set]
    expected = {"outbox": {output_name(n, suffix) for n in done}, "archive": set(done),
                "quarantine": set(held) | {n + ".error.json" for n in held}}
    unexpected = {
        "outbox": [p for p in outbox if p not in expected["outbox"]],
        "archive": [p for p in archive if p not in expected["archive"]],
        "quarantine": [p for p in quarantine if p not in expected["quarantine"]],
        "inbox": listing(folders.inbox),
    }
    # A second output of one input ("<stem>_x3-1.png") or an input both done and quarantined.
    duplicated = sorted({n for n in done if n in quarantine_set}
                        | {n for n in dropped for p in unexpected["outbox"]
                           if re.fullmatch(re.escape(os.path.splitext(output_name(n, suffix))[0]) + r"-\d+\..+", p)})
    lost = [n for n in dropped if n not in done and n not in quarantine_set]
    claimed = sorted(p.name for p in folders.work.iterdir() if p.is_dir()) if folders.work.is_dir() else []
    return {
        "dropped": len(dropped), "done": len(done), "quarantined": len(held), "lost": len(lost),
        "duplicated": len(duplicated), "unexpected": sum(len(v) for v in unexpected.values()),
        "left_claimed": len(claimed),
        "names": {"lost": lost, "duplicated": duplicated, "quarantined": held, "unexpected": unexpected,
                  "left_claimed": claimed},
    }


# --- growth ----------------------------------------------------------------------------------------


def growth(points: list[tuple[float, float]], start: float) -> Optional[dict]:
    """Mean of the first third of the points after `start` against the last third; None if too few."""
    after = [(t, v) for t, v in points if t >= start]
    if len(after) < 3 * MIN_SAMPLES:
        return None
    t0, t1 = after[0][0], after[-1][0]
    third = (t1 - t0) / 3
    first = [v for t, v in after if t <= t0 + third]
    last = [v for t, v in after if t >= t1 - third]
    if len(first) < MIN_SAMPLES or len(last) < MIN_SAMPLES:
        return None
    a, b = float(np.mean(first)), float(np.mean(last))
    rel = (b - a) / a if a else 0.0
    verdict = "flat" if abs(rel) <= FLAT_TOLERANCE else ("grows" if rel > 0 else "shrinks")
    return {"first_third_mean": round(a, 1), "last_third_mean": round(b, 1), "growth": round(rel, 4),
            "verdict": verdict, "window_s": [t0, t1]}


def own_start(series: list[ProcSample]) -> float:
    """When a process's own warm-up begins: its first sample, or for a worker its first files.

    The pool may leave a worker idle (holding only its model) for a long while, until another
    dies or retires; its memory then grows to its working size, which is warm-up, not a leak.
    """
    if series[0].role == "worker":
        for s in series:
            if s.cpu_s - series[0].cpu_s >= BUSY_CPU_S:
                return s.t
    return series[0].t


def analyse(samples: list[ProcSample], warmup_s: float) -> dict:
    """Growth of RSS and descriptors for each process (after its own warm-up), and for the whole
    tree summed per sample round (after the warm-up from the start)."""
    by_pid: dict[int, list[ProcSample]] = {}
    for s in samples:
        by_pid.setdefault(s.pid, []).append(s)
    result = {"processes": {}, "tree": {}}
    for pid, series in sorted(by_pid.items()):
        start = own_start(series)
        result["processes"][str(pid)] = {
            "role": series[0].role, "first_t": series[0].t, "last_t": series[-1].t, "samples": len(series),
            "warmup_from": start, "cpu_s": series[-1].cpu_s,
            "rss_kb": growth([(s.t, s.rss_kb) for s in series], start + warmup_s),
            "fds": growth([(s.t, s.fds) for s in series], start + warmup_s),
        }
    rounds: dict[int, list[ProcSample]] = {}
    for s in samples:
        rounds.setdefault(s.n, []).append(s)
    for metric in ("rss_kb", "fds", "threads"):
        totals = [(group[0].t, sum(getattr(s, metric) for s in group)) for _, group in sorted(rounds.items())]
        result["tree"][metric] = growth(totals, warmup_s)
    return result


# --- the plot --------------------------------------------------------------------------------------


def plot(path: Path, samples: list[ProcSample], files: list[dict], warmup_s: float, title: str) -> None:
    """RSS, descriptors and files over time; one line per pid."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    by_pid: dict[int, list[ProcSample]] = {}
    for s in samples:
        by_pid.setdefault(s.pid, []).append(s)
    fig, (ax_rss, ax_fd, ax_files) = plt.subplots(3, 1, figsize=(12, 10), sharex=True,
                                                   gridspec_kw={"height_ratios": [3, 2, 2]})
    cmap = plt.get_cmap("tab10")
    dashes = ("-", "--", "-.", ":")  # processes with equal values stay visible on top of each other
    for i, (pid, series) in enumerate(sorted(by_pid.items(), key=lambda kv: (kv[1][0].role != "main", kv[0]))):
        minutes = [s.t / 60 for s in series]
        label = f"{series[0].role} {pid}"
        style = {"color": cmap(i % 10), "linestyle": dashes[i % len(dashes)],
                 "linewidth": 1.8 if series[0].role == "main" else 1.3}
        ax_rss.plot(minutes, [s.rss_kb / 1024 for s in series], label=label, **style)
        ax_fd.plot(minutes, [s.fds for s in series], label=label, **style)
    if files:
        minutes = [f["t"] / 60 for f in files]
        ax_files.plot(minutes, [f["dropped"] for f in files], label="dropped", color="black")
        ax_files.plot(minutes, [f["archived"] + f["quarantined"] for f in files], label="done (archived + quarantined)",
                      color="tab:green", linestyle="--")
        ax_backlog = ax_files.twinx()
        ax_backlog.plot(minutes, [f["dropped"] - f["archived"] - f["quarantined"] for f in files], color="tab:red",
                        linewidth=0.9, label="in flight (right axis)")
        ax_backlog.set_ylabel("in flight")
        ax_backlog.set_ylim(0, max(3, max(f["dropped"] - f["archived"] - f["quarantined"] for f in files) + 1))
        ax_backlog.yaxis.set_major_locator(MaxNLocator(integer=True))
        lines = ax_files.get_legend_handles_labels()
        more = ax_backlog.get_legend_handles_labels()
        ax_files.legend(lines[0] + more[0], lines[1] + more[1], loc="upper left", fontsize=8)
    ax_rss.set_ylabel("RSS (MiB)")
    ax_fd.set_ylabel("open descriptors")
    ax_files.set_ylabel("files")
    ax_files.set_xlabel("minutes since the daemon was ready")
    for ax in (ax_rss, ax_fd, ax_files):
        if warmup_s > 0:
            ax.axvspan(0, warmup_s / 60, color="0.9", zorder=0)
        ax.grid(True, alpha=0.3)
    ax_rss.set_ylim(bottom=0)
    ax_fd.set_ylim(bottom=0)
    if samples:  # the two thirds the growth verdicts compare
        t0 = min((s.t for s in samples if s.t >= warmup_s), default=warmup_s)
        t1 = max(s.t for s in samples)
        for ax in (ax_rss, ax_fd):
            for t in (t0 + (t1 - t0) / 3, t1 - (t1 - t0) / 3):
                ax.axvline(t / 60, color="0.5", linestyle=":", linewidth=0.8)
    if warmup_s > 0:
        ax_rss.text(warmup_s / 120, 0.02, "warm-up", transform=ax_rss.get_xaxis_transform(), ha="center", fontsize=8,
                    color="0.4")
    ax_rss.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, title="pid", title_fontsize=8)
    ax_rss.set_title("dotted: the first and last thirds after warm-up that the tree verdict compares",
                     fontsize=8, loc="right")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# --- the run ---------------------------------------------------------------------------------------


@dataclass
class Run:
    """Everything recorded during a soak."""

    args: dict
    samples: list[ProcSample] = field(default_factory=list)
    files: list[dict] = field(default_factory=list)  # folder counts at each sample
    dropped: list[str] = field(default_factory=list)
    events: list[str] = field(default_factory=list)
    exit_status: Optional[int] = None


def progress(elapsed: float, run: Run) -> None:
    """One status line: rewritten in place on a terminal, once a minute otherwise."""
    last = run.files[-1]
    line = f"{elapsed / 60:5.1f} min: dropped {len(run.dropped)}, done {last['archived'] + last['quarantined']}"
    if sys.stdout.isatty():
        print("\r" + line, end="", flush=True)
    elif len(run.files) == 1 or int(elapsed // 60) > int(run.files[-2]["t"] // 60):
        print(line, flush=True)


def wait_for_log(log: Path, needle: str, proc: subprocess.Popen, timeout: float) -> None:
    """Until `needle` is in the log; raise if the daemon exits or the time runs out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if needle in log.read_text(errors="replace"):
            return
        if proc.poll() is not None:
            raise RuntimeError(f"daemon exited with status {proc.returncode} before {needle!r}; see {log}")
        time.sleep(0.2)
    raise RuntimeError(f"no {needle!r} after {timeout:.0f} s; see {log}")


def soak(args: argparse.Namespace, out: Path, folders: Folders) -> Run:
    """Start the daemon, trickle and sample, drain, SIGTERM; the record."""
    run = Run(args={k: str(v) for k, v in vars(args).items()})
    config = write_config(folders, args.model, args.workers)
    log_path = out / "daemon.log"
    rng = np.random.default_rng(args.seed)
    with open(log_path, "ab") as log:
        proc = subprocess.Popen([sys.executable, "-m", "srwatch.cli", "run", "-c", str(config)],
                                stdout=log, stderr=subprocess.STDOUT, cwd=str(REPO),
                                env={**os.environ, "PYTHONUNBUFFERED": "1"})
        try:
            wait_for_log(log_path, "srwatch ready", proc, READY_TIMEOUT)
            start = time.monotonic()
            end = start + args.minutes * 60
            next_drop, next_sample = start, start

            def take_sample(now: float) -> None:
                t = now - start
                run.samples.extend(sample_tree(proc.pid, len(run.files), t))
                run.files.append({"n": len(run.files), "t": round(t, 2), "dropped": len(run.dropped),
                                  "archived": folders.count(folders.archive),
                                  "quarantined": folders.count(folders.quarantine),
                                  "inbox": folders.count(folders.inbox)})

            while True:
                now = time.monotonic()
                if proc.poll() is not None:
                    run.events.append(f"{now - start:.0f} s: daemon exited with status {proc.returncode} during the soak")
                    break
                if now >= next_sample:
                    take_sample(now)
                    next_sample += args.sample_every
                    progress(now - start, run)
                if now >= end:
                    break
                if now >= next_drop:
                    run.dropped.append(drop(folders.inbox, len(run.dropped), rng))
                    next_drop += args.interval
                time.sleep(max(0.0, min(next_drop, next_sample, end) - time.monotonic()))
            if sys.stdout.isatty():
                print()  # end the progress line
            # The backlog: keep sampling until every input is archived or quarantined.
            deadline = time.monotonic() + DRAIN_TIMEOUT
            while proc.poll() is None and time.monotonic() < deadline:
                if folders.count(folders.archive) + folders.count(folders.quarantine) >= len(run.dropped):
                    break
                now = time.monotonic()
                if now >= next_sample:
                    take_sample(now)
                    next_sample += args.sample_every
                time.sleep(0.5)
            else:
                if proc.poll() is None:
                    run.events.append(f"backlog not drained {DRAIN_TIMEOUT:.0f} s after the last drop")
            take_sample(time.monotonic())
        except RuntimeError as exc:  # the daemon did not get ready
            run.events.append(str(exc))
        except KeyboardInterrupt:
            run.events.append("interrupted (Ctrl-C)")
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    run.exit_status = proc.wait(timeout=args.stop_timeout)
                except subprocess.TimeoutExpired:
                    run.events.append(f"daemon still running {args.stop_timeout:.0f} s after SIGTERM: killed")
                    proc.kill()
                    proc.wait()
            if run.exit_status is None:
                run.exit_status = proc.returncode
    return run


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=30.0, help="length of the trickle (default 30)")
    ap.add_argument("--interval", type=float, default=3.0, help="seconds between two dropped images (default 3)")
    ap.add_argument("--sample-every", type=float, default=10.0, help="seconds between two samples (default 10)")
    ap.add_argument("--warmup-minutes", type=float, default=5.0,
                    help="minutes left out of the growth verdicts (default 5)")
    ap.add_argument("--out", type=Path, help="folder for soak.json, soak.png, daemon.log (default: a new temp folder)")
    ap.add_argument("--model", type=Path, default=DEFAULT_MODEL, help="model file (default: the shipped x3 .onnx)")
    ap.add_argument("--workers", help="pool.workers (default: the shipped config's, auto)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the generated images")
    ap.add_argument("--stop-timeout", type=float, default=120.0, help="seconds to wait for exit after SIGTERM")
    ap.add_argument("--keep-folders", action="store_true", help="keep inbox/outbox/... under --out (default: removed)")
    args = ap.parse_args()
    try:
        import matplotlib  # noqa: F401  (fail now, not after half an hour)
    except ImportError:
        ap.error("matplotlib is missing: pip install -e '.[bench]'")
    if args.warmup_minutes >= args.minutes:
        ap.error("--warmup-minutes must be shorter than --minutes")

    out = args.out or Path(tempfile.mkdtemp(prefix="srwatch-soak-"))
    out.mkdir(parents=True, exist_ok=True)
    folders = Folders(out / "folders")
    if folders.root.exists() and any(folders.root.iterdir()):
        ap.error(f"{folders.root} is not empty: use a fresh --out")
    shipped = yaml.safe_load(SHIPPED_CONFIG.read_text())
    scale = int(m.group(1)) if (m := re.search(r"_x(\d+)", args.model.name)) else 3
    suffix = shipped.get("output", {}).get("suffix", "_x{scale}").format(scale=scale)

    print(f"soak: {args.minutes:g} min, one image every {args.interval:g} s, samples every {args.sample_every:g} s, "
          f"model {args.model.name}; results in {out}")
    run = soak(args, out, folders)
    accounting = account(folders, run.dropped, suffix)
    warmup_s = args.warmup_minutes * 60
    growth_report = analyse(run.samples, warmup_s)

    failures = list(run.events)
    if run.exit_status != 0:
        failures.append(f"daemon exit status {run.exit_status} (want 0, after SIGTERM)")
    for key in ("lost", "duplicated", "quarantined", "unexpected", "left_claimed"):
        if accounting[key]:
            failures.append(f"{key}: {accounting[key]} ({accounting['names'][key]})")
    for pid, proc in growth_report["processes"].items():
        for metric in ("rss_kb", "fds"):
            g = proc[metric]
            if g and g["verdict"] == "grows":
                failures.append(f"{proc['role']} {pid}: {metric} grows {g['growth']:+.1%} after warm-up")
    for metric in ("rss_kb", "fds"):
        g = growth_report["tree"][metric]
        if g is None:
            failures.append(f"tree {metric}: too few samples after warm-up for a verdict")
        elif g["verdict"] == "grows":
            failures.append(f"tree {metric}: grows {g['growth']:+.1%} after warm-up")

    report = {
        "passed": not failures, "failures": failures, "accounting": accounting, "growth": growth_report,
        "args": run.args, "exit_status": run.exit_status,
        "samples": [asdict(s) for s in run.samples], "files": run.files, "dropped": run.dropped,
    }
    (out / "soak.json").write_text(json.dumps(report, indent=1))
    tree_rss, tree_fds = growth_report["tree"]["rss_kb"], growth_report["tree"]["fds"]
    title = (f"srwatch soak: {args.minutes:g} min, 1 image / {args.interval:g} s, {args.model.name}; "
             f"dropped {accounting['dropped']}, done {accounting['done']}, lost {accounting['lost']}, "
             f"duplicated {accounting['duplicated']}\n"
             f"tree RSS {_fmt(tree_rss)}, descriptors {_fmt(tree_fds)} (last third vs first third after warm-up) - "
             f"{'PASSED' if not failures else 'FAILED'}")
    plot(out / "soak.png", run.samples, run.files, warmup_s, title)
    if not args.keep_folders and not failures:
        shutil.rmtree(folders.root)

    print(f"dropped {accounting['dropped']}, done {accounting['done']}, quarantined {accounting['quarantined']}, "
          f"lost {accounting['lost']}, duplicated {accounting['duplicated']}, unexpected files {accounting['unexpected']}, "
          f"left claimed {accounting['left_claimed']}; daemon exit status {run.exit_status}")
    print("| process | samples | RSS MiB first -> last third | growth | fds first -> last third | growth |")
    print("|---|---|---|---|---|---|")
    rows = [(f"{p['role']} {pid}", p) for pid, p in growth_report["processes"].items()]
    rows.append(("tree (sum)", {"samples": len(run.files), **growth_report["tree"]}))
    for name, p in rows:
        print(f"| {name} | {p['samples']} | {_means(p['rss_kb'], 1024)} | {_fmt(p['rss_kb'])} | "
              f"{_means(p['fds'])} | {_fmt(p['fds'])} |")
    print(f"{out / 'soak.json'}\n{out / 'soak.png'}\n{out / 'daemon.log'}")
    print("PASSED" if not failures else "FAILED:\n  " + "\n  ".join(failures))
    return 0 if not failures else 1


def _fmt(g: Optional[dict]) -> str:
    return "n/a" if g is None else f"{g['growth']:+.1%} {g['verdict']}"


def _means(g: Optional[dict], divisor: float = 1) -> str:
    return "n/a" if g is None else f"{g['first_third_mean'] / divisor:.1f} -> {g['last_third_mean'] / divisor:.1f}"


if __name__ == "__main__":
    raise SystemExit(main())
