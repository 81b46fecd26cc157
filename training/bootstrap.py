"""The offline bootstrap recipe: EfficientNet-Lite0 and all-MiniLM-L6-v2 aligned without captioned photos.

ConSE (Norouzi et al., 2014): an image embeds as the convex combination of its ImageNet classes' text
embeddings, weighted by the classifier's softened probabilities; a text embeds directly with MiniLM.
Both land in MiniLM's space, centred on the class texts' mean and reduced to 256-d by PCA fitted on
the class texts. Class texts come from timm's WordNet names and definitions (no download).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import torch
from torch import nn
from tqdm import tqdm

from clipalbum.server.bundle import ImageSpec, TextSpec
from clipalbum.server.textprep import TextTokenizer
from clipalbum.training.bootstrap_labels import ImageNetClass, imagenet_classes
from clipalbum.training.pretrained import (
    EFFICIENTNET_LITE0_MEAN,
    EFFICIENTNET_LITE0_SIZE,
    EFFICIENTNET_LITE0_STD,
    bert_uncased_tokenizer_file,
    load_efficientnet_lite0,
    load_minilm,
)

log = logging.getLogger(__name__)

RECIPE_VERSION = 2  # bump whenever the vectors change (here or in export/default_bundle.py's quantization)


@dataclass(frozen=True)
class BootstrapConfig:
    """Chosen on the first half (by file name) of flickr8k-dev; see export/default_bundle.py for figures."""

    image_size: int = EFFICIENTNET_LITE0_SIZE  # the classifier's training size; 256 measured no better
    resize: str = "squash"  # whole photo, aspect not kept: beat centre crop by ~1 point Recall@10
    temperature: float = 2.0  # softmax(logits / T): a broad mixture of classes beats top-k ConSE by ~10 points
    templates: tuple[str, ...] = (  # each class text = mean of these, normalised
        "a photo of a {name}: {definition}",
        "{name}, a kind of {kind}: {definition}",
    )
    embed_dim: int = 256  # PCA of the class texts; measured the same as the full 384-d
    max_length: int = 64  # caption tokens; Flickr-style captions are ~15


def class_texts(classes: list[ImageNetClass], template: str) -> list[str]:
    """One text per class; `{kind}` falls back to the class name for classes without a kind."""
    return [template.format(name=c.name, names=", ".join(c.names), definition=c.definition, kind=c.kind or c.name)
            for c in classes]


class MeanPooledText(nn.Module):
    """all-MiniLM-L6-v2 as sentence-transformers runs it: mean of token states over the mask, then L2."""

    def __init__(self, bert: nn.Module) -> None:
        super().__init__()
        self.bert = bert

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        states = self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state  # (B, T, 384)
        mask = attention_mask.unsqueeze(-1).to(states.dtype)  # (B, T, 1)
        pooled = (states * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)  # (B, 384)
        return nn.functional.normalize(pooled, dim=-1)


class BootstrapDualEncoder(nn.Module):
    """encode_image / encode_text into one shared, L2-normalised `embed_dim` space."""

    def __init__(self, image_net: nn.Module, text_net: MeanPooledText, class_vectors: torch.Tensor,
                 text_center: torch.Tensor, projection: torch.Tensor, temperature: float) -> None:
        super().__init__()
        self.image_net = image_net
        self.text_net = text_net
        # (1000, D): each class text embedding, centred and projected. Since the softmax weights sum
        # to one, mixing these equals mixing raw class texts and then centring and projecting.
        self.register_buffer("class_vectors", class_vectors)
        self.register_buffer("text_center", text_center)  # (384,)
        self.register_buffer("projection", projection)  # (384, D)
        self.temperature = temperature
        self.embed_dim = int(projection.shape[1])

    def encode_image(self, pixels: torch.Tensor) -> torch.Tensor:
        logits = self.image_net(pixels)  # (N, 1000)
        weights = torch.softmax(logits / self.temperature, dim=-1)  # (N, 1000)
        return nn.functional.normalize(weights @ self.class_vectors, dim=-1)  # (N, D)

    def encode_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        sentence = self.text_net(input_ids, attention_mask)  # (N, 384), normalised
        return nn.functional.normalize((sentence - self.text_center) @ self.projection, dim=-1)  # (N, D)


def image_spec(config: BootstrapConfig) -> ImageSpec:
    return ImageSpec(size=config.image_size, resize=config.resize,  # type: ignore[arg-type]
                     mean=EFFICIENTNET_LITE0_MEAN,
                     std=EFFICIENTNET_LITE0_STD)


def text_spec(config: BootstrapConfig) -> TextSpec:
    return TextSpec(max_length=config.max_length, lowercase=True, input_names=("input_ids", "attention_mask"))


def embed_texts(text_net: MeanPooledText, tokenize: TextTokenizer, texts: list[str], batch: int = 128,
                progress: bool = False, desc: str = "texts") -> npt.NDArray[np.float32]:
    """Sentence embeddings (N, 384), tokenised through the same TextTokenizer the server uses."""
    order = sorted(range(len(texts)), key=lambda i: (len(texts[i]), i))  # similar lengths batch with less padding
    out = np.empty((len(texts), text_net.bert.config.hidden_size), dtype=np.float32)
    with torch.inference_mode():
        for start in tqdm(range(0, len(texts), batch), desc=desc, unit="batch", disable=not progress):
            rows = order[start:start + batch]
            tokens = tokenize([texts[i] for i in rows])
            ids, mask = torch.from_numpy(tokens["input_ids"]), torch.from_numpy(tokens["attention_mask"])
            out[rows] = text_net(ids, mask).numpy()
    return out


def fit_projection(class_embeddings: npt.NDArray[np.float32], dim: int) -> tuple[np.ndarray, np.ndarray]:
    """PCA of the class texts: their mean (384,) and top `dim` principal directions (384, dim)."""
    data = class_embeddings.astype(np.float64)
    center = data.mean(axis=0)
    _, _, vt = np.linalg.svd(data - center, full_matrices=False)
    components = vt[:dim].T
    # SVD leaves each direction's sign arbitrary; fix it so the bundle is reproducible across BLAS builds.
    signs = np.sign(components[np.abs(components).argmax(axis=0), np.arange(dim)])
    return center, components * signs


def _stable(x: np.ndarray) -> torch.Tensor:
    # Rounded so that last-bit differences between thread counts don't change the exported bytes.
    return torch.from_numpy(np.round(x, 6).astype(np.float32))


def build_bootstrap_model(config: BootstrapConfig | None = None, progress: bool = False) -> BootstrapDualEncoder:
    """Loads the packaged towers and aligns them (a minute or so on 2 cores). Deterministic."""
    config = config or BootstrapConfig()
    torch.manual_seed(0)
    image_net = load_efficientnet_lite0()
    text_net = MeanPooledText(load_minilm()).eval()
    tokenize = TextTokenizer(bert_uncased_tokenizer_file(), text_spec(config))

    classes = imagenet_classes()
    per_template = [embed_texts(text_net, tokenize, class_texts(classes, t), progress=progress,
                                desc=f"class texts {i + 1}/{len(config.templates)}")
                    for i, t in enumerate(config.templates)]
    class_embeddings = np.mean(per_template, axis=0)
    class_embeddings /= np.linalg.norm(class_embeddings, axis=1, keepdims=True)  # (1000, 384)

    center, components = fit_projection(class_embeddings, config.embed_dim)
    class_vectors = (class_embeddings - center) @ components  # (1000, D)
    log.info("bootstrap: %d classes x %d templates, %d-d, T=%.2f", len(classes), len(config.templates),
             config.embed_dim, config.temperature)
    return BootstrapDualEncoder(image_net, text_net, _stable(class_vectors), _stable(center), _stable(components),
                                config.temperature).eval()
