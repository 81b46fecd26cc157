"""The torch weights of an exported enhancer, read back from its ONNX files, so that training can start from
the enhancer that ships with clipalbum (which ships as ONNX only, to stay small).

The ONNX initializers keep the torch parameter names, with two exceptions that this module undoes: an
int8 UNet stores a quantized layer's weight and bias as int8/int32 codes with per-channel scales
(`NAME_quantized`, dequantized here as (code - zero point) x scale), and torch's ONNX export of GroupNorm
keeps its scale and shift as anonymous constants multiplied and added inside the norm (found here by the
node that uses them). The result loads strictly into EnhanceUNet and GlobalHead, or nothing is returned.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import torch

from clipalbum.server.enhance.manifest import read_enhancer_manifest
from clipalbum.training.enhance.model import EnhanceUNet, GlobalHead

# "/unet/down_blocks.0/resnets.0/norm1/Mul" -> ("unet.down_blocks.0.resnets.0.norm1", "Mul")
_NORM_NODE = re.compile(r"^/(?P<module>(?:[\w.]+/)*(?:norm\w*|conv_norm_out))/(?P<op>Mul|Add)$")


class PackagedWeightsError(ValueError):
    """The ONNX files do not hold every weight of the torch model, with its shape."""


def onnx_weights(path: Path) -> dict[str, np.ndarray]:
    """Torch-named float32 parameters of one ONNX graph (dequantized where quantized)."""
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(path)).graph
    constants = {init.name: numpy_helper.to_array(init) for init in graph.initializer}
    quantization = {i for node in graph.node if node.op_type in ("QuantizeLinear", "DequantizeLinear")
                    for i in node.input[1:]}  # scales and zero points: not weights
    weights = {name: value.astype(np.float32) for name, value in constants.items()
               if not name.startswith("onnx::") and value.dtype.kind == "f" and name not in quantization}
    for node in graph.node:
        if node.op_type == "DequantizeLinear" and node.input[0].endswith("_quantized") \
                and all(i in constants for i in node.input):
            weights[node.input[0].removesuffix("_quantized")] = _dequantize(node, constants)
        match = _NORM_NODE.match(node.name)
        if match and node.op_type == match["op"]:
            anonymous = [i for i in node.input if i.startswith("onnx::") and i in constants]
            # A norm's scale or shift: one value per channel, shaped to broadcast over (C, H, W).
            if len(anonymous) == 1 and constants[anonymous[0]].squeeze().ndim == 1:
                suffix = "weight" if node.op_type == "Mul" else "bias"
                weights.setdefault(f"{match['module'].replace('/', '.')}.{suffix}",
                                   constants[anonymous[0]].astype(np.float32).ravel())
    return weights


def _dequantize(node: object, constants: dict[str, np.ndarray]) -> np.ndarray:
    codes, scale, zero_point = (constants[i] for i in node.input[:3])
    axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
    shape = [1] * codes.ndim
    if scale.ndim:  # per channel along `axis`
        shape[axis] = -1
    return ((codes.astype(np.float64) - zero_point.reshape(shape)) * scale.reshape(shape)).astype(np.float32)


def load_packaged(unet: EnhanceUNet, head: GlobalHead, directory: Path) -> str:
    """Loads an exported enhancer's weights (its fp32 UNet where it has one, else the int8 one dequantized)
    into `unet` and `head`, strictly; returns the precision read. Raises PackagedWeightsError when a weight is
    missing or has another shape (an enhancer of another architecture than the config's)."""
    manifest = read_enhancer_manifest(directory)
    precision = "fp32" if "fp32" in manifest.unet else manifest.default_precision
    for module, path in ((unet, directory / manifest.unet[precision]), (head, directory / manifest.head)):
        found = onnx_weights(path)
        wanted = module.state_dict()
        missing = [k for k in wanted if k not in found]
        if missing:
            raise PackagedWeightsError(f"{path.name} lacks {len(missing)} of the model's weights, e.g. {missing[:3]}")
        # A graph with parts the model lacks (more blocks, an image-embedding input) is another architecture.
        prefixes = {k.split(".")[0] + "." for k in wanted}
        extra = [k for k in found if k not in wanted and any(k.startswith(p) for p in prefixes)]
        if extra:
            raise PackagedWeightsError(f"{path.name} holds weights the config's model lacks, e.g. {extra[:3]}: "
                                       "another architecture")
        wrong = [k for k, v in wanted.items() if tuple(v.shape) != found[k].shape]
        if wrong:
            raise PackagedWeightsError(f"{path.name}: {wrong[0]} is {found[wrong[0]].shape}, the config's model "
                                       f"has {tuple(wanted[wrong[0]].shape)}: another architecture")
        module.load_state_dict({k: torch.from_numpy(found[k].copy()) for k in wanted}, strict=True)
    return precision
