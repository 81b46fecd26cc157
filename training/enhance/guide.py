"""CLIP for the enhancer, in torch: the search bundle's image encoder (to condition on, and for the loss that
keeps an enhanced photo's meaning) and its text embeddings of the prompt phrasings.

Built once from the packaged bootstrap towers (about a minute on 2 cores) and cached as one file, which
is also what a GPU machine without those packages needs.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from clipalbum.training.enhance.prompts import all_phrasings

log = logging.getLogger(__name__)

GUIDE_VERSION = 1


class ClipGuide(nn.Module):
    """sRGB photos (B, 3, H, W) in 0..1 -> the bundle's L2-normalised image embeddings (B, D)."""

    def __init__(self, image_net: nn.Module, class_vectors: torch.Tensor, temperature: float, size: int,
                 mean: tuple[float, float, float], std: tuple[float, float, float]) -> None:
        super().__init__()
        self.image_net = image_net
        self.register_buffer("class_vectors", class_vectors)
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1))
        self.temperature = temperature
        self.size = size
        self.embed_dim = int(class_vectors.shape[1])

    def forward(self, photos: torch.Tensor) -> torch.Tensor:
        # "squash": the whole photo, as the bundle's manifest says (server/preprocess.py resizes the same way).
        x = F.interpolate(photos, size=(self.size, self.size), mode="bilinear", antialias=True, align_corners=False)
        logits = self.image_net((x - self.mean) / self.std)
        weights = torch.softmax(logits.float() / self.temperature, dim=-1)
        return F.normalize(weights @ self.class_vectors, dim=-1)


def guide_file(cache_dir: Path) -> Path:
    from clipalbum.export.default_bundle import MODEL_ID

    return Path(cache_dir) / f"enhance-guide-{MODEL_ID}-g{GUIDE_VERSION}.pt"


def build_guide_file(path: Path, progress: bool = True) -> Path:
    import timm  # noqa: F401 - fails early, with its own message, where timm is missing

    from clipalbum.export.default_bundle import MODEL_ID
    from clipalbum.training.bootstrap import BootstrapConfig, build_bootstrap_model, text_spec
    from clipalbum.server.textprep import TextTokenizer
    from clipalbum.training.pretrained import bert_uncased_tokenizer_file

    config = BootstrapConfig()
    model = build_bootstrap_model(config, progress=progress)
    phrasings = all_phrasings()
    tokens = TextTokenizer(bert_uncased_tokenizer_file(), text_spec(config))(phrasings)
    with torch.inference_mode():
        texts = model.encode_text(torch.from_numpy(tokens["input_ids"]), torch.from_numpy(tokens["attention_mask"]))
    state = {
        "model_id": MODEL_ID,
        "version": GUIDE_VERSION,
        # fp16 halves the file (9 MB) for carrying to a training machine; embeddings move by ~1e-3.
        "image_net": {k: v.half() if v.is_floating_point() else v for k, v in model.image_net.state_dict().items()},
        "class_vectors": model.class_vectors.clone(),
        "temperature": float(config.temperature),
        "size": int(config.image_size),
        "phrasings": phrasings,
        "prompt_embeddings": texts.clone(),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    tmp.replace(path)
    log.info("enhance guide cached at %s", path)
    return path


class Guide:
    """The cached guide: `.image` (a ClipGuide) and the prompt phrasings' text embeddings."""

    def __init__(self, path: Path, device: torch.device) -> None:
        import timm

        from clipalbum.training.pretrained import EFFICIENTNET_LITE0_MEAN, EFFICIENTNET_LITE0_STD

        state = torch.load(path, map_location="cpu", weights_only=True)
        if state.get("version") != GUIDE_VERSION:
            raise ValueError(f"{path} is guide version {state.get('version')}, expected {GUIDE_VERSION}: delete it")
        net = timm.create_model("tf_efficientnet_lite0", pretrained=False)
        net.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state["image_net"].items()})
        self.model_id: str = state["model_id"]
        self.image = ClipGuide(net, state["class_vectors"], state["temperature"], state["size"],
                               EFFICIENTNET_LITE0_MEAN, EFFICIENTNET_LITE0_STD).to(device).eval()
        self.image.requires_grad_(False)
        self.phrasings: list[str] = list(state["phrasings"])
        self.prompt_embeddings: torch.Tensor = state["prompt_embeddings"].to(device)
        if self.phrasings != all_phrasings():
            raise ValueError(f"{path} was built for other prompt phrasings: delete it to rebuild")


def load_guide(cache_dir: Path, device: torch.device, progress: bool = True) -> Guide:
    path = guide_file(cache_dir)
    if not path.is_file():
        log.info("building the enhance guide (once; cached at %s)", path)
        build_guide_file(path, progress=progress)
    return Guide(path, device)
