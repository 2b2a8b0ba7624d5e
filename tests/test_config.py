"""Config validation: clear messages naming the key, exit status 2, before anything starts."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from pydantic import BaseModel

from daemon_harness import REPO, Layout, model_for_tests, write_config
from srwatch.config import Config, load_config, parse_config
from srwatch.errors import ConfigError


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "srwatch.cli", *args], capture_output=True, text=True, cwd=REPO, timeout=120)


def minimal(tmp_path: Path) -> dict:
    return {
        "paths": {"inbox": "in", "outbox": "out", "quarantine": "q", "archive": "a"},
        "model": {"path": str(model_for_tests())},
    }


def test_relative_paths_are_relative_to_the_config_file(tmp_path: Path) -> None:
    (tmp_path / "cfg").mkdir()
    path = tmp_path / "cfg" / "s.yaml"
    path.write_text(yaml.safe_dump(minimal(tmp_path)))
    cfg = load_config(path)
    assert cfg.paths.inbox == tmp_path / "cfg" / "in"
    assert cfg.work_dir == tmp_path / "cfg" / ".srwatch-work"
    assert cfg.source == path.resolve()


def test_required_keys_exist_with_documented_names(tmp_path: Path) -> None:
    cfg = parse_config(minimal(tmp_path), tmp_path)
    assert isinstance(cfg, Config)
    for dotted in ("paths.inbox", "paths.outbox", "paths.quarantine", "paths.archive", "model.path", "pool.workers", "on_success"):
        obj = cfg
        for part in dotted.split("."):
            obj = getattr(obj, part)
    assert cfg.on_success == "archive"
    workers, threads = cfg.worker_layout()
    assert workers >= 1 and threads >= 1


@pytest.mark.parametrize(
    "patch, message",
    [
        ({"pool": {"wrokers": 2}}, "pool.wrokers: unknown key"),
        ({"pool": {"workers": "many"}}, "pool.workers:"),
        ({"pool": {"workers": 0}}, "pool.workers: "),
        ({"on_success": "keep"}, "on_success:"),
        ({"tile": {"size": 4}}, "tile.size:"),
        ({"output": {"suffix": "_{nope}"}}, "output.suffix:"),
        ({"paths": {"inbox": "in", "outbox": "in/out", "quarantine": "q", "archive": "a"}}, "paths.outbox"),
        ({"paths": {"inbox": "x/in", "outbox": "x", "quarantine": "q", "archive": "a"}}, "paths.inbox"),
        ({"paths": {"inbox": "in", "outbox": "o", "quarantine": "o", "archive": "a"}}, "same folder"),
        ({"model": {}}, "model.path: required key is missing"),
    ],
)
def test_invalid_values_name_the_key(tmp_path: Path, patch: dict, message: str) -> None:
    raw = minimal(tmp_path)
    raw.update(patch)
    with pytest.raises(ConfigError) as err:
        parse_config(raw, tmp_path)
    assert message in str(err.value)


def test_check_config_ok_and_loads_the_model(tmp_path: Path) -> None:
    layout = Layout(tmp_path)
    config = write_config(layout)
    result = run_cli("check-config", str(config))
    assert result.returncode == 0, result.stderr
    assert "OK" in result.stdout and "loaded and tested" in result.stdout
    assert not layout.outbox.exists(), "check-config must not create folders"


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda l, c: c["pool"].update(bogus=1), "pool.bogus: unknown key"),
        (lambda l, c: c["paths"].update(inbox=str(l.root / "missing")), "paths.inbox: folder does not exist"),
        (lambda l, c: c["paths"].update(outbox=str(l.inbox / "out")), "is inside paths.inbox"),
        (lambda l, c: c["model"].update(path=str(l.root / "nope.pb")), "model.path: no such file"),
        (lambda l, c: c["pool"].update(workers="lots"), "pool.workers"),
    ],
)
def test_run_refuses_bad_config_with_status_2(tmp_path: Path, mutate, message: str) -> None:
    layout = Layout(tmp_path)
    config = write_config(layout)
    raw = yaml.safe_load(config.read_text())
    mutate(layout, raw)
    config.write_text(yaml.safe_dump(raw))
    for args in (("check-config", str(config)), ("run", "-c", str(config))):
        result = run_cli(*args)
        assert result.returncode == 2, (args, result.stdout, result.stderr)
        assert message in result.stderr, result.stderr
    assert not layout.outbox.exists(), "nothing may start on a bad config"


def test_unloadable_model_is_a_config_error(tmp_path: Path) -> None:
    layout = Layout(tmp_path)
    garbage = tmp_path / "EDSR_x3.pb"
    garbage.write_bytes(b"\x08\x01garbage that is not a graph" * 10)
    config = write_config(layout, model={"path": str(garbage)})
    result = run_cli("run", "-c", str(config))
    assert result.returncode == 2, result.stderr
    assert "model" in result.stderr.lower()
    assert layout.files(layout.inbox) == []


def test_version() -> None:
    result = run_cli("--version")
    assert result.returncode == 0 and result.stdout.startswith("srwatch ")


def test_shipped_config_is_valid_and_documents_every_option() -> None:
    path = REPO / "config" / "srwatch.yaml"
    cfg = load_config(path)
    text = path.read_text()
    # Every option of every section appears in the shipped file (it is the manual).
    for section_name, section in cfg:
        if section_name == "source":
            continue
        assert f"{section_name}:" in text, section_name
        if isinstance(section, BaseModel):
            for key in type(section).model_fields:
                assert f"{key}:" in text, f"{section_name}.{key} is not documented in config/srwatch.yaml"
