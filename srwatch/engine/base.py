"""What every engine shares: the pre- and post-processing stages, load-time checks, tiling.

An engine only has to provide ``forward(blob) -> blob`` (NCHW float32 in and out). The stages
around it follow cv2.dnn_superres (opencv_contrib modules/dnn_superres/src/dnn_superres.cpp):

* ``edsr``: BGR as float 0..255 minus the DIV2K mean in; output plus the mean, rounded.
* ``espcn``, ``fsrcnn``, ``lapsrn``: the Y channel of YCrCb in 0..1 in; the output Y is merged
  with the input's Cr and Cb resized by ``cv2.resize`` with its default INTER_LINEAR (that is
  what dnn_superres does), then converted back to BGR.

For 8-bit images the stages reproduce dnn_superres bit for bit (8-bit YCrCb conversions,
rounding and saturation as ``convertTo``). 16-bit images take a float pipeline with the same
maths (dnn_superres itself would reduce them to 8 bits).

Post-processing works on a tile's *core* only and writes it straight into the preallocated
result (tiling.tile_process): one channel at a time, in place, so a tile holds the network's
output blob plus a few core-sized planes, and nothing of the whole output's size is float.
"""
from __future__ import annotations

import abc
import ctypes
import functools
import logging
from typing import Callable, Optional

import cv2
import numpy as np

from ..config import ModelConfig, TileConfig
from ..errors import ModelError, ModelLoadError
from .. import tiling
from .models import DIV2K_MEAN_BGR, ModelInfo

log = logging.getLogger(__name__)

#: The DIV2K mean (engine/models.py) as float32, for the EDSR stages below.
DIV2K_MEAN = np.array(DIV2K_MEAN_BGR, dtype=np.float32)

#: Input size of the load-time test forward (height, width): small, and not square so a
#: swapped height/width shows up.
PROBE_SHAPE = (24, 20)

#: Float32 tensors of the widest layer's size alive at once during a forward pass, for tile
#: 'auto'. Measured with the 32x256 EDSR stand-in (RSS growth of a forward pass divided by
#: 4 bytes x 256 x input pixels): cv2.dnn 3.8-4.3, onnxruntime 3.8-4.8, OpenVINO about 3.6
#: (plus its per-shape weight copy, which is not activation memory). 6 leaves some headroom.
LIVE_TENSORS = 6.0

#: Bytes per *output* pixel of a tile that pre/post-processing holds at once, for tile 'auto'.
#: The staged stages below: the float32 output blob (4 for Y, 12 for EDSR), one resized chroma
#: plane (4) and the core's float plane, 8-bit YCrCb and BGR (4 + 3 + 3): at most 18 for 8-bit,
#: 32 for 16-bit luma (float YCrCb and BGR of the core). cv2.dnn_superres' own upsample (the
#: opencv engine's 8-bit path for .pb files) holds float Y, Cr, Cb, the merged YCrCb and the
#: result at output size: 48.
PIPELINE_BYTES_PER_OUTPUT_PIXEL = 32.0
DNN_SUPERRES_BYTES_PER_OUTPUT_PIXEL = 48.0

#: Fallback widest layer (channels at input resolution) when the graph cannot be measured.
DEFAULT_WIDEST_LAYER = 256.0

_MAX_VALUE = {np.dtype(np.uint8): 255.0, np.dtype(np.uint16): 65535.0}


# --- stages: arrays in, arrays out ------------------------------------------------------------


def check_image(img: np.ndarray) -> np.ndarray:
    """The image itself if it is uint8/uint16 (H, W) or (H, W, 3); ValueError otherwise."""
    if img.dtype not in _MAX_VALUE:
        raise ValueError(f"image dtype must be uint8 or uint16, not {img.dtype}")
    if img.ndim == 2 or (img.ndim == 3 and img.shape[2] == 3):
        return img
    raise ValueError(f"image must be (H, W) or (H, W, 3), not {img.shape}")


def bgr_to_ycrcb(img: np.ndarray) -> np.ndarray:
    """YCrCb float32 in 0..1 (H, W, 3). 8-bit converts in 8 bits first, exactly as dnn_superres."""
    if img.dtype == np.uint8:
        return cv2.cvtColor(img, cv2.COLOR_BGR2YCrCb).astype(np.float32) * np.float32(1.0 / 255.0)
    unit = img.astype(np.float32) * np.float32(1.0 / _MAX_VALUE[img.dtype])
    return cv2.cvtColor(unit, cv2.COLOR_BGR2YCrCb)


def gray_to_unit(img: np.ndarray) -> np.ndarray:
    """A grayscale image as float32 0..1 (dnn_superres treats 1-channel input as Y)."""
    return img.astype(np.float32) * np.float32(1.0 / _MAX_VALUE[img.dtype])


def plane_to_blob(plane: np.ndarray) -> np.ndarray:
    """(H, W) float32 -> (1, 1, H, W), contiguous."""
    return np.ascontiguousarray(plane[None, None], dtype=np.float32)


def blob_to_plane(blob: np.ndarray) -> np.ndarray:
    """(1, 1, H, W) -> (H, W)."""
    return blob[0, 0]


def unit_to_dtype(unit: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """0..1 float -> uint8/uint16, rounded half to even and saturated (as convertTo)."""
    peak = _MAX_VALUE[np.dtype(dtype)]
    return np.clip(np.rint(unit * np.float32(peak)), 0, peak).astype(dtype)


def unit_to_u8(unit: np.ndarray, nonnegative: bool = False) -> np.ndarray:
    """0..1 float32 -> uint8, as unit_to_dtype (rounded half to even, saturated), in one OpenCV pass.

    convertScaleAbs rounds and saturates as Mat.convertTo does; its absolute value is made
    harmless by clipping negatives to 0 first (skipped for planes known to be >= 0). Three
    numpy passes over a 768x768 plane took 0.9 ms, this 0.4.
    """
    return cv2.convertScaleAbs(unit if nonnegative else cv2.max(unit, 0.0), alpha=255.0)


def unit_into(unit: np.ndarray, region: np.ndarray) -> None:
    """0..1 float -> ``region``'s dtype, written into ``region``: unit_to_dtype with one temporary."""
    if region.dtype == np.uint8:
        region[...] = unit_to_u8(unit)
        return
    peak = _MAX_VALUE[region.dtype]
    scaled = unit * np.float32(peak)
    np.rint(scaled, out=scaled)
    np.clip(scaled, 0, peak, out=scaled)
    region[...] = scaled


def chroma_core(ycrcb_lr: np.ndarray, channel: int, size: tuple[int, int], core: tuple[slice, slice]) -> np.ndarray:
    """One chroma plane of the window resized to ``size`` (INTER_LINEAR, as dnn_superres), cropped to the core."""
    return cv2.resize(ycrcb_lr[..., channel], size, interpolation=cv2.INTER_LINEAR)[core]


def luma_into(y_hr: np.ndarray, ycrcb_lr: np.ndarray, core: tuple[slice, slice], region: np.ndarray) -> None:
    """Model Y with the window's chroma, the core converted to BGR and written into ``region``.

    8-bit rounds each plane to 8 bits and converts in 8 bits, exactly as dnn_superres; 16-bit
    merges in float and rounds after the conversion. Resizing the whole window's chroma and
    cropping gives the same pixels as resizing the whole image (the window holds the context).
    """
    size = (y_hr.shape[1], y_hr.shape[0])
    if region.dtype == np.uint8:
        # Each plane converted whole, then merged: writing into a strided channel of one
        # (H, W, 3) array took 7.7 ms for a 768x768 result, this 4.4. Linear resizing keeps
        # the 0..1 chroma >= 0.
        planes = [unit_to_u8(y_hr[core])]
        planes += [unit_to_u8(chroma_core(ycrcb_lr, channel, size, core), nonnegative=True) for channel in (1, 2)]
        region[...] = cv2.cvtColor(cv2.merge(planes), cv2.COLOR_YCrCb2BGR)
        return
    merged = np.empty(region.shape[:2] + (3,), np.float32)
    merged[..., 0] = y_hr[core]
    for channel in (1, 2):
        merged[..., channel] = chroma_core(ycrcb_lr, channel, size, core)
    bgr = cv2.cvtColor(merged, cv2.COLOR_YCrCb2BGR)
    del merged
    unit_into(bgr, region)


def bgr_to_edsr_blob(img: np.ndarray) -> np.ndarray:
    """BGR -> (1, 3, H, W) float32 in 0..255 minus the DIV2K mean (16-bit scaled to 0..255)."""
    scaled = img.astype(np.float32)
    if img.dtype != np.uint8:
        scaled *= np.float32(255.0 / _MAX_VALUE[img.dtype])
    return np.ascontiguousarray((scaled - DIV2K_MEAN).transpose(2, 0, 1)[None])


def edsr_into(blob: np.ndarray, core: tuple[slice, slice], region: np.ndarray) -> None:
    """(1, 3, H, W) model output -> the core as BGR in ``region``: plus the mean, rounded, saturated.

    One channel at a time: a core-sized float plane is the only temporary.
    """
    peak = _MAX_VALUE[region.dtype]
    rows, cols = core
    for channel in range(3):
        plane = blob[0, channel, rows, cols] + DIV2K_MEAN[channel]
        if region.dtype != np.uint8:  # 0..255 -> 0..1 -> the dtype's range, as for 8-bit
            plane *= np.float32(1.0 / 255.0)
            plane *= np.float32(peak)
        np.rint(plane, out=plane)
        np.clip(plane, 0, peak, out=plane)
        region[..., channel] = plane


# --- the engine -------------------------------------------------------------------------------


class Engine(abc.ABC):
    """A loaded model that upscales BGR (or grayscale) uint8/uint16 images by ``scale``."""

    #: Name used in config (model.engine) and in cache keys.
    name = "base"

    def __init__(self, info: ModelInfo, tile_cfg: TileConfig, threads: int) -> None:
        self.info = info
        self.tile_cfg = tile_cfg
        self.threads = max(1, int(threads))
        self.tile_size: Optional[int] = None  # resolved by finish_load()
        # Threads while other workers are busy too (prepare_crowded), and the count in use now.
        self.crowded_threads: Optional[int] = None
        self.active_threads = self.threads
        self.threads_used: set[int] = set()  # this file's thread counts (start_job resets it)
        self._crowded_hint = False
        self._others_busy: Callable[[], bool] = lambda: False
        self._one_piece = True  # the image being upscaled runs as one inference (not tiled)

    # --- threads per file ---

    def prepare_crowded(self, threads: int, others_busy: Callable[[], bool]) -> None:
        """Run an image that fits one inference on `threads` (fewer than self.threads) while others_busy().

        Two workers of two threads on two cores run each other's files 3-4 % slower than two of
        one thread (benchmarks/README.md, "Threads per file"), while alone, two threads halve a
        file's time. The question is asked as the inference starts (others_busy reads the
        pool's busy board), so a file sent ahead does not go by how things were when it was
        sent. A tiled image keeps all its threads: its tiles on both thread counts held buffers
        in both compiled models (2000x2000 with the default model: 558 MB peak instead of 434)
        and gained nothing. Only engines that can compile a second model (switches_threads:
        OpenVINO) take this; cv2.dnn's and onnxruntime's thread counts stay fixed.
        """
        if 1 <= threads < self.threads and self.switches_threads:
            self.crowded_threads = threads
            self._others_busy = others_busy

    #: Whether prepare_crowded() has any effect (a second compiled model per thread count).
    switches_threads = False

    def start_job(self, crowded: bool) -> None:
        """A new file: its first inference is crowded if the supervisor said so (files were waiting)."""
        self._crowded_hint = crowded
        self.threads_used = set()

    def _pick_threads(self) -> None:
        """Before an inference: crowded_threads for a one-piece image while others are busy, else self.threads."""
        if self.crowded_threads is not None:
            crowded = self._one_piece and (self._crowded_hint or self._others_busy())
            self._crowded_hint = False
            self.active_threads = self.crowded_threads if crowded else self.threads
        self.threads_used.add(self.active_threads)

    @property
    def scale(self) -> int:
        """Upscaling factor."""
        return self.info.scale

    # Engines implement these two.
    @abc.abstractmethod
    def forward(self, blob: np.ndarray) -> np.ndarray:
        """Run the network: NCHW float32 in, NCHW float32 out (C is 1 or 3)."""

    @abc.abstractmethod
    def widest_layer(self) -> Optional[float]:
        """Elements of the largest layer output per input pixel (e.g. 256 for 256 filters), or None."""

    # --- pipeline ---

    def upscale(self, img: np.ndarray, out: Optional[np.ndarray] = None) -> np.ndarray:
        """Upscale a whole image, tiled per the tile config; same dtype, ``scale`` x the size.

        ``out``: the preallocated result (or a view of one, e.g. the colour channels of an
        RGBA result), written tile by tile; allocated here if None. Returns the result.
        Raises ModelError when the network fails on this input.
        """
        check_image(img)
        height, width = img.shape[:2]
        windows = (
            tiling.plan_tiles(height, width, self.tile_size, self.tile_cfg.overlap, self.scale)
            if self.tile_size is not None else []
        )
        self._one_piece = len(windows) <= 1
        if self._one_piece:  # whole-image inference ('off', or the image fits one tile)
            whole = self._checked_upscale_whole(img)
            if out is None:
                return whole
            tiling.check_output(out, img, self.scale)[...] = whole
            return out
        out = tiling.new_output(img, self.scale) if out is None else tiling.check_output(out, img, self.scale)
        return tiling.tile_process(img, self._checked_upscale_tile, windows, out)

    def upscale_whole(self, img: np.ndarray) -> np.ndarray:
        """Upscale in one piece (one tile): pre-process, forward, post-process."""
        height, width = img.shape[:2]
        out = tiling.new_output(img, self.scale)
        self.staged_tile(img, tiling.whole_window(height, width, self.scale), out)
        return out

    def upscale_tile(self, window: np.ndarray, win: tiling.TileWindow, region: np.ndarray) -> None:
        """Upscale one tile's window and write its core into ``region`` (engines may override)."""
        self.staged_tile(window, win, region)

    def staged_tile(self, window: np.ndarray, win: tiling.TileWindow, region: np.ndarray) -> None:
        """The named stages on one window: pre-process, forward, post-process the core into ``region``."""
        core = tiling.core_slices(win)
        if self.info.luma_only:
            self._luma_tile(window, core, region)
        elif window.ndim == 2:
            # EDSR wants colour: run the grey as BGR and take its luma back.
            bgr = np.empty(region.shape + (3,), region.dtype)
            edsr_into(self.checked_forward(bgr_to_edsr_blob(cv2.cvtColor(window, cv2.COLOR_GRAY2BGR))), core, bgr)
            region[...] = cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY)
        else:
            edsr_into(self.checked_forward(bgr_to_edsr_blob(window)), core, region)

    def _luma_tile(self, window: np.ndarray, core: tuple[slice, slice], region: np.ndarray) -> None:
        if window.ndim == 2:
            unit_into(blob_to_plane(self.checked_forward(plane_to_blob(gray_to_unit(window))))[core], region)
            return
        ycrcb = bgr_to_ycrcb(window)
        y_hr = blob_to_plane(self.checked_forward(plane_to_blob(ycrcb[..., 0])))
        luma_into(y_hr, ycrcb, core, region)

    def checked_forward(self, blob: np.ndarray) -> np.ndarray:
        """forward(), with ModelError unless the output is ``scale`` x the input (4-D, NCHW)."""
        self._pick_threads()
        out = self.forward(blob)
        height, width = blob.shape[2:]
        if out.ndim != 4 or out.shape[2:] != (height * self.scale, width * self.scale):
            got = "x".join(str(d) for d in out.shape)
            looks = f" (it looks like x{out.shape[2] / height:g})" if out.ndim == 4 and height else ""
            raise ModelError(f"model output is {got} for a {width}x{height} input, not x{self.scale}{looks}")
        return out

    def _checked_upscale_whole(self, img: np.ndarray) -> np.ndarray:
        """upscale_whole, with any failure turned into ModelError and the size checked."""
        try:
            out = self.upscale_whole(img)
        except ModelError:
            raise
        except Exception as exc:  # cv2.error, RuntimeError from openvino/onnxruntime, MemoryError
            raise ModelError(f"{self.name} engine failed on a {img.shape[1]}x{img.shape[0]} input: {exc}") from exc
        expected = (img.shape[0] * self.scale, img.shape[1] * self.scale)
        if out.shape[:2] != expected:
            raise ModelError(f"model output is {out.shape[1]}x{out.shape[0]}, expected {expected[1]}x{expected[0]}")
        return out

    def _checked_upscale_tile(self, window: np.ndarray, win: tiling.TileWindow, region: np.ndarray) -> None:
        """upscale_tile, with any failure turned into ModelError."""
        try:
            self.upscale_tile(window, win, region)
        except ModelError:
            raise
        except Exception as exc:  # cv2.error, RuntimeError from openvino/onnxruntime, MemoryError
            raise ModelError(
                f"{self.name} engine failed on a {window.shape[1]}x{window.shape[0]} tile: {exc}"
            ) from exc

    # --- load-time ---

    def finish_load(self) -> None:
        """Test forward (scale check) and tile size resolution; raise ModelLoadError on failure."""
        self.check_scale()
        self.tile_size = self.resolve_tile_size()

    def check_scale(self) -> None:
        """One small forward: the output must be exactly ``scale`` x the input, or ModelLoadError."""
        h, w = PROBE_SHAPE
        probe = np.random.default_rng(0).integers(0, 256, size=(h, w, 3), dtype=np.uint8)
        try:
            out = self.upscale_whole(probe)
        except Exception as exc:
            raise ModelLoadError(
                f"{self.info.path.name}: test forward with {self.name} failed "
                f"(algorithm {self.info.algorithm}, scale {self.scale}; check model.algorithm / model.scale): {exc}"
            ) from None
        if out.shape[:2] != (h * self.scale, w * self.scale):
            raise ModelLoadError(
                f"{self.info.path.name}: a {w}x{h} test input came out {out.shape[1]}x{out.shape[0]}, "
                f"not x{self.scale} (the model looks like x{out.shape[0] / h:g}); fix model.scale"
            )

    def resolve_tile_size(self) -> Optional[int]:
        """Tile side in input pixels, or None for whole-image inference ('off')."""
        size = self.tile_cfg.size
        if size == "off":
            return None
        if isinstance(size, int):
            return size
        bytes_per_pixel = self.bytes_per_input_pixel()
        tile = tiling.auto_tile_size(bytes_per_pixel, self.tile_cfg.max_memory_mb, self.tile_cfg.overlap)
        fast = self.fast_tile_size()
        log.debug(
            "tile auto: %.0f bytes per input pixel, budget %d MB -> tile %d (+%d overlap); fastest up to %s",
            bytes_per_pixel, self.tile_cfg.max_memory_mb, tile, self.tile_cfg.overlap, fast,
        )
        return tile if fast is None else min(tile, fast)

    def fast_tile_size(self) -> Optional[int]:
        """The largest tile that runs at full speed per pixel, where an engine has measured one (None: no cap)."""
        return None

    def bytes_per_input_pixel(self) -> float:
        """Estimated peak memory of upscaling one tile, in bytes per input pixel of the tile.

        ``4 x LIVE_TENSORS x widest + PIPELINE_BYTES_PER_OUTPUT_PIXEL x scale**2``, where
        ``widest`` is the largest layer output in float32 elements per input pixel (256 for EDSR
        32x256; 64 x 4 x 4 = 1024 for LapSRN_x8, whose widest level works at 4x the input size).
        Checked against measured RSS growth: FSRCNN_x3 (widest 56) estimate 1776 B/px, measured
        about 1300 B/px on cv2.dnn; EDSR 32x256 x3 estimate 6576 B/px, measured 4000-5000.
        """
        return 4.0 * LIVE_TENSORS * self.measured_widest + self.pipeline_bytes_per_output_pixel * self.scale**2

    @property
    def pipeline_bytes_per_output_pixel(self) -> float:
        """Pre/post-processing memory per output pixel of a tile (PIPELINE_BYTES_PER_OUTPUT_PIXEL)."""
        return PIPELINE_BYTES_PER_OUTPUT_PIXEL

    @functools.cached_property
    def measured_widest(self) -> float:
        """widest_layer(), measured once (it reads the graph), or DEFAULT_WIDEST_LAYER."""
        widest = self.widest_layer()
        if widest is None:
            log.warning("%s: cannot measure the widest layer; assuming %g", self.info.path.name, DEFAULT_WIDEST_LAYER)
            return DEFAULT_WIDEST_LAYER
        return widest


#: The engines that offer each precision besides f32 (which all do).
PRECISION_ENGINES = {"bf16": "openvino", "int8": "openvino", "f16": "onnxruntime"}


def require_precision(model_cfg: ModelConfig, engine: str) -> None:
    """ModelLoadError unless `engine` offers model.precision (f32 and auto: every engine)."""
    wanted = model_cfg.precision
    offered_by = PRECISION_ENGINES.get(wanted)
    if offered_by is not None and offered_by != engine:
        raise ModelLoadError(f"model.precision: {wanted} needs model.engine: {offered_by} (not {engine})")


def widest_layer_cv2(info: ModelInfo) -> Optional[float]:
    """Largest layer output per input pixel, read from the graph with OpenCV's classic dnn engine.

    The graph is run once on a 16x16 input asking for every layer's output (the classic engine
    allows that; OpenCV 5's new engine does not). Winograd is switched off for this run: its
    transformed 3x3 weights are 7x the model's size (1.4 GB peak instead of 0.5 GB for a
    150 MB EDSR 32x256). None when OpenCV cannot read the graph.
    """
    side = 16
    try:
        if info.format == "pb":
            cv2.dnn_superres.DnnSuperResImpl_create()  # registers the DepthToSpace layer ESPCN needs
        classic = getattr(cv2.dnn, "ENGINE_CLASSIC", None)
        if classic is None:  # OpenCV 4.x has only the classic engine
            net = cv2.dnn.readNet(str(info.path))
        elif info.format == "pb":
            net = cv2.dnn.readNetFromTensorflow(str(info.path), "", classic)
        else:
            net = cv2.dnn.readNetFromONNX(str(info.path), classic)
        if hasattr(net, "enableWinograd"):
            net.enableWinograd(False)
        channels = 1 if info.luma_only else 3
        net.setInput(np.zeros((1, channels, side, side), np.float32))
        names = list(net.getLayerNames())
        widest = max((out.size for out in net.forward(names)), default=0)
    except (cv2.error, AttributeError) as exc:
        log.debug("widest layer of %s not measurable with cv2.dnn: %s", info.path.name, exc)
        return None
    finally:
        net = None
        release_freed_memory()
    return widest / float(side * side) if widest else None


def release_freed_memory() -> None:
    """Hand freed heap memory back to the OS (glibc's malloc_trim; a no-op elsewhere).

    The graph read above frees about 0.3 GB for a 150 MB model, but glibc keeps it mapped: the
    worker's RSS would stay that much higher for its whole life.
    """
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
