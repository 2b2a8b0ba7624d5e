"""The shipped systemd unit: stop timeout vs the config, `systemd-analyze verify`, exposure score."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
UNIT = REPO / "systemd" / "srwatch.service"
CONFIG = REPO / "config" / "srwatch.yaml"

#: The highest overall exposure `systemd-analyze security` may give the unit (0 safe .. 10 unsafe).
MAX_EXPOSURE = 2.5
#: Seconds the supervisor needs after shutdown_timeout to stop its workers and exit.
STOP_MARGIN = 10.0

#: systemd time-span units in seconds (systemd.time(7)); a bare number is seconds.
_TIMESPAN_UNITS = {
    "usec": 1e-6, "us": 1e-6, "μs": 1e-6,
    "msec": 1e-3, "ms": 1e-3,
    "seconds": 1, "second": 1, "sec": 1, "s": 1, "": 1,
    "minutes": 60, "minute": 60, "min": 60, "m": 60,
    "hours": 3600, "hour": 3600, "hr": 3600, "h": 3600,
    "days": 86400, "day": 86400, "d": 86400,
    "weeks": 604800, "week": 604800, "w": 604800,
    "months": 2629800, "month": 2629800, "M": 2629800,
    "years": 31557600, "year": 31557600, "y": 31557600,
}


def parse_timespan(text: str) -> float:
    """Seconds in a systemd time span: `90`, `90s`, `1min 30s`, `1m30s`, `1.5h`; `infinity` is inf.

    A number without a unit counts as seconds, also inside a longer span (`1 30s` is 31 s), as in systemd.
    """
    text = text.strip()
    if text == "infinity":
        return float("inf")
    parts = re.findall(r"\s*([0-9]+(?:\.[0-9]*)?)\s*([a-zA-Zμ]*)", text)
    if not parts or "".join(n + u for n, u in parts) != re.sub(r"\s+", "", text):
        raise ValueError(f"not a systemd time span: {text!r}")
    try:
        return sum(float(number) * _TIMESPAN_UNITS[unit] for number, unit in parts)
    except KeyError as exc:
        raise ValueError(f"unknown time unit {exc} in {text!r}") from None


def unit_settings(text: str, section: str) -> dict[str, str]:
    """`Key=value` settings of one section of a unit file; a later assignment wins (as in systemd)."""
    settings: dict[str, str] = {}
    current = None
    for raw in text.replace("\\\n", " ").splitlines():
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("[") and line.endswith("]"):
            current = line[1:-1]
        elif current == section and "=" in line:
            key, value = line.split("=", 1)
            settings[key.strip()] = value.strip()
    return settings


def require_tool(name: str) -> str:
    """The path of a program; if missing, fail on CI (CI=true) and skip elsewhere (like conftest.require)."""
    path = shutil.which(name)
    if path is None:
        message = f"{name} is not installed (`make test` installs it with apt-get where it can)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return path


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("90", 90), ("90s", 90), ("1min 30s", 90), ("1m30s", 90), ("1min30sec", 90), ("2 min", 120),
     ("1 30s", 31), ("1.5h", 5400), ("500ms", 0.5), ("infinity", float("inf"))],
)
def test_timespan_parser(text: str, seconds: float) -> None:
    assert parse_timespan(text) == seconds
    analyze = shutil.which("systemd-analyze")
    if analyze and seconds != float("inf"):  # and systemd reads it the same way
        out = subprocess.run([analyze, "timespan", text], capture_output=True, text=True, timeout=60).stdout
        assert re.search(rf"μs: {round(seconds * 1e6)}\b", out), out


@pytest.mark.parametrize("text", ["", "ninety", "90 parsecs", "-5s", "s"])
def test_timespan_parser_rejects_garbage(text: str) -> None:
    with pytest.raises(ValueError):
        parse_timespan(text)


def test_stop_timeout_exceeds_the_shipped_shutdown_timeout() -> None:
    """systemd must not SIGKILL the service while files in progress are still allowed to finish."""
    service = unit_settings(UNIT.read_text(), "Service")
    # TimeoutSec= sets both start and stop timeouts; TimeoutStopSec= overrides it for the stop.
    stop = service.get("TimeoutStopSec") or service.get("TimeoutSec")
    assert stop, "set TimeoutStopSec= explicitly (systemd's default is 90 s, whatever the config says)"
    shutdown_timeout = yaml.safe_load(CONFIG.read_text())["shutdown_timeout"]
    if isinstance(shutdown_timeout, str):
        shutdown_timeout = parse_timespan(shutdown_timeout)
    assert parse_timespan(stop) > float(shutdown_timeout) + STOP_MARGIN, (
        f"TimeoutStopSec={stop} leaves too little time after shutdown_timeout: {shutdown_timeout} s "
        f"in {CONFIG.name} (+{STOP_MARGIN:.0f} s for the supervisor to stop its workers and exit)"
    )


def test_systemd_analyze_verify_is_clean(tmp_path: Path) -> None:
    analyze = require_tool("systemd-analyze")
    # `verify` checks that ExecStart's program exists and is executable; the unit names the
    # installed path (/opt/srwatch/.venv/bin/srwatch), which a checkout does not have. So verify
    # a copy whose ExecStart program is this checkout's own `srwatch` entry point (same
    # arguments, everything else byte for byte). The copy keeps the name srwatch.service.
    entry_point = Path(sys.executable).with_name("srwatch")
    assert entry_point.is_file(), f"no {entry_point}: install srwatch into this venv (pip install -e .)"
    text = UNIT.read_text()
    copy, count = re.subn(r"^ExecStart=/opt/srwatch/\.venv/bin/srwatch ", f"ExecStart={entry_point} ", text, flags=re.M)
    assert count == 1, "ExecStart= no longer runs /opt/srwatch/.venv/bin/srwatch: update this test"
    unit = tmp_path / UNIT.name
    unit.write_text(copy)
    # --man=no: Documentation= man pages are absent from minimal (CI) images, and are not the unit's fault.
    result = subprocess.run([analyze, "verify", "--man=no", str(unit)], capture_output=True, text=True, timeout=120)
    output = (result.stdout + result.stderr).strip()
    assert result.returncode == 0, f"systemd-analyze verify exited {result.returncode}:\n{output}"
    # verify also loads the unit's dependencies (network-online.target...) from this host: only
    # what it says about our unit is ours to fix.
    about_us = [line for line in output.splitlines() if "srwatch" in line]
    assert not about_us, "systemd-analyze verify complains:\n" + "\n".join(about_us)


def test_systemd_analyze_security_exposure() -> None:
    analyze = require_tool("systemd-analyze")
    result = subprocess.run(
        [analyze, "security", "--offline=true", "--no-pager", str(UNIT)],
        capture_output=True, text=True, timeout=120, env={**os.environ, "SYSTEMD_COLORS": "0"},
    )
    output = result.stdout + result.stderr
    match = re.search(r"Overall exposure level for srwatch\.service:\s*([0-9]+(?:\.[0-9]+)?)", output)
    assert match, f"no overall exposure in the output (exit {result.returncode}):\n{output}"
    exposure = float(match.group(1))
    worst = [line.strip() for line in output.splitlines() if line.lstrip().startswith("✗")]
    assert exposure <= MAX_EXPOSURE, f"exposure {exposure} > {MAX_EXPOSURE}; open points:\n" + "\n".join(worst)
