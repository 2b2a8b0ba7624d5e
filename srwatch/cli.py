"""Command line: `srwatch run|once|upscale|check-config|init|status|quarantine|eval|train|export|bench`.

Exit status: 0 success, 1 failure while running, 2 configuration or usage error.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import Optional, Sequence

from . import __version__
from .errors import ConfigError, JobError, SrwatchError
from .resources import CONFIG_TEMPLATE_NAME, DEFAULT_MODEL_NAME, HOT_FOLDERS, default_model, hot_folder_config

EXIT_OK, EXIT_FAIL, EXIT_CONFIG = 0, 1, 2


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every sub-command."""
    ap = argparse.ArgumentParser(prog="srwatch", description="Watch-folder super-resolution daemon.")
    ap.add_argument("--version", action="version", version=f"srwatch {__version__}")
    sub = ap.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run the daemon in the foreground (logs to stderr)")
    run.add_argument("-c", "--config", required=True, type=Path)

    once = sub.add_parser("once", help="process the files in the inbox (and left-over claims), then exit")
    once.add_argument("-c", "--config", required=True, type=Path)
    once.add_argument("--no-progress", action="store_true", help="no progress bar even on a terminal")

    up = sub.add_parser("upscale", help="upscale one image")
    up.add_argument("input", type=Path)
    up.add_argument("output", type=Path)
    up.add_argument("--model", type=Path, help=f"model file, or the name of a shipped one (default: {DEFAULT_MODEL_NAME}, shipped)")
    up.add_argument("--scale", type=int, help="scale, when the file name does not tell")
    up.add_argument("--algorithm", choices=["edsr", "espcn", "fsrcnn", "lapsrn"])
    up.add_argument("--engine", choices=["auto", "opencv", "openvino", "onnxruntime"])
    up.add_argument("-c", "--config", type=Path, help="take model, tile and output settings from this config")
    up.add_argument("--threads", type=int, default=0, help="inference threads (default: all CPUs)")

    chk = sub.add_parser("check-config", help="validate a config file (and load its model) without running")
    chk.add_argument("config", type=Path)
    chk.add_argument("--no-model", action="store_true", help="skip loading the model")

    init = sub.add_parser("init", help="make a new hot folder: DIR/srwatch.yaml (commented) and its folders")
    init.add_argument("folder", type=Path, metavar="DIR")

    unit = sub.add_parser("unit", help="print the systemd unit made for a config (network, folders, ExecStart)")
    unit.add_argument("-c", "--config", required=True, type=Path)

    st = sub.add_parser("status", help="the running daemon's figures, or counts from the folders when it is stopped")
    st.add_argument("-c", "--config", required=True, type=Path)
    st.add_argument("--json", action="store_true", help="one JSON object")
    st.add_argument("--profile", help="only this hot folder (default: every profile)")

    qu = sub.add_parser("quarantine", help="list quarantined files, or put them back into the inbox")
    qsub = qu.add_subparsers(dest="action", required=True)
    ql = qsub.add_parser("list", help="quarantined files with reason, message, time and attempts, oldest first")
    ql.add_argument("-c", "--config", required=True, type=Path)
    ql.add_argument("--json", action="store_true", help="one JSON object")
    ql.add_argument("--profile", help="only this hot folder (default: every profile)")
    qr = qsub.add_parser("retry", help="move quarantined files back into the inbox, under their original path")
    qr.add_argument("-c", "--config", required=True, type=Path)
    qr.add_argument("names", nargs="*", metavar="NAME", help="a quarantined file: its path in quarantine, its original path, or its name")
    qr.add_argument("--reason", action="append", default=[], help="every file quarantined for this reason (repeatable)")
    qr.add_argument("--all", action="store_true", help="every quarantined file")
    qr.add_argument("--dry-run", action="store_true", help="say what would move, move nothing")
    qr.add_argument("--profile", help="only this hot folder (default: every profile)")

    sub.add_parser("eval", help="PSNR/SSIM table on Set5 for model files (see `srwatch eval -h`)", add_help=False)
    sub.add_parser("train", help="train an EDSR model (needs the [train] extra)", add_help=False)
    sub.add_parser("export", help="export a training checkpoint to .pb and .onnx", add_help=False)
    sub.add_parser("bench", help="naive loop vs engine limit vs the daemon on the same files (see `srwatch bench -h`)", add_help=False)
    return ap


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of the `srwatch` console script."""
    argv = list(sys.argv[1:] if argv is None else argv)
    # Sub-commands with parsers of their own get the rest of the line untouched.
    if argv and argv[0] == "eval":
        from .evaluate import main_eval

        return main_eval(argv[1:])
    if argv and argv[0] == "train":
        from .train.train import main as train_main

        return train_main(argv[1:])
    if argv and argv[0] == "export":
        from .train.export import main as export_main

        return export_main(argv[1:])
    if argv and argv[0] == "bench":
        from .bench import main as bench_main

        return bench_main(argv[1:])
    args = build_parser().parse_args(argv)
    try:
        if args.command in ("run", "once"):
            return cmd_run(args.config, once=args.command == "once", progress=_want_progress(args))
        if args.command == "check-config":
            return cmd_check_config(args.config, load_model=not args.no_model)
        if args.command == "upscale":
            return cmd_upscale(args)
        if args.command == "init":
            return cmd_init(args.folder)
        if args.command == "unit":
            return cmd_unit(args.config)
        if args.command == "status":
            return cmd_status(args.config, as_json=args.json, profile=args.profile)
        if args.command == "quarantine" and args.action == "list":
            return cmd_quarantine_list(args.config, as_json=args.json, profile=args.profile)
        if args.command == "quarantine":
            return cmd_quarantine_retry(args)
    except ConfigError as exc:
        print(f"srwatch: configuration error:\n{_indent(str(exc))}", file=sys.stderr)
        return EXIT_CONFIG
    except JobError as exc:
        print(f"srwatch: {exc.reason}: {exc}", file=sys.stderr)
        return EXIT_FAIL
    except SrwatchError as exc:
        print(f"srwatch: {exc}", file=sys.stderr)
        return EXIT_FAIL
    return EXIT_CONFIG


def _indent(text: str) -> str:
    return "\n".join("  " + line for line in text.splitlines())


def _want_progress(args: argparse.Namespace) -> bool:
    return args.command == "once" and not args.no_progress and sys.stderr.isatty()


def cmd_run(config: Path, once: bool, progress: bool) -> int:
    """`srwatch run` / `srwatch once`."""
    from .config import load_config
    from .daemon import Daemon
    from .logs import setup_logging

    cfg = load_config(config)
    setup_logging(cfg.log)
    if progress:
        # The bar replaces the per-file lines on a terminal; warnings still show.
        logging.getLogger("srwatch.daemon").setLevel(logging.WARNING)
    daemon = Daemon(cfg, once=once, progress=progress)
    daemon.install_signals()
    return daemon.run()


def cmd_check_config(config: Path, load_model: bool) -> int:
    """`srwatch check-config FILE`: the same checks as at start, without running."""
    from .config import check_model_file, folder_map, load_config, prepare_folders

    from .daemon import group_key, plan_groups

    root = load_config(config)
    groups = plan_groups(root)
    lines = [f"{config}: OK"]
    loaded: dict[tuple, str] = {}
    for cfg in root.hot_folders():
        key_prefix = "" if cfg.name == "default" else f"profiles[{cfg.name}]."
        try:
            prepare_folders(cfg, create=False)
            check_model_file(cfg)
        except ConfigError as exc:
            raise ConfigError(key_prefix + str(exc)) from None
        workers, threads = groups[group_key(cfg)].size
        if key_prefix:
            lines.append(f"  profile {cfg.name}" + (f" (priority {cfg.priority})" if cfg.priority else "")
                         + (f", open {cfg.schedule.hours}" if cfg.schedule.hours else "")
                         + (f", webhook {cfg.notify.webhook}" if cfg.notify.webhook else ""))
        indent = "    " if key_prefix else "  "
        for key, folder in folder_map(cfg).items():
            lines.append(f"{indent}{key:18} {folder}{'' if folder.is_dir() else '  (will be created)'}")
        key = group_key(cfg)
        if not load_model:
            loaded.setdefault(key, "not loaded")
        elif key not in loaded:
            from .process import Processor

            try:
                processor = Processor(cfg, threads)
            except SrwatchError as exc:
                raise ConfigError(f"{key_prefix}model.path: {exc}") from None
            loaded[key] = f"x{processor.scale}, engine {processor.engine.name}: loaded and tested"
        lines.append(f"{indent}{'model':18} {cfg.model.path} ({loaded[key]})")
        crowded = cfg.crowded_threads()
        lines.append(f"{indent}{'pool':18} {workers} worker(s) x {threads} thread(s)"
                     + (f" ({crowded} while others are busy)" if crowded else "")
                     + (" (shared with the profiles of the same model)" if key_prefix else ""))
    print("\n".join(lines))
    return EXIT_OK


def cmd_upscale(args: argparse.Namespace) -> int:
    """`srwatch upscale IN OUT`: one image, same pipeline as the daemon's workers."""
    from .config import load_config, parse_config
    from .process import Processor

    if args.config:
        base = load_config(args.config).model_dump(exclude={"source"})
    else:
        try:
            # The shipped default by its real path: a file of that name in the current folder must not win.
            model = args.model or default_model()
        except FileNotFoundError as exc:
            raise ConfigError(f"--model: no model given, and no default: {exc}") from None
        base = {"model": {"path": str(model)}}
    # The single-image path touches no daemon folder: these names are never created.
    base["paths"] = {k: f"/nonexistent/srwatch/{k}" for k in ("inbox", "outbox", "quarantine", "archive")}
    base.setdefault("cache", {})
    base["cache"] = {**dict(base["cache"]), "enabled": False}
    model_over = {k: v for k, v in (("path", args.model), ("scale", args.scale), ("algorithm", args.algorithm), ("engine", args.engine)) if v}
    base["model"] = {**dict(base["model"]), **{k: str(v) if isinstance(v, Path) else v for k, v in model_over.items()}}
    base["output"] = {**dict(base.get("output", {})), "format": _format_for(args.output)}
    cfg = parse_config(_plain(base), Path.cwd())
    threads = args.threads or len(os.sched_getaffinity(0))
    if not args.input.is_file():
        raise ConfigError(f"input: no such file: {args.input}")
    rendered = Processor(cfg, threads).process(args.input)
    out = args.output
    _write_output(out, rendered.data)
    for note in rendered.notes:
        print(f"note: {note}", file=sys.stderr)
    print(f"{args.input} ({rendered.input_size[0]}x{rendered.input_size[1]}) -> {out} ({rendered.output_size[0]}x{rendered.output_size[1]})")
    return EXIT_OK


def cmd_init(folder: Path) -> int:
    """`srwatch init DIR`: a new hot folder, ready for `srwatch run -c DIR/srwatch.yaml`.

    Creates DIR's inbox, outbox, quarantine and archive and writes DIR/srwatch.yaml from the
    shipped reference config (every option commented; relative folders, the shipped default
    model by name). An existing srwatch.yaml is never replaced: exit 2 and nothing is touched.
    """
    config = folder / CONFIG_TEMPLATE_NAME
    if os.path.lexists(config):
        print(f"srwatch: {config} exists; srwatch init never replaces a config (edit it, or init another folder)", file=sys.stderr)
        return EXIT_CONFIG
    try:
        text = hot_folder_config()  # first: a broken install creates nothing
    except (OSError, RuntimeError) as exc:
        raise SrwatchError(f"cannot read the shipped config template: {exc}") from None
    try:
        for name in HOT_FOLDERS:
            (folder / name).mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        print(f"srwatch: cannot create the hot folder {folder}: {exc.strerror}: {exc.filename}", file=sys.stderr)
        return EXIT_CONFIG
    _write_output(config, text.encode("utf-8"))
    print(f"created {config} and {', '.join(f'{name}/' for name in HOT_FOLDERS)} in {folder}")
    print(f"next: srwatch check-config {config}; srwatch run -c {config}; drop images into {folder / 'inbox'}")
    return EXIT_OK


def cmd_unit(config: Path) -> int:
    """`srwatch unit -c FILE`: the shipped systemd unit, its network, folders and ExecStart made for FILE."""
    from .config import load_config
    from .unit import shipped_unit, tailor

    cfg = load_config(config)
    print(tailor(shipped_unit(), cfg, config.resolve()), end="")
    return EXIT_OK


def hot_folders(config: Path, profile: Optional[str]) -> list:
    """The hot folders of a config file, or the one named by --profile (ConfigError if none is)."""
    from .config import load_config

    folders = list(load_config(config).hot_folders())
    if profile is None:
        return folders
    chosen = [f for f in folders if f.name == profile]
    if not chosen:
        raise ConfigError(f"--profile: no profile named {profile!r} (profiles: {', '.join(f.name for f in folders)})")
    return chosen


def cmd_status(config: Path, as_json: bool, profile: Optional[str] = None) -> int:
    """`srwatch status -c FILE`: read-only; exit 0 whether the daemon runs or not."""
    import json

    from .status import collect, render

    folders = hot_folders(config, profile)
    reports = {cfg.name: collect(cfg) for cfg in folders}
    if as_json:
        several = len(folders) > 1 or folders[0].name != "default"
        print(json.dumps({"profiles": reports} if several else reports[folders[0].name], indent=1))
        return EXIT_OK
    texts = [render(r) if name == "default" else f"== profile {name} ==\n{render(r)}" for name, r in reports.items()]
    print("\n\n".join(texts))
    return EXIT_OK


def cmd_quarantine_list(config: Path, as_json: bool, profile: Optional[str] = None) -> int:
    """`srwatch quarantine list -c FILE`: the records, oldest failure first (read-only)."""
    import json

    from .replay import as_json as items_json, list_quarantine, pending_count, table

    folders = hot_folders(config, profile)
    listed = {cfg.name: (list_quarantine(cfg.paths.quarantine), pending_count(cfg.work_dir)) for cfg in folders}
    if as_json:
        data = {name: {"quarantined": items_json(items), "pending_retries": pending}
                for name, (items, pending) in listed.items()}
        several = len(folders) > 1 or folders[0].name != "default"
        print(json.dumps({"profiles": data} if several else data[folders[0].name], indent=1))
        return EXIT_OK
    for name, (items, pending) in listed.items():
        if name != "default":
            print(f"== profile {name} ==")
        print(table(items))
        if pending:
            print(f"({pending} retried file(s) back in the inbox, not yet taken by the daemon)")
    return EXIT_OK


def cmd_quarantine_retry(args: argparse.Namespace) -> int:
    """`srwatch quarantine retry -c FILE NAME...|--reason R|--all [--dry-run]`: exit 1 if some could not move."""
    from .config import prepare_folders
    from .replay import finish_interrupted, retry_all, retry_lock

    usage = _retry_usage_error(args)
    if usage:
        print(f"srwatch: quarantine retry: {usage}", file=sys.stderr)
        return EXIT_CONFIG
    folders = hot_folders(args.config, args.profile)
    if args.dry_run:
        return max(_retry_dry_run(cfg, args) for cfg in folders)
    outcomes, matched = [], set()
    for cfg in folders:
        prepare_folders(cfg)  # as the daemon does: the work folder takes the ledgers
        with retry_lock(cfg.work_dir):
            outcomes += finish_interrupted(cfg)  # first: it may remove records a killed retry left
            items, unmatched = _retry_chosen(cfg, args, quiet=len(folders) > 1)
            matched |= set(args.names) - set(unmatched)
            outcomes += retry_all(cfg, items)
    unmatched = [n for n in args.names if n not in matched]
    if len(folders) > 1:
        for name in unmatched:
            print(f"srwatch: no quarantined file matches {name!r} (see `srwatch quarantine list`)", file=sys.stderr)
    failed = len(unmatched)
    for o in outcomes:
        what = o.note or (o.item.file if o.item else "?")
        if o.error:
            failed += 1
            print(f"srwatch: cannot retry {what}: {o.error}" if o.item else f"srwatch: {o.error}", file=sys.stderr)
        else:
            print(f"retried {what} -> inbox/{o.placed}" + (f" ({o.item.reason}, {o.item.attempts} attempt(s) so far)" if o.item else ""))
    if not outcomes and not failed:
        print("nothing to retry")
    return EXIT_FAIL if failed else EXIT_OK


def _retry_usage_error(args: argparse.Namespace) -> Optional[str]:
    from .errors import REASON_CODES

    if sum([bool(args.names), bool(args.reason), args.all]) != 1:
        return "give NAMEs, --reason R or --all (exactly one of them)"
    unknown = [r for r in args.reason if r not in REASON_CODES]
    if unknown:
        return f"unknown reason {', '.join(unknown)}; reasons: {', '.join(REASON_CODES)}"
    return None


def _retry_chosen(cfg, args: argparse.Namespace, quiet: bool = False) -> tuple[list, list[str]]:
    """The quarantined files chosen on the command line, and the NAMEs that matched none (said on stderr)."""
    from .replay import list_quarantine, select

    items, unmatched = select(list_quarantine(cfg.paths.quarantine), args.names, args.reason, args.all)
    for name in unmatched if not quiet else ():
        print(f"srwatch: no quarantined file matches {name!r} (see `srwatch quarantine list`)", file=sys.stderr)
    return items, unmatched


def _retry_dry_run(cfg, args: argparse.Namespace) -> int:
    from .replay import target

    items, unmatched = _retry_chosen(cfg, args)
    for item in items:
        parts, name = target(cfg, item)
        print(f"would retry {item.file} -> inbox/{'/'.join(parts + (name,))} ({item.reason}, {item.attempts} attempt(s) so far)")
    return EXIT_FAIL if unmatched else EXIT_OK


def _write_output(out: Path, data: bytes) -> None:
    """Write `out` through an exclusive hidden temp file and a link: never through a link, never over a file."""
    from . import safefs
    from .sink import write_temp_in

    out.parent.mkdir(parents=True, exist_ok=True)
    with safefs.opened_dir(out.parent) as fd:
        tmp = write_temp_in(fd, out.suffix, data)
        try:
            placed = safefs.place(fd, tmp, fd, [out.name])
        finally:
            safefs.unlink_if_exists(fd, tmp)
    if placed is None:
        raise SrwatchError(f"{out} exists; srwatch never replaces a file (remove it or choose another name)")


def _format_for(path: Path) -> str:
    ext = path.suffix.lower().lstrip(".")
    return {"jpeg": "jpg", "jpg": "jpg", "png": "png", "webp": "webp", "tif": "tiff", "tiff": "tiff"}.get(ext, "same")


def _plain(value):
    """model_dump leaves Path objects; YAML-like plain values for parse_config."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


if __name__ == "__main__":
    raise SystemExit(main())
