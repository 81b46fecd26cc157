"""The training loop: epochs, validation Recall@K, best/last checkpoints, resume, JSON-lines logs."""

from __future__ import annotations

import json
import logging
import math
import random
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
import torch
from safetensors.torch import load_model, save_model
from tqdm import tqdm

from clipalbum.training.config import Config, config_from_dict, config_to_dict
from clipalbum.training.data import (Augment, CachedFeatureDataset, Collate, Photo, PhotoCaptionDataset, load_photos,
                           split_by_photo, write_caption_csv)
from clipalbum.training.metrics import retrieval_recalls
from clipalbum.server.bundle import ImageSpec, TextSpec
from clipalbum.training.clip_towers import load_clip_source, training_text_spec
from clipalbum.training.model import DualEncoder, build_model, image_spec, param_groups, text_spec, tokenizer_path
from clipalbum.training.towers import text_model_config

log = logging.getLogger(__name__)

WEIGHTS = "model.safetensors"
CHECKPOINT_META = "checkpoint.json"
TRAINER_STATE = "trainer_state.pt"
TOKENIZER = "tokenizer.json"
FEATURE_CACHE = "image_features.pt"


def pick_device(name: str) -> torch.device:
    """"auto": CUDA, then Apple MPS, then CPU; anything else is taken as a torch device name."""
    if name != "auto":
        return torch.device(name)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def lr_multiplier(step: int, total: int, warmup: int, min_ratio: float) -> float:
    """Factor on each group's learning rate at optimizer step `step`."""
    if step < warmup:  # 1) linear warmup
        return (step + 1) / warmup
    t = min(1.0, (step - warmup) / max(1, total - warmup))  # 2) cosine decay to min_ratio
    return min_ratio + 0.5 * (1 + math.cos(math.pi * t)) * (1 - min_ratio)


def describe_metrics(metrics: dict[str, float]) -> str:
    return " ".join(f"{k}={v:.1f}" for k, v in metrics.items())


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


@dataclass
class TrainResult:
    run_dir: Path
    best_dir: Path
    best_metrics: dict[str, float]
    steps: int
    seconds: float


def checkpoint_dir(path: Path) -> Path:
    """The checkpoint folder `path` names: itself, or for a run directory its best/."""
    path = Path(path)
    if (path / "best" / WEIGHTS).is_file() and not (path / WEIGHTS).is_file():
        return path / "best"
    return path


def load_checkpoint(checkpoint: Path, device: str | torch.device = "cpu") -> tuple[DualEncoder, Config, dict]:
    """Rebuilds the model from a checkpoint directory (its config and weights), offline; returns model, config, meta."""
    checkpoint = checkpoint_dir(checkpoint)
    meta_path = checkpoint / CHECKPOINT_META
    if not meta_path.is_file() or not (checkpoint / WEIGHTS).is_file():
        raise FileNotFoundError(f"{checkpoint} is not a checkpoint (needs {WEIGHTS} and {CHECKPOINT_META}); "
                                "pass a run directory or its best/ or last/ folder")
    meta = json.loads(meta_path.read_text(encoding="utf-8"))
    cfg = config_from_dict(meta["config"])
    if cfg.clip.source:  # the architecture comes from the pretrained CLIP it was fine-tuned from
        with tempfile.TemporaryDirectory(prefix="clipalbum-clip-") as work:
            model = build_model(cfg, clip=load_clip_source(cfg.clip, Path(work)))
    else:
        model = build_model(cfg, text_hf_config=meta["text_hf_config"])
    load_model(model, str(checkpoint / WEIGHTS), strict=True, device=str(device))
    return model.eval(), cfg, meta


def served_specs(meta: dict) -> tuple[ImageSpec, TextSpec] | None:
    """The preprocessing a checkpoint fine-tuned from a pretrained CLIP must be served with (the original's,
    recorded at training), or None for one whose config says it."""
    specs = meta.get("served_specs")
    if not specs:
        return None
    return msgspec.convert(specs["image"], ImageSpec), msgspec.convert(specs["text"], TextSpec)


class Trainer:
    """Trains one run directory; running it again resumes from the last checkpoint there."""

    def __init__(self, cfg: Config, fresh: bool = False, progress: bool = True) -> None:
        self.cfg = cfg
        self.run_dir = Path(cfg.train.out_dir).expanduser().resolve()
        self.progress = progress
        if fresh and self.run_dir.exists():
            log.warning("--fresh: discarding the checkpoints and logs in %s", self.run_dir)
            for name in ("last", "best", "log.jsonl", f"train_{FEATURE_CACHE}", f"val_{FEATURE_CACHE}"):
                target = self.run_dir / name
                shutil.rmtree(target) if target.is_dir() else target.unlink(missing_ok=True)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.device = pick_device(cfg.train.device)
        if cfg.train.threads:
            torch.set_num_threads(cfg.train.threads)
        self.log_file = self.run_dir / "log.jsonl"
        # A pretrained CLIP to start from brings its own preprocessing and tokenizer.
        self.clip = load_clip_source(cfg.clip, self.run_dir / "clip-source") if cfg.clip.source else None
        # Copied into every checkpoint.
        self.tokenizer_file = self.clip.tokenizer_file if self.clip else tokenizer_path(cfg, self.run_dir)

    def image_spec(self) -> ImageSpec:
        """How photos are preprocessed, in training and validation as in serving."""
        return self.clip.image_spec if self.clip else image_spec(self.cfg)

    def text_spec(self) -> TextSpec:
        """How captions are tokenized (with the attention mask, which towers that take none ignore)."""
        return training_text_spec(self.clip.text_spec) if self.clip else text_spec(self.cfg, self.tokenizer_file)

    # -- logging and checkpoints -------------------------------------------------------------------

    def log_event(self, event: str, **fields: Any) -> None:
        record = {"event": event, "time": round(time.time(), 3), **fields}
        with self.log_file.open("a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")

    def save(self, name: str, model: DualEncoder, meta: dict[str, Any], state: dict[str, Any] | None) -> Path:
        """Writes a checkpoint folder atomically (build beside it, then swap)."""
        final = self.run_dir / name
        work = self.run_dir / f".{name}.tmp"
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir()
        save_model(model, str(work / WEIGHTS))
        shutil.copyfile(self.tokenizer_file, work / TOKENIZER)
        (work / CHECKPOINT_META).write_text(json.dumps(meta, indent=2), encoding="utf-8")
        if state is not None:
            torch.save(state, work / TRAINER_STATE)
        old = self.run_dir / f".{name}.old"
        shutil.rmtree(old, ignore_errors=True)
        if final.exists():
            final.replace(old)
        work.replace(final)
        shutil.rmtree(old, ignore_errors=True)
        return final

    # -- data ------------------------------------------------------------------------------------------

    def prepare_data(self) -> tuple[list[Photo], list[Photo]]:
        data = self.cfg.data
        if not data.sources:
            raise ValueError("the config has no [[data.sources]]; add one or pass --set 'data.sources=[...]'")
        photos, report = load_photos(data.sources, data.verify_images)
        if data.val_sources:
            val, val_report = load_photos(data.val_sources, data.verify_images)
            report.merge(val_report)
            val_paths = {p.path for p in val}
            train = [p for p in photos if p.path not in val_paths]  # never train on a validation photo
        else:
            train, val = split_by_photo(photos, data.val_fraction, data.split_seed)
        (self.run_dir / "data_report.json").write_text(json.dumps(report.as_dict(), indent=2), encoding="utf-8")
        write_caption_csv(train, self.run_dir / "split" / "train.csv")
        write_caption_csv(val, self.run_dir / "split" / "val.csv")
        self.log_event("data", train_photos=len(train), val_photos=len(val),
                       train_captions=sum(len(p.captions) for p in train),
                       skipped=report.total_skipped(), report=report.as_dict())
        if report.total_skipped():
            log.warning("data: skipped %d bad rows (see %s)", report.total_skipped(), self.run_dir / "data_report.json")
        if len(train) < 2:
            raise ValueError(f"only {len(train)} training photos after skipping bad rows; need at least 2")
        return train, val

    def pixel_batches(self, photos: list[Photo], desc: str | None = None) -> Iterator[tuple[list[int], torch.Tensor]]:
        """(indices, pixels on the device) per eval batch of the photos that decode, as the server preprocesses."""
        dataset = PhotoCaptionDataset(photos, self.image_spec())
        size = self.cfg.data.eval_batch_size
        for start in tqdm(range(0, len(photos), size), desc=desc, unit="batch",
                          disable=desc is None or not self.progress):
            items = [(i, dataset[i]) for i in range(start, min(start + size, len(photos)))]
            items = [(i, item) for i, item in items if item is not None]
            if items:
                pixels = torch.from_numpy(np.stack([item[0] for _, item in items])).to(self.device)
                yield [i for i, _ in items], pixels

    # -- frozen image tower: features computed once -------------------------------------------------------

    def caches_image_features(self) -> bool:
        """A fully frozen image tower without augmentation gives the same features every epoch: compute once."""
        return self.cfg.image.freeze and not self.cfg.image.trainable and not self.cfg.data.augment

    @torch.no_grad()
    def image_features(self, model: DualEncoder, photos: list[Photo], label: str) -> tuple[list[Photo], torch.Tensor]:
        """The image tower's outputs for `photos` (those that decode), cached in the run directory."""
        path = self.run_dir / f"{label}_{FEATURE_CACHE}"
        settings = config_to_dict(self.cfg)
        key = {"image": settings["image"], "clip": settings["clip"], "photos": [str(p.path) for p in photos]}
        if path.is_file():
            cached = torch.load(path, map_location="cpu", weights_only=False)
            if cached.get("key") == key:
                by_path = {p.path: p for p in photos}
                return [by_path[Path(p)] for p in cached["kept"]], cached["features"]
        tower = model.image_tower.eval()
        kept: list[Photo] = []
        rows: list[torch.Tensor] = []
        for indices, pixels in self.pixel_batches(photos, desc=f"{label} image features"):
            with self.autocast():
                rows.append(tower(pixels).float().cpu())
            kept.extend(photos[i] for i in indices)
        features = torch.cat(rows) if rows else torch.zeros(0, model.image_tower.out_dim)
        torch.save({"key": key, "kept": [str(p.path) for p in kept], "features": features}, path)
        return kept, features

    # -- validation ------------------------------------------------------------------------------------

    @torch.no_grad()
    def validate(self, model: DualEncoder, val: list[Photo], collate: Collate) -> dict[str, float]:
        """Recall@1/5/10 both ways on the validation photos, preprocessed exactly as the server does."""
        if not val:
            return {}
        model.eval()
        image_vectors, kept = [], []
        if self.val_features is not None:  # frozen tower: only the head runs (eval mode, as encode_image)
            features = self.val_features.to(self.device)
            image_vectors.append(torch.nn.functional.normalize(model.image_head(features), dim=-1).float().cpu().numpy())
            kept = list(range(len(val)))
        else:
            for indices, pixels in self.pixel_batches(val):
                with self.autocast():
                    image_vectors.append(model.encode_image(pixels).float().cpu().numpy())
                kept.extend(indices)
        size = self.cfg.data.eval_batch_size
        captions = [(row, c) for row, i in enumerate(kept) for c in val[i].captions]
        text_vectors = []
        for start in range(0, len(captions), size):
            tokens = collate.tokenize([c for _, c in captions[start:start + size]])
            with self.autocast():
                text_vectors.append(model.encode_text(
                    torch.from_numpy(tokens["input_ids"]).to(self.device),
                    torch.from_numpy(tokens["attention_mask"]).to(self.device)).float().cpu().numpy())
        model.train()
        return retrieval_recalls(np.concatenate(image_vectors), np.concatenate(text_vectors),
                                 np.array([row for row, _ in captions]))

    def autocast(self):
        if self.device.type == "cuda" and self.cfg.train.amp:
            dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
            return torch.autocast("cuda", dtype=dtype)
        return nullcontext()

    # -- the loop ------------------------------------------------------------------------------------

    def fit(self) -> TrainResult:
        cfg = self.cfg
        seed_everything(cfg.train.seed)
        train, val = self.prepare_data()
        model = build_model(cfg, clip=self.clip).to(self.device)
        collate = Collate(self.tokenizer_file, self.text_spec())
        self.val_features = None
        if self.caches_image_features():
            log.info("image tower frozen and no augmentation: computing its features once")
            train, train_features = self.image_features(model, train, "train")
            val, self.val_features = self.image_features(model, val, "val")
            dataset = CachedFeatureDataset(train, train_features, seed=cfg.train.seed)
        else:
            augment = Augment(cfg.data, self.image_spec().size) if cfg.data.augment else None
            dataset = PhotoCaptionDataset(train, self.image_spec(), augment, seed=cfg.train.seed)

        batch = cfg.data.batch_size
        batches_per_epoch = len(train) // batch + (1 if len(train) % batch >= 2 else 0)
        steps_per_epoch = math.ceil(batches_per_epoch / cfg.optim.grad_accum)
        total_steps = steps_per_epoch * cfg.train.epochs
        if cfg.train.max_steps:
            total_steps = min(total_steps, cfg.train.max_steps)
        warmup = cfg.optim.warmup_steps or int(cfg.optim.warmup_fraction * total_steps)

        optimizer = torch.optim.AdamW(param_groups(model, cfg))
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda s: lr_multiplier(s, total_steps, warmup, cfg.optim.min_lr_ratio))
        use_scaler = self.device.type == "cuda" and cfg.train.amp and not torch.cuda.is_bf16_supported()
        scaler = torch.amp.GradScaler("cuda", enabled=use_scaler)

        config = config_to_dict(cfg)
        # text_lowercase: how the captions were tokenized, so export serves queries the same way.
        meta_base = {"config": config, "text_hf_config": None if self.clip else text_model_config(cfg.text),
                     "text_lowercase": self.text_spec().lowercase}
        if self.clip:
            meta_base["served_specs"] = msgspec.to_builtins({"image": self.clip.image_spec, "text": self.clip.text_spec})
        step, epoch, next_batch, best_score, best_metrics = 0, 0, 0, -math.inf, {}
        state_path = self.run_dir / "last" / TRAINER_STATE
        if state_path.is_file():
            state = torch.load(state_path, map_location="cpu", weights_only=False)
            self._warn_if_config_changed(state.get("config", {}))
            load_model(model, str(self.run_dir / "last" / WEIGHTS), strict=True, device=str(self.device))
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
            scaler.load_state_dict(state["scaler"])
            step, epoch, next_batch = state["step"], state["epoch"], state["next_batch"]
            best_score, best_metrics = state["best_score"], state["best_metrics"]
            torch.set_rng_state(state["torch_rng"])
            random.setstate(state["python_rng"])
            log.info("resuming %s at epoch %d, batch %d (step %d)", self.run_dir, epoch, next_batch, step)
            self.log_event("resume", epoch=epoch, next_batch=next_batch, step=step)
        else:
            self.log_event("start", config=config, device=str(self.device), total_steps=total_steps,
                           train_photos=len(train), val_photos=len(val))
            start_metrics = self.validate(model, val, collate)  # where training starts from, for comparison
            if start_metrics:
                self.log_event("baseline", val=start_metrics)
                log.info("before training: %s", describe_metrics(start_metrics))

        def trainer_state() -> dict[str, Any]:
            return {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                    "scaler": scaler.state_dict(), "step": step, "epoch": epoch, "next_batch": next_batch,
                    "best_score": best_score, "best_metrics": best_metrics, "config": config,
                    "torch_rng": torch.get_rng_state(), "python_rng": random.getstate()}

        started = time.monotonic()
        model.train()
        done = step >= total_steps
        while epoch < cfg.train.epochs and not done:
            dataset.epoch = epoch
            order = torch.randperm(len(train), generator=torch.Generator().manual_seed(cfg.train.seed * 10007 + epoch))
            batches = [chunk for chunk in order.split(batch) if len(chunk) >= 2]
            loader = torch.utils.data.DataLoader(
                dataset, batch_sampler=[c.tolist() for c in batches[next_batch:]], collate_fn=collate,
                num_workers=cfg.data.workers, persistent_workers=False,
                # Its own generator: the loader's worker seed must not draw on the global RNG, or a resumed
                # run would see different dropout masks than an uninterrupted one.
                generator=torch.Generator().manual_seed(cfg.train.seed * 10007 + epoch))
            bar = tqdm(loader, desc=f"epoch {epoch + 1}/{cfg.train.epochs}", unit="batch",
                       initial=next_batch, total=len(batches), disable=not self.progress, dynamic_ncols=True)
            optimizer.zero_grad(set_to_none=True)
            running, micro = 0.0, 0
            for index, item in enumerate(bar, start=next_batch):
                if item is None:
                    continue
                with self.autocast():
                    features = item.get("features")
                    loss = model(item["pixels"].to(self.device) if features is None else None,
                                 item["input_ids"].to(self.device), item["attention_mask"].to(self.device),
                                 image_features=None if features is None else features.to(self.device))
                scaler.scale(loss / cfg.optim.grad_accum).backward()
                running += float(loss.detach())
                micro += 1
                if micro % cfg.optim.grad_accum and index + 1 < len(batches):
                    continue  # accumulate more micro-batches before stepping
                if cfg.optim.max_grad_norm > 0:
                    scaler.unscale_(optimizer)
                    torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.max_grad_norm)
                scaler.step(optimizer)
                scaler.update()
                optimizer.zero_grad(set_to_none=True)
                scheduler.step()
                step += 1
                next_batch = index + 1
                mean_loss = running / micro
                bar.set_postfix(loss=f"{mean_loss:.3f}", lr=f"{scheduler.get_last_lr()[-1]:.2e}")
                if step % cfg.train.log_every == 0:
                    self.log_event("step", epoch=epoch, step=step, loss=mean_loss,
                                   lr={g["name"]: g["lr"] for g in optimizer.param_groups},
                                   temperature=model.loss.temperature)
                running, micro = 0.0, 0
                if step >= total_steps:
                    done = True
                    break
                if cfg.train.checkpoint_every and step % cfg.train.checkpoint_every == 0:
                    self.save("last", model, {**meta_base, "epoch": epoch, "step": step}, trainer_state())
            bar.close()

            metrics = self.validate(model, val, collate)
            score = metrics.get(cfg.train.select_metric, float(step))  # no validation: the latest is best
            epoch, next_batch = epoch + 1, 0
            improved = score > best_score
            if improved:
                best_score, best_metrics = score, metrics
            meta = {**meta_base, "epoch": epoch, "step": step, "metrics": metrics}
            if improved:
                self.save("best", model, meta, None)
            self.save("last", model, meta, trainer_state())
            self.log_event("epoch", epoch=epoch, step=step, val=metrics, best=improved,
                           elapsed_s=round(time.monotonic() - started, 1))
            log.info("epoch %d: %s%s", epoch, describe_metrics(metrics),
                     " (best)" if improved else "")
            if self.progress and metrics:
                print(f"epoch {epoch}: " + describe_metrics(metrics)
                      + (" (best)" if improved else ""), flush=True)

        seconds = time.monotonic() - started
        self.log_event("done", step=step, best=best_metrics, seconds=round(seconds, 1))
        return TrainResult(self.run_dir, self.run_dir / "best", best_metrics, step, seconds)

    def _warn_if_config_changed(self, saved: dict[str, Any]) -> None:
        now = config_to_dict(self.cfg)
        for section in ("image", "text", "head", "loss"):
            if saved.get(section) != now.get(section):
                log.warning("resuming with a different [%s] than the checkpoint in %s; use --fresh to start over",
                            section, self.run_dir)


def train(cfg: Config, fresh: bool = False, progress: bool = True) -> TrainResult:
    return Trainer(cfg, fresh=fresh, progress=progress).fit()
