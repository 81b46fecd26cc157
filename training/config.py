"""Training configuration: dataclasses read from TOML, with `key=value` command-line overrides."""

from __future__ import annotations

import dataclasses
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class ImageTowerCfg:
    kind: str = "timm"  # "timm" (any timm model by name) | "efficientnet_lite0" (packaged ImageNet weights)
    name: str = "resnet50"  # timm model name, for kind = "timm"
    pretrained: str = "none"  # "none" (random) | "hub" (timm download) | path to a local weights file
    size: int = 256  # square input side in pixels
    resize: str = "shortest_crop"  # "shortest_crop" (short side to size, centre crop) | "squash" (whole photo)
    mean: tuple[float, float, float] = IMAGENET_MEAN  # per channel, on 0..1 pixels
    std: tuple[float, float, float] = IMAGENET_STD
    freeze: bool = False  # keep the tower's weights fixed
    trainable: list[str] = field(default_factory=list)  # parameter-name prefixes left trainable when frozen
    options: dict[str, Any] = field(default_factory=dict)  # extra timm.create_model kwargs (e.g. depth for ViTs)
    # efficientnet_lite0 only: "pooled" (1280-d) or "pooled+classes" (1280-d + the 1000 ImageNet class
    # probabilities at class_temperature), which lets the head start from the offline bootstrap's alignment.
    features: str = "pooled"
    class_temperature: float = 2.0

    @property
    def label(self) -> str:
        """The tower's name in logs and bundle descriptions: the timm model's name, else the kind."""
        return self.name if self.kind == "timm" else self.kind


@dataclass
class TextTowerCfg:
    kind: str = "distilbert"  # "distilbert" | "minilm" (packaged all-MiniLM-L6-v2) | "hf" (local transformers dir)
    pretrained: str = "none"  # "none" (random, from a config) | "hub" | path to a local transformers checkpoint
    hub_name: str = "distilbert-base-uncased"  # used only when pretrained = "hub"
    max_length: int = 200  # tokens, including [CLS] and [SEP]
    pooling: str = "cls"  # "cls" (first token) | "mean" (attention-masked mean) | "mean_l2" (mean, normalised)
    tokenizer: str = ""  # tokenizer.json; empty: the packaged BERT uncased one (DistilBERT's and MiniLM's)
    freeze: bool = False
    trainable: list[str] = field(default_factory=list)  # parameter-name prefixes left trainable when frozen
    options: dict[str, Any] = field(default_factory=dict)  # transformers config overrides (e.g. n_layers, dim)


@dataclass
class HeadCfg:
    # "mlp": Linear-GELU-Linear-Dropout-residual-LayerNorm | "rms": RMSNorm/SiLU residual blocks |
    # "identity": none, the towers' own space (a pretrained CLIP's, `clip.source`)
    kind: str = "mlp"
    dim: int = 256  # the shared embedding space
    dropout: float = 0.1
    blocks: int = 1  # residual blocks, for kind = "rms"
    # "random" | "bootstrap": mlp heads start as the offline bootstrap's alignment (needs image.features =
    # "pooled+classes" and text.pooling = "mean_l2" on the packaged towers), so fine-tuning starts from it.
    init: str = "random"


@dataclass
class LossCfg:
    temperature: float = 1.0
    learnable_temperature: bool = False
    normalize: bool = False  # cosine logits (L2-normalised embeddings) instead of raw dot products
    targets: str = "hard"  # "hard": InfoNCE, the i-th text matches the i-th photo | "soft": similarity-blended


@dataclass
class OptimCfg:
    image_lr: float = 1e-4
    text_lr: float = 1e-5
    head_lr: float = 1e-3
    weight_decay: float = 1e-3
    warmup_steps: int = 0  # optimizer steps of linear warmup
    warmup_fraction: float = 0.05  # used when warmup_steps = 0: a fraction of all optimizer steps
    min_lr_ratio: float = 0.0  # cosine decays to this fraction of each group's learning rate
    grad_accum: int = 1  # micro-batches per optimizer step
    max_grad_norm: float = 0.0  # gradient clipping; 0 turns it off


@dataclass
class SourceCfg:
    format: str  # "flickr30k_csv" | "karpathy_json" | "csv" (image,caption; Flickr8k captions.txt) |
    # "flickr8k_token" | "sidecar" (IMG_1234.JPG + IMG_1234.txt)
    path: str  # the captions file, or the album folder for "sidecar"
    images: str = ""  # folder the file names are relative to (default: the captions file's folder)
    splits: list[str] = field(default_factory=list)  # karpathy_json: which of train/restval/val/test to use


@dataclass
class DataCfg:
    sources: list[SourceCfg] = field(default_factory=list)
    val_sources: list[SourceCfg] = field(default_factory=list)  # empty: split val_fraction off `sources`
    val_fraction: float = 0.1  # of photos (never of captions: a photo's captions stay together)
    split_seed: int = 0
    verify_images: bool = True  # open every photo's header once up front so unreadable files are counted
    batch_size: int = 32
    eval_batch_size: int = 64
    workers: int = 0  # DataLoader worker processes
    augment: bool = True  # random resized crop, flip, colour jitter (training only)
    crop_scale: tuple[float, float] = (0.6, 1.0)
    flip: bool = True
    color_jitter: float = 0.2


@dataclass
class TrainCfg:
    out_dir: str = "runs/default"  # checkpoints, logs and the resolved config go here
    epochs: int = 5
    max_steps: int = 0  # stop after this many optimizer steps in total (0: run all epochs)
    device: str = "auto"  # "auto" (CUDA, then MPS, then CPU) | "cuda" | "mps" | "cpu" | "cuda:1"
    amp: bool = True  # mixed precision, CUDA only
    seed: int = 0
    log_every: int = 10  # optimizer steps between JSON-lines log records
    checkpoint_every: int = 0  # optimizer steps between mid-epoch "last" checkpoints (0: each epoch only)
    select_metric: str = "mean_recall"  # validation metric that picks the best checkpoint
    threads: int = 0  # torch CPU threads (0: torch's default)


@dataclass
class ClipCfg:
    """A pretrained CLIP to fine-tune, as `clipalbum model import` takes it: a transformers CLIPModel or
    SiglipModel folder (or hub name), or "open_clip:ARCH" with `weights`. When set, both towers, their
    preprocessing and the tokenizer come from it, and the image and text sections' tower settings are not
    used (their freeze and trainable still are)."""

    source: str = ""
    weights: str = ""  # for open_clip:ARCH: a weights file or one of open_clip's tags


@dataclass
class Config:
    name: str = "clip"
    clip: ClipCfg = field(default_factory=ClipCfg)
    image: ImageTowerCfg = field(default_factory=ImageTowerCfg)
    text: TextTowerCfg = field(default_factory=TextTowerCfg)
    head: HeadCfg = field(default_factory=HeadCfg)
    loss: LossCfg = field(default_factory=LossCfg)
    optim: OptimCfg = field(default_factory=OptimCfg)
    data: DataCfg = field(default_factory=DataCfg)
    train: TrainCfg = field(default_factory=TrainCfg)


def build_dataclass(cls: type, values: dict[str, Any], where: str,
                    list_items: dict[str, type] | None = None) -> Any:
    """Builds dataclass `cls` from a dict (as TOML gives it), refusing unknown keys with the section that holds
    them. Nested sections build the type of their field's default; `list_items` names fields that hold lists
    of dataclasses; TOML arrays become tuples and integers floats where the default is one."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = set(values) - set(fields)
    if unknown:
        raise ValueError(f"unknown config key(s) {sorted(unknown)} in [{where}]; known: {sorted(fields)}")
    kwargs: dict[str, Any] = {}
    for name, value in values.items():
        f = fields[name]
        default = (f.default if f.default is not dataclasses.MISSING
                   else f.default_factory() if f.default_factory is not dataclasses.MISSING else None)
        if list_items and name in list_items:
            kwargs[name] = [build_dataclass(list_items[name], dict(v), f"{where}.{name}") for v in value]
        elif dataclasses.is_dataclass(default) and isinstance(value, dict):
            kwargs[name] = build_dataclass(type(default), value, name, list_items)
        elif isinstance(default, tuple) and isinstance(value, list):
            kwargs[name] = tuple(value)
        elif isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
            kwargs[name] = float(value)
        else:
            kwargs[name] = value
    return cls(**kwargs)


def config_from_dict(values: dict[str, Any]) -> Config:
    return build_dataclass(Config, values, "top level", list_items={"sources": SourceCfg, "val_sources": SourceCfg})


def config_to_dict(cfg: Config) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def parse_override(text: str) -> tuple[list[str], Any]:
    """`section.key=value` -> (["section", "key"], value); the value is read as TOML, else as a string."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ValueError(f"override {text!r} is not key=value (e.g. train.epochs=3)")
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw  # bare strings such as paths need no quotes
    return key.strip().split("."), value


def apply_overrides(values: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    for text in overrides:
        path, value = parse_override(text)
        node = values
        for part in path[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ValueError(f"override {text!r}: {part} is not a section")
        node[path[-1]] = value
    return values


def load_config(path: Path, overrides: list[str] | None = None) -> Config:
    """Reads a TOML config; relative data paths are resolved against the working directory, like overrides."""
    path = Path(path)
    values = tomllib.loads(path.read_text(encoding="utf-8"))
    cfg = config_from_dict(apply_overrides(values, list(overrides or [])))
    return resolve_paths(cfg, Path.cwd())


def resolve_paths(cfg: Config, base: Path) -> Config:
    def absolute(p: str) -> str:
        return str((base / Path(p).expanduser()).resolve()) if p else p

    for source in [*cfg.data.sources, *cfg.data.val_sources]:
        source.path = absolute(source.path)
        source.images = absolute(source.images)
    if cfg.text.tokenizer:
        cfg.text.tokenizer = absolute(cfg.text.tokenizer)
    for attr in ("source", "weights"):  # local paths (a hub name or an open_clip tag is left as it is)
        value = getattr(cfg.clip, attr)
        if value and (value.startswith((".", "/", "~")) or (base / value).exists()):
            setattr(cfg.clip, attr, absolute(value))
    return cfg
