"""Config validation: clear messages naming the key, exit status 2, before anything starts."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from pydantic import BaseModel

from daemon_harness import REPO, Layout, entries, image_bytes, model_for_tests, write_config
from srwatch.config import Config, load_config, parse_config
from srwatch.errors import ConfigError


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "srwatch.cli", *args], capture_output=True, text=True, cwd=REPO, timeout=120)


def drop_a_file(layout: Layout) -> bytes:
    """A real image in the inbox, as a refused start must find it: it stays, byte for byte."""
    data = image_bytes(20, 20, seed=9)
    (layout.inbox / "waiting.png").write_bytes(data)
    return data


def assert_nothing_started(layout: Layout, data: bytes) -> None:
    """A refused start changes nothing: the dropped file is untouched, no folder was created."""
    assert sorted(entries(layout.inbox)) == ["waiting.png"], f"inbox changed: {sorted(entries(layout.inbox))}"
    assert (layout.inbox / "waiting.png").read_bytes() == data, "the file in the inbox was modified"
    for folder in (layout.outbox, layout.quarantine, layout.archive, layout.work):
        assert not folder.exists(), f"nothing may start on a bad config, but {folder.name}/ was created"


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
        ({"pool": {"prefetch": -1}}, "pool.prefetch: "),
        ({"pool": {"prefetch": "lots"}}, "pool.prefetch:"),
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
        # 0 would take files the moment they appear, half written.
        (lambda l, c: c["watch"].update(settle_seconds=0), "watch.settle_seconds"),
    ],
)
def test_run_refuses_bad_config_with_status_2(tmp_path: Path, mutate, message: str) -> None:
    layout = Layout(tmp_path)
    config = write_config(layout)
    data = drop_a_file(layout)
    raw = yaml.safe_load(config.read_text())
    mutate(layout, raw)
    config.write_text(yaml.safe_dump(raw))
    for args in (("check-config", str(config)), ("run", "-c", str(config))):
        result = run_cli(*args)
        assert result.returncode == 2, (args, result.stdout, result.stderr)
        assert message in result.stderr, result.stderr
    assert_nothing_started(layout, data)


@pytest.mark.parametrize(
    "links",
    [
        pytest.param({"outbox": "inbox"}, id="outbox-is-a-link-to-the-inbox"),
        pytest.param({"archive": "outbox"}, id="archive-is-a-link-to-the-outbox"),
        pytest.param({"quarantine": "inbox/sub"}, id="quarantine-is-a-link-into-the-inbox"),
        pytest.param({"inbox": "outbox/in"}, id="inbox-is-a-link-into-the-outbox"),
    ],
)
def test_folders_overlapping_through_symlinks_are_refused(tmp_path: Path, links: dict) -> None:
    """Folders are compared by what they are, not by how they are spelled: a link is followed for the check."""
    layout = Layout(tmp_path)
    real = {}
    for key, target in links.items():
        link = getattr(layout, key)
        dest = tmp_path / target
        dest.mkdir(parents=True, exist_ok=True)
        if link.exists():
            link.rmdir()
        link.symlink_to(dest, target_is_directory=True)
        real[key] = dest
    for key in ("outbox", "archive", "quarantine"):
        if key not in links and not getattr(layout, key).exists():
            getattr(layout, key).mkdir()
    config = write_config(layout)
    data = image_bytes(20, 20, seed=9)
    (layout.inbox / "waiting.png").write_bytes(data)
    before = {rel: e.content() for rel, e in entries(tmp_path).items() if not rel.endswith(".yaml")}
    (key, target), = links.items()
    overlapping = {"inbox": "paths.inbox", "outbox": "paths.outbox", "archive": "paths.archive",
                   "quarantine": "paths.quarantine"}
    other = overlapping[target.split("/")[0]]
    for args in (("check-config", str(config)), ("run", "-c", str(config))):
        result = run_cli(*args)
        assert result.returncode == 2, (
            f"{args[0]} must refuse paths.{key} -> {target} (same folder, or nested, through a link) "
            f"with exit 2; got {result.returncode}:\n{result.stdout}{result.stderr}")
        assert f"paths.{key}" in result.stderr and other in result.stderr, (
            f"the message must name both paths.{key} and {other}:\n{result.stderr}")
    after = {rel: e.content() for rel, e in entries(tmp_path).items() if not rel.endswith(".yaml")}
    assert after == before, "nothing may be processed or created when the folders overlap"
    assert not layout.work.exists(), "no work folder may be created on a refused start"


def test_unloadable_model_is_a_config_error(tmp_path: Path) -> None:
    layout = Layout(tmp_path)
    garbage = tmp_path / "EDSR_x3.pb"
    garbage.write_bytes(b"\x08\x01garbage that is not a graph" * 10)
    config = write_config(layout, model={"path": str(garbage)})
    data = drop_a_file(layout)
    result = run_cli("run", "-c", str(config))
    assert result.returncode == 2, result.stderr
    assert "model" in result.stderr.lower()
    assert_nothing_started(layout, data)


def test_version() -> None:
    result = run_cli("--version")
    assert result.returncode == 0 and result.stdout.startswith("srwatch ")


_TOP_KEY = re.compile(r"(#\s?)?([a-z_]+):(\s|$)")
_SECTION_KEY = re.compile(r"  (#\s?)?([a-z_]+):(\s|$)")


def documented_keys(text: str) -> dict[str, set[str]]:
    """Keys written as key lines (`key: value`, or commented out as `# key: value`) per section.

    A top-level line `name:` opens a section; its keys are the lines indented by two spaces.
    Prose in comments does not count: only a line that is itself a key.
    """
    sections: dict[str, set[str]] = {"": set()}
    current = ""
    for line in text.splitlines():
        top = _TOP_KEY.fullmatch(line) or _TOP_KEY.match(line)
        if top and not line.startswith(" ") and not top.group(1):
            current = top.group(2)
            sections[""].add(current)
            sections.setdefault(current, set())
            continue
        key = _SECTION_KEY.match(line)
        if key and current:
            sections[current].add(key.group(2))
    return sections


def test_documented_keys_parser_reads_key_lines_only() -> None:
    text = "pool:\n  # Files beyond queue_size: wait.\n  queue_size: 3\n  # work: ../x\nwatch:\n  size: 1\n"
    keys = documented_keys(text)
    assert keys["pool"] == {"queue_size", "work"} and keys["watch"] == {"size"}
    assert "size" not in keys["pool"], "a key of another section must not count"


def test_shipped_config_is_valid_and_documents_every_option() -> None:
    path = REPO / "config" / "srwatch.yaml"
    cfg = load_config(path)
    documented = documented_keys(path.read_text())
    # Every option of every section appears in the shipped file, as its own key line in its
    # own section (commented out where it has no default value): the file is the manual.
    for section_name, section in cfg:
        if section_name == "source":
            continue
        assert section_name in documented[""], f"{section_name} is not a key line in config/srwatch.yaml"
        if isinstance(section, BaseModel):
            fields = set(type(section).model_fields)
            missing = sorted(fields - documented[section_name])
            assert not missing, f"{section_name}: {missing} not documented as key lines in config/srwatch.yaml"
            stale = sorted(documented[section_name] - fields)
            assert not stale, f"{section_name}: config/srwatch.yaml documents {stale}, which are not options"
