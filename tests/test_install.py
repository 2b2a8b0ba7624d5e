"""A real `pip install .` works from any folder: the wheel carries the shipped models and the
reference config, and srwatch finds them without the checkout.

No mocks and no network: the wheel is built from a copy of the checkout with this venv's
setuptools, installed with --no-deps into a fresh venv, and that venv sees this venv's
dependencies through a .pth file (never srwatch itself: a .pth line adds a folder to sys.path
but does not run the editable install's own .pth hook). Every srwatch command then runs as the
new venv's console script, in a folder far from the checkout, with no PYTHONPATH.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from dataclasses import dataclass
from pathlib import Path

import cv2
import pytest
import yaml

from daemon_harness import REPO, image_bytes

DEFAULT_MODEL = "EDSR-srwatch_x3.onnx"
# Build outputs and local state never belong in the copy the wheel is built from.
NOT_SOURCES = shutil.ignore_patterns(".git", ".venv", "var", "runs", "build", "dist", ".whl", "__pycache__", ".pytest_cache", "*.egg-info")


@dataclass
class Installed:
    """A fresh venv holding srwatch from a wheel of the checkout."""

    venv: Path
    wheel: Path
    work: Path  # an empty folder far from the checkout: the commands' cwd

    @property
    def srwatch(self) -> str:
        return str(self.venv / "bin" / "srwatch")


def run(args: list[str], cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess:
    """Run a command as a user would, with nothing pointing at the checkout."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "PYTHONSAFEPATH")}
    # At most 2 CPUs: `pool.workers: auto` would start up to 8 workers on a big CI machine.
    cpus = sorted(os.sched_getaffinity(0))[:2]
    return subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout,
                          preexec_fn=lambda: os.sched_setaffinity(0, cpus))


def ok(result: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert result.returncode == 0, f"{result.args} exited {result.returncode}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    return result


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Installed:
    root = tmp_path_factory.mktemp("install")
    source = root / "source"
    # A copy, so that the build leaves no build/ or egg-info in the checkout for a parallel run.
    shutil.copytree(REPO, source, ignore=NOT_SOURCES, symlinks=True)
    ok(run([sys.executable, "-m", "pip", "wheel", str(source), "--no-deps", "--no-build-isolation", "--no-index",
            "-q", "-w", str(root / "dist")], cwd=root, timeout=300))
    (wheel,) = (root / "dist").glob("srwatch-*.whl")
    venv = root / "venv"
    ok(run([sys.executable, "-m", "venv", "--without-pip", str(venv)], cwd=root))
    ok(run([sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install", "--no-deps", "--no-index",
            "-q", str(wheel)], cwd=root, timeout=300))
    # The dependencies (cv2, openvino, pydantic, ...) from this venv, without downloading them.
    site = ok(run([str(venv / "bin" / "python"), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], cwd=root))
    here = sorted({sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]})
    Path(site.stdout.strip(), "srwatch-test-deps.pth").write_text("".join(f"{p}\n" for p in here))
    work = root / "elsewhere"
    work.mkdir()
    return Installed(venv=venv, wheel=wheel, work=work)


def write_image(path: Path, width: int, height: int, seed: int) -> Path:
    path.write_bytes(image_bytes(width, height, seed, path.suffix))
    return path


def image_size(path: Path) -> tuple[int, int]:
    img = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    assert img is not None, f"{path} is not a readable image"
    return img.shape[1], img.shape[0]


def test_the_wheel_carries_every_module_and_the_shipped_files(installed: Installed) -> None:
    names = set(zipfile.ZipFile(installed.wheel).namelist())
    modules = {p.relative_to(REPO).as_posix() for p in (REPO / "srwatch").rglob("*.py") if "__pycache__" not in p.parts}
    missing = sorted(modules - names)
    assert not missing, f"the wheel lacks {missing}: add their package to [tool.setuptools] packages in pyproject.toml"
    shipped = {f"srwatch/models/{p.name}" for p in (REPO / "models").iterdir() if p.suffix in (".onnx", ".pb", ".xml", ".bin")}
    assert shipped and shipped <= names, f"models missing from the wheel: {sorted(shipped - names)}"
    assert "srwatch/templates/srwatch.yaml" in names


def test_the_installed_srwatch_is_the_wheel_not_the_checkout(installed: Installed) -> None:
    probe = (
        "import json, srwatch\n"
        "from srwatch import resources\n"
        "from srwatch.engine.openvino import int8_model_path\n"
        "model = resources.default_model()\n"
        "print(json.dumps({'module': srwatch.__file__, 'model': str(model), 'int8': int8_model_path(model).is_file(),\n"
        "                  'names': resources.shipped_models()}))\n"
    )
    facts = json.loads(ok(run([str(installed.venv / "bin" / "python"), "-c", probe], cwd=installed.work)).stdout)
    venv = installed.venv.resolve()
    assert Path(facts["module"]).resolve().is_relative_to(venv), f"srwatch imported from {facts['module']}, not the new venv"
    assert Path(facts["model"]).resolve().is_relative_to(venv), f"default model {facts['model']} is not the installed one"
    assert facts["int8"], "the int8 IR must sit beside the installed model (model.precision: int8)"
    assert DEFAULT_MODEL in facts["names"] and "EDSR-srwatch_x2.pb" in facts["names"]


def test_upscale_without_a_model_from_any_folder(installed: Installed) -> None:
    work = installed.work / "upscale"
    work.mkdir()
    write_image(work / "in.png", 64, 48, seed=1)
    out = ok(run([installed.srwatch, "upscale", "in.png", "out.png"], cwd=work))
    assert image_size(work / "out.png") == (192, 144), out.stdout


def inbox_with_two_images(inbox: Path) -> dict[str, tuple[int, int]]:
    sizes = {"a.png": (40, 32), "b.jpg": (48, 36)}
    for seed, (name, (w, h)) in enumerate(sizes.items()):
        write_image(inbox / name, w, h, seed)
    return sizes


def assert_processed(folder: Path, sizes: dict[str, tuple[int, int]]) -> None:
    """Each input upscaled x3 in the outbox, its original archived, nothing left or quarantined."""
    for name, (w, h) in sizes.items():
        stem, ext = name.rsplit(".", 1)
        assert image_size(folder / "outbox" / f"{stem}_x3.{ext}") == (3 * w, 3 * h)
        assert (folder / "archive" / name).is_file(), f"{name} not archived"
    assert not list((folder / "inbox").iterdir()), "the inbox must be empty"
    assert not list((folder / "quarantine").iterdir()), f"quarantined: {list((folder / 'quarantine').iterdir())}"


def test_once_with_a_bare_model_name(installed: Installed) -> None:
    folder = installed.work / "bare"
    for name in ("inbox", "outbox", "quarantine", "archive"):
        (folder / name).mkdir(parents=True)
    config = folder / "cfg.yaml"
    config.write_text(yaml.safe_dump({
        "paths": {"inbox": "inbox", "outbox": "outbox", "quarantine": "quarantine", "archive": "archive"},
        "model": {"path": DEFAULT_MODEL},
    }))
    sizes = inbox_with_two_images(folder / "inbox")
    ok(run([installed.srwatch, "once", "-c", str(config)], cwd=installed.work))
    assert_processed(folder, sizes)


def test_init_makes_a_hot_folder_that_checks_and_runs(installed: Installed) -> None:
    folder = installed.work / "hot"
    made = ok(run([installed.srwatch, "init", "hot"], cwd=installed.work))
    assert "srwatch.yaml" in made.stdout
    config = folder / "srwatch.yaml"
    assert yaml.safe_load(config.read_text())["model"]["path"] == DEFAULT_MODEL
    checked = ok(run([installed.srwatch, "check-config", str(config)], cwd=installed.work))
    assert "loaded and tested" in checked.stdout
    assert any(str(venv) in checked.stdout for venv in (installed.venv, installed.venv.resolve())), "not the shipped model"
    sizes = inbox_with_two_images(folder / "inbox")
    ok(run([installed.srwatch, "once", "-c", str(config)], cwd=folder))
    assert_processed(folder, sizes)
    before = config.read_bytes()
    again = run([installed.srwatch, "init", str(folder)], cwd=installed.work)
    assert again.returncode == 2 and "exists" in again.stderr
    assert config.read_bytes() == before, "srwatch init must never replace a config"
