"""`srwatch unit -c FILE`: the shipped systemd unit, tailored to one config.

The shipped unit (systemd/srwatch.service, in the package as `srwatch.systemd`) lets the
service use IP to and from localhost only: enough for a loopback metrics.listen. What a
config needs decides the network lines of the printed unit:

- nothing over IP (no metrics.listen, no notify.webhook, local pool): AF_UNIX only and
  PrivateNetwork=yes (sd_notify and the journal are AF_UNIX sockets in the file system);
- a loopback metrics.listen (or an in-process Ray): as shipped, localhost only;
- metrics.listen on another address, a notify.webhook or a remote Ray cluster: IP allowed to
  and from anywhere (the firewall, a reverse proxy or IPAddressAllow= narrow it further).

ExecStart= runs this installation's `srwatch` on the config's absolute path, and
ReadWritePaths= lists the folders of every hot folder (the rest of the system stays read-only).
"""
from __future__ import annotations

import re
import sys
from importlib import resources
from pathlib import Path
from typing import Optional

from .config import Config, folder_map

UNIT_PACKAGE = "srwatch.systemd"
UNIT_NAME = "srwatch.service"
_CHECKOUT_UNIT = Path(__file__).resolve().parent.parent / "systemd" / UNIT_NAME  # a tree run without installing

NONE, LOCALHOST, ANY = "none", "localhost", "any"


def shipped_unit() -> str:
    """The text of the shipped unit (installed package data, else the checkout's file)."""
    try:
        return resources.files(UNIT_PACKAGE).joinpath(UNIT_NAME).read_text(encoding="utf-8")
    except (ModuleNotFoundError, FileNotFoundError):
        return _CHECKOUT_UNIT.read_text(encoding="utf-8")


def network_needs(cfg: Config) -> tuple[str, str]:
    """(none | localhost | any, why) for the config's metrics endpoint, webhooks and Ray."""
    metrics = cfg.metrics
    if metrics.listen and not metrics.on_loopback:
        return ANY, f"metrics.listen is {metrics.listen}, not a loopback address"
    hooks = [f.name for f in cfg.hot_folders() if f.notify.webhook]
    if hooks:
        return ANY, f"notify.webhook posts to other hosts (hot folder {', '.join(hooks)})"
    ray = any(f.pool.backend == "ray" for f in cfg.hot_folders())
    if ray and cfg.ray.address != "local":
        return ANY, f"pool.backend ray talks to the cluster at {cfg.ray.address}"
    if metrics.listen:
        return LOCALHOST, f"metrics.listen is {metrics.listen}, a loopback address"
    if ray:
        return LOCALHOST, "an in-process Ray (ray.address: local) talks over localhost"
    return NONE, "no metrics.listen, no notify.webhook, local workers: no IP at all"


def tailor(text: str, cfg: Config, config_path: Path, executable: Optional[Path] = None) -> str:
    """The unit `text` with ExecStart= and the network lines made for `cfg`."""
    need, why = network_needs(cfg)
    exe = executable or installed_executable()
    text = _replace(text, "ExecStart", f"ExecStart={_word(str(exe), True)} run -c {_word(str(config_path), True)}")
    # "-": a folder srwatch creates at its first start may not exist yet; systemd skips it then.
    text = _replace(text, "ReadWritePaths", "ReadWritePaths=" + " ".join(_word(f"-{p}") for p in writable_folders(cfg)))
    if need == NONE:
        text = _replace(text, "RestrictAddressFamilies", "RestrictAddressFamilies=AF_UNIX")
        text = _replace(text, "IPAddressAllow", "# No IP at all: a network namespace of its own, with only a loopback device.\n"
                                                "PrivateNetwork=yes")
    elif need == ANY:
        text = _replace(text, "IPAddressDeny", f"# IPAddressDeny=any removed by srwatch unit: {why}.")
        text = _replace(text, "IPAddressAllow", "# IPAddressAllow=localhost removed with it (nothing is denied).")
    header = f"# Made by `srwatch unit -c {config_path}` from the shipped unit. Network: {need} ({why}).\n"
    return header + text


def writable_folders(cfg: Config) -> list[Path]:
    """Every folder the daemon writes, across its hot folders, without those inside another."""
    folders = sorted({path for folder in cfg.hot_folders() for path in folder_map(folder).values()})
    return [p for p in folders if not any(p != q and p.is_relative_to(q) for q in folders)]


def installed_executable() -> Path:
    """This installation's `srwatch` script (beside the running Python), as ExecStart= should name it."""
    script = Path(sys.executable).with_name("srwatch")
    return script if script.is_file() else Path("/opt/srwatch/.venv/bin/srwatch")


def _word(text: str, exec_line: bool = False) -> str:
    """One word of a unit setting: specifiers (%) escaped, and variables ($) on Exec lines; quoted if needed."""
    word = text.replace("%", "%%")
    if exec_line:
        word = word.replace("$", "$$")
    if re.search(r'[\s"\'\\]', word):
        word = '"' + word.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return word


def _replace(text: str, key: str, lines: str) -> str:
    """Replace the unit's one `key=` line with `lines`."""
    pattern = re.compile(rf"^{re.escape(key)}=.*$", re.M)
    if len(pattern.findall(text)) != 1:
        raise RuntimeError(f"the shipped unit has no single {key}= line: srwatch/unit.py needs updating")
    return pattern.sub(lambda _m: lines, text)
