"""The enhancer at serving time: ONNX Runtime on the CPU, the photo in overlapping tiles.

One photo goes: thumbnail -> head (global correction, unless the caller set it; tone from the photo, through a
UNet pass over its reduced tone view where noise hides it: server.enhance.tone) -> per tile: correction,
noise map, DDIM steps of the UNet (none on a photo too clean to denoise) -> the restored core of each tile
written into the result. Memory stays at the photo (uint8 in and out) plus one tile's tensors, whatever the
photo's size.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import numpy.typing as npt
from PIL import Image

from clipalbum.server.encoders import make_session
from clipalbum.server.enhance import ddim
from clipalbum.server.enhance.color import CONTRAST_LOG_MAX, GlobalParams, apply_gains, correct, kelvin_log_gains
from clipalbum.server.enhance.tone import auto_contrast, auto_exposure, read_tone
from clipalbum.server.enhance.manifest import EnhancerManifest, Precision, read_enhancer_manifest
from clipalbum.server.enhance.noise import estimate_sigma, noise_map

log = logging.getLogger(__name__)


# The noise estimate reads the photo's centre, this many pixels square at most: noise is much the same
# everywhere in a photo, and a 12 MP photo in float32 would be 144 MB for one number.
NOISE_SAMPLE_SIDE = 1536
# --denoise auto: none of the UNet's residual below the first noise estimate (8-bit levels), all of it above the
# second, a ramp between. The UNet smooths fine texture that a clean photo needs kept (README); the ramp was
# chosen on the 161 training photos under the training degradations (one-off measurement), not on enhance-dev.
AUTO_DENOISE_RAMP = (3.0, 6.0)


def _centre(photo: npt.NDArray[np.uint8], side: int) -> npt.NDArray[np.uint8]:
    h, w = photo.shape[:2]
    top, left = max(0, (h - side) // 2), max(0, (w - side) // 2)
    return photo[top:top + side, left:left + side]


def photo_noise(photo: npt.NDArray[np.uint8]) -> np.float32:
    """The photo's noise estimate (0..1 units), read from its centre."""
    if min(photo.shape[:2]) < 2:  # one pixel wide: no 2x2 block to measure
        return np.float32(0)
    return np.float32(estimate_sigma(_centre(photo, NOISE_SAMPLE_SIDE).astype(np.float32) / 255, channel_axis=-1))


def photo_pivot(photo: npt.NDArray[np.uint8]) -> np.float32:
    """The contrast stretch's pivot: the photo's mean (0..1)."""
    return np.float32(photo.mean(dtype=np.float64) / 255)


def auto_denoise(sigma: float) -> float:
    """The denoising strength (0..1) --denoise auto uses for a photo whose noise estimate is `sigma` (0..1 units)."""
    low, high = AUTO_DENOISE_RAMP
    return float(np.clip((sigma * 255 - low) / (high - low), 0.0, 1.0))


class Applied(NamedTuple):
    """What enhance() did to a photo: its global correction and how much of the UNet's correction it kept."""

    params: GlobalParams
    denoise: float  # 0..1: the caller's value, or auto's for the photo's noise


class EnhanceCancelled(Exception):
    """The caller's cancel check said stop; nothing was produced."""


@dataclass(frozen=True)
class EnhanceOptions:
    """None means "auto" (the model decides)."""

    denoise: float | None = None  # 0 (keep the noise) .. 1 (the model's full denoising); auto: by the noise
    exposure: float | None = None  # EV added in linear light
    contrast: float | None = None  # 0 (as is) .. 1 (doubles contrast about the mean)
    temperature: float | None = None  # the light's colour in kelvin, corrected to daylight
    steps: int = 1
    seed: int = 0


@dataclass(frozen=True)
class Tile:
    core: tuple[int, int, int, int]  # top, left, bottom, right: the pixels this tile writes
    context: tuple[int, int, int, int]  # the larger window it reads


def plan_tiles(height: int, width: int, tile: int, overlap: int) -> list[Tile]:
    tiles = []
    for top in range(0, height, tile):
        for left in range(0, width, tile):
            bottom, right = min(top + tile, height), min(left + tile, width)
            tiles.append(Tile((top, left, bottom, right),
                              (max(0, top - overlap), max(0, left - overlap),
                               min(height, bottom + overlap), min(width, right + overlap))))
    return tiles


def pixel_shuffle(x: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    """(12, h, w) -> (3, 2h, 2w), torch's pixel_shuffle with factor 2."""
    _, h, w = x.shape
    return x.reshape(3, 2, 2, h, w).transpose(0, 3, 1, 4, 2).reshape(3, 2 * h, 2 * w)


def position_noise(seed: int, top: int, left: int, height: int, width: int) -> npt.NDArray[np.float32]:
    """(1, 12, height, width) standard normal noise that depends only on the seed and each value's place in the
    whole photo, so overlapping tiles start from the same noise where they overlap: a counter-based hash
    (SplitMix64) of (seed, channel pair, row, column) gives two 32-bit uniforms, and Box-Muller turns them into
    two normals, one for channel c and one for channel c + 6 (one hash per two values: this runs on every tile)."""
    pair = np.arange(6, dtype=np.uint64)[:, None, None]
    rows = np.arange(top, top + height, dtype=np.uint64)[None, :, None]
    columns = np.arange(left, left + width, dtype=np.uint64)[None, None, :]
    key = (np.uint64(seed) << np.uint64(40)) ^ (pair << np.uint64(36)) ^ (rows << np.uint64(18)) ^ columns
    with np.errstate(over="ignore"):
        bits = _splitmix64(key)
    scale = np.float32(2.0 ** -32)
    u1 = ((bits >> np.uint64(32)).astype(np.float32) + np.float32(0.5)) * scale  # in (0, 1]: log(u1) is finite
    angle = (bits & np.uint64(0xFFFFFFFF)).astype(np.float32) * np.float32(2 * np.pi * 2.0 ** -32)
    radius = np.sqrt(np.float32(-2) * np.log(u1))
    return np.concatenate([radius * np.cos(angle), radius * np.sin(angle)])[None]


def _splitmix64(z: npt.NDArray[np.uint64]) -> npt.NDArray[np.uint64]:
    z = z + np.uint64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


class Enhancer:
    """Loads an exported enhancer (enhancer.json + ONNX files) for the CPU."""

    def __init__(self, directory: Path, precision: Precision | None = None, threads: int | None = None,
                 verify: bool = True, providers: list[str] | None = None) -> None:
        """`providers`: ONNX Runtime providers other than the CPU's (e.g. CUDA), for both graphs."""
        self.directory = Path(directory)
        self.manifest: EnhancerManifest = read_enhancer_manifest(self.directory, verify=verify)
        # int8 QDQ graphs are a CPU format: a GPU runs the fp32 UNet where the enhancer has one (the packaged
        # default ships int8 only, to stay small).
        gpu_fp32 = providers and "fp32" in self.manifest.unet
        self.precision: Precision = precision or ("fp32" if gpu_fp32 else self.manifest.default_precision)
        if self.precision not in self.manifest.unet:
            raise ValueError(f"this enhancer has no {self.precision} UNet (it has {', '.join(self.manifest.unet)})")
        # Spinning threads: 10 % faster on 2 cores (2.87 against 2.58 s/MP), and the server runs this at nice 10.
        self.unet = make_session(self.directory / self.manifest.unet[self.precision], threads, providers, spinning=True)
        self.head = make_session(self.directory / self.manifest.head, threads, providers)
        self.head_inputs = {i.name for i in self.head.get_inputs()}  # a head that ignores the photo's embedding lacks it
        self.alphas = np.asarray(self.manifest.alphas_cumprod, dtype=np.float64)

    @property
    def embed_dim(self) -> int:
        return self.manifest.embed_dim

    def _vector(self, v: npt.NDArray[np.float32] | None) -> npt.NDArray[np.float32]:
        if v is None:
            return np.zeros((1, self.embed_dim), dtype=np.float32)
        v = np.asarray(v, dtype=np.float32).reshape(1, -1)
        if v.shape[1] != self.embed_dim:
            raise ValueError(f"embedding has {v.shape[1]} dimensions, the enhancer takes {self.embed_dim}")
        return v

    def predict_params(self, photo: npt.NDArray[np.uint8], embedding: npt.NDArray[np.float32] | None = None,
                       prompt: npt.NDArray[np.float32] | None = None) -> GlobalParams:
        """The head's global correction for a (H, W, 3) uint8 photo."""
        size = self.manifest.thumb
        thumb = np.asarray(Image.fromarray(photo).resize((size, size), Image.Resampling.BOX), dtype=np.float32)
        feed = {"thumb": (thumb / 255).transpose(2, 0, 1)[None], "embedding": self._vector(embedding),
                "prompt": self._vector(prompt)}
        feed = {k: v for k, v in feed.items() if k in self.head_inputs}
        return GlobalParams(*(float(v) for v in self.head.run(None, feed)[0][0]))

    def resolve_params(self, photo: npt.NDArray[np.uint8], options: EnhanceOptions,
                       embedding: npt.NDArray[np.float32] | None, prompt: npt.NDArray[np.float32] | None) -> GlobalParams:
        """The automatic correction (colour from the head, tone from server.enhance.tone) with the user's fixed
        values put in its place. A prompt ("brighter", "more contrast") moves the tone as it moves the head's."""
        auto = self.predict_params(photo, embedding, prompt)
        red, blue = ((auto.log_gain_red, auto.log_gain_blue) if options.temperature is None
                     else kelvin_log_gains(options.temperature))
        params = GlobalParams(0.0, red, blue, 0.0 if options.contrast is None
                              else float(options.contrast) * CONTRAST_LOG_MAX)
        if options.exposure is not None and options.contrast is not None:
            return params._replace(exposure_ev=float(options.exposure))
        plain_head = auto if prompt is None else self.predict_params(photo, embedding, None)
        pivot = float(photo_pivot(photo))
        reading = read_tone(photo, denoise=lambda view: self.denoised_view(view, plain_head))
        if options.contrast is None:
            contrast = auto_contrast(reading, plain_head, params, pivot)
            params = params._replace(contrast_log=contrast + (auto.contrast_log - plain_head.contrast_log))
        if options.exposure is not None:
            return params._replace(exposure_ev=float(options.exposure))
        exposure = auto_exposure(reading, plain_head, params, pivot)
        return params._replace(exposure_ev=exposure + (auto.exposure_ev - plain_head.exposure_ev))

    def denoised_view(self, view: npt.NDArray[np.uint8], head: GlobalParams) -> npt.NDArray[np.uint8]:
        """A noisy tone view denoised by the UNet, for the tone rules to read. The view is brightened by the
        head's exposure (where the head brightens) for the UNet and darkened back after: the UNet learned on
        corrected photos, and a dark view denoised as it is kept its highlights too bright, which cost the
        combined case 1.8 dB of its global correction (one-off measurement on city + scenery). Highlights
        the brightening clips come back at the head's exposure, so the rules then read at least the head's
        brightening; the remedies tried cost dark noisy photos more than they gave (README, "Automatic
        tone")."""
        ev = max(head.exposure_ev, 0.0)
        bright, _ = self.enhance(view, EnhanceOptions(denoise=1.0), params=GlobalParams(exposure_ev=ev))
        scale = np.float32(2.0 ** -ev)
        back = apply_gains(bright.astype(np.float32) / 255, scale, scale, scale, channel_axis=-1)
        return (back * 255 + 0.5).astype(np.uint8)

    def enhance(self, photo: npt.NDArray[np.uint8], options: EnhanceOptions = EnhanceOptions(),
                embedding: npt.NDArray[np.float32] | None = None, prompt: npt.NDArray[np.float32] | None = None,
                progress: Callable[[int, int], None] | None = None,
                cancelled: Callable[[], bool] | None = None,
                params: GlobalParams | None = None) -> tuple[npt.NDArray[np.uint8], Applied]:
        """(H, W, 3) uint8 in, the enhanced (H, W, 3) uint8 out, with the corrections it applied.

        progress(done, total) is called after each tile; cancelled() is checked before each tile and each further diffusion step."""
        if photo.ndim != 3 or photo.shape[2] != 3 or photo.dtype != np.uint8:
            raise ValueError(f"expected an (H, W, 3) uint8 photo, got {photo.shape} {photo.dtype}")
        if not 0 <= (options.denoise if options.denoise is not None else 1.0) <= 1:
            raise ValueError("denoise must be between 0 and 1")
        params = params or self.resolve_params(photo, options, embedding, prompt)
        pivot = photo_pivot(photo)
        sigma = photo_noise(photo)
        strength = auto_denoise(float(sigma)) if options.denoise is None else float(options.denoise)
        height, width = photo.shape[:2]
        out = np.empty_like(photo)
        tiles = plan_tiles(height, width, self.manifest.tile, self.manifest.overlap)
        vector = self._vector(embedding)
        for i, tile in enumerate(tiles):
            if cancelled is not None and cancelled():
                raise EnhanceCancelled()
            self._tile(photo, out, tile, params, pivot, sigma, vector, strength, options, cancelled)
            if progress is not None:
                progress(i + 1, len(tiles))
        return out, Applied(params, strength)

    def _tile(self, photo: npt.NDArray[np.uint8], out: npt.NDArray[np.uint8], tile: Tile, params: GlobalParams,
              pivot: np.float32, sigma: np.float32, embedding: npt.NDArray[np.float32], strength: float,
              options: EnhanceOptions, cancelled: Callable[[], bool] | None = None) -> None:
        top, left, bottom, right = tile.context
        x = photo[top:bottom, left:right].astype(np.float32) / 255  # (h, w, 3)
        m = self.manifest.multiple
        h, w = x.shape[:2]
        x = np.pad(x, ((0, (-h) % m), (0, (-w) % m), (0, 0)), mode="reflect" if min(h, w) > m else "edge")
        x = x.transpose(2, 0, 1)[None]  # (1, 3, H, W)
        applied = tuple(np.float32(v) for v in params)
        corrected = correct(x, applied, pivot, channel_axis=1).astype(np.float32)
        result = corrected[0]
        if strength > 0:  # no denoising: the UNet's work would be thrown away
            nmap = noise_map(x, applied, pivot, sigma, channel_axis=1, corrected=corrected).astype(np.float32)
            residual = self._sample(corrected, nmap, embedding, options, tile, cancelled)
            result = result + strength * pixel_shuffle(residual) / self.manifest.residual_scale
        ct, cl, cb, cr = tile.core
        core = result[:, ct - top:cb - top, cl - left:cr - left]
        out[ct:cb, cl:cr] = (core.transpose(1, 2, 0).clip(0, 1) * 255 + 0.5).astype(np.uint8)

    def _sample(self, corrected: npt.NDArray[np.float32], nmap: npt.NDArray[np.float32],
                embedding: npt.NDArray[np.float32], options: EnhanceOptions, tile: Tile,
                cancelled: Callable[[], bool] | None = None) -> npt.NDArray[np.float32]:
        _, _, h, w = corrected.shape
        top, left = tile.context[0] // 2, tile.context[1] // 2
        x = position_noise(options.seed, top, left, h // 2, w // 2)
        steps = ddim.timesteps(options.steps, len(self.alphas))
        for i, t in enumerate(steps):
            if i and cancelled is not None and cancelled():  # several steps: a tile takes seconds
                raise EnhanceCancelled()
            x0 = self.unet.run(None, {"x_t": x, "corrected": corrected, "noise_map": nmap,
                                      "timestep": np.array([t], dtype=np.float32), "embedding": embedding})[0]
            x = ddim.step(x0, t, x, self.alphas, options.steps)
        return x[0]


def load_enhancer(directory: Path, device: str = "auto", precision: Precision | None = None,
                  threads: int | None = None) -> Enhancer:
    """The enhancer on the CPU. CUDA runs through onnxruntime's CUDA provider where that build is installed;
    anything asked for that is not there falls back to the CPU with one warning."""
    import onnxruntime as ort

    if device in ("auto", "cuda") and "CUDAExecutionProvider" in ort.get_available_providers():
        try:
            return Enhancer(directory, precision=precision, threads=threads, providers=["CUDAExecutionProvider"])
        except Exception as error:  # a broken CUDA install: the CPU still works
            log.warning("--device %s: CUDA failed to start (%s); using the CPU", device, error)
            return Enhancer(directory, precision=precision, threads=threads)
    if device in ("cuda", "mps"):
        log.warning("--device %s: not available to this install (onnxruntime has %s); using the CPU",
                    device, ", ".join(ort.get_available_providers()))
    return Enhancer(directory, precision=precision, threads=threads)
