"""The text tower's tokenizer and its lower-casing come from the model they belong to, not from the
packaged BERT-uncased vocabulary whatever the config says."""

from __future__ import annotations

from pathlib import Path

import pytest

from clipalbum.server.textprep import TextTokenizer, tokenizer_lowercases
from clipalbum.training.config import Config, TextTowerCfg
from clipalbum.training.model import text_spec
from clipalbum.training.pretrained import bert_uncased_tokenizer_file
from clipalbum.training.towers import tokenizer_file

VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "Paris", "paris", "is", "nice", "in", "spring"]


def cased_checkpoint(folder: Path, keep_tokenizer_json: bool = True) -> Path:
    """A tiny local transformers BERT with a cased vocabulary of its own ('Paris' and 'paris' differ): with a
    tokenizer.json, or with only vocab.txt and tokenizer_config.json as older checkpoints have."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import BertConfig, BertModel, PreTrainedTokenizerFast

    folder.mkdir(parents=True)
    BertModel(BertConfig(vocab_size=len(VOCAB), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=32)).save_pretrained(str(folder))
    if not keep_tokenizer_json:
        (folder / "vocab.txt").write_text("\n".join(VOCAB) + "\n")
        (folder / "tokenizer_config.json").write_text('{"tokenizer_class": "BertTokenizer", "do_lower_case": false}')
        return folder
    wordpiece = Tokenizer(models.WordPiece({word: i for i, word in enumerate(VOCAB)}, unk_token="[UNK]"))
    wordpiece.normalizer = normalizers.BertNormalizer(lowercase=False)
    wordpiece.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    wordpiece.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]",
                                                             special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    PreTrainedTokenizerFast(tokenizer_object=wordpiece, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
                            sep_token="[SEP]", mask_token="[MASK]").save_pretrained(str(folder))
    return folder


def ids(tokenizer: Path, spec_cfg: Config, text: str) -> list[int]:
    return TextTokenizer(tokenizer, text_spec(spec_cfg, tokenizer))([text])["input_ids"][0].tolist()


@pytest.mark.parametrize("with_json", [True, False], ids=["tokenizer.json", "vocab.txt only"])
def test_a_local_checkpoint_brings_its_own_cased_vocabulary(tmp_path: Path, with_json: bool) -> None:
    checkpoint = cased_checkpoint(tmp_path / "cased-bert", keep_tokenizer_json=with_json)
    cfg = Config(text=TextTowerCfg(kind="hf", pretrained=str(checkpoint)))
    found = tokenizer_file(cfg.text, tmp_path / "run")
    assert found == (checkpoint / "tokenizer.json" if with_json else tmp_path / "run" / "tokenizer.json")
    assert not text_spec(cfg, found).lowercase and not tokenizer_lowercases(found)
    assert ids(found, cfg, "Paris is nice") == [2, 5, 7, 8, 3]  # 'Paris' stays 'Paris'
    assert ids(found, cfg, "paris is nice") == [2, 6, 7, 8, 3]


def test_the_packaged_vocabulary_serves_only_its_own_models(tmp_path: Path) -> None:
    for cfg in (TextTowerCfg(), TextTowerCfg(kind="minilm")):  # untrained DistilBERT (uncased), MiniLM
        assert tokenizer_file(cfg) == bert_uncased_tokenizer_file()
    assert text_spec(Config()).lowercase  # BERT uncased lower-cases
    with pytest.raises(ValueError, match="no vocabulary of its own"):
        tokenizer_file(TextTowerCfg(kind="hf"))
    empty = tmp_path / "weights-only"
    empty.mkdir()
    with pytest.raises(ValueError, match="no tokenizer found"):
        tokenizer_file(TextTowerCfg(kind="hf", pretrained=str(empty)), tmp_path / "run")


def test_a_hub_tower_asks_the_hub_for_its_own_tokenizer(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The hub is never reached in tests: the call is answered by a local cased checkpoint."""
    import transformers

    checkpoint = cased_checkpoint(tmp_path / "cased-bert")
    asked: list[tuple[str, bool]] = []
    real = transformers.AutoTokenizer.from_pretrained

    def from_hub(name: str, **kwargs):
        asked.append((name, kwargs.get("local_files_only", False)))
        return real(str(checkpoint), use_fast=True, local_files_only=True)

    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", from_hub)
    cfg = TextTowerCfg(kind="hf", pretrained="hub", hub_name="someone/cased-bert")
    found = tokenizer_file(cfg, tmp_path / "run")
    assert asked == [("someone/cased-bert", False)]
    assert found == tmp_path / "run" / "tokenizer.json" and not tokenizer_lowercases(found)


def test_export_serves_queries_as_the_checkpoint_was_trained(tmp_path: Path) -> None:
    from clipalbum.export.checkpoint import served_text_spec

    checkpoint = cased_checkpoint(tmp_path / "cased-bert")
    cfg = Config(text=TextTowerCfg(kind="hf", pretrained=str(checkpoint)))
    tokenizer = checkpoint / "tokenizer.json"
    assert not served_text_spec(cfg, tokenizer, {"text_lowercase": False}).lowercase  # recorded by training
    # A checkpoint from before the tokenizer's own rule was used was trained on lower-cased captions.
    assert served_text_spec(cfg, tokenizer, {}).lowercase
