"""Validation metrics: Recall@K both ways, computed by the same functions `clipalbum eval` uses."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from clipalbum.server.evaluate import image_recall_at_k, recall_at_k


def retrieval_recalls(image_vectors: npt.NDArray[np.float32], text_vectors: npt.NDArray[np.float32],
                      caption_to_image: npt.NDArray[np.int64], ks: tuple[int, ...] = (1, 5, 10)) -> dict[str, float]:
    """{"t2i_r1": ..., "i2t_r10": ..., "mean_recall": ...} in percent, for L2-normalised vectors."""
    t2i = recall_at_k(text_vectors, image_vectors, caption_to_image, ks)
    i2t = image_recall_at_k(text_vectors, image_vectors, caption_to_image, ks)
    metrics = {f"t2i_r{k}": 100 * t2i[k] for k in ks} | {f"i2t_r{k}": 100 * i2t[k] for k in ks}
    metrics["mean_recall"] = float(np.mean(list(metrics.values())))
    return metrics
