"""The enhancer's training configuration: TOML sections with `--set section.key=value` overrides."""

from __future__ import annotations

import dataclasses
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from clipalbum.training.config import apply_overrides, build_dataclass
from clipalbum.training.enhance.degrade import DegradeCfg
from clipalbum.training.enhance.model import HeadCfg, UNetCfg


@dataclass
class DataCfg:
    folders: list[str] = field(default_factory=list)  # clean photos, searched recursively
    short_side: int = 720  # photos are box-reduced to this short side once, when loaded
    crop: int = 448  # the region a sample sees (the head's and CLIP's view); a multiple of 64
    min_scale: float = 0.6  # a sample covers between min_scale and all of a photo's short side
    patch: int = 192  # the UNet's training window inside the crop; a multiple of 16


@dataclass
class LossCfg:
    clip_weight: float = 0.0  # 1 - cos(CLIP(enhanced), CLIP(clean)); 0.05 measured worse (see MODEL_CARD.md)
    head_image_weight: float = 1.0  # L1 of the head's corrected thumbnail against the clean one
    head_param_weight: float = 0.2  # smooth L1 of the predicted correction against the true one
    embed_dropout: float = 0.15  # the CLIP embedding is zeroed this often (an unknown search bundle)
    prompt_p: float = 0.3  # a sample carries a prompt this often
    jitter: tuple[float, float, float, float] = (0.08, 0.03, 0.03, 0.04)  # head-like errors on the UNet's input
    final_step_p: float = 0.5  # share of samples at t = T-1, the one-step sampler's only step


@dataclass
class OptimCfg:
    lr: float = 5e-4
    head_lr: float = 1e-3
    weight_decay: float = 1e-4
    warmup: int = 200
    min_ratio: float = 0.05


@dataclass
class TrainCfg:
    out_dir: str = "runs/enhance"
    steps: int = 20000
    minutes: float = 0.0  # a time budget instead: the schedule follows steps or minutes, whichever leads
    parts: str = "all"  # "all" | "head": train only the global head (the UNet comes from init_unet)
    init_unet: str = ""  # a run directory whose UNet weights start this run
    # Where both parts start (fine-tuning): "packaged" (the enhancer clipalbum ships), an exported enhancer's
    # folder, or a run directory; empty: from scratch.
    init: str = ""
    batch: int = 32
    seed: int = 0
    device: str = "auto"
    threads: int = 0
    amp: bool = True  # bf16 autocast on CUDA
    log_every: int = 50
    save_every: int = 1000
    cache_dir: str = ""  # for the CLIP guide; empty: the model cache ($XDG_CACHE_HOME/clipalbum)


@dataclass
class EnhanceConfig:
    name: str = "enhance"
    data: DataCfg = field(default_factory=DataCfg)
    degrade: DegradeCfg = field(default_factory=DegradeCfg)
    unet: UNetCfg = field(default_factory=UNetCfg)
    head: HeadCfg = field(default_factory=HeadCfg)
    loss: LossCfg = field(default_factory=LossCfg)
    optim: OptimCfg = field(default_factory=OptimCfg)
    train: TrainCfg = field(default_factory=TrainCfg)


def config_from_dict(values: dict[str, Any]) -> EnhanceConfig:
    return build_dataclass(EnhanceConfig, values, "top level")


def config_to_dict(cfg: EnhanceConfig) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def load_config(path: Path, overrides: list[str] | None = None) -> EnhanceConfig:
    """Reads a TOML config; relative folders resolve against the working directory, like overrides."""
    values = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    cfg = config_from_dict(apply_overrides(values, list(overrides or [])))
    cfg.data.folders = [str(Path(f).expanduser().resolve()) for f in cfg.data.folders]
    return cfg
