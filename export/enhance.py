"""`clipalbum enhance export RUN DIR`: the trained enhancer as ONNX (UNet fp32 and int8, head fp32) with a
manifest, checked against torch before anything is written in place."""

from __future__ import annotations

import logging
import shutil
import tempfile
import warnings
from pathlib import Path

import numpy as np
import numpy.typing as npt
import torch
from PIL import Image
from torch import nn

from clipalbum.export.onnx_export import OPSET, check_replaceable, swap_into_place
from clipalbum.server.enhance.cases import degrade_case
from clipalbum.server.enhance.evaluate import psnr
from clipalbum.server.enhance.manifest import (ENHANCER_FORMAT_VERSION, MANIFEST_NAME, EnhancerManifest,
                                              write_enhancer_manifest)
from clipalbum.server.enhance.runtime import EnhanceOptions, Enhancer
from clipalbum.training.enhance.model import RESIDUAL_SCALE, train_scheduler
from clipalbum.training.enhance.trainer import load_enhancer

log = logging.getLogger(__name__)

UNET_INPUTS = ["x_t", "corrected", "noise_map", "timestep", "embedding"]
HEAD_INPUTS = ["thumb", "embedding", "prompt"]
# The int8 UNet may lose at most this much PSNR against fp32 on the parity photos, or fp32 stays the default.
MAX_INT8_PSNR_LOSS = 0.3
# torch vs ONNX Runtime (fp32), same inputs: the largest difference allowed, in 0..1 pixel units.
MAX_PARITY_ERROR = 2e-3


# Parts of the UNet kept in fp32 inside the int8 graph (see quantize_unet).
FP32_PARTS = ("up_blocks.2/",)


class ParityError(RuntimeError):
    """The exported graphs do not reproduce torch closely enough."""


def _export(module: nn.Module, args: tuple[torch.Tensor, ...], path: Path, names: list[str], output: str,
            dynamic: dict[str, dict[int, str]]) -> None:
    with torch.inference_mode(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        torch.onnx.export(module, args, str(path), input_names=names, output_names=[output], dynamic_axes=dynamic,
                          opset_version=OPSET, do_constant_folding=True, dynamo=False)


def _calibration_feeds(photos: list[npt.NDArray[np.uint8]], size: int) -> list[dict[str, np.ndarray]]:
    """UNet inputs from the parity photos, degraded as the evaluation does, for int8 calibration."""
    rng = np.random.default_rng(0)
    feeds = []
    for i, photo in enumerate(photos):
        for case in ("combined", "noise25"):
            x = degrade_case(photo, case, seed=0, key=str(i))[:size, :size].astype(np.float32) / 255
            h, w = (x.shape[0] // 8) * 8, (x.shape[1] // 8) * 8
            x = x[:h, :w].transpose(2, 0, 1)[None]
            feeds.append({"x_t": rng.standard_normal((1, 12, h // 2, w // 2), dtype=np.float32), "corrected": x,
                          "noise_map": np.full((1, 1, h, w), 25 / 255 if case == "noise25" else 0.1, np.float32),
                          "timestep": np.array([999.0], np.float32),
                          "embedding": np.zeros((1, 256), np.float32)})
    return feeds


def quantize_unet(src: Path, dst: Path, feeds: list[dict[str, np.ndarray]]) -> None:
    """Static int8 (QDQ, per-channel weights) calibrated on real photos; the first and last convolutions, the
    full-resolution level and the embedding layers stay fp32, where int8 costs the most accuracy."""
    import onnx
    from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                          quantize_static)

    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.items = iter(feeds)

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.items, None)

    prepared = dst.with_suffix(".pre.onnx")
    quant_pre_process(str(src), str(prepared), skip_symbolic_shape=True)
    graph = onnx.load(str(prepared)).graph
    convs = [n.name for n in graph.node if n.op_type == "Conv"]
    # Only convolutions are quantized (int8 on the adds, concatenations and activations between them cost
    # 0.33 dB), and those of the decoder's full-resolution level (the last up block) stay fp32: they put back
    # the fine detail int8 rounds away. Measured on the shipped model: all int8 lost 0.63 dB, convolutions
    # only 0.33, convolutions but the last up block's 0.03 (and 2.34 s/MP on 2 cores, against 2.87 with the
    # first down block's kept too, which lost 0.02), convolutions but the first down block's 0.32.
    sensitive = [name for name in convs if any(part in name for part in FP32_PARTS)]
    keep_fp32 = [convs[0], convs[-1], *sensitive] + [n.name for n in graph.node if n.op_type in ("Gemm", "MatMul")]
    quantize_static(str(prepared), str(dst), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, nodes_to_exclude=keep_fp32,
                    calibrate_method=CalibrationMethod.MinMax, op_types_to_quantize=["Conv"])
    prepared.unlink(missing_ok=True)


def export_enhancer(run: Path, out_dir: Path, photos: list[npt.NDArray[np.uint8]], model_id: str | None = None,
                    description: str = "", tile: int = 512, overlap: int = 32, int8: bool = True,
                    int8_only: bool = False) -> EnhancerManifest:
    """Writes out_dir (replacing it only once everything checks out). `photos`: (H, W, 3) uint8 clean photos
    for the parity check and int8 calibration. `int8_only` drops the fp32 UNet after measuring it (the
    packaged enhancer, which must stay small), and refuses if int8 lost too much."""
    if not photos:
        raise ValueError("export needs at least one photo for the parity check")
    unet, head, cfg, meta = load_enhancer(run, "cpu")
    out_dir = Path(out_dir)
    check_replaceable(out_dir, marker=MANIFEST_NAME)  # before minutes of work
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        s, d = 64, cfg.unet.embed_dim
        _export(unet, (torch.randn(1, 12, s // 2, s // 2), torch.rand(1, 3, s, s), torch.rand(1, 1, s, s),
                       torch.tensor([999.0]), torch.zeros(1, d)), work / "unet.onnx", UNET_INPUTS, "x0",
                {"x_t": {0: "batch", 2: "half_height", 3: "half_width"}, "corrected": {0: "batch", 2: "height", 3: "width"},
                 "noise_map": {0: "batch", 2: "height", 3: "width"}, "timestep": {0: "batch"}, "embedding": {0: "batch"}})
        t = cfg.head.thumb
        _export(head, (torch.rand(1, 3, t, t), torch.zeros(1, d), torch.zeros(1, d)), work / "head.onnx",
                HEAD_INPUTS, "params", {name: {0: "batch"} for name in HEAD_INPUTS})
        unets = {"fp32": "unet.onnx"}
        feeds = _calibration_feeds(photos, 256)
        if int8:
            quantize_unet(work / "unet.onnx", work / "unet-int8.onnx", feeds)
            unets["int8"] = "unet-int8.onnx"
        alphas = [round(float(a), 10) for a in train_scheduler().alphas_cumprod]
        manifest = EnhancerManifest(
            format_version=ENHANCER_FORMAT_VERSION, model_id=model_id or f"enhance-{Path(run).resolve().name}",
            conditioning_model_id=meta["conditioning_model_id"], embed_dim=d, thumb=t, multiple=unet.multiple,
            residual_scale=RESIDUAL_SCALE, alphas_cumprod=alphas, unet=unets, head="head.onnx",
            default_precision="fp32", tile=tile, overlap=overlap, description=description)
        write_enhancer_manifest(work, manifest)
        metrics = check_export(work, unet, head, photos, feeds)
        if "int8_psnr_loss" in metrics and metrics["int8_psnr_loss"] <= MAX_INT8_PSNR_LOSS:
            manifest = EnhancerManifest(**{**_fields(manifest), "default_precision": "int8"})
        manifest = EnhancerManifest(**{**_fields(manifest), "metrics": metrics})
        if int8_only:
            if manifest.default_precision != "int8":
                raise ParityError(f"the int8 UNet loses {metrics.get('int8_psnr_loss')} dB against fp32, over "
                                  f"{MAX_INT8_PSNR_LOSS}: it cannot be the only one")
            (work / unets.pop("fp32")).unlink()
            manifest = EnhancerManifest(**{**_fields(manifest), "unet": unets})
        write_enhancer_manifest(work, manifest)
        work.chmod(0o755)  # mkdtemp made it private; an installed enhancer is read by whoever serves
        swap_into_place(work, out_dir, marker=MANIFEST_NAME)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    log.info("enhancer %s written to %s (default %s)", manifest.model_id, out_dir, manifest.default_precision)
    return manifest


def _fields(manifest: EnhancerManifest) -> dict:
    return {f: getattr(manifest, f) for f in manifest.__struct_fields__}


def check_export(directory: Path, unet: nn.Module, head: nn.Module, photos: list[npt.NDArray[np.uint8]],
                 feeds: list[dict[str, np.ndarray]]) -> dict[str, float]:
    """torch vs ONNX Runtime on the same inputs (each graph), then the int8 UNet's PSNR against fp32's, on
    degraded photos through the whole runtime, both measured against the clean photos."""
    fp32 = Enhancer(directory, precision="fp32")
    worst = 0.0
    for feed in feeds:
        ours = fp32.unet.run(None, feed)[0]
        with torch.inference_mode():
            theirs = unet(*(torch.from_numpy(feed[name]) for name in UNET_INPUTS)).numpy()
        worst = max(worst, float(np.abs(ours - theirs).max()) / RESIDUAL_SCALE)  # in 0..1 pixel units
    if worst > MAX_PARITY_ERROR:
        raise ParityError(f"ONNX UNet differs from torch by up to {worst:.4f} (allowed {MAX_PARITY_ERROR})")
    d = fp32.embed_dim
    for photo in photos:
        params = np.asarray(fp32.predict_params(photo), dtype=np.float32)
        x = torch.from_numpy(np.asarray(Image.fromarray(photo).resize((head.thumb,) * 2, Image.Resampling.BOX),
                                        dtype=np.float32) / 255).permute(2, 0, 1)[None]
        with torch.inference_mode():
            reference = head(x, torch.zeros(1, d), torch.zeros(1, d))[0].numpy()
        if np.abs(params - reference).max() > 1e-3:
            raise ParityError(f"ONNX head {params} differs from torch {reference}")
    metrics = {"parity_max_error": round(worst, 6)}
    if "int8" not in fp32.manifest.unet:
        return metrics
    int8 = Enhancer(directory, precision="int8")
    psnr_fp32, psnr_int8 = [], []
    full = EnhanceOptions(denoise=1.0)  # the UNet's whole residual, whatever the noise
    for i, photo in enumerate(photos):
        degraded = degrade_case(photo, "combined", seed=0, key=f"parity{i}")
        params = fp32.predict_params(degraded)
        psnr_fp32.append(psnr(fp32.enhance(degraded, full, params=params)[0], photo))
        psnr_int8.append(psnr(int8.enhance(degraded, full, params=params)[0], photo))
    metrics["psnr_fp32"] = round(float(np.mean(psnr_fp32)), 3)
    metrics["psnr_int8"] = round(float(np.mean(psnr_int8)), 3)
    metrics["int8_psnr_loss"] = round(metrics["psnr_fp32"] - metrics["psnr_int8"], 3)
    return metrics


def default_parity_photos() -> list[npt.NDArray[np.uint8]]:
    """Real photos that scikit-image ships (the export extra installs it)."""
    from clipalbum.export.default_bundle import parity_photos
    from clipalbum.server.preprocess import decode_photo

    return [np.asarray(decode_photo(p, min_side=1 << 30).image) for p in parity_photos()]

