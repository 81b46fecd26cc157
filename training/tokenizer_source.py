"""A transformers model's own tokenizer as the tokenizer.json a bundle carries (tokenizers' fast form)."""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

log = logging.getLogger(__name__)


def fast_tokenizer_file(source: str, out_dir: Path | None, local_files_only: bool) -> Path:
    """The fast (tokenizers) form of a transformers tokenizer, saved as tokenizer.json for the bundle."""
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(source, use_fast=True, local_files_only=local_files_only)
    except (OSError, ValueError, TypeError, KeyError) as exc:
        raise ValueError(f"{source}: no tokenizer found (tokenizer.json, or vocabulary files transformers can "
                         f"read); put the model's tokenizer.json there, or name one (text.tokenizer in a "
                         f"training config) ({exc})") from exc
    if not getattr(tokenizer, "is_fast", False):
        raise ValueError(f"{source}: its tokenizer has no fast (tokenizers) form to put in a bundle; convert it "
                         "to a tokenizer.json and put it there")
    # transformers 5 makes an empty tokenizer (its special tokens only) for a folder without vocabulary files.
    if tokenizer.backend_tokenizer.get_vocab_size() <= len(set(tokenizer.all_special_tokens)) + 1:
        raise ValueError(f"{source}: no tokenizer found (no vocabulary files: tokenizer.json, vocab.txt, "
                         "vocab.json and merges.txt); put the model's tokenizer.json there")
    folder = out_dir if out_dir is not None else Path(tempfile.mkdtemp(prefix="clipalbum-tokenizer-"))
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / "tokenizer.json"
    tokenizer.backend_tokenizer.save(str(target))
    log.info("text tower tokenizer: %s, converted to %s", source, target)
    return target
