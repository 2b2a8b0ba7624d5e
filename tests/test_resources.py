"""Shipped files (srwatch.resources), model.path's bare names, and `srwatch init`."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from daemon_harness import REPO, image_bytes
from srwatch import resources
from srwatch.cli import main
from srwatch.config import load_config, parse_config
from srwatch.engine.openvino import int8_model_path
from srwatch.errors import ConfigError

DEFAULT = "EDSR-srwatch_x3.onnx"
FOLDERS = {"inbox": "in", "outbox": "out", "quarantine": "q", "archive": "a"}


def test_shipped_models_are_the_checkouts_models() -> None:
    names = resources.shipped_models()
    assert names == sorted(p.name for p in (REPO / "models").iterdir() if p.suffix in (".onnx", ".pb"))
    assert resources.DEFAULT_MODEL_NAME == DEFAULT and DEFAULT in names


def test_a_shipped_model_is_a_real_file_with_its_int8_ir_beside_it() -> None:
    for name in resources.shipped_models():
        path = resources.shipped_model(name)
        assert path.is_file() and path.name == name
        assert path.read_bytes() == (REPO / "models" / name).read_bytes()
        assert int8_model_path(path).is_file(), f"model.precision: int8 would not find {int8_model_path(path).name}"
    assert resources.default_model() == resources.shipped_model(DEFAULT)


def test_an_unknown_shipped_model_names_the_shipped_ones() -> None:
    with pytest.raises(FileNotFoundError, match="EDSR_x9.onnx.*shipped models: EDSR-srwatch_x2.onnx"):
        resources.shipped_model("EDSR_x9.onnx")
    with pytest.raises(FileNotFoundError):  # a companion, not a model
        resources.shipped_model("EDSR-srwatch_x3-int8.xml")


def parse_with_model(path: str, base: Path):
    return parse_config({"paths": dict(FOLDERS), "model": {"path": path}}, base)


def test_a_bare_name_is_the_shipped_model(tmp_path: Path) -> None:
    cfg = parse_with_model("EDSR-srwatch_x2.pb", tmp_path)
    assert cfg.model.path == resources.shipped_model("EDSR-srwatch_x2.pb")
    assert cfg.paths.inbox == tmp_path / "in", "folders stay relative to the config"


def test_a_file_next_to_the_config_wins_over_the_shipped_model(tmp_path: Path) -> None:
    (tmp_path / DEFAULT).write_bytes(b"my own model")
    assert parse_with_model(DEFAULT, tmp_path).model.path == tmp_path / DEFAULT


def test_a_path_with_a_folder_part_is_never_a_shipped_model(tmp_path: Path) -> None:
    # ./NAME says "this folder": it must not silently become the shipped file.
    for value in (f"./{DEFAULT}", f"models/{DEFAULT}"):
        assert parse_with_model(value, tmp_path).model.path == (tmp_path / value).resolve()


def test_an_unknown_bare_name_is_an_error_naming_the_key_and_the_shipped_models(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        parse_with_model("EDSR_x3.pb", tmp_path)
    message = str(info.value)
    assert message.startswith("model.path: ") and str(tmp_path / "EDSR_x3.pb") in message
    assert all(name in message for name in resources.shipped_models())


def test_the_reference_config_uses_the_shipped_default_by_name() -> None:
    raw = yaml.safe_load((REPO / "config" / "srwatch.yaml").read_text())
    assert raw["model"]["path"] == DEFAULT
    assert load_config(REPO / "config" / "srwatch.yaml").model.path == resources.default_model()
    assert resources.config_template() == (REPO / "config" / "srwatch.yaml").read_text()


def test_the_hot_folder_config_keeps_every_comment_and_points_at_its_own_folders(tmp_path: Path) -> None:
    text = resources.hot_folder_config()
    template = resources.config_template()
    comments = [line for line in template.splitlines() if line.lstrip().startswith("#")]
    assert len([line for line in text.splitlines() if line.lstrip().startswith("#")]) == len(comments) + 3
    assert "../var/" in template and "../var/" not in text, "a folder still points outside the hot folder"
    (tmp_path / "srwatch.yaml").write_text(text)
    cfg = load_config(tmp_path / "srwatch.yaml")
    assert {key: getattr(cfg.paths, key) for key in resources.HOT_FOLDERS} == {key: tmp_path / key for key in resources.HOT_FOLDERS}
    assert cfg.work_dir == tmp_path / ".srwatch-work" and cfg.model.path == resources.default_model()


def test_init_creates_the_folders_and_a_config_that_checks(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    folder = tmp_path / "new" / "hot"
    assert main(["init", str(folder)]) == 0
    assert sorted(p.name for p in folder.iterdir()) == sorted([*resources.HOT_FOLDERS, "srwatch.yaml"])
    assert main(["check-config", "--no-model", str(folder / "srwatch.yaml")]) == 0
    assert "OK" in capsys.readouterr().out


def test_init_never_replaces_a_config(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "srwatch.yaml").write_text("mine\n")
    assert main(["init", str(tmp_path)]) == 2
    assert "exists" in capsys.readouterr().err
    assert (tmp_path / "srwatch.yaml").read_text() == "mine\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["srwatch.yaml"], "a refused init creates nothing"


def test_init_in_a_file_is_a_usage_error(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "file").write_text("x")
    assert main(["init", str(tmp_path / "file")]) == 2
    assert "cannot create the hot folder" in capsys.readouterr().err


def test_upscale_without_model_ignores_a_same_named_file_in_the_current_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / DEFAULT).write_bytes(b"not a model")  # would fail to load if it were taken
    (tmp_path / "in.png").write_bytes(image_bytes(16, 12, seed=3))
    assert main(["upscale", "--threads", "1", "in.png", "out.png"]) == 0
    assert "(48x36)" in capsys.readouterr().out
