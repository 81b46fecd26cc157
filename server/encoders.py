"""ONNX Runtime image and text encoders loaded from a model bundle; batched in, L2-normalised out."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import onnxruntime as ort

from clipalbum.server.bundle import Manifest, read_manifest, verify_bundle
from clipalbum.server.errors import BundleError
from clipalbum.server.textprep import TextTokenizer

log = logging.getLogger(__name__)


def default_threads() -> int:
    """Intra-op threads: all cores unless CLIPALBUM_THREADS says otherwise."""
    return int(os.environ.get("CLIPALBUM_THREADS", "0")) or (os.cpu_count() or 1)


def make_session(path: Path, threads: int | None = None, providers: list[str] | None = None,
                 spinning: bool = False) -> ort.InferenceSession:
    """An ONNX Runtime session on the CPU, or on `providers` first (the CPU stays as the fallback)."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or default_threads()
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # By default idle worker threads sleep instead of spinning: spinning doubled the server's CPU per text
    # query (~10 ms vs ~5 ms) and its HTTP p99 on 2 busy cores, and gained no image-encoder throughput. The
    # enhancer's UNet (hundreds of small ops per tile, on a thread at low priority in the server) asks for it.
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    try:
        return ort.InferenceSession(str(path), sess_options=options,
                                    providers=[*(providers or []), "CPUExecutionProvider"])
    except Exception as exc:  # ORT raises its own exception types for bad graphs
        raise BundleError(f"cannot load {path} with ONNX Runtime: {exc}") from exc


def l2_normalize(x: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    norms = np.linalg.norm(x, axis=-1, keepdims=True)
    return (x / np.maximum(norms, 1e-12)).astype(np.float32)


class ImageEncoder:
    """Embeds batches of preprocessed photos, (N, 3, S, S) float32 -> (N, D)."""

    def __init__(self, bundle_dir: Path, manifest: Manifest, threads: int | None = None) -> None:
        self.spec = manifest.image
        self.normalized = manifest.normalized
        self.session = make_session(Path(bundle_dir) / self.spec.file, threads)
        # Hand the activation memory back after each batch: ORT's arena otherwise keeps the peak of a
        # 32-photo batch (~500 MB with EfficientNet-Lite0 at 224 px) for the server's whole life.
        self.run_options = ort.RunOptions()
        self.run_options.add_run_config_entry("memory.enable_memory_arena_shrinkage", "cpu:0")

    def encode(self, pixels: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        if pixels.ndim != 4 or pixels.shape[1:] != (3, self.spec.size, self.spec.size):
            raise ValueError(f"expected (N, 3, {self.spec.size}, {self.spec.size}) pixels, got {pixels.shape}")
        (out,) = self.session.run([self.spec.output_name], {self.spec.input_name: pixels.astype(np.float32)},
                                  run_options=self.run_options)
        return out.astype(np.float32) if self.normalized else l2_normalize(out)


class TextEncoder:
    """Embeds batches of texts -> (N, D), tokenised with the bundle's tokenizer.json."""

    def __init__(self, bundle_dir: Path, manifest: Manifest, threads: int | None = None) -> None:
        self.spec = manifest.text
        self.normalized = manifest.normalized
        self.session = make_session(Path(bundle_dir) / self.spec.file, threads)
        self.tokenize = TextTokenizer(Path(bundle_dir) / self.spec.tokenizer, self.spec)

    def encode(self, texts: list[str]) -> npt.NDArray[np.float32]:
        if not texts:
            raise ValueError("encode() needs at least one text")
        (out,) = self.session.run([self.spec.output_name], self.tokenize(texts))
        return out.astype(np.float32) if self.normalized else l2_normalize(out)


@dataclass
class Encoders:
    bundle_dir: Path
    manifest: Manifest
    image: ImageEncoder
    text: TextEncoder


def load_encoders(bundle_dir: Path, threads: int | None = None, verify: bool = True) -> Encoders:
    """Reads, verifies and opens a bundle. Raises BundleError saying what to do when it can't."""
    bundle_dir = Path(bundle_dir)
    manifest = read_manifest(bundle_dir)
    if verify:
        verify_bundle(bundle_dir, manifest)
    log.info("model bundle %s (%s, %d-d) from %s", manifest.model_id, manifest.image.quantization,
             manifest.embed_dim, bundle_dir)
    return Encoders(
        bundle_dir=bundle_dir,
        manifest=manifest,
        image=ImageEncoder(bundle_dir, manifest, threads),
        text=TextEncoder(bundle_dir, manifest, threads),
    )
