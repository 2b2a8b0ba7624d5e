"""pool.backend: ray on a real two-node Ray cluster on this machine (no mocks).

The cluster is two `ray start --block` processes (a head and a second node, one CPU each),
each in a session of its own, so that a node can be stopped alone (`ray stop` would stop
every Ray on the machine) and every process a test started is found again by its session id
and killed by pid in a `finally`. The daemon is a real `srwatch run` (daemon_harness) that
connects with `ray.address: <head>:<port>`; after each scenario the harness's invariant
(every input in exactly one place) holds.

Skipped when ray is not installed; under CI=true (which installs the extra) that is a failure.
"""
from __future__ import annotations

import importlib.util
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Iterator, Optional

import pytest

from daemon_harness import (
    FAST_WATCH,
    REPO,
    DaemonProcess,
    Layout,
    check_and_report,
    fault_report,  # noqa: F401 - fixture
    file_drop,
    place,
    require_model,
    wait_finished,
    wait_for,
    write_config,
)

if importlib.util.find_spec("ray") is None:
    if os.environ.get("CI") == "true":
        pytest.fail("ray is not installed, and CI installs it (pip install -e '.[ray]')", pytrace=False)
    pytest.skip("ray is not installed (pip install 'srwatch[ray]')", allow_module_level=True)

pytestmark = pytest.mark.slow

RAY = str(Path(sys.executable).with_name("ray"))
SMALL = 64  # in pixels: a file the model finishes in ~40 ms
SLOW = 300  # in pixels: ~0.8 s with opencv and one thread, time to kill its actor mid-file
READY = re.compile(r"(ray-\d+) ready on node (\S+) \(pid (\d+),")


# -- the cluster ----------------------------------------------------------------------------------
class RayCluster:
    """A head and extra nodes, each a `ray start --block` in its own session (sid = its pid)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.temp = Path(tempfile.mkdtemp(prefix="srw-ray-"))  # short: Ray's socket paths must fit 107 bytes
        token = self.temp / "token"
        token.write_text(secrets.token_hex(32))
        self.env = {
            **os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token),
            "RAY_USAGE_STATS_ENABLED": "0",
            # Notice a stopped node within seconds, not the default ~30 s.
            "RAY_health_check_period_ms": "1000", "RAY_health_check_failure_threshold": "3",
        }
        self.port = _free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.sessions: list[subprocess.Popen] = []
        self.head: Optional[subprocess.Popen] = None

    def start(self) -> "RayCluster":
        """The head, then one more node; returns once both are in the cluster."""
        self.head = self._ray_start("head", ["--head", f"--port={self.port}", f"--temp-dir={self.temp}",
                                             "--include-dashboard=false"])
        wait_for(lambda: self.node_count() >= 1, 60, 0.5, "the Ray head")
        self.add_node()
        return self

    def add_node(self) -> subprocess.Popen:
        """One more node with one CPU; returns once the cluster counts exactly the nodes running."""
        node = self._ray_start(f"node{len(self.sessions)}", [f"--address={self.address}"])
        running = len(self.running())
        wait_for(lambda: self.node_count() == running, 60, 0.5, f"{running} live Ray nodes")
        return node

    def running(self) -> list[subprocess.Popen]:
        """The node sessions not stopped by a test."""
        return [p for p in self.sessions if p.poll() is None]

    def _ray_start(self, name: str, args: list[str]) -> subprocess.Popen:
        log = open(self.root / f"ray-{name}.log", "ab")
        proc = subprocess.Popen(
            [RAY, "start", "--block", "--num-cpus=1", "--node-ip-address=127.0.0.1", "--disable-usage-stats", *args],
            stdout=log, stderr=subprocess.STDOUT, env=self.env, start_new_session=True,
        )
        log.close()
        self.sessions.append(proc)
        return proc

    def node_count(self) -> int:
        """Live nodes, as `ray status` lists them (0 while the head is not up)."""
        result = subprocess.run([RAY, "status", f"--address={self.address}"], capture_output=True, text=True,
                                env=self.env, timeout=60)
        if result.returncode != 0:
            return 0
        active = result.stdout.split("Active:", 1)[-1].split("Pending:", 1)[0]
        return len(re.findall(r"\bnode_[0-9a-f]+", active))

    def kill_node(self, node: subprocess.Popen) -> None:
        """SIGKILL every process of one node's session (its raylet, agents and actor processes)."""
        kill_session(node.pid)
        node.wait(10)

    def stop(self) -> None:
        """Kill every session started here, by pid; fail if any of their processes is left."""
        for proc in self.sessions:
            kill_session(proc.pid)
        for proc in self.sessions:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                pass
        wait_for(lambda: not self.leftovers(), 20, 0.2, "the test's Ray processes to be gone")
        shutil.rmtree(self.temp, ignore_errors=True)  # sessions' logs and the token

    def leftovers(self) -> list[str]:
        """Processes of this cluster still running: in our sessions, or naming our temp folder."""
        left = []
        sids = {p.pid for p in self.sessions}
        for pid, sid, cmd in processes():
            if sid in sids or (str(self.temp) in cmd and ("raylet" in cmd or "gcs_server" in cmd)):
                left.append(f"{pid} {cmd[:120]}")
        return left

    def named_actors(self, namespace: str = "srwatch") -> list[str]:
        """Live named actors in `namespace`, from the cluster's GCS (a short driver of its own)."""
        script = ("import json, ray; ray.init(address=%r, namespace=%r, log_to_driver=False); "
                  "print(json.dumps(ray.util.list_named_actors())); ray.shutdown()") % (self.address, namespace)
        out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=self.env,
                             timeout=120, cwd=str(self.root))
        assert out.returncode == 0, out.stderr[-2000:]
        return json.loads(out.stdout.strip().splitlines()[-1])


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def processes() -> Iterator[tuple[int, int, str]]:
    """(pid, session id, command line) of every process."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()  # after the command name, which may hold spaces
        if fields[0] == "Z":
            continue
        yield int(entry.name), int(fields[3]), cmd


def kill_session(sid: int) -> None:
    """SIGKILL each process of one session, by pid (Ray's actor processes have process groups of their own)."""
    for pid, session, _ in list(processes()):
        if session == sid:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def alive(pid: int) -> bool:
    """True while `pid` runs (a zombie counts as gone)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory) -> Iterator[RayCluster]:
    """One two-node cluster for the module (about 5 s to start); every process of it killed at the end."""
    require_model()
    started = RayCluster(tmp_path_factory.mktemp("ray")).start()
    try:
        yield started
    finally:
        started.stop()
        assert not started.leftovers()


@pytest.fixture
def two_nodes(cluster: RayCluster) -> RayCluster:
    """The cluster with both nodes (a test before may have stopped one: a new one replaces it)."""
    if len(cluster.running()) < 2:
        cluster.add_node()
    return cluster


# -- the daemon ---------------------------------------------------------------------------------
def ray_daemon(layout: Layout, cluster: RayCluster, log_name: str = "daemon.log", **overrides) -> DaemonProcess:
    """A daemon with 2 actors (one CPU each, so one per node) on the cluster; started, the caller closes it."""
    settings = {
        "pool": {"workers": 2, "threads_per_worker": 1, "backend": "ray"},
        "ray": {"address": cluster.address, "num_cpus": 1, "prefetch": 1},
        "watch": FAST_WATCH,
        "model": {"path": str(REPO / "models" / "EDSR-srwatch_x3.pb"), "engine": "opencv"},
    }
    for key, value in overrides.items():
        settings[key] = {**settings.get(key, {}), **value}
    config = write_config(layout, **settings)
    daemon = DaemonProcess(config, layout.root / log_name, env={k: cluster.env[k] for k in
                                                                ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN_PATH")})
    return daemon.start(timeout=180)


def actors(daemon: DaemonProcess) -> dict[str, tuple[str, int]]:
    """Actor name -> (node, pid), from the daemon's 'ray-N ready on node X (pid P, ...' lines."""
    return {m.group(1): (m.group(2), int(m.group(3))) for m in READY.finditer(daemon.log())}


def done_by(daemon: DaemonProcess) -> dict[str, str]:
    """Input name -> the actor that rendered it, from the daemon's 'done' lines."""
    return dict(re.findall(r"INFO srwatch\.daemon: done (\S+) -> .*; (ray-\d+)\)$", daemon.log(), re.M))


def dispatched(daemon: DaemonProcess, name: str) -> list[tuple[str, int, int]]:
    """(actor, pid, attempt) for each dispatch of `name` so far."""
    found = re.findall(rf"dispatched {re.escape(name)} to (ray-\d+) \(pid (\d+), attempt (\d+)\)", daemon.log())
    return [(actor, int(pid), int(attempt)) for actor, pid, attempt in found]


def kill_when_dispatched(daemon: DaemonProcess, name: str, attempt: int) -> int:
    """SIGKILL the actor process that got attempt `attempt` of `name`, as soon as it got it; its pid."""
    def sent() -> bool:
        return any(a == attempt for _, _, a in dispatched(daemon, name))
    wait_for(sent, 90, 0.01, f"attempt {attempt} of {name} dispatched")
    pid = next(p for _, p, a in dispatched(daemon, name) if a == attempt)
    os.kill(pid, signal.SIGKILL)
    return pid


# -- scenarios ----------------------------------------------------------------------------------
def test_files_are_spread_over_both_nodes_each_exactly_once(two_nodes: RayCluster, layout: Layout,
                                                            fault_report) -> None:
    """12 files: every one delivered once (3x), by actors on two different nodes; the nodes are reported."""
    daemon = ray_daemon(layout, two_nodes)
    try:
        placed = actors(daemon)
        assert len({node for node, _ in placed.values()}) == 2, f"both actors on one node: {placed}"
        drops = [place(layout.inbox, file_drop(f"spread-{i:02d}.png", SMALL + i, SMALL, seed=i)) for i in range(12)]
        wait_finished(layout, len(drops), 120, [daemon])
        by = done_by(daemon)
        per_node: dict[str, list[str]] = {}
        for name, actor in sorted(by.items()):
            per_node.setdefault(placed[actor][0], []).append(name)
        assert len(per_node) == 2, f"one node did every file: {per_node}"
        _status_names_nodes(layout, placed)
        assert daemon.stop() == 0
        check_and_report(fault_report, "ray: 12 files over two nodes", layout, drops,
                         extra={"files per node": {n: len(f) for n, f in per_node.items()}})
    finally:
        daemon.close()


def _status_names_nodes(layout: Layout, placed: dict[str, tuple[str, int]]) -> None:
    """status.json (`srwatch status`) shows each actor's node and pid."""
    path = layout.work / "status.json"
    wait_for(path.exists, 10, 0.2, "status.json")
    workers = {w["name"]: w for w in json.loads(path.read_text())["workers"]}
    for name, (node, pid) in placed.items():
        if name in workers:
            assert (workers[name]["node"], workers[name]["pid"]) == (node, pid), workers[name]


def test_an_actor_killed_mid_file_is_retried_and_one_killed_each_time_is_worker_crash(
        two_nodes: RayCluster, layout: Layout, fault_report) -> None:
    """SIGKILL the actor's process during a file: retried, then done. Every attempt: worker_crash."""
    daemon = ray_daemon(layout, two_nodes)
    try:
        again = place(layout.inbox, file_drop("again.png", SLOW, SLOW, seed=1))
        first = kill_when_dispatched(daemon, "again.png", attempt=1)
        wait_finished(layout, 1, 90, [daemon], "again.png done after its actor died")
        assert [a for _, _, a in dispatched(daemon, "again.png")] == [1, 2]
        assert "again.png" in done_by(daemon) and not alive(first)

        doomed = place(layout.inbox, file_drop("doomed.png", SLOW, SLOW, seed=2, expect="worker_crash"))
        for attempt in (1, 2):
            kill_when_dispatched(daemon, "doomed.png", attempt)
        wait_finished(layout, 2, 90, [daemon], "doomed.png quarantined")
        record = layout.reason("doomed.png")
        assert record["reason"] == "worker_crash" and record["attempts"] == 2, record
        assert "lost" in record["message"], record["message"]  # says the actor was lost, and where

        after = place(layout.inbox, file_drop("after.png", SMALL, SMALL, seed=3))  # replacements serve
        wait_finished(layout, 3, 90, [daemon], "a file after the kills")
        assert daemon.stop() == 0
        check_and_report(fault_report, "ray: actor SIGKILLed once / on every attempt", layout, [again, doomed, after])
    finally:
        daemon.close()


def test_a_file_past_job_timeout_is_quarantined_and_its_actor_replaced(two_nodes: RayCluster, layout: Layout,
                                                                      fault_report) -> None:
    """pool.job_timeout: the actor is killed and the file quarantined as timeout; a new actor serves the next."""
    daemon = ray_daemon(layout, two_nodes, pool={"job_timeout": 0.5})
    try:
        late = place(layout.inbox, file_drop("late.png", 2 * SLOW, 2 * SLOW, seed=4, expect="timeout"))
        wait_finished(layout, 1, 90, [daemon], "late.png quarantined")
        assert layout.reason("late.png")["reason"] == "timeout"
        assert re.search(r"ray-\d+ exceeded pool\.job_timeout on late\.png; killing it", daemon.log())
        wait_for(lambda: len(actors(daemon)) == 3, 60, 0.2, "a replacement actor")
        after = place(layout.inbox, file_drop("on-time.png", SMALL, SMALL, seed=5))
        wait_finished(layout, 2, 90, [daemon], "a file after the timeout")
        assert daemon.stop() == 0
        check_and_report(fault_report, "ray: a file past pool.job_timeout", layout, [late, after])
    finally:
        daemon.close()


def test_a_node_stopped_mid_batch_loses_and_doubles_nothing(two_nodes: RayCluster, layout: Layout,
                                                             fault_report) -> None:
    """The second node's processes are SIGKILLed while its actor holds a file: retried on the other node."""
    daemon = ray_daemon(layout, two_nodes)
    try:
        placed = actors(daemon)
        second = two_nodes.sessions[-1]
        second_pids = {pid for pid, sid, _ in processes() if sid == second.pid}
        on_second = [name for name, (_, pid) in placed.items() if pid in second_pids]
        assert len(on_second) == 1, f"no actor on the second node: {placed}"
        drops = [place(layout.inbox, file_drop(f"batch-{i:02d}.png", 200, 200, seed=i)) for i in range(10)]

        def second_busy() -> bool:
            return bool(re.search(rf"dispatched batch-\S+ to {on_second[0]} ", daemon.log()))
        wait_for(second_busy, 90, 0.01, "a file on the second node")
        two_nodes.kill_node(second)
        wait_finished(layout, len(drops), 180, [daemon], "the batch after losing a node")
        log = daemon.log()
        assert re.search(rf"{on_second[0]} died \(actor on node \S+ \(pid \d+\) lost", log), log[-3000:]
        by = done_by(daemon)
        assert any(actor != on_second[0] for actor in by.values())
        assert daemon.stop() == 0
        check_and_report(fault_report, "ray: a node stopped mid-batch", layout, drops,
                         extra={"retried after the node died": len(re.findall(r"died \(actor on node", log))})
    finally:
        daemon.close()


def test_daemon_sigkilled_and_restarted_takes_claimed_files_again_and_leaks_no_actor(
        two_nodes: RayCluster, layout: Layout, fault_report) -> None:
    """SIGKILL the daemon mid-batch: Ray ends its actors; the next run takes the claimed files again."""
    daemon = ray_daemon(layout, two_nodes, "daemon-1.log")
    try:
        old = actors(daemon)
        drops = [place(layout.inbox, file_drop(f"kill-{i:02d}.png", 200, 200, seed=i)) for i in range(8)]
        wait_for(lambda: "dispatched kill-" in daemon.log(), 90, 0.01, "a file dispatched")
        daemon.kill()
        # Non-detached actors share their driver's fate: nothing of the old run keeps running.
        wait_for(lambda: not any(alive(pid) for _, pid in old.values()), 60, 0.2, "the old run's actors to end")
    finally:
        daemon.close()
    again = ray_daemon(layout, two_nodes, "daemon-2.log")
    try:
        wait_finished(layout, len(drops), 120, [again], "the batch after a restart")
        assert "claimed by an earlier run" in again.log()
        new = actors(again)
        names = two_nodes.named_actors()
        assert names and all(f"-{again.pid}-" in n for n in names), f"actors of another run are alive: {names}"
        assert len(names) == len(new) == 2
        assert again.stop() == 0
        check_and_report(fault_report, "ray: daemon SIGKILLed and restarted", layout, drops,
                         extra={"old actors": sorted(old), "live actors after restart": names})
    finally:
        again.close()


def test_ray_missing_is_a_configuration_error(tmp_path: Path) -> None:
    """Without ray importable, pool.backend: ray stops the start with exit status 2 and says what to install."""
    shim = tmp_path / "shim" / "ray"
    shim.mkdir(parents=True)
    (shim / "__init__.py").write_text("raise ImportError('No module named ray (test shim)')\n")
    layout = Layout(tmp_path)
    config = write_config(layout, pool={"workers": 1, "backend": "ray"}, ray={"address": "local"})
    env = {**os.environ, "PYTHONPATH": str(shim.parent)}
    result = subprocess.run([sys.executable, "-m", "srwatch.cli", "run", "-c", str(config)], capture_output=True,
                            text=True, env=env, cwd=str(REPO), timeout=120)
    assert result.returncode == 2, result.stderr[-2000:]
    assert "pip install 'srwatch[ray]'" in result.stderr
