"""Text preprocessing: tokenisation exactly as the bundle's manifest says (shared by serving and training)."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from tokenizers import Tokenizer

from clipalbum.server.bundle import TextSpec


def tokenizer_lowercases(tokenizer_file: Path) -> bool:
    """Whether the tokenizer.json's own normalizer lower-cases (an uncased vocabulary, CLIP's BPE): the
    manifest's `lowercase` for a model trained with it. A cased vocabulary must see the text as typed."""
    normalizer = json.loads(Path(tokenizer_file).read_text(encoding="utf-8")).get("normalizer")

    def lowercases(node: Any) -> bool:
        if not isinstance(node, dict):
            return False
        kind = node.get("type")
        if kind == "Lowercase" or (kind == "BertNormalizer" and node.get("lowercase", True)):
            return True
        return kind == "Sequence" and any(lowercases(n) for n in node.get("normalizers", []))

    return lowercases(normalizer)


class TextTokenizer:
    """tokenizer.json + the manifest's lower-casing and max length -> padded int64 arrays."""

    def __init__(self, tokenizer_file: Path, spec: TextSpec) -> None:
        self.spec = spec
        self.tokenizer = Tokenizer.from_file(str(tokenizer_file))
        self.tokenizer.enable_truncation(max_length=spec.max_length)
        self.tokenizer.enable_padding(pad_id=spec.pad_id, length=spec.max_length if spec.pad_to_max_length else None)
        self._lock = threading.Lock()  # padding/truncation state is shared by all callers

    def __call__(self, texts: list[str]) -> dict[str, npt.NDArray[np.int64]]:
        """Returns {input name: (N, T) int64} for the names the text graph takes."""
        if self.spec.lowercase:
            texts = [t.lower() for t in texts]
        with self._lock:
            encodings = self.tokenizer.encode_batch(texts)
        arrays = {
            "input_ids": np.array([e.ids for e in encodings], dtype=np.int64),
            "attention_mask": np.array([e.attention_mask for e in encodings], dtype=np.int64),
            "token_type_ids": np.array([e.type_ids for e in encodings], dtype=np.int64),
        }
        return {name: arrays[name] for name in self.spec.input_names}
