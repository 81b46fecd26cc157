"""CLIP for the enhancer at serving time: the search bundle's embeddings of a photo and of a prompt, used
only when the enhancer was trained against that bundle (another bundle's space would mislead it)."""

from __future__ import annotations

import logging

import numpy as np
import numpy.typing as npt
from PIL import Image

from clipalbum.server.encoders import Encoders
from clipalbum.server.errors import ClipalbumError
from clipalbum.server.preprocess import to_model_input

log = logging.getLogger(__name__)


def embed_photo(encoders: Encoders, photo: npt.NDArray[np.uint8]) -> npt.NDArray[np.float32]:
    """The search bundle's image embedding of an (H, W, 3) uint8 photo."""
    pixels = to_model_input(Image.fromarray(photo), encoders.manifest.image)
    return encoders.image.encode(pixels[None])[0]


class Conditioner:
    def __init__(self, encoders: Encoders | None, conditioning_model_id: str) -> None:
        self.encoders = encoders
        self.usable = encoders is not None and encoders.manifest.model_id == conditioning_model_id
        if encoders is not None and not self.usable:
            log.warning("the enhancer was trained with the %s search model, this one is %s: enhancing without "
                        "CLIP conditioning", conditioning_model_id, encoders.manifest.model_id)

    def image(self, photo: npt.NDArray[np.uint8]) -> npt.NDArray[np.float32] | None:
        return embed_photo(self.encoders, photo) if self.usable else None

    def text(self, prompt: str) -> npt.NDArray[np.float32]:
        if not self.usable:
            raise ClipalbumError("--prompt needs the search model the enhancer was trained with")
        if not prompt.strip():
            raise ClipalbumError("--prompt is empty")
        return self.encoders.text.encode([prompt])[0]
