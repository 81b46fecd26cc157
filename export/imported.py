"""What an importer hands `clipalbum model import`: the towers, the bundle's specs and tokenizer, and the
original's own preprocessing and tokenizer to compare clipalbum's with."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from torch import nn

from clipalbum.server.bundle import ImageSpec, TextSpec


@dataclass
class ImportedModel:
    towers: nn.Module  # encode_image(pixels) and encode_text(**tokens), as export_dual_encoder takes
    image_spec: ImageSpec
    text_spec: TextSpec
    tokenizer_file: Path
    model_id: str
    description: str
    # The original's own pipeline, for the agreement figures: its pixels for photo files, and its token ids
    # (without padding) for captions, or None where the bundle's tokenizer is the original's own file.
    reference_pixels: Callable[[list[Path]], np.ndarray]
    reference_tokens: Callable[[list[str]], list[list[int]]] | None = None
    # The original's own text embeddings for captions, where `towers` computes them another way.
    reference_text: Callable[[list[str]], np.ndarray] | None = None


def unpadded(ids: list[int], pad_id: int = 0) -> list[int]:
    """Token ids without the trailing padding (`pad_id` inside a query is a real token). Where the end token
    is the padding too (SigLIP), it goes with it, from both sides of a comparison alike."""
    end = len(ids)
    while end and ids[end - 1] == pad_id:
        end -= 1
    return ids[:end]
