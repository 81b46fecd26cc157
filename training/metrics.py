"""Retrieval metrics for validation: Recall@K text->image and image->text over a gallery of photos."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt


def retrieval_recalls(image_vectors: npt.NDArray[np.float32], text_vectors: npt.NDArray[np.float32],
                      caption_to_image: npt.NDArray[np.int64], ks: tuple[int, ...] = (1, 5, 10)) -> dict[str, float]:
    """Recall@K in percent, both ways, for L2-normalised vectors.

    text->image: a caption scores when its own photo is among the K nearest photos.
    image->text: a photo scores when any of its captions is among the K nearest captions.
    """
    caption_to_image = np.asarray(caption_to_image)
    similarity = text_vectors @ image_vectors.T  # (captions, photos)
    own = similarity[np.arange(len(caption_to_image)), caption_to_image]
    text_rank = (similarity > own[:, None]).sum(axis=1)  # photos scored strictly above the right one
    # For each photo, the best rank any of its captions gets among all captions.
    by_image = similarity.T  # (photos, captions)
    best_rank = np.full(len(image_vectors), len(text_vectors))
    for image in range(len(image_vectors)):
        mine = caption_to_image == image
        if mine.any():
            best_own = by_image[image, mine].max()
            best_rank[image] = int((by_image[image] > best_own).sum())
    has_caption = np.isin(np.arange(len(image_vectors)), caption_to_image)
    metrics = {}
    for k in ks:
        metrics[f"t2i_r{k}"] = float((text_rank < k).mean() * 100)
        metrics[f"i2t_r{k}"] = float((best_rank[has_caption] < k).mean() * 100)
    metrics["mean_recall"] = float(np.mean([metrics[f"{d}_r{k}"] for d in ("t2i", "i2t") for k in ks]))
    return metrics
