"""`clipalbum enhance eval`: degrade clean photos (fixed seed), restore them, and score the degraded input,
the classical pipeline and the model side by side: PSNR, CIEDE2000 and the search bundle's embedding cosine."""

from __future__ import annotations

import logging
import time
from functools import partial
from pathlib import Path

import msgspec
import numpy as np
import numpy.typing as npt
from tqdm import tqdm

from clipalbum.server.encoders import Encoders
from clipalbum.server.enhance.cases import CASES, case_correction, degrade_case
from clipalbum.server.enhance.conditioning import embed_photo
from clipalbum.server.enhance.classical import classical_pipeline, to_uint8, wavelet_denoise
from clipalbum.server.enhance.color import correct
from clipalbum.server.enhance.runtime import EnhanceOptions, Enhancer
from clipalbum.server.preprocess import PHOTO_SUFFIXES, decode_photo

log = logging.getLogger(__name__)

# "wavelet" is the classical pipeline's first step alone: its denoising without the global corrections.
METHODS = ("degraded", "wavelet", "classical", "model")


class MethodScore(msgspec.Struct):
    psnr: float  # dB, 8-bit RGB, mean over photos
    delta_e: float  # CIEDE2000, mean over pixels, then photos
    cosine: float  # the search bundle's image embedding against the clean photo's


class CaseReport(msgspec.Struct):
    case: str
    photos: int
    scores: dict[str, MethodScore]  # method -> score
    model_seconds_per_mp: float


class EnhanceEvalReport(msgspec.Struct):
    enhancer: str
    precision: str
    bundle: str
    seed: int
    steps: int
    folders: list[str]
    cases: list[CaseReport]
    seconds: float
    denoise_only: bool = False  # global corrections fixed to none
    exact_correction: bool = False  # each photo's exact global correction instead of the head's: a perfect head

    def describe(self) -> str:
        lines = [f"enhancer {self.enhancer} ({self.precision}, {self.steps} step(s)"
                 f"{', denoising only' if self.denoise_only else ''}"
                 f"{', the exact global correction' if self.exact_correction else ''}), "
                 f"bundle {self.bundle}, seed {self.seed}"]
        for case in self.cases:
            lines.append(f"{case.case} ({case.photos} photos, model {case.model_seconds_per_mp:.2f} s/MP):")
            for method, s in case.scores.items():
                lines.append(f"  {method:<10} PSNR {s.psnr:6.2f} dB  CIEDE2000 {s.delta_e:5.2f}  cosine {s.cosine:.4f}")
        return "\n".join(lines)


def psnr(a: npt.NDArray[np.uint8], b: npt.NDArray[np.uint8]) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else float(10 * np.log10(255.0 ** 2 / mse))


def ciede2000(a: npt.NDArray[np.uint8], b: npt.NDArray[np.uint8]) -> float:
    from skimage.color import deltaE_ciede2000, rgb2lab

    return float(deltaE_ciede2000(rgb2lab(a), rgb2lab(b)).mean())


Params = tuple[float, float, float, float]  # a GlobalParams, or any four numbers in its order


def corrected(x: npt.NDArray[np.float32], params: Params) -> npt.NDArray[np.float32]:
    """The global correction alone (no UNet) of an (H, W, 3) photo in 0..1, about its mean, as the enhancer
    applies it."""
    return correct(x, tuple(np.float32(v) for v in params), np.float32(x.mean()), channel_axis=-1)


def globally_corrected(photo: npt.NDArray[np.uint8], params: Params) -> npt.NDArray[np.uint8]:
    """`corrected` for a uint8 photo, rounded back to 8 bits."""
    return to_uint8(corrected(photo.astype(np.float32) / 255, params))


def clean_photos(folders: list[Path], limit: int | None = None) -> list[Path]:
    files: list[Path] = []
    for folder in folders:
        if not folder.is_dir():
            raise FileNotFoundError(f"{folder} is not a folder")
        files += sorted(p for p in folder.iterdir() if p.suffix.lower() in PHOTO_SUFFIXES)
    return files[:limit] if limit else files


def evaluate_enhancer(enhancer: Enhancer, encoders: Encoders, folders: list[Path], cases: list[str], seed: int = 0,
                      steps: int = 1, limit: int | None = None, progress: bool = True,
                      options: EnhanceOptions | None = None, exact_correction: bool = False) -> EnhanceEvalReport:
    """`options` fixes corrections (e.g. none: denoising alone); by default everything is the model's choice.
    `exact_correction` gives the model each photo's exact global correction: what the UNet makes of a perfect head."""
    options = EnhanceOptions(steps=steps) if options is None else options
    started = time.perf_counter()
    embed = partial(embed_photo, encoders)
    condition = encoders.manifest.model_id == enhancer.manifest.conditioning_model_id
    if not condition:
        log.warning("the enhancer was trained with %s embeddings, the bundle is %s: enhancing without them",
                    enhancer.manifest.conditioning_model_id, encoders.manifest.model_id)
    files = clean_photos(folders, limit)
    if not files:
        raise FileNotFoundError(f"no photos in {', '.join(map(str, folders))}")
    photos = [(f, np.asarray(decode_photo(f, min_side=1 << 30).image)) for f in files]
    reports = []
    for case in cases:
        rows: dict[str, list[tuple[float, float, float]]] = {m: [] for m in METHODS}
        model_seconds, megapixels = 0.0, 0.0
        for path, clean in tqdm(photos, desc=case, unit="photo", disable=not progress):
            degraded = degrade_case(clean, case, seed, key=path.name)
            clean_vec = embed(clean)
            degraded_vec = embed(degraded)
            exact = case_correction(case, seed, key=path.name) if exact_correction else None
            start = time.perf_counter()
            restored, _ = enhancer.enhance(degraded, options, embedding=degraded_vec if condition else None,
                                           params=exact)
            model_seconds += time.perf_counter() - start
            megapixels += clean.shape[0] * clean.shape[1] / 1e6
            denoised = wavelet_denoise(degraded)
            for method, result in (("degraded", degraded), ("wavelet", to_uint8(denoised)),
                                   ("classical", classical_pipeline(degraded, denoised)), ("model", restored)):
                vec = degraded_vec if method == "degraded" else embed(result)
                rows[method].append((psnr(result, clean), ciede2000(result, clean), float(vec @ clean_vec)))
        scores = {m: MethodScore(*(round(float(v), 4) for v in np.mean(r, axis=0))) for m, r in rows.items()}
        reports.append(CaseReport(case, len(photos), scores, round(model_seconds / megapixels, 3)))
    return EnhanceEvalReport(enhancer.manifest.model_id, enhancer.precision, encoders.manifest.model_id, seed,
                             options.steps, [str(f) for f in folders], reports, round(time.perf_counter() - started, 1),
                             denoise_only=options.exposure == 0 and options.contrast == 0,
                             exact_correction=exact_correction)


def expand_cases(case: str) -> list[str]:
    if case == "all":
        return list(CASES)
    if case not in CASES:
        raise ValueError(f"unknown case {case!r}; one of {', '.join(CASES)} or all")
    return [case]


# Prompts the head was trained on, and paraphrases it never saw (training/enhance/prompts.py has the former).
PROMPTS = ("warm evening light", "cooler", "brighter", "darker", "more contrast", "soft and gentle",
           "sunset glow", "cold winter light", "lighter please", "gloomy", "make it pop")


class PromptEffect(msgspec.Struct):
    prompt: str
    warmth: float  # change of log(red / blue) of the mean linear light: > 0 is warmer
    brightness: float  # change of mean luma (0..1)
    contrast: float  # change of the luma standard deviation


def prompt_effects(enhancer: Enhancer, encoders: Encoders, folders: list[Path], prompts: tuple[str, ...] = PROMPTS,
                   limit: int | None = None) -> list[PromptEffect]:
    """How far each prompt moves the global correction from the one without a prompt, averaged over clean
    photos: the direction a prompt names should show in the sign of its change."""
    from clipalbum.server.enhance.color import luma, srgb_to_linear

    def measures(x: npt.NDArray[np.float32]) -> tuple[float, float, float]:
        lin = srgb_to_linear(x).reshape(-1, 3).mean(axis=0)
        y = luma(x, -1)
        return float(np.log(lin[0] / lin[2])), float(y.mean()), float(y.std())

    embed = partial(embed_photo, encoders)
    texts = encoders.text.encode(list(prompts))
    deltas = np.zeros((len(prompts), 3))
    files = clean_photos(folders, limit)
    for path in files:
        image = decode_photo(path, min_side=256).image
        image.thumbnail((512, 512))
        photo = np.asarray(image)
        x = photo.astype(np.float32) / 255
        vector = embed(photo)
        base = measures(corrected(x, enhancer.predict_params(photo, vector)))
        for i, text in enumerate(texts):
            params = enhancer.predict_params(photo, vector, text)
            deltas[i] += np.subtract(measures(corrected(x, params)), base)
    deltas /= max(1, len(files))
    return [PromptEffect(p, *(round(float(v), 4) for v in d)) for p, d in zip(prompts, deltas)]
