"""`clipalbum enhance train`: the enhancer's training loop (seeded, resumable, JSON-lines log, progress bar)."""

from __future__ import annotations

import json
import logging
import shutil
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_model, save_model
from torch.nn import functional as F
from tqdm import tqdm

from clipalbum.server.enhance.color import correct
from clipalbum.server.enhance.manifest import MANIFEST_NAME, PACKAGED_ENHANCER
from clipalbum.server.enhance.noise import estimate_sigma, noise_map
from clipalbum.training.enhance.config import EnhanceConfig, config_from_dict, config_to_dict
from clipalbum.training.enhance.data import PhotoPool
from clipalbum.training.enhance.degrade import degrade
from clipalbum.training.enhance.guide import Guide, load_guide
from clipalbum.training.enhance.model import (RESIDUAL_SCALE, TRAIN_TIMESTEPS, EnhanceUNet, GlobalHead, train_scheduler)
from clipalbum.training.enhance.packaged import load_packaged
from clipalbum.training.enhance.prompts import INTENTS
from clipalbum.training.trainer import lr_multiplier, pick_device, seed_everything

log = logging.getLogger(__name__)

UNET_WEIGHTS = "unet.safetensors"
HEAD_WEIGHTS = "head.safetensors"
META = "checkpoint.json"
STATE = "trainer_state.pt"


@dataclass
class EnhanceTrainResult:
    run_dir: Path
    checkpoint: Path
    steps: int
    seconds: float
    last_losses: dict[str, float]


def default_cache_dir() -> Path:
    import os

    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "clipalbum"


def load_enhancer(checkpoint: Path, device: str | torch.device = "cpu") -> tuple[EnhanceUNet, GlobalHead, EnhanceConfig, dict]:
    """Rebuilds both networks from a run directory (its last/) or a checkpoint folder."""
    checkpoint = Path(checkpoint)
    if (checkpoint / "last" / META).is_file():
        checkpoint = checkpoint / "last"
    if not (checkpoint / META).is_file():
        raise FileNotFoundError(f"{checkpoint} is not an enhancer checkpoint (needs {META}); pass a run directory")
    meta = json.loads((checkpoint / META).read_text(encoding="utf-8"))
    cfg = config_from_dict(meta["config"])
    unet, head = EnhanceUNet(cfg.unet).to(device), GlobalHead(cfg.head).to(device)
    load_model(unet, str(checkpoint / UNET_WEIGHTS), device=str(device))
    load_model(head, str(checkpoint / HEAD_WEIGHTS), device=str(device))
    return unet.eval(), head.eval(), cfg, meta


def thumbnail(photos: torch.Tensor, size: int) -> torch.Tensor:
    """The head's view: the whole photo squashed to size x size by area averaging (PIL's BOX at serving)."""
    return F.interpolate(photos, size=(size, size), mode="area")


def params_tuple(params: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """(B, 4) -> four (B, 1, 1, 1) tensors that broadcast over (B, C, H, W)."""
    col = params[:, :, None, None, None]
    return tuple(col[:, i] for i in range(col.shape[1]))


def last_checkpoint(run_or_checkpoint: Path) -> Path:
    """A run directory's last checkpoint, or the checkpoint folder itself."""
    source = Path(run_or_checkpoint).expanduser()
    return source / "last" if (source / "last").is_dir() else source


class EnhanceTrainer:
    """Trains one run directory; running it again resumes from RUN/last."""

    def __init__(self, cfg: EnhanceConfig, fresh: bool = False, progress: bool = True) -> None:
        self.cfg = cfg
        self.run_dir = Path(cfg.train.out_dir).expanduser().resolve()
        self.progress = progress
        if fresh and self.run_dir.exists():
            log.warning("--fresh: discarding the checkpoint and log in %s", self.run_dir)
            shutil.rmtree(self.run_dir / "last", ignore_errors=True)
            (self.run_dir / "log.jsonl").unlink(missing_ok=True)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.device = pick_device(cfg.train.device)
        if cfg.train.threads:
            torch.set_num_threads(cfg.train.threads)
        self.log_file = self.run_dir / "log.jsonl"
        self.metrics: dict[str, float] = {}

    def log_event(self, event: str, **fields: Any) -> None:
        with self.log_file.open("a", encoding="utf-8") as f:
            f.write(json.dumps({"event": event, "time": round(time.time(), 3), **fields}) + "\n")

    def autocast(self):
        if self.cfg.train.amp and self.device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return nullcontext()

    def save(self, unet: EnhanceUNet, head: GlobalHead, meta: dict[str, Any], state: dict[str, Any]) -> Path:
        final, work = self.run_dir / "last", self.run_dir / ".last.tmp"
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir()
        save_model(unet, str(work / UNET_WEIGHTS))
        save_model(head, str(work / HEAD_WEIGHTS))
        torch.save(state, work / STATE)
        (work / META).write_text(json.dumps(meta, indent=2), encoding="utf-8")
        old = self.run_dir / ".last.old"
        shutil.rmtree(old, ignore_errors=True)
        if final.exists():
            final.rename(old)
        work.rename(final)
        shutil.rmtree(old, ignore_errors=True)
        return final

    def fit(self) -> EnhanceTrainResult:
        cfg = self.cfg
        seed_everything(cfg.train.seed)
        cache = Path(cfg.train.cache_dir).expanduser() if cfg.train.cache_dir else default_cache_dir()
        guide = load_guide(cache, self.device, progress=self.progress)
        pool = PhotoPool(cfg.data, self.device, progress=self.progress)
        unet = EnhanceUNet(cfg.unet).to(self.device)
        head = GlobalHead(cfg.head).to(self.device)
        optimizer = torch.optim.AdamW([
            {"params": unet.parameters(), "lr": cfg.optim.lr, "base_lr": cfg.optim.lr},
            {"params": head.parameters(), "lr": cfg.optim.head_lr, "base_lr": cfg.optim.head_lr},
        ], weight_decay=cfg.optim.weight_decay)
        if cfg.train.parts not in ("all", "head"):
            raise ValueError(f"train.parts must be 'all' or 'head', not {cfg.train.parts!r}")
        if cfg.train.init and not (self.run_dir / "last" / STATE).is_file():  # a resumed run has its own
            self._initialise(unet, head, cfg.train.init)
        if cfg.train.init_unet:
            load_model(unet, str(last_checkpoint(Path(cfg.train.init_unet)) / UNET_WEIGHTS), device=str(self.device))
        if cfg.train.parts == "head":
            unet.requires_grad_(False)
        gen = torch.Generator(device=self.device).manual_seed(cfg.train.seed)
        cpu_gen = torch.Generator().manual_seed(cfg.train.seed + 1)
        start = self._resume(unet, head, optimizer, gen, cpu_gen)
        scheduler = train_scheduler()
        scheduler.alphas_cumprod = scheduler.alphas_cumprod.to(self.device)
        intents = self._prompt_table(guide)

        meta_base = {"config": config_to_dict(cfg), "conditioning_model_id": guide.model_id}
        started, losses = time.perf_counter(), {}
        self.log_event("start", step=start, steps=cfg.train.steps, photos=len(pool.photos), device=str(self.device))
        bar = tqdm(range(start, cfg.train.steps), initial=start, total=cfg.train.steps, desc="enhance train",
                   unit="step", disable=not self.progress)
        running: dict[str, float] = {}
        budget = cfg.train.minutes * 60
        for step in bar:
            # With a time budget the schedule runs on whichever is further along: steps or minutes.
            elapsed = time.perf_counter() - started
            at = max(step, int(elapsed / budget * cfg.train.steps)) if budget else step
            if budget and elapsed >= budget:
                self.save(unet, head, {**meta_base, "step": step},
                          {"optimizer": optimizer.state_dict(), "step": step, "gen": gen.get_state(),
                           "cpu_gen": cpu_gen.get_state()})
                self.log_event("budget", step=step, seconds=round(elapsed, 1))
                break
            factor = lr_multiplier(at, cfg.train.steps, cfg.optim.warmup, cfg.optim.min_ratio)
            for group in optimizer.param_groups:
                group["lr"] = group["base_lr"] * factor
            parts = self._step(unet, head, guide, pool, scheduler, intents, gen, cpu_gen)
            loss = sum(parts.values())
            parts = {k: v.detach() for k, v in parts.items()}
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_([p for p in [*unet.parameters(), *head.parameters()] if p.requires_grad], 1.0)
            optimizer.step()
            for k, v in [*parts.items(), *self.metrics.items()]:
                running[k] = running.get(k, 0.0) + float(v)
            done = step + 1
            if done % cfg.train.log_every == 0 or done == cfg.train.steps:
                n = cfg.train.log_every if done % cfg.train.log_every == 0 else done % cfg.train.log_every
                losses = {k: round(v / n, 5) for k, v in running.items()}
                running = {}
                self.log_event("train", step=done, lr=round(cfg.optim.lr * factor, 7), **losses)
                bar.set_postfix({k: f"{v:.4f}" for k, v in losses.items()})
            if done % cfg.train.save_every == 0 or done == cfg.train.steps:
                self.save(unet, head, {**meta_base, "step": done},
                          {"optimizer": optimizer.state_dict(), "step": done, "gen": gen.get_state(),
                           "cpu_gen": cpu_gen.get_state()})
        seconds = time.perf_counter() - started
        self.log_event("end", step=done, seconds=round(seconds, 1))
        return EnhanceTrainResult(self.run_dir, self.run_dir / "last", done, seconds, losses)

    def _initialise(self, unet: EnhanceUNet, head: GlobalHead, init: str) -> None:
        """Both parts' weights from the packaged enhancer, an exported one, or a run (its last checkpoint)."""
        source = PACKAGED_ENHANCER if init == "packaged" else Path(init).expanduser()
        if (source / MANIFEST_NAME).is_file():
            precision = load_packaged(unet, head, source)
            self.log_event("init", source=str(source), precision=precision)
            return
        last = last_checkpoint(source)
        if not (last / UNET_WEIGHTS).is_file():
            raise FileNotFoundError(f"train.init={init!r}: neither an exported enhancer ({MANIFEST_NAME}) nor a run "
                                    f"({last / UNET_WEIGHTS} is missing)")
        load_model(unet, str(last / UNET_WEIGHTS), device=str(self.device))
        load_model(head, str(last / HEAD_WEIGHTS), device=str(self.device))
        self.log_event("init", source=str(last))

    def _resume(self, unet: EnhanceUNet, head: GlobalHead, optimizer: torch.optim.Optimizer,
                gen: torch.Generator, cpu_gen: torch.Generator) -> int:
        last = self.run_dir / "last"
        if not (last / STATE).is_file():
            return 0
        load_model(unet, str(last / UNET_WEIGHTS), device=str(self.device))
        load_model(head, str(last / HEAD_WEIGHTS), device=str(self.device))
        state = torch.load(last / STATE, map_location=self.device, weights_only=True)
        optimizer.load_state_dict(state["optimizer"])
        for group, lr in zip(optimizer.param_groups, (self.cfg.optim.lr, self.cfg.optim.head_lr)):
            group["base_lr"] = lr  # the config's rates, also when they changed since the checkpoint
        gen.set_state(state["gen"].cpu() if hasattr(state["gen"], "cpu") else state["gen"])
        cpu_gen.set_state(state["cpu_gen"].cpu())
        log.info("resuming %s at step %d", self.run_dir, state["step"])
        self.log_event("resume", step=state["step"])
        return int(state["step"])

    def _prompt_table(self, guide: Guide) -> tuple[torch.Tensor, torch.Tensor]:
        """(P, D) prompt embeddings and (P, 4) the correction each phrasing adds."""
        deltas = [intent.delta for intent in INTENTS for _ in intent.phrasings]
        return guide.prompt_embeddings.float(), torch.tensor(deltas, device=self.device)

    def _step(self, unet: EnhanceUNet, head: GlobalHead, guide: Guide, pool: PhotoPool, scheduler: Any,
              intents: tuple[torch.Tensor, torch.Tensor], gen: torch.Generator,
              cpu_gen: torch.Generator) -> dict[str, torch.Tensor]:
        cfg, b, dev = self.cfg, self.cfg.train.batch, self.device
        clean = pool.crops(b, cpu_gen)
        deg = degrade(clean, cfg.degrade, gen)
        photo = deg.photo
        pivot = photo.mean(dim=(1, 2, 3), keepdim=True)
        head_only = cfg.train.parts == "head"
        if head_only and not cfg.head.use_image_embedding:
            embedding = torch.zeros((b, guide.image.embed_dim), device=dev)  # not used: spare the encoder
        else:
            with torch.no_grad(), self.autocast():
                embedding = guide.image(photo).float()
        keep = (torch.rand(b, 1, generator=gen, device=dev) >= cfg.loss.embed_dropout).float()
        embedding = embedding * keep

        # The head: the whole crop, a prompt now and then.
        prompt_emb, prompt_delta = intents
        pick = torch.randint(len(prompt_emb), (b,), generator=gen, device=dev)
        use = (torch.rand(b, 1, generator=gen, device=dev) < cfg.loss.prompt_p).float()
        prompt, delta = prompt_emb[pick] * use, prompt_delta[pick] * use
        target_params = deg.params + delta
        thumb = thumbnail(photo, cfg.head.thumb)
        thumb_pivot = thumb.mean(dim=(1, 2, 3), keepdim=True)
        with self.autocast():
            predicted = head(thumb, embedding, prompt).float()
        thumb_target = correct(thumbnail(deg.noise_free, cfg.head.thumb), params_tuple(target_params), thumb_pivot, 1)
        thumb_out = correct(thumb, params_tuple(predicted), thumb_pivot, 1)
        losses = {
            "head_image": cfg.loss.head_image_weight * (thumb_out - thumb_target).abs().mean(),
            "head_param": cfg.loss.head_param_weight * F.smooth_l1_loss(predicted, target_params, beta=0.1),
        }

        if head_only:
            self.metrics = {}
            return losses

        # The UNet: a window of the crop, corrected with a head-like error, restored towards the same
        # correction of the noise-free photo (the UNet restores detail; tone is the head's).
        p = cfg.data.patch
        top, left = (torch.randint(cfg.data.crop - p + 1, (2,), generator=cpu_gen)).tolist()
        window = (slice(None), slice(None), slice(top, top + p), slice(left, left + p))
        jitter = torch.randn((b, 4), generator=gen, device=dev) * torch.tensor(cfg.loss.jitter, device=dev)
        applied = params_tuple(deg.params + jitter)
        corrected = correct(photo[window], applied, pivot, 1)
        target = correct(deg.noise_free[window], applied, pivot, 1)
        sigma = estimate_sigma(photo, channel_axis=-3)[:, None, None, None]
        nmap = noise_map(photo[window], applied, pivot, sigma, 1)
        residual = F.pixel_unshuffle(target - corrected, 2) * RESIDUAL_SCALE
        final = torch.rand(b, generator=gen, device=dev) < cfg.loss.final_step_p
        t = torch.where(final, torch.full((b,), TRAIN_TIMESTEPS - 1, device=dev),
                        torch.randint(TRAIN_TIMESTEPS, (b,), generator=gen, device=dev))
        noise = torch.randn(residual.shape, generator=gen, device=dev)
        x_t = scheduler.add_noise(residual, noise, t)
        with self.autocast():
            predicted_residual = unet(x_t, corrected, nmap, t.float(), embedding).float()
        out = corrected + F.pixel_shuffle(predicted_residual, 2) / RESIDUAL_SCALE
        losses["pixel"] = (out - target).abs().mean()
        self.metrics = {"pixel_input": float((corrected - target).abs().mean())}  # what doing nothing scores
        if cfg.loss.clip_weight > 0:
            with self.autocast():
                with torch.no_grad():
                    target_emb = guide.image(target).float()
                out_emb = guide.image(out.clamp(0, 1)).float()
            losses["clip"] = cfg.loss.clip_weight * (1 - (out_emb * target_emb).sum(dim=-1)).mean()
        return losses


def train_enhancer(cfg: EnhanceConfig, fresh: bool = False, progress: bool = True) -> EnhanceTrainResult:
    return EnhanceTrainer(cfg, fresh=fresh, progress=progress).fit()
