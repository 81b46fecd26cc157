"""The enhancer's two networks: a diffusers UNet that restores detail, and a head for global corrections.

The UNet is a conditional diffusion model over the *residual* between the globally corrected photo and the
clean one, at half resolution (2x2 pixel-unshuffle, as FFDNet does, for a quarter of the work per pixel).
It sees the corrected photo, a per-pixel noise map and the CLIP image embedding (added to its time
embedding); it predicts the clean residual (x0), so one DDIM step from pure noise is already a result.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from diffusers import DDIMScheduler, DDPMScheduler, UNet2DModel
from torch import nn
from torch.nn import functional as F

from clipalbum.server.enhance.color import PARAM_NAMES, luma, srgb_to_linear

# The residual is small (noise of a few percent): scaled up so that it and the diffusion noise are alike.
RESIDUAL_SCALE = 4.0
# The noise map arrives in 0..1 units (0.1 = sigma 25.5 on 8-bit values): scaled to about unit size.
NOISE_MAP_SCALE = 10.0
TRAIN_TIMESTEPS = 1000
BETA_SCHEDULE = "squaredcos_cap_v2"


@dataclass
class UNetCfg:
    channels: tuple[int, ...] = (32, 64, 128)  # per level, at half resolution
    layers_per_block: int = 1
    norm_groups: int = 8
    embed_dim: int = 256  # the search bundle's embedding size


@dataclass
class HeadCfg:
    thumb: int = 64  # the head sees the whole photo at this size
    embed_dim: int = 256
    embed_proj: int = 32  # the prompt (and image) embeddings enter through this many features
    use_image_embedding: bool = False  # measured: the photo's embedding made exposure worse on 39 photos
    hidden: tuple[int, ...] = field(default_factory=lambda: (128, 64))


class EnhanceUNet(nn.Module):
    """(noisy residual, corrected photo, noise map, timestep, CLIP embedding) -> predicted clean residual."""

    def __init__(self, cfg: UNetCfg) -> None:
        super().__init__()
        levels = len(cfg.channels)
        self.unet = UNet2DModel(
            in_channels=12 + 12 + 4,  # residual x_t, corrected photo, noise map (each 2x2-unshuffled)
            out_channels=12,
            block_out_channels=tuple(cfg.channels),
            down_block_types=("DownBlock2D",) * levels,
            up_block_types=("UpBlock2D",) * levels,
            layers_per_block=cfg.layers_per_block,
            norm_num_groups=cfg.norm_groups,
            add_attention=False,  # tiles must not depend on far-away pixels: no seams
            resnet_time_scale_shift="scale_shift",  # the embedding scales features, not just shifts them
            class_embed_type="identity",
        )
        self.embed = nn.Linear(cfg.embed_dim, cfg.channels[0] * 4)
        self.multiple = 2 * 2 ** (levels - 1)  # input sides must divide by this

    def forward(self, x_t: torch.Tensor, corrected: torch.Tensor, noise_map: torch.Tensor, timestep: torch.Tensor,
                embedding: torch.Tensor) -> torch.Tensor:
        """x_t: (B, 12, H/2, W/2); corrected: (B, 3, H, W) in 0..1; noise_map: (B, 1, H, W); timestep: (B,);
        embedding: (B, 256), zeros for none. Returns the clean residual (B, 12, H/2, W/2), scaled."""
        condition = torch.cat([F.pixel_unshuffle(corrected * 2 - 1, 2),
                               F.pixel_unshuffle(noise_map * NOISE_MAP_SCALE, 2)], dim=1)
        sample = torch.cat([x_t, condition], dim=1)
        return self.unet(sample, timestep, class_labels=self.embed(embedding), return_dict=False)[0]


# Where the head reads the sorted thumbnail: scene-independent statistics generalise from few photos,
# where a CNN over the thumbnail learned the training scenes instead.
QUANTILES = (0.01, 0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99, 1.0)
STAT_FEATURES = len(QUANTILES) + 6 + 3 + 8 + 3


def _at(sorted_values: torch.Tensor, qs: tuple[float, ...]) -> torch.Tensor:
    n = int(sorted_values.shape[-1])  # fixed by the thumbnail size, also when traced for export
    return sorted_values[..., [min(n - 1, round(q * (n - 1))) for q in qs]]


def photo_statistics(thumb: torch.Tensor) -> torch.Tensor:
    """(B, 3, T, T) sRGB -> (B, STAT_FEATURES): tone (luma and max-channel quantiles, clipping), colour (log
    channel ratios of the mean, the brightest pixels and the edges, in linear light: grey-world, white-patch
    and grey-edge cues)."""
    b, eps = thumb.shape[0], 1e-4
    lin = srgb_to_linear(thumb).reshape(b, 3, -1)
    y = torch.sort(luma(thumb, 1).reshape(b, -1), dim=-1).values
    brightest = torch.sort(thumb.amax(dim=1).reshape(b, -1), dim=-1).values
    per_channel = torch.sort(lin, dim=-1).values
    grid = srgb_to_linear(thumb)
    edges = ((grid[..., :, 1:] - grid[..., :, :-1]).abs().mean(dim=(2, 3))
             + (grid[..., 1:, :] - grid[..., :-1, :]).abs().mean(dim=(2, 3)))
    cues = [lin.mean(dim=-1), _at(per_channel, (0.95,))[..., 0], _at(per_channel, (0.99,))[..., 0], edges]
    ratios = [torch.log((c[:, i] + eps) / (c[:, 1] + eps)) for c in cues for i in (0, 2)]
    return torch.cat([
        _at(y, QUANTILES), _at(brightest, (0.5, 0.9, 0.99, 1.0)),
        (brightest > 0.98).float().mean(dim=-1, keepdim=True), (brightest < 0.02).float().mean(dim=-1, keepdim=True),
        torch.log(lin.mean(dim=-1) + eps), torch.stack(ratios, dim=1),
        y.std(dim=-1, keepdim=True), y.mean(dim=-1, keepdim=True), (y[:, -1:] - y[:, :1]),
    ], dim=1)


class GlobalHead(nn.Module):
    """(thumbnail, CLIP image embedding, prompt embedding) -> the global correction (PARAM_NAMES)."""

    def __init__(self, cfg: HeadCfg) -> None:
        super().__init__()
        self.thumb = cfg.thumb
        self.use_image_embedding = cfg.use_image_embedding
        self.prompt_proj = nn.Linear(cfg.embed_dim, cfg.embed_proj)
        self.image_proj = nn.Linear(cfg.embed_dim, cfg.embed_proj) if cfg.use_image_embedding else None
        layers: list[nn.Module] = []
        width = STAT_FEATURES + cfg.embed_proj * (2 if cfg.use_image_embedding else 1)
        for hidden in cfg.hidden:
            layers += [nn.Linear(width, hidden), nn.SiLU()]
            width = hidden
        out = nn.Linear(width, len(PARAM_NAMES))
        nn.init.zeros_(out.weight)  # starts as "change nothing"
        nn.init.zeros_(out.bias)
        self.mlp = nn.Sequential(*layers, out)

    def forward(self, thumb: torch.Tensor, embedding: torch.Tensor, prompt: torch.Tensor) -> torch.Tensor:
        """thumb: (B, 3, T, T) sRGB 0..1; embedding, prompt: (B, 256), zeros for none. Returns (B, 4)."""
        parts = [photo_statistics(thumb), self.prompt_proj(prompt)]
        if self.image_proj is not None:
            parts.append(self.image_proj(embedding))
        return self.mlp(torch.cat(parts, dim=1))


def train_scheduler() -> DDPMScheduler:
    return DDPMScheduler(num_train_timesteps=TRAIN_TIMESTEPS, beta_schedule=BETA_SCHEDULE, prediction_type="sample",
                         clip_sample=False)


def sample_scheduler(steps: int) -> DDIMScheduler:
    """Few-step DDIM from t = T-1 ("trailing" spacing), deterministic (eta = 0)."""
    scheduler = DDIMScheduler(num_train_timesteps=TRAIN_TIMESTEPS, beta_schedule=BETA_SCHEDULE,
                              prediction_type="sample", clip_sample=False, timestep_spacing="trailing",
                              set_alpha_to_one=True)
    scheduler.set_timesteps(steps)
    return scheduler


@torch.no_grad()
def restore(unet: EnhanceUNet, corrected: torch.Tensor, noise_map: torch.Tensor, embedding: torch.Tensor,
            steps: int = 1, generator: torch.Generator | None = None) -> torch.Tensor:
    """Torch reference sampler: the restored photo (B, 3, H, W), sides divisible by unet.multiple."""
    b, _, h, w = corrected.shape
    scheduler = sample_scheduler(steps)
    x = torch.randn((b, 12, h // 2, w // 2), generator=generator, device=corrected.device)
    for t in scheduler.timesteps:
        timestep = torch.full((b,), float(t), device=corrected.device)
        x0 = unet(x, corrected, noise_map, timestep, embedding)
        x = scheduler.step(x0, t, x).prev_sample
    return (corrected + F.pixel_shuffle(x, 2) / RESIDUAL_SCALE).clamp(0, 1)
