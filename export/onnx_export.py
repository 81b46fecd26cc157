"""Exports any torch dual encoder (encode_image / encode_text) to a verified ONNX model bundle."""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Literal, TypeVar

import msgspec
import numpy as np
import numpy.typing as npt
import torch
from torch import nn
from tqdm import tqdm

from clipalbum.export.fuse import bert_shape, eager_attention, fuse_bert
from clipalbum.export.quantize import quantize_int8
from clipalbum.server.bundle import (MANIFEST_NAME, ImageSpec, Manifest, TextSpec, format_version, with_checksums,
                                     write_manifest)
from clipalbum.server.errors import BundleError
from clipalbum.server.encoders import make_session
from clipalbum.server.preprocess import load_model_input
from clipalbum.server.textprep import TextTokenizer

log = logging.getLogger(__name__)

Quantization = Literal["none", "int8"]
SpecT = TypeVar("SpecT", ImageSpec, TextSpec)

OPSET = 17
# Minimum cosine between torch and ONNX Runtime outputs on the parity inputs. fp32 graphs agree to
# rounding; int8 ones are measured against the fp32 torch model, so they are allowed a little drift.
MIN_PARITY_COSINE = {"fp32": 0.99, "int8": 0.95}

DEFAULT_PARITY_TEXTS = [
    "a dog running on the beach",
    "two children playing football in a park",
    "a red car parked in front of a house",
    "a bowl of soup",
    "snow on the mountains at sunset",
    "a man riding a bicycle down a city street at night",
]


def with_quantization(spec: SpecT, quantize: Quantization) -> SpecT:
    """`spec` marked for export as int8 ("int8") or fp32 ("none")."""
    return msgspec.structs.replace(spec, quantization="int8" if quantize == "int8" else "fp32")


class ParityError(RuntimeError):
    """The ONNX graph does not reproduce the torch model's outputs closely enough."""


class _ImageTower(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        # Normalising again is a no-op for models that already do it, and guarantees the manifest's promise.
        return nn.functional.normalize(self.model.encode_image(pixels), dim=-1)


class _TextTower(nn.Module):
    def __init__(self, model: nn.Module, input_names: tuple[str, ...]) -> None:
        super().__init__()
        self.model = model
        self.input_names = input_names

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        return nn.functional.normalize(self.model.encode_text(**dict(zip(self.input_names, inputs))), dim=-1)


@contextlib.contextmanager
def _without_mha_fastpath() -> Iterator[None]:
    """nn.MultiheadAttention (OpenCLIP's towers) takes a fused kernel in eval mode that has no ONNX export;
    the plain path computes the same."""
    enabled = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        yield
    finally:
        torch.backends.mha.set_fastpath_enabled(enabled)


def _export_graph(module: nn.Module, args: tuple[torch.Tensor, ...], path: Path, input_names: list[str],
                  output_name: str, dynamic_axes: dict[str, dict[int, str]]) -> None:
    # The TorchScript exporter (dynamo=False) handles timm CNNs and transformers BERTs reliably here,
    # with symbolic batch/token axes; the dynamo exporter trips over data-dependent mask code.
    with torch.inference_mode(), warnings.catch_warnings(), _without_mha_fastpath():
        # Tracer warnings about Python-side checks on shapes and masks: those branches are the same for every
        # input the graph receives (masks are always given), and parity below checks the result anyway.
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", message=".*aten::index.*")
        torch.onnx.export(
            module,
            args,
            str(path),
            input_names=input_names,
            output_names=[output_name],
            dynamic_axes=dynamic_axes,
            opset_version=OPSET,
            do_constant_folding=True,
            dynamo=False,
        )


def _parity_pixels(image_spec: ImageSpec, parity_images: list[Path] | None) -> npt.NDArray[np.float32]:
    if parity_images:
        return np.stack([load_model_input(Path(p), image_spec) for p in parity_images])
    # No photos given: a fixed pseudo-random batch still checks that the graphs compute the same function.
    log.warning("no parity photos given; checking image parity on synthetic pixels only")
    rng = np.random.default_rng(0)
    return rng.standard_normal((4, 3, image_spec.size, image_spec.size)).astype(np.float32)


def lowest_cosine(a: npt.NDArray[np.float32], b: npt.NDArray[np.float32]) -> float:
    """The lowest cosine between matching rows of `a` and `b`."""
    a = a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)
    b = b / np.maximum(np.linalg.norm(b, axis=1, keepdims=True), 1e-12)
    return float((a * b).sum(axis=1).min())


def _torch_embeddings(tower: nn.Module, inputs: tuple[npt.NDArray, ...]) -> npt.NDArray[np.float32]:
    with torch.inference_mode():
        return tower(*(torch.from_numpy(x) for x in inputs)).float().numpy()


def _onnx_embeddings(path: Path, input_names: tuple[str, ...], inputs: tuple[npt.NDArray, ...],
                     output_name: str) -> npt.NDArray[np.float32]:
    session = make_session(path)
    (out,) = session.run([output_name], dict(zip(input_names, inputs)))
    return np.asarray(out, dtype=np.float32)


def export_dual_encoder(
    model: torch.nn.Module,
    out_dir: Path,
    *,
    model_id: str,
    image_spec: ImageSpec,
    text_spec: TextSpec,
    tokenizer_file: Path,
    quantize: Literal["none", "int8"] = "none",
    parity_images: list[Path] | None = None,
    parity_texts: list[str] | None = None,
    description: str = "",
    metrics: dict[str, float] | None = None,
    progress: bool = False,
    min_cosine: dict[str, float] | None = None,
) -> Manifest:
    """Writes a complete, checksummed model bundle for `model` to `out_dir` and returns its manifest.

    Args:
        model: an nn.Module with encode_image(pixels) and encode_text(**tokens) returning (N, D) embeddings;
            encode_text is called with keyword arguments named by text_spec.input_names (by default
            input_ids and attention_mask, int64 (N, T)). Put in eval mode here; outputs are L2-normalised
            in the graph whether or not the model already does it. embed_dim is read from model.embed_dim
            when present, else from the output.
        out_dir: the bundle directory, built beside it and renamed into place at the end; an existing folder is
            replaced only if it is an earlier bundle (or empty).
        quantize: "int8" quantizes both towers dynamically; "none" leaves each tower as its spec's
            `quantization` says (fp32 unless set; with_quantization picks one tower).
        parity_images / parity_texts: real inputs on which torch and ONNX Runtime outputs are compared;
            the minimum cosines go into manifest.metrics and one under `min_cosine` (by precision, default
            MIN_PARITY_COSINE) raises ParityError.
    Returns:
        The manifest written (with sha256 of every file).
    """
    if quantize == "int8":
        image_spec, text_spec = with_quantization(image_spec, "int8"), with_quantization(text_spec, "int8")
    out_dir = Path(out_dir)
    check_replaceable(out_dir)  # before minutes of work
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    model = model.eval()
    image_tower = _ImageTower(model).eval()
    text_tower = _TextTower(model, text_spec.input_names).eval()
    tokenize = TextTokenizer(Path(tokenizer_file), text_spec)
    pixels = _parity_pixels(image_spec, parity_images)
    text_inputs = tokenize(list(parity_texts or DEFAULT_PARITY_TEXTS))

    steps = tqdm(total=5, desc="export", unit="step", disable=not progress)
    work = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.building-", dir=out_dir.parent))
    work.chmod(0o755)  # mkdtemp makes it private; a bundle is meant to be copied and shared
    try:
        # 1) image tower: dynamic batch.
        steps.set_postfix_str("image.onnx")
        image_fp32 = work / "image.fp32.onnx"
        _export_graph(image_tower, (torch.from_numpy(pixels[:2]),), image_fp32, [image_spec.input_name],
                      image_spec.output_name,
                      {image_spec.input_name: {0: "batch"}, image_spec.output_name: {0: "batch"}})
        steps.update()

        # 2) text tower: dynamic batch and token axes (the dummy batch has padding so masks stay symbolic).
        steps.set_postfix_str("text.onnx")
        text_fp32 = work / "text.fp32.onnx"
        dummy = tokenize(["a photo of a dog on the grass", "a cat"])
        text_axes = {name: {0: "batch", 1: "tokens"} for name in text_spec.input_names}
        text_axes[text_spec.output_name] = {0: "batch"}
        with eager_attention(model):
            _export_graph(text_tower, tuple(torch.from_numpy(dummy[n]) for n in text_spec.input_names), text_fp32,
                          list(text_spec.input_names), text_spec.output_name, text_axes)
        if (shape := bert_shape(model)) and fuse_bert(text_fp32, work / "text.fused.onnx", *shape):
            (work / "text.fused.onnx").replace(text_fp32)
        steps.update()

        # 3) optional int8, per tower.
        steps.set_postfix_str("quantize")
        for fp32, spec in ((image_fp32, image_spec), (text_fp32, text_spec)):
            if spec.quantization == "int8":
                quantize_int8(fp32, work / spec.file)
                fp32.unlink()
            else:
                fp32.replace(work / spec.file)
        steps.update()

        # 4) parity: torch vs ONNX Runtime on the same real inputs.
        steps.set_postfix_str("parity")
        text_arrays = tuple(text_inputs[n] for n in text_spec.input_names)
        torch_images = _torch_embeddings(image_tower, (pixels,))
        image_cos = lowest_cosine(
            torch_images,
            _onnx_embeddings(work / image_spec.file, (image_spec.input_name,), (pixels,), image_spec.output_name),
        )
        text_cos = lowest_cosine(
            _torch_embeddings(text_tower, text_arrays),
            _onnx_embeddings(work / text_spec.file, text_spec.input_names, text_arrays, text_spec.output_name),
        )
        log.info("parity (min cosine torch vs ONNX): image %.5f (%s), text %.5f (%s)", image_cos,
                 image_spec.quantization, text_cos, text_spec.quantization)
        floors = min_cosine or MIN_PARITY_COSINE
        for tower, cos, quant in (("image", image_cos, image_spec.quantization),
                                  ("text", text_cos, text_spec.quantization)):
            if not cos >= floors[quant]:
                raise ParityError(f"{tower} tower: ONNX ({quant}) output differs from torch (min cosine {cos:.6f} < "
                                  f"{floors[quant]}); the bundle was not written")
        steps.update()

        # 5) tokenizer, manifest (written last), then the atomic swap into place.
        steps.set_postfix_str("manifest")
        shutil.copyfile(tokenizer_file, work / text_spec.tokenizer)
        embed_dim = int(getattr(model, "embed_dim", 0)) or int(torch_images.shape[1])
        manifest = Manifest(
            format_version=format_version(image_spec, text_spec),
            model_id=model_id,
            embed_dim=embed_dim,
            image=image_spec,
            text=text_spec,
            normalized=True,
            description=description,
            metrics={**(metrics or {}), "parity_image_min_cosine": image_cos, "parity_text_min_cosine": text_cos},
        )
        manifest = with_checksums(work, manifest, [image_spec.file, text_spec.file, text_spec.tokenizer])
        write_manifest(work, manifest)
        swap_into_place(work, out_dir)
        steps.update()
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    finally:
        steps.close()
    log.info("bundle %s written to %s", model_id, out_dir)
    return manifest


def check_replaceable(out_dir: Path, marker: str = MANIFEST_NAME) -> None:
    """Refuses an output folder that holds something other than an earlier build (its `marker` file): a
    mistyped --out must never delete someone's photos. A missing or empty folder is fine."""
    out_dir = Path(out_dir)
    if out_dir.is_symlink() or (out_dir.exists() and not out_dir.is_dir()):
        raise BundleError(f"{out_dir} is not a folder; choose another output folder")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not (out_dir / marker).is_file():
        raise BundleError(f"{out_dir} is not empty and holds no {marker}: it is not an earlier build, so it is "
                          "not replaced; choose another output folder")


def swap_into_place(work: Path, out_dir: Path, marker: str = MANIFEST_NAME) -> None:
    """Replaces out_dir with the finished build; an old build is moved aside first and removed after (a
    crash in between leaves it beside, as .NAME.old-PID). Anything else at out_dir is refused."""
    check_replaceable(out_dir, marker)
    _fsync_dir(work)
    old = None
    if out_dir.exists():
        old = out_dir.with_name(f".{out_dir.name}.old-{os.getpid()}")
        shutil.rmtree(old, ignore_errors=True)
        out_dir.replace(old)
    work.replace(out_dir)
    _fsync(out_dir.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _fsync_dir(path: Path) -> None:
    """Flushes a directory's files and the directory entry itself, so the rename lands on durable data."""
    for target in [p for p in path.iterdir() if p.is_file()] + [path]:
        _fsync(target)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
