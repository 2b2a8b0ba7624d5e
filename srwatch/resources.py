"""Files shipped inside the srwatch package: the default models and the reference config.

In the checkout they live in the top-level ``models/`` and ``config/`` folders; pyproject.toml
maps them into the package as ``srwatch.models`` and ``srwatch.templates``, so a wheel
(``pip install .``) carries them and an editable install (``pip install -e .``) finds them where
they are. Everything here goes through importlib.resources, never through a path relative to
this file, so it works wherever srwatch is installed.

A model is used by name: ``shipped_model("EDSR-srwatch_x3.onnx")`` is its real path (the engines
open files by path), and ``model.path: EDSR-srwatch_x3.onnx`` in a config means the same file
(``srwatch.config``).
"""
from __future__ import annotations

import atexit
import contextlib
import re
from importlib import resources
from importlib.abc import Traversable
from pathlib import Path

MODELS_PACKAGE = "srwatch.models"
TEMPLATES_PACKAGE = "srwatch.templates"
#: The model `srwatch upscale` uses without --model, and the one `srwatch init` configures.
DEFAULT_MODEL_NAME = "EDSR-srwatch_x3.onnx"
CONFIG_TEMPLATE_NAME = "srwatch.yaml"
#: What model.path may name (srwatch.engine.models.FORMATS); the int8 IRs (<stem>-int8.xml/.bin)
#: ship too, but only as companions of a model, found beside it.
MODEL_SUFFIXES = (".onnx", ".pb")
#: The folders of a hot folder made by `srwatch init`, each named as its paths.* key.
HOT_FOLDERS = ("inbox", "outbox", "quarantine", "archive")

# The checkout's folders, for a source tree that runs without being installed (PYTHONPATH=.):
# then no srwatch.models package exists, but the files sit right there.
_CHECKOUT = Path(__file__).resolve().parent.parent
_CHECKOUT_FOLDERS = {MODELS_PACKAGE: _CHECKOUT / "models", TEMPLATES_PACKAGE: _CHECKOUT / "config"}

# Real-path copies made by as_file (only for an install that is not plain files, e.g. zipped)
# must outlive the call: they are removed when the process exits.
_COPIES = contextlib.ExitStack()
atexit.register(_COPIES.close)


def _folder(package: str) -> Traversable:
    """The package's data folder: installed (wheel or editable), else the checkout's folder."""
    try:
        return resources.files(package)
    except ModuleNotFoundError:
        return _CHECKOUT_FOLDERS[package]


def shipped_models() -> list[str]:
    """The names of the shipped model files that model.path may name, sorted ([] if none shipped)."""
    folder = _folder(MODELS_PACKAGE)
    if not folder.is_dir():  # a package built without its data: say so, do not crash
        return []
    return sorted(entry.name for entry in folder.iterdir() if entry.is_file() and entry.name.lower().endswith(MODEL_SUFFIXES))


def shipped_model(name: str) -> Path:
    """The real path of the shipped model `name` (e.g. ``EDSR-srwatch_x3.onnx``).

    Raises FileNotFoundError, naming the shipped models, when there is none of that name.
    Installed as plain files (what pip does) the path is the file itself, with its int8 IR
    companions beside it; otherwise as_file gives a temporary copy that lives until exit.
    """
    names = shipped_models()
    if name not in names:
        shipped = ", ".join(names) or f"none (this srwatch was installed without {MODELS_PACKAGE})"
        raise FileNotFoundError(f"no shipped model named {name!r}; shipped models: {shipped}")
    return _COPIES.enter_context(resources.as_file(_folder(MODELS_PACKAGE) / name))


def default_model() -> Path:
    """The real path of the default model (DEFAULT_MODEL_NAME)."""
    return shipped_model(DEFAULT_MODEL_NAME)


def config_template() -> str:
    """The text of the shipped reference config (config/srwatch.yaml in the checkout)."""
    return (_folder(TEMPLATES_PACKAGE) / CONFIG_TEMPLATE_NAME).read_text(encoding="utf-8")


# The reference config keeps its folders in ../var/ (it sits in the checkout's config/); a
# hot folder keeps them beside its config, commented-out ones (work, cache) included.
_VAR_FOLDER = re.compile(r"^(\s+#?\s*[a-z_]+: )\.\./var/")
_SECTION = re.compile(r"^([a-z_]+):")
_MODEL_PATH = re.compile(r"^(\s+path: ).*$")
_CHECK_HINT = "srwatch check-config config/srwatch.yaml"


def hot_folder_config() -> str:
    """The reference config rewritten for a hot folder: what `srwatch init` writes.

    Every comment stays; the folders become the hot folder's own (``inbox: inbox``, relative
    to the config, so the folder can be moved) and model.path the shipped default by name.
    Only the paths: and model: sections are touched, so sections added to the reference later
    come along unchanged. Raises RuntimeError if the reference no longer has that shape.
    """
    section = ""
    lines = []
    for line in config_template().splitlines(keepends=True):
        top = _SECTION.match(line)
        section = top.group(1) if top else section
        if section == "paths":
            line = _VAR_FOLDER.sub(r"\1", line)
        elif section == "model":
            line = _MODEL_PATH.sub(rf"\g<1>{DEFAULT_MODEL_NAME}", line)
        lines.append(line)
    header = ("# Written by `srwatch init` for this hot folder: drop images into inbox/, results appear\n"
              "# in outbox/. Run it from here with: srwatch run -c srwatch.yaml\n#\n")
    text = header + "".join(lines).replace(_CHECK_HINT, "srwatch check-config srwatch.yaml")
    _check_hot_folder_config(text)
    return text


def _check_hot_folder_config(text: str) -> None:
    """The rewritten config must name the hot folder's folders and the default model."""
    import yaml  # here: resolving a model must not need a YAML parser loaded

    raw = yaml.safe_load(text)
    got = {name: raw["paths"].get(name) for name in HOT_FOLDERS}
    if got != {name: name for name in HOT_FOLDERS} or raw["model"].get("path") != DEFAULT_MODEL_NAME:
        raise RuntimeError(f"the shipped {CONFIG_TEMPLATE_NAME} changed shape: paths {got}, model.path {raw['model'].get('path')!r}")
