"""Configuration: one YAML file, validated with pydantic before anything starts.

Every key is documented in `config/srwatch.yaml`. Relative paths are resolved against the
folder of the config file, so a config can be moved together with its folders.
"""
from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import Any, Literal, Optional, Union

from urllib.parse import urlparse

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

from . import resources
from .errors import ConfigError
from .schedule import parse_hours

log = logging.getLogger("srwatch.config")

#: Names that a writer uses while a file is still being written; ignored until renamed.
DEFAULT_IGNORE = [".*", "*.part", "*.tmp", "*.crdownload", "*.swp", "*~", "*.filepart", "*.partial"]


MIN_SETTLE_SECONDS = 0.5  # in seconds


class _Section(BaseModel):
    """Base for config sections: unknown keys are errors, values are not coerced silently."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class PathsConfig(_Section):
    """Folders. The inbox must exist; the others are created when create_missing is on."""

    inbox: Path
    outbox: Path
    quarantine: Path
    archive: Path
    work: Optional[Path] = None  # default: <inbox>/../.srwatch-work (same filesystem)
    cache: Optional[Path] = None  # default: <work>/../.srwatch-cache
    create_missing: bool = True


class ModelConfig(_Section):
    """The super-resolution model and the engine that runs it."""

    path: Path
    algorithm: Optional[Literal["edsr", "espcn", "fsrcnn", "lapsrn"]] = None
    scale: Optional[int] = Field(default=None, ge=2, le=8)
    # auto: OpenVINO when it is installed (2-4x faster on CPUs; `make run` installs it), else opencv.
    engine: Literal["auto", "opencv", "openvino", "onnxruntime"] = "auto"
    device: Literal["cpu", "cuda", "gpu"] = "cpu"
    # auto: bf16 with openvino (5x faster than f32 on CPUs with AMX/AVX512-BF16, Set5 within
    # 0.012 dB; OpenVINO runs f32 on CPUs without bf16), f32 with the other engines.
    # int8 runs the quantized <stem>-int8.xml beside model.path (python -m srwatch.quantize).
    # f16: onnxruntime only, for model.device: cuda (tensor cores).
    precision: Literal["auto", "f32", "bf16", "int8", "f16"] = "auto"


class PoolConfig(_Section):
    """Worker processes, each holding its own model."""

    workers: Union[int, Literal["auto"]] = "auto"
    threads_per_worker: Union[int, Literal["auto"]] = "auto"
    queue_size: int = Field(default=32, ge=1)  # jobs waiting for a worker; bounds memory
    job_timeout: float = Field(default=900.0, gt=0)  # in seconds, per file
    max_attempts: int = Field(default=2, ge=1, le=10)  # a file whose worker dies is tried this often
    max_jobs_per_worker: int = Field(default=0, ge=0)  # recycle a worker after N jobs; 0 = never
    # Jobs sent ahead to a busy local worker (see pool.py); auto: 1 while its jobs are short.
    prefetch: Union[int, Literal["auto"]] = "auto"
    # local: worker processes on this machine. ray: Ray actors (see the ray: section).
    backend: Literal["local", "ray"] = "local"

    @field_validator("workers", "threads_per_worker", "prefetch")
    @classmethod
    def _count_or_auto(cls, value: Union[int, str], info: ValidationInfo) -> Union[int, str]:
        least = 0 if info.field_name == "prefetch" else 1
        if isinstance(value, int) and value < least:
            raise ValueError(f"must be at least {least}, or 'auto'")
        return value


class WatchConfig(_Section):
    """How the inbox is watched."""

    polling: bool = False  # PollingObserver, for NFS/SMB where inotify sees nothing
    poll_interval: float = Field(default=2.0, gt=0)  # in seconds, for polling
    recursive: bool = False
    # Size and mtime unchanged this long = complete. The floor keeps a file that is still
    # being written (a writer pausing between chunks) from being taken.
    settle_seconds: float = Field(default=2.0, ge=MIN_SETTLE_SECONDS)
    # Ask the kernel (a read lease) whether a process still has the file open for writing.
    writer_check: bool = True
    rescan_interval: float = Field(default=60.0, ge=0)  # in seconds; 0 = no periodic rescan
    ignore: list[str] = Field(default_factory=lambda: list(DEFAULT_IGNORE))


class OutputConfig(_Section):
    """What the result file looks like."""

    format: Literal["same", "png", "jpg", "webp", "tiff"] = "same"
    suffix: str = "_x{scale}"
    # The output's stem: {stem} {scale} {model} {profile} {date}; default "{stem}" + suffix.
    name: Optional[str] = None
    jpeg_quality: int = Field(default=95, ge=1, le=100)
    webp_quality: int = Field(default=95, ge=1, le=101)  # 101 = lossless
    png_compression: int = Field(default=1, ge=0, le=9)  # 0 stored, 1-3 ISA-L (fast), 4-9 zlib (png.py)
    keep_metadata: bool = True  # ICC profile and EXIF, where the format allows
    # Permission bits of result files, e.g. "0640"; default: 0666 less the process umask.
    mode: Optional[int] = None

    @field_validator("mode", mode="before")
    @classmethod
    def _mode_ok(cls, value: Any) -> Optional[int]:
        if value is None:
            return None
        if isinstance(value, str):
            try:
                value = int(value, 8)
            except ValueError:
                raise ValueError(f"must be an octal mode such as \"0640\", not {value!r}") from None
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 0o777:
            raise ValueError("must be an octal mode between \"0000\" and \"0777\" (quote it in YAML)")
        return value

    @field_validator("suffix")
    @classmethod
    def _suffix_ok(cls, value: str) -> str:
        if "/" in value or "\0" in value:
            raise ValueError("must not contain '/'")
        try:
            value.format(scale=2)
        except (KeyError, IndexError, ValueError) as exc:
            raise ValueError(f"only the placeholder {{scale}} is allowed ({exc})") from None
        return value

    @field_validator("name")
    @classmethod
    def _name_ok(cls, value: Optional[str]) -> Optional[str]:
        if value is None:
            return value
        if not value.strip() or "/" in value or "\0" in value:
            raise ValueError("must be a non-empty file name stem without '/'")
        try:
            value.format(**_NAME_EXAMPLE)
        except (KeyError, IndexError, ValueError) as exc:
            raise ValueError(f"placeholders are {', '.join('{' + k + '}' for k in _NAME_EXAMPLE)} ({exc})") from None
        if value.format(**_NAME_EXAMPLE).startswith("."):
            raise ValueError("must not start with '.' (hidden files are not outputs)")
        return value

    def stem_for(self, stem: str, scale: int, model: str = "", profile: str = "", date: str = "") -> str:
        """The output's stem for an input stem (the sink adds the extension and shortens long names)."""
        template = self.name if self.name is not None else "{stem}" + self.suffix
        return template.format(stem=stem, scale=scale, model=model, profile=profile, date=date)


_NAME_EXAMPLE = {"stem": "photo", "scale": 3, "model": "EDSR-srwatch_x3", "profile": "default", "date": "2026-01-31"}


class TileConfig(_Section):
    """Tiled inference keeps worker memory bounded on large inputs."""

    size: Union[int, Literal["auto", "off"]] = "auto"  # tile side in input pixels
    overlap: int = Field(default=12, ge=0)  # in input pixels, each side
    max_memory_mb: int = Field(default=1024, ge=16)  # activation budget per worker for 'auto'

    @field_validator("size")
    @classmethod
    def _size_ok(cls, value: Union[int, str]) -> Union[int, str]:
        if isinstance(value, int) and value < 16:
            raise ValueError("must be at least 16 pixels, 'auto' or 'off'")
        return value


class LimitsConfig(_Section):
    """Guards against inputs that would exhaust the machine."""

    max_pixels: int = Field(default=40_000_000, ge=1)  # input width*height, read from the header
    max_file_mb: float = Field(default=1024.0, gt=0)  # input size on disk
    # Output width*height (after preshrink and scale), checked from the header before decoding.
    # The default keeps one worker near 2 GB for 8-bit RGB (config/srwatch.yaml says why).
    max_output_pixels: int = Field(default=150_000_000, ge=1)


class PreshrinkConfig(_Section):
    """Downscale very large inputs before the model (off when max_side is 0)."""

    max_side: int = Field(default=0, ge=0)


class CacheConfig(_Section):
    """Reuse the result for byte-identical inputs with the same model and settings."""

    enabled: bool = False
    max_mb: int = Field(default=2048, ge=1)


class LogConfig(_Section):
    """Logging to stderr (journald picks it up under systemd)."""

    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    format: Literal["text", "json"] = "text"


LOOPBACK_HOSTS = ("127.0.0.1", "::1", "localhost")


class MetricsConfig(_Section):
    """The HTTP endpoint: Prometheus metrics at /metrics and the status page with uploads at /."""

    listen: Optional[str] = None  # "127.0.0.1:9108"; None = off
    page: bool = True  # the status page at /
    upload: bool = True  # the page's drop zone (POST /upload into the inbox)
    token: Optional[str] = Field(default=None, min_length=16)  # needed to upload when listen is not loopback
    max_upload_mb: float = Field(default=100.0, gt=0)  # per file; larger: 413
    max_upload_files: int = Field(default=20, ge=1)  # per request; more: 400
    upload_stall_seconds: float = Field(default=60.0, gt=0)  # an upload silent this long: 408, temp removed

    @field_validator("listen")
    @classmethod
    def _address(cls, value: Optional[str]) -> Optional[str]:
        if value is None:
            return value
        host, port = split_listen(value)
        if not host:
            raise ValueError("expected host:port, e.g. 127.0.0.1:9108 or [::1]:9108")
        if not 0 < port < 65536:
            raise ValueError(f"port {port} is out of range")
        return value

    @model_validator(mode="after")
    def _token_off_loopback(self) -> "MetricsConfig":
        if self.listen and self.upload and not self.on_loopback and not self.token:
            raise ValueError(
                f"uploads on {self.listen} (not a loopback address) need metrics.token "
                "(at least 16 characters), or set metrics.upload: false"
            )
        return self

    @property
    def host(self) -> str:
        """The host part of listen (brackets of an IPv6 address removed)."""
        return split_listen(self.listen or "")[0]

    @property
    def port(self) -> int:
        """The port part of listen."""
        return split_listen(self.listen or "")[1]

    @property
    def on_loopback(self) -> bool:
        """True when the endpoint is reachable from this machine only."""
        return self.host in LOOPBACK_HOSTS or self.host.startswith("127.")


def split_listen(value: str) -> tuple[str, int]:
    """'host:port' or '[v6]:port' -> (host, port); ('', 0) when it does not parse."""
    match = re.fullmatch(r"\[([0-9A-Fa-f:.]+)\]:(\d+)|([^:\[\]]+):(\d+)", value.strip())
    if not match:
        return "", 0
    host = match.group(1) or match.group(3)
    return host, int(match.group(2) or match.group(4))


class RayConfig(_Section):
    """Workers as Ray actors (pool.backend: ray; pip install 'srwatch[ray]')."""

    # auto: the cluster this machine belongs to (RAY_ADDRESS or a local `ray start`);
    # ray://host:10001: a remote cluster through Ray Client; local: start an in-process Ray.
    address: str = "auto"
    namespace: str = "srwatch"
    num_cpus: float = Field(default=1.0, ge=0)  # per actor
    num_gpus: float = Field(default=0.0, ge=0)  # per actor
    memory_mb: Optional[int] = Field(default=None, ge=1)  # per actor, reserved by Ray's scheduler
    prefetch: int = Field(default=1, ge=0)  # jobs sent ahead to an actor beyond the one it runs


class ScheduleConfig(_Section):
    """When a hot folder's files are processed."""

    # "22:00-06:00" (local time; several windows separated by commas): outside, files wait
    # in the inbox (shown as held). None: always.
    hours: Optional[str] = None

    @field_validator("hours")
    @classmethod
    def _hours_ok(cls, value: Optional[str]) -> Optional[str]:
        if value is not None:
            parse_hours(value)
        return value


class NotifyConfig(_Section):
    """A POST with a JSON body after each file (never blocks or delays a file)."""

    webhook: Optional[str] = None  # http(s) URL; None: off
    timeout: float = Field(default=5.0, gt=0, le=60)  # in seconds, per attempt
    retries: int = Field(default=3, ge=0, le=10)  # after the first attempt, with back-off

    @field_validator("webhook")
    @classmethod
    def _url_ok(cls, value: Optional[str]) -> Optional[str]:
        if value is None:
            return value
        parsed = urlparse(value)
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            raise ValueError("must be an http:// or https:// URL")
        return value


#: What a profile may set; the rest (log, metrics, ray, the pool's other keys) is daemon-wide.
PROFILE_KEYS = ("name", "paths", "model", "output", "tile", "preshrink", "limits", "cache", "on_success", "watch",
                "schedule", "notify", "priority", "pool")
PROFILE_POOL_KEYS = ("workers", "threads_per_worker")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}\Z")


class Config(_Section):
    """The whole configuration file, or one hot folder (profile) of it.

    A file without `profiles:` is one hot folder named "default". With `profiles:`, every
    profile is a full Config of its own (top-level sections are its defaults) in `profiles`,
    and `hot_folders()` lists them.
    """

    paths: Optional[PathsConfig] = None
    model: Optional[ModelConfig] = None
    pool: PoolConfig = PoolConfig()
    watch: WatchConfig = WatchConfig()
    output: OutputConfig = OutputConfig()
    tile: TileConfig = TileConfig()
    limits: LimitsConfig = LimitsConfig()
    preshrink: PreshrinkConfig = PreshrinkConfig()
    cache: CacheConfig = CacheConfig()
    log: LogConfig = LogConfig()
    metrics: MetricsConfig = MetricsConfig()
    ray: RayConfig = RayConfig()
    on_success: Literal["archive", "delete"] = "archive"
    shutdown_timeout: float = Field(default=60.0, ge=0)  # in seconds, for in-flight files
    schedule: ScheduleConfig = ScheduleConfig()
    notify: NotifyConfig = NotifyConfig()
    name: str = "default"  # the profile's name (labels in logs, metrics and the page)
    priority: int = Field(default=0, ge=0, le=100)  # claims: higher first, round robin among equals
    profiles: tuple["Config", ...] = ()  # filled by the loader from `profiles:`
    source: Optional[Path] = None  # the file this was read from (set by the loader)

    @field_validator("name")
    @classmethod
    def _name_ok(cls, value: str) -> str:
        if not _NAME.match(value):
            raise ValueError("letters, digits, '_', '.' and '-' (at most 64, not starting with '.', '_' or '-')")
        return value

    @model_validator(mode="after")
    def _folders_distinct(self) -> "Config":
        if self.profiles:
            return self
        if self.paths is None:
            raise ValueError("paths: required key is missing (or give profiles:, each with its paths)")
        if self.model is None:
            raise ValueError("model: required key is missing")
        check_folder_layout(folder_map(self))
        return self

    def hot_folders(self) -> tuple["Config", ...]:
        """The hot folders this config runs: its profiles, or itself."""
        return self.profiles or (self,)

    # Convenience accessors, resolved for the machine we run on.
    @property
    def work_dir(self) -> Path:
        """Where claimed files wait and are processed."""
        if self.paths.work:
            return self.paths.work
        # Profiles' inboxes often share a parent (in/x2, in/x4): one work folder each.
        return self.paths.inbox.parent / (".srwatch-work" if self.name == "default" else f".srwatch-work-{self.name}")

    @property
    def cache_dir(self) -> Path:
        """Where cached results live."""
        return self.paths.cache or self.work_dir.parent / ".srwatch-cache"

    def worker_layout(self) -> tuple[int, int]:
        """(workers, threads per worker), with 'auto' resolved from the CPUs we may use."""
        return layout_for(self.pool.workers, self.pool.threads_per_worker, available_cpus(),
                          resolve_engine(self.model) if self.model else "opencv")

    def crowded_threads(self) -> Optional[int]:
        """Threads per worker for a file that shares the CPUs with other workers' files, or None.

        With the auto layout, local workers and OpenVINO, a worker runs a file alone on its two
        threads, and on one while other workers are busy too (or more files wait): two-thread
        workers busy together were 3-4 % slower than one-thread ones (benchmarks/README.md).
        Ray actors keep fixed threads.
        """
        if (self.pool.workers != "auto" or self.pool.threads_per_worker != "auto" or self.model is None
                or self.pool.backend != "local"):
            return None
        workers, threads = self.worker_layout()
        if workers < 2 or threads < 2 or resolve_engine(self.model) != "openvino":
            return None
        return 1


def layout_for(workers: Union[int, str], threads: Union[int, str], cpus: int, engine: str = "opencv") -> tuple[int, int]:
    """(workers, threads per worker) for pool settings, 'auto' resolved for `cpus` CPUs and the engine."""
    if workers == "auto" and threads == "auto":
        # One worker per CPU: files overlap each other's decoding, inference and encoding.
        # OpenVINO workers may use two threads each: busy together they share the CPUs as
        # one-thread workers do (63-67 ms per 256x256 each either way, unpinned), and a worker
        # left alone (the last big file of a batch, one file on an idle daemon) runs on two
        # cores (36 ms instead of 64; srwatch bench's large workload 1.24x). Other engines
        # keep one thread: onnxruntime's threads spin while they wait.
        workers = max(1, min(8, cpus))
        return workers, (min(2, cpus) if engine == "openvino" else 1)
    if workers == "auto":
        workers = max(1, min(8, cpus // int(threads)))
    if threads == "auto":
        threads = max(1, cpus // int(workers))
    return int(workers), int(threads)


def resolve_engine(model: "ModelConfig") -> str:
    """The engine `model.engine` names; 'auto' is openvino when installed (CPU or Intel GPU), else opencv."""
    if model.engine != "auto":
        return model.engine
    import importlib.util

    if model.device != "cuda" and importlib.util.find_spec("openvino") is not None:
        return "openvino"
    return "opencv"


def resolve_precision(model: "ModelConfig") -> str:
    """The precision `model.precision` names; 'auto' is bf16 with openvino, f32 with the other engines."""
    if model.precision != "auto":
        return model.precision
    return "bf16" if resolve_engine(model) == "openvino" else "f32"


def available_cpus() -> int:
    """CPUs this process may run on (respects affinity and cgroup cpusets)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def folder_map(cfg: Config) -> dict[str, Path]:
    """The daemon's folders by config key."""
    folders = {
        "paths.inbox": cfg.paths.inbox,
        "paths.outbox": cfg.paths.outbox,
        "paths.quarantine": cfg.paths.quarantine,
        "paths.work": cfg.work_dir,
    }
    if cfg.on_success == "archive":
        folders["paths.archive"] = cfg.paths.archive
    if cfg.cache.enabled:
        folders["paths.cache"] = cfg.cache_dir
    return folders


def check_folder_layout(folders: dict[str, Path], skip_same_prefix: bool = False) -> None:
    """No folder may equal or contain another: outbox inside inbox would feed itself.

    Compared by real path (symlinks resolved) and, for folders that exist, by device and
    inode, so an outbox that is a link to the inbox (or a bind mount of it) is refused.
    """
    resolved = {key: Path(os.path.realpath(path)) for key, path in folders.items()}
    identity = {key: _identity(path) for key, path in resolved.items()}
    keys = list(resolved)
    for i, a in enumerate(keys):
        for b in keys[i + 1 :]:
            if skip_same_prefix and a.split(".", 1)[0] == b.split(".", 1)[0]:
                continue  # within one profile: checked when it was validated
            pa, pb = resolved[a], resolved[b]
            if pa == pb or (identity[a] is not None and identity[a] == identity[b]):
                shown = f"{pa}" if pa == pb else f"{folders[a]} and {folders[b]} are one folder"
                raise ValueError(f"{a} and {b} are the same folder ({shown})")
            if pb.is_relative_to(pa):
                raise ValueError(f"{b} ({pb}) is inside {a} ({pa})")
            if pa.is_relative_to(pb):
                raise ValueError(f"{a} ({pa}) is inside {b} ({pb})")


def _identity(path: Path) -> Optional[tuple[int, int]]:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def _resolve_paths(raw: dict[str, Any], base: Path) -> None:
    """Make relative paths in the raw mapping relative to the config file's folder."""
    paths = raw.get("paths")
    if isinstance(paths, dict):
        for key, value in paths.items():
            if isinstance(value, str) and key != "create_missing":
                paths[key] = os.path.normpath(base / os.path.expanduser(value))
    model = raw.get("model")
    if isinstance(model, dict) and isinstance(model.get("path"), str):
        model["path"] = resolve_model_path(model["path"], base)


def resolve_model_path(value: str, base: Path) -> str:
    """model.path as a path: relative to `base`, or, for a bare name, maybe a shipped model.

    A bare name (no folder part, e.g. ``EDSR-srwatch_x3.onnx``) is a file next to the config
    when one exists there (so a model copied beside the config keeps working), else the model
    of that name shipped inside srwatch (srwatch.resources), which works wherever srwatch is
    installed. A bare name that is neither is a ConfigError listing the shipped names.
    """
    expanded = os.path.expanduser(value)
    beside = os.path.normpath(base / expanded)
    if os.path.dirname(expanded) or os.path.lexists(beside):
        return beside
    try:
        return str(resources.shipped_model(expanded))
    except FileNotFoundError as exc:  # its message names the shipped models
        raise ConfigError(f"model.path: no such file: {beside}, and {exc}") from None


def format_validation_error(exc: ValidationError) -> str:
    """One line per bad key, named as written in YAML (e.g. `pool.workers: ...`)."""
    problems: dict[str, list[str]] = {}
    for err in exc.errors():
        # Union members add their type to the location ("int", "literal['auto']"): drop them.
        parts = [str(p) for p in err["loc"] if not _is_union_tag(str(p))]
        key = ".".join(parts)
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown key"
        elif err["type"] == "missing":
            msg = "required key is missing"
        problems.setdefault(key, [])
        if msg not in problems[key]:
            problems[key].append(msg)
    lines = []
    for key, msgs in problems.items():
        text = " or ".join(msgs)
        lines.append(f"{key}: {text}" if key else text)
    return "\n".join(lines)


def _is_union_tag(part: str) -> bool:
    return part in {"int", "str", "float", "bool"} or part.startswith(("literal[", "function-"))


def parse_config(raw: Any, base: Path, source: Optional[Path] = None) -> Config:
    """Validate a mapping (as read from YAML); raise ConfigError naming the bad key."""
    if not isinstance(raw, dict):
        raise ConfigError("the config file must be a YAML mapping of sections (paths:, model:, ...)")
    raw = {key: (dict(value) if isinstance(value, dict) else value) for key, value in raw.items()}
    profiles = raw.pop("profiles", None) or None  # `profiles: []` (the shipped file): one hot folder
    if profiles is not None and raw.get("paths") is not None:
        raise ConfigError("paths: with profiles:, every profile sets its own paths (remove the top-level paths)")
    defaults = {key: (dict(value) if isinstance(value, dict) else value) for key, value in raw.items()}
    _resolve_paths(raw, base)
    if source is not None:
        raw["source"] = str(source)
    if profiles is None:
        return _validate(raw, "")
    folders = _parse_profiles(profiles, defaults, base, source)
    root = _validate({**raw, "profiles": folders}, "")
    if root.model is None and any(p.model is None for p in folders):
        raise ConfigError("model: required key is missing")
    return root


def _validate(raw: dict[str, Any], prefix: str) -> Config:
    try:
        return Config.model_validate(raw)
    except ValidationError as exc:
        text = format_validation_error(exc)
        raise ConfigError("\n".join(prefix + line for line in text.splitlines())) from None
    except ValueError as exc:
        raise ConfigError(f"{prefix.rstrip('.')}: {exc}" if prefix else str(exc)) from None


def _parse_profiles(profiles: Any, defaults: dict[str, Any], base: Path, source: Optional[Path]) -> list[Config]:
    """Each profile merged over the top-level sections and validated; errors name `profiles[i].key`."""
    if not isinstance(profiles, list) or not profiles:
        raise ConfigError("profiles: must be a list of hot folders (each with name: and paths:)")
    folders: list[Config] = []
    for i, entry in enumerate(profiles):
        where = f"profiles[{i}]."
        if not isinstance(entry, dict):
            raise ConfigError(f"profiles[{i}]: must be a mapping (name:, paths:, ...)")
        unknown = [k for k in entry if k not in PROFILE_KEYS]
        if unknown:
            raise ConfigError("\n".join(f"{where}{k}: unknown key (a profile may set {', '.join(PROFILE_KEYS)})"
                                         for k in unknown))
        if "name" not in entry:
            raise ConfigError(f"{where}name: required key is missing")
        if "paths" not in entry:
            raise ConfigError(f"{where}paths: required key is missing")
        pool = entry.get("pool")
        if isinstance(pool, dict):
            extra = [k for k in pool if k not in PROFILE_POOL_KEYS]
            if extra:
                raise ConfigError("\n".join(f"{where}pool.{k}: unknown key (a profile may set pool.workers and "
                                             "pool.threads_per_worker; the rest is daemon-wide)" for k in extra))
        merged = _merge(defaults, entry)
        try:
            _resolve_paths(merged, base)
        except ConfigError as exc:
            raise ConfigError(where + str(exc)) from None
        if source is not None:
            merged["source"] = str(source)
        folders.append(_validate(merged, where))
    names = [f.name for f in folders]
    for name in sorted({n for n in names if names.count(n) > 1}):
        raise ConfigError(f"profiles[{names.index(name, names.index(name) + 1)}].name: {name!r} is used by another profile")
    check_profiles_apart(folders)
    return folders


def _merge(defaults: dict[str, Any], entry: dict[str, Any]) -> dict[str, Any]:
    """Top-level sections, each updated key by key with the profile's."""
    merged = {k: (dict(v) if isinstance(v, dict) else v) for k, v in defaults.items()}
    for key, value in entry.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = {**merged[key], **value}
        else:
            merged[key] = dict(value) if isinstance(value, dict) else value
    return merged


def check_profiles_apart(folders: list[Config]) -> None:
    """No folder of one profile equal to or inside a folder of another (a shared cache is fine)."""
    named: dict[str, Path] = {}
    for i, cfg in enumerate(folders):
        for key, path in folder_map(cfg).items():
            if key == "paths.cache":
                continue
            named[f"profiles[{i}].{key}"] = path
    try:
        check_folder_layout(named, skip_same_prefix=True)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def load_config(path: Union[str, Path]) -> Config:
    """Read and validate a config file (no filesystem checks beyond reading it)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    return parse_config(raw, path.resolve().parent, source=path.resolve())


def prepare_folders(cfg: Config, create: bool = True) -> None:
    """Check the folders exist (creating them if allowed) and can be used; raise ConfigError.

    With create=False (check-config) nothing is created: a folder that would be created is
    only checked to have a writable existing parent.

    The inbox is never created: a missing inbox usually means an unmounted share, and
    watching an empty local folder instead would silently do nothing.
    """
    inbox = cfg.paths.inbox
    if not inbox.is_dir():
        raise ConfigError(f"paths.inbox: folder does not exist: {inbox}")
    for key, folder in folder_map(cfg).items():
        if key == "paths.inbox":
            continue
        if not folder.is_dir():
            if not cfg.paths.create_missing:
                raise ConfigError(f"{key}: folder does not exist: {folder} (or set paths.create_missing: true)")
            if not create:
                parent = next((p for p in folder.parents if p.exists()), None)
                if parent is None or not os.access(parent, os.W_OK | os.X_OK):
                    raise ConfigError(f"{key}: cannot create {folder}: {parent} is not writable")
                continue
            try:
                folder.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise ConfigError(f"{key}: cannot create {folder}: {exc.strerror}") from None
    for key, folder in folder_map(cfg).items():
        if folder.is_dir() and not os.access(folder, os.W_OK | os.X_OK):
            if not create or key in ("paths.inbox", "paths.work"):
                raise ConfigError(f"{key}: folder is not writable: {folder}")
            # Maybe a read-only remount that will be undone: srwatch starts and pauses that step.
            log.warning("%s: folder is not writable now: %s (files wait claimed until it is)", key, folder)
    # Claiming is an atomic rename, which only works within one filesystem.
    work = cfg.work_dir if cfg.work_dir.exists() else next(p for p in cfg.work_dir.parents if p.exists())
    if os.stat(inbox).st_dev != os.stat(work).st_dev:
        raise ConfigError(
            f"paths.work: {cfg.work_dir} must be on the same filesystem as paths.inbox ({inbox})"
        )
    if cfg.work_dir.is_dir():
        from .claim import prepare_work_folder

        prepare_work_folder(cfg.work_dir, tag=create)


def check_model_file(cfg: Config) -> None:
    """The model file must exist and be readable; the engine checks the rest when it loads."""
    path = cfg.model.path
    if not path.is_file():
        raise ConfigError(f"model.path: no such file: {path}")
    if not os.access(path, os.R_OK):
        raise ConfigError(f"model.path: file is not readable: {path}")
