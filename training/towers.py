"""Image and text towers (backbones) built from the config: timm CNNs/ViTs and transformers text encoders."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import timm
import torch
from torch import nn

from clipalbum.training import pretrained
from clipalbum.training.tokenizer_source import fast_tokenizer_file
from clipalbum.training.config import ImageTowerCfg, TextTowerCfg

log = logging.getLogger(__name__)

BERT_UNCASED_VOCAB = 30522  # DistilBERT's and MiniLM's vocabulary (the packaged tokenizer.json)


class ImageTower(nn.Module):
    """A backbone that maps (N, 3, S, S) pixels to globally pooled (N, out_dim) features.

    With `class_temperature` the backbone keeps its ImageNet classifier and the features are the pooled
    ones followed by the class probabilities softmax(logits / T): (N, num_features + num_classes).
    """

    def __init__(self, backbone: nn.Module, out_dim: int, class_temperature: float | None = None) -> None:
        super().__init__()
        self.backbone = backbone
        self.out_dim = out_dim
        self.class_temperature = class_temperature

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        if self.class_temperature is None:
            return self.backbone(pixels)  # (N, out_dim): timm models with num_classes=0 pool and stop there
        pooled = self.backbone.forward_head(self.backbone.forward_features(pixels), pre_logits=True)  # (N, F)
        probs = torch.softmax(self.backbone.classifier(pooled) / self.class_temperature, dim=-1)  # (N, classes)
        return torch.cat([pooled, probs], dim=-1)


class TextTower(nn.Module):
    """A transformers encoder whose CLS (or masked-mean) hidden state is the (N, out_dim) text feature."""

    def __init__(self, encoder: nn.Module, out_dim: int, pooling: str) -> None:
        super().__init__()
        if pooling not in ("cls", "mean", "mean_l2"):
            raise ValueError(f"unknown text pooling {pooling!r}; use 'cls', 'mean' or 'mean_l2'")
        self.encoder = encoder
        self.out_dim = out_dim
        self.pooling = pooling

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state  # (N, T, H)
        if self.pooling == "cls":
            return hidden[:, 0]
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)  # (N, T, 1)
        mean = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)
        # mean_l2 is how sentence-transformers runs MiniLM (and how the bootstrap embeds captions).
        return nn.functional.normalize(mean, dim=-1) if self.pooling == "mean_l2" else mean


def _timm_backbone(cfg: ImageTowerCfg) -> nn.Module:
    kwargs: dict[str, Any] = {"num_classes": 0, **cfg.options}
    if "vit" in cfg.name or "deit" in cfg.name:
        kwargs.setdefault("img_size", cfg.size)  # position embeddings for this input size
    if cfg.pretrained == "none":
        return timm.create_model(cfg.name, pretrained=False, **kwargs)
    if cfg.pretrained == "hub":
        log.info("image tower %s: pretrained weights from the hub", cfg.name)
        return timm.create_model(cfg.name, pretrained=True, **kwargs)
    weights = Path(cfg.pretrained).expanduser()
    if not weights.is_file():
        raise FileNotFoundError(f"image.pretrained = {cfg.pretrained!r}: no such weights file; "
                                "use 'none', 'hub' or a .safetensors/.pth path")
    log.info("image tower %s: weights from %s", cfg.name, weights)
    return timm.create_model(cfg.name, pretrained=True, pretrained_cfg_overlay={"file": str(weights)}, **kwargs)


def build_image_tower(cfg: ImageTowerCfg) -> ImageTower:
    if cfg.kind == "timm":
        backbone = _timm_backbone(cfg)
    elif cfg.kind == "efficientnet_lite0":
        backbone = pretrained.load_efficientnet_lite0()
        if cfg.features == "pooled+classes":
            return ImageTower(backbone, int(backbone.num_features + backbone.num_classes), cfg.class_temperature)
        if cfg.features != "pooled":
            raise ValueError(f"unknown image.features {cfg.features!r}; use 'pooled' or 'pooled+classes'")
        backbone.reset_classifier(0)  # keep the 1280-d pooled features
    else:
        raise ValueError(f"unknown image tower kind {cfg.kind!r}; use 'timm' or 'efficientnet_lite0'")
    return ImageTower(backbone, int(backbone.num_features))


def text_model_config(cfg: TextTowerCfg) -> dict[str, Any]:
    """The transformers config (as a dict) of the text tower, saved with checkpoints to rebuild it offline."""
    from transformers import AutoConfig, DistilBertConfig

    if cfg.kind == "minilm":
        config = AutoConfig.from_pretrained(str(pretrained.minilm_dir()), local_files_only=True)
    elif cfg.pretrained == "hub":
        config = AutoConfig.from_pretrained(cfg.hub_name)
    elif cfg.pretrained != "none":
        config = AutoConfig.from_pretrained(str(Path(cfg.pretrained).expanduser()), local_files_only=True)
    elif cfg.kind == "distilbert":
        config = DistilBertConfig(vocab_size=BERT_UNCASED_VOCAB)  # distilbert-base-uncased's architecture
    else:
        raise ValueError(f"text tower kind {cfg.kind!r} with pretrained = 'none' needs a known architecture; "
                         "use kind 'distilbert' or give a local checkpoint directory")
    for key, value in cfg.options.items():
        if not hasattr(config, key):
            raise ValueError(f"text.options.{key}: {type(config).__name__} has no such setting")
        setattr(config, key, value)
    return config.to_dict()


def build_text_tower(cfg: TextTowerCfg, hf_config: dict[str, Any] | None = None) -> TextTower:
    """Builds the text tower; with `hf_config` (from a checkpoint) the weights are left for the caller to load."""
    from transformers import AutoConfig, AutoModel

    if cfg.kind not in ("distilbert", "minilm", "hf"):
        raise ValueError(f"unknown text tower kind {cfg.kind!r}; use 'distilbert', 'minilm' or 'hf'")
    if hf_config is not None:
        encoder = AutoModel.from_config(AutoConfig.for_model(**hf_config))
    elif cfg.kind == "minilm":
        if cfg.options:
            raise ValueError("text.options cannot change the packaged MiniLM; use kind 'distilbert' or 'hf'")
        encoder = pretrained.load_minilm()
    elif cfg.pretrained == "none":
        encoder = AutoModel.from_config(AutoConfig.for_model(**text_model_config(cfg)))
        log.info("text tower %s: randomly initialised", cfg.kind)
    elif cfg.pretrained == "hub":
        log.info("text tower: %s from the hub", cfg.hub_name)
        encoder = AutoModel.from_pretrained(cfg.hub_name, **cfg.options)
    else:
        encoder = AutoModel.from_pretrained(str(Path(cfg.pretrained).expanduser()), local_files_only=True,
                                            **cfg.options)
    return TextTower(encoder, int(encoder.config.hidden_size), cfg.pooling)


def tokenizer_file(cfg: TextTowerCfg, out_dir: Path | None = None) -> Path:
    """The tokenizer.json of the text tower's own model, never another model's vocabulary:

    - `text.tokenizer` when the config names one;
    - the packaged BERT uncased one for MiniLM, and for an untrained DistilBERT (distilbert-base-uncased's);
    - a local checkpoint's tokenizer.json, or its vocabulary files (vocab.txt, merges, sentencepiece)
      converted into `out_dir`/tokenizer.json;
    - the hub model's (`hub_name`), converted into `out_dir`, where there is a network.
    """
    if cfg.tokenizer:
        return Path(cfg.tokenizer).expanduser()
    if cfg.kind == "minilm" or (cfg.pretrained == "none" and cfg.kind == "distilbert"):
        return pretrained.bert_uncased_tokenizer_file()
    if cfg.pretrained == "none":
        raise ValueError(f"text tower kind {cfg.kind!r} with pretrained = 'none' has no vocabulary of its own; "
                         "set text.tokenizer to a tokenizer.json")
    if cfg.pretrained == "hub":
        return fast_tokenizer_file(cfg.hub_name, out_dir, local_files_only=False)
    local = Path(cfg.pretrained).expanduser()
    if (local / "tokenizer.json").is_file():
        return local / "tokenizer.json"
    return fast_tokenizer_file(str(local), out_dir, local_files_only=True)


def set_trainable(tower: nn.Module, freeze: bool, trainable: list[str]) -> int:
    """Freezes a tower except parameters whose names start with one of `trainable`; returns trainable count."""
    count = 0
    for name, param in tower.named_parameters():
        keep = not freeze or any(name.startswith(prefix) for prefix in trainable)
        param.requires_grad_(keep)
        count += param.numel() if keep else 0
    return count
