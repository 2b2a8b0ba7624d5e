"""`srwatch unit -c FILE`: the shipped unit made for a config, still clean and still hardened."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from test_systemd_unit import MAX_EXPOSURE, REPO, require_tool, unit_settings

TOKEN = "unit-test-token-0123456789"


def unit_for(tmp_path: Path, **sections) -> tuple[str, dict[str, str]]:
    """Run `srwatch unit` on a config with `sections`; the unit's text and its [Service] settings."""
    cfg = {"paths": {"inbox": "hot/in", "outbox": "hot/out", "quarantine": "hot/bad", "archive": "hot/done"},
           "model": {"path": "EDSR-srwatch_x3.onnx"}, **sections}
    config = tmp_path / "my config.yaml"  # a space: ExecStart= must quote it
    config.write_text(yaml.safe_dump(cfg))
    result = subprocess.run([sys.executable, "-m", "srwatch.cli", "unit", "-c", str(config)], cwd=REPO,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return result.stdout, unit_settings(result.stdout, "Service")


@pytest.mark.parametrize(("sections", "need"), [
    ({}, "none"),
    ({"metrics": {"listen": "127.0.0.1:9108"}}, "localhost"),
    ({"metrics": {"listen": "0.0.0.0:9108", "token": TOKEN}}, "any"),
    ({"notify": {"webhook": "https://hooks.example/srwatch"}}, "any"),
])
def test_network_follows_the_config(tmp_path: Path, sections: dict, need: str) -> None:
    text, service = unit_for(tmp_path, **sections)
    assert text.startswith("# Made by `srwatch unit") and f"Network: {need} (" in text.splitlines()[0]
    if need == "none":
        assert service["RestrictAddressFamilies"] == "AF_UNIX"
        assert service["PrivateNetwork"] == "yes"
    else:
        assert service["RestrictAddressFamilies"] == "AF_UNIX AF_INET AF_INET6"
        assert "PrivateNetwork" not in service
    if need == "localhost":
        assert (service["IPAddressDeny"], service["IPAddressAllow"]) == ("any", "localhost")
    if need == "any":
        assert "IPAddressDeny" not in service and "IPAddressAllow" not in service
    assert service["ExecStart"].endswith(f'run -c "{tmp_path / "my config.yaml"}"')
    assert service["ReadWritePaths"] == f"-{tmp_path / 'hot'}" or all(
        word.startswith(f"-{tmp_path}/hot/") for word in service["ReadWritePaths"].split()), service["ReadWritePaths"]
    # Everything else is the shipped unit, line for line.
    shipped = unit_settings((REPO / "systemd" / "srwatch.service").read_text(), "Service")
    changed = {"ExecStart", "ReadWritePaths", "RestrictAddressFamilies", "IPAddressDeny", "IPAddressAllow", "PrivateNetwork"}
    assert {k: v for k, v in service.items() if k not in changed} == {k: v for k, v in shipped.items() if k not in changed}


@pytest.mark.parametrize("sections", [{}, {"metrics": {"listen": "127.0.0.1:9108"}},
                                      {"metrics": {"listen": "[::]:9108", "token": TOKEN}}])
def test_tailored_units_verify_and_stay_hardened(tmp_path: Path, sections: dict) -> None:
    analyze = require_tool("systemd-analyze")
    text, _ = unit_for(tmp_path, **sections)
    unit = tmp_path / "srwatch.service"
    unit.write_text(text)
    verify = subprocess.run([analyze, "verify", "--man=no", str(unit)], capture_output=True, text=True, timeout=120)
    about_us = [line for line in (verify.stdout + verify.stderr).splitlines() if "srwatch" in line]
    assert verify.returncode == 0 and not about_us, verify.stdout + verify.stderr
    security = subprocess.run([analyze, "security", "--offline=true", "--no-pager", str(unit)], capture_output=True,
                              text=True, timeout=120, env={**os.environ, "SYSTEMD_COLORS": "0"})
    exposure = float(security.stdout.rsplit("Overall exposure level for srwatch.service:", 1)[1].split()[0])
    assert exposure <= MAX_EXPOSURE, security.stdout


def test_a_bad_config_is_exit_2(tmp_path: Path) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text("paths: {inbox: in}\n")
    result = subprocess.run([sys.executable, "-m", "srwatch.cli", "unit", "-c", str(config)], cwd=REPO,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "configuration error" in result.stderr
