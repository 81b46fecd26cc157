"""`clipalbum model import` on a small random transformers CLIP built here (nothing is downloaded): import ->
bundle -> index -> search, parity with the original torch model, and the refusals."""

from __future__ import annotations

import json
import string
from contextlib import closing
from io import BytesIO
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch", reason="importing a checkpoint needs clipalbum[export]")

import torch  # noqa: E402

from clipalbum.server.bundle import read_manifest  # noqa: E402
from clipalbum.server.cli import main  # noqa: E402
from clipalbum.export.imported import unpadded  # noqa: E402
from clipalbum.server.encoders import load_encoders  # noqa: E402
from clipalbum.server.library import Library  # noqa: E402
from clipalbum.server.preprocess import load_model_input  # noqa: E402
from clipalbum.server.settings import data_paths  # noqa: E402
from tests.conftest import SAMPLE_PHOTOS  # noqa: E402

CAPTIONS = list(SAMPLE_PHOTOS.values()) + ["a dog running on the beach", "snow on the mountains at sunset",
                                           "two children playing football in a park", "a bowl of soup"]


def clip_tokenizer(folder: Path) -> int:
    """A byte-level BPE tokenizer.json as CLIP's is built (lower-casing normalizer, start and end tokens),
    trained on a few captions; returns its vocabulary size."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

    bpe = Tokenizer(models.BPE())
    bpe.normalizer = normalizers.Sequence([normalizers.NFC(), normalizers.Lowercase()])
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<|startoftext|>", "<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    bpe.train_from_iterator(CAPTIONS * 3, trainer)
    bpe.post_processor = processors.TemplateProcessing(
        single="<|startoftext|> $A <|endoftext|>", special_tokens=[("<|startoftext|>", 0), ("<|endoftext|>", 1)])
    bpe.save(str(folder / "tokenizer.json"))
    return bpe.get_vocab_size()


def tiny_clip(folder: Path, mean: tuple[float, ...] | None = None, resample: int | None = None) -> Path:
    """A random transformers CLIPModel (ViT and text transformer, a few thousand weights) saved as a hub
    checkpoint is: config.json, weights, tokenizer.json, and optionally preprocessor_config.json."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

    folder.mkdir(parents=True)
    vocab = clip_tokenizer(folder)
    torch.manual_seed(0)
    config = CLIPConfig(
        text_config=dict(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, max_position_embeddings=32, bos_token_id=0, eos_token_id=1,
                         pad_token_id=1),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                           image_size=64, patch_size=16),
        projection_dim=24)
    CLIPModel(config).save_pretrained(str(folder))
    if mean is not None or resample is not None:
        CLIPImageProcessor(size={"shortest_edge": 64}, crop_size={"height": 64, "width": 64},
                           image_mean=list(mean or (0.48145466, 0.4578275, 0.40821073)),
                           resample=3 if resample is None else resample).save_pretrained(str(folder))
    return folder


@pytest.fixture(scope="module")
def imported(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("import")
    source = tiny_clip(root / "tiny-clip", mean=(0.5, 0.4, 0.3))
    assert main(["model", "import", str(source), "--out", str(root / "bundle"), "-q"]) == 0
    return source, root / "bundle"


def test_the_bundle_records_the_models_own_preprocessing_and_tokenizer(imported: tuple[Path, Path]) -> None:
    source, bundle = imported
    manifest = read_manifest(bundle)
    assert manifest.embed_dim == 24 and manifest.model_id.startswith("hf-tiny-clip-")
    assert manifest.format_version == 1  # nothing a version-1 reader would misread
    assert (manifest.image.size, manifest.image.resize, manifest.image.mean) == (64, "shortest_crop", (0.5, 0.4, 0.3))
    assert manifest.text.max_length == 32 and manifest.text.lowercase  # CLIP's tokenizer lower-cases
    assert (bundle / "tokenizer.json").read_bytes() == (source / "tokenizer.json").read_bytes()
    assert manifest.metrics["parity_image_min_cosine"] >= 0.9999
    assert manifest.metrics["parity_text_min_cosine"] >= 0.9999
    assert manifest.metrics["preprocess_min_cosine"] > 0.99  # clipalbum's pixels against CLIPImageProcessor's


def test_served_vectors_match_the_original_model_on_real_photos_and_captions(imported: tuple[Path, Path]) -> None:
    from transformers import CLIPModel

    source, bundle = imported
    original = CLIPModel.from_pretrained(str(source), local_files_only=True).eval()
    encoders = load_encoders(bundle)
    photos = sorted(Path(p) for p in _sample_photos())
    pixels = np.stack([load_model_input(p, encoders.manifest.image) for p in photos])
    tokens = encoders.text.tokenize(CAPTIONS)
    with torch.no_grad():
        images = original.get_image_features(pixel_values=torch.from_numpy(pixels))
        texts = original.get_text_features(input_ids=torch.from_numpy(tokens["input_ids"]),
                                           attention_mask=torch.from_numpy(tokens["attention_mask"]))
    for ours, theirs in ((encoders.image.encode(pixels), images), (encoders.text.encode(CAPTIONS), texts)):
        theirs = getattr(theirs, "pooler_output", theirs).numpy()
        theirs /= np.linalg.norm(theirs, axis=1, keepdims=True)
        assert float((ours * theirs).sum(axis=1).min()) >= 0.9999


def test_an_imported_bundle_indexes_and_searches(imported: tuple[Path, Path], tmp_path: Path,
                                                 sample_album: Path) -> None:
    _, bundle = imported
    with closing(Library.open(data_paths(tmp_path / "data"), model=bundle, roots=[str(sample_album)])) as library:
        assert library.index().added == len(SAMPLE_PHOTOS)
        hits = library.search_text("a cat", k=3).results
        assert len(hits) == 3 and library.status().embed_dim == 24
        assert library.similar(hits[0].id, k=1).results[0].id != hits[0].id


def test_text_int8_passes_its_gate_or_is_refused_with_the_figures(imported: tuple[Path, Path], tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture) -> None:
    source, _ = imported
    code = main(["model", "import", str(source), "--out", str(tmp_path / "int8"), "--quantize", "text-int8", "-q"])
    out, err = capsys.readouterr()
    if code == 0:
        manifest = read_manifest(tmp_path / "int8")
        assert manifest.text.quantization == "int8" and manifest.image.quantization == "fp32"
        assert manifest.metrics["parity_text_min_cosine"] >= 0.99 and manifest.model_id.endswith("-text-int8")
    else:
        assert code == 3 and "refused: text tower: ONNX (int8)" in err and "min cosine" in err
        assert not (tmp_path / "int8").exists()


def test_a_tower_under_its_gate_is_refused_and_nothing_is_written(imported: tuple[Path, Path], tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch,
                                                                  capsys: pytest.CaptureFixture) -> None:
    from clipalbum.export import model_import

    source, _ = imported
    monkeypatch.setattr(model_import, "PARITY_FLOORS", {"fp32": 1.5, "int8": 1.5})  # no graph can pass
    assert main(["model", "import", str(source), "--out", str(tmp_path / "never"), "-q"]) == 3
    err = capsys.readouterr().err
    assert "refused: image tower: ONNX (fp32) output differs from torch (min cosine 1.000000 < 1.5)" in err
    assert not (tmp_path / "never").exists() and not list(tmp_path.glob(".never*"))


@pytest.mark.parametrize(("problem", "message"), [
    ("nearest", "resampling 0 (clipalbum resizes bicubic or bilinear)"),
    ("not clip", "clipalbum model import takes CLIP and SigLIP"),
    ("no tokenizer", "no tokenizer found"),
    ("another model's tokenizer", "it is not this model's tokenizer"),
    ("missing", "not a transformers checkpoint folder or hub name"),
])
def test_checkpoints_a_bundle_cannot_express_are_refused_in_one_line(tmp_path: Path, problem: str, message: str,
                                                                     capsys: pytest.CaptureFixture) -> None:
    source = tmp_path / "source"
    if problem == "nearest":
        tiny_clip(source, resample=0)
    elif problem == "not clip":
        source.mkdir()
        (source / "config.json").write_text(json.dumps({"model_type": "bert"}))
    elif problem == "no tokenizer":
        tiny_clip(source)
        (source / "tokenizer.json").unlink()
    elif problem == "another model's tokenizer":
        from clipalbum.training.pretrained import bert_uncased_tokenizer_file

        tiny_clip(source)
        (source / "tokenizer.json").write_bytes(bert_uncased_tokenizer_file().read_bytes())
    assert main(["model", "import", str(source), "--out", str(tmp_path / "out"), "-q"]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "out").exists()


def _sample_photos() -> list[Path]:
    from clipalbum.export.default_bundle import parity_photos

    return parity_photos()


# -- SigLIP -----------------------------------------------------------------------------------------------

# Captions with what SigLIP's text rules act on: capitals, punctuation, runs of whitespace, a leading space.
SIGLIP_CAPTIONS = [*CAPTIONS, "Two DOGS, one ball!", "a man's bike at 5pm", " a  cat\ton   a\nmat ", "Kids on a beach.", "a " * 70]


def tiny_siglip(folder: Path) -> Path:
    """A random transformers SiglipModel saved as SigLIP checkpoints are: config.json, weights, a SentencePiece
    spiece.model (trained here on a few captions, with SigLIP's ids: pad 0, </s> 1, unk 2) and a
    SiglipImageProcessor (a squash to the input size, bilinear here)."""
    spm = pytest.importorskip("sentencepiece", reason="SigLIP's tokenizer needs sentencepiece")
    from transformers import SiglipImageProcessor, SiglipTokenizer

    folder.mkdir(parents=True)
    model = BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter([c.lower() for c in CAPTIONS] * 5), model_writer=model,
                                   vocab_size=120, hard_vocab_limit=False, model_type="unigram", pad_id=0,
                                   eos_id=1, unk_id=2, bos_id=-1, minloglevel=2)
    (folder / "spiece.model").write_bytes(model.getvalue())
    tokenizer = SiglipTokenizer(vocab_file=str(folder / "spiece.model"), model_max_length=64)
    tokenizer.save_pretrained(str(folder))
    SiglipImageProcessor(size={"height": 64, "width": 64}, resample=2).save_pretrained(str(folder))
    return save_tiny_siglip_model(folder, vocab_size=len(tokenizer), pad_id=1, seed=2)


def save_tiny_siglip_model(folder: Path, vocab_size: int, pad_id: int, seed: int) -> Path:
    """A random 32-d SiglipModel (64-px photos, 64 text positions) saved into `folder`."""
    from transformers import SiglipConfig, SiglipModel

    torch.manual_seed(seed)
    config = SiglipConfig(
        text_config=dict(vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, max_position_embeddings=64, pad_token_id=pad_id, eos_token_id=1),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                           image_size=64, patch_size=16))
    SiglipModel(config).save_pretrained(str(folder))
    return folder


def test_a_siglip_model_serves_its_own_vectors_with_its_own_text_rules(tmp_path: Path, sample_album: Path) -> None:
    from transformers import SiglipModel, SiglipTokenizer

    source = tiny_siglip(tmp_path / "tiny-siglip")
    assert main(["model", "import", str(source), "--out", str(tmp_path / "bundle"), "-q"]) == 0
    manifest = read_manifest(tmp_path / "bundle")
    assert manifest.embed_dim == 32 and manifest.model_id.startswith("hf-tiny-siglip-")
    assert (manifest.image.size, manifest.image.resize, manifest.image.resample) == (64, "squash", "bilinear")
    # Padded with </s> to exactly 64 tokens and no attention mask, as SigLIP was trained.
    assert (manifest.text.max_length, manifest.text.pad_to_max_length, manifest.text.pad_id) == (64, True, 1)
    assert manifest.text.input_names == ("input_ids",) and manifest.text.lowercase
    assert manifest.metrics["preprocess_min_cosine"] > 0.99
    assert manifest.format_version == 2  # a version-1 reader would ignore pad_id and resample: it must refuse

    original = SiglipModel.from_pretrained(str(source), local_files_only=True).eval()
    theirs_tokenizer = SiglipTokenizer.from_pretrained(str(source))
    encoders = load_encoders(tmp_path / "bundle")
    ours = encoders.text.tokenize(SIGLIP_CAPTIONS)["input_ids"]
    theirs = theirs_tokenizer(SIGLIP_CAPTIONS, padding="max_length", max_length=64, truncation=True)["input_ids"]
    assert ours.tolist() == theirs  # lower-cased, punctuation gone, </s> at the end and as the padding

    pixels = np.stack([load_model_input(p, manifest.image) for p in _sample_photos()])
    with torch.no_grad():
        images = original.get_image_features(pixel_values=torch.from_numpy(pixels)).pooler_output.numpy()
        texts = original.get_text_features(input_ids=torch.tensor(theirs)).pooler_output.numpy()
    for served, reference in ((encoders.image.encode(pixels), images), (encoders.text.encode(SIGLIP_CAPTIONS), texts)):
        reference /= np.linalg.norm(reference, axis=1, keepdims=True)
        assert float((served * reference).sum(axis=1).min()) >= 0.9999
    with closing(Library.open(data_paths(tmp_path / "data"), model=tmp_path / "bundle",
                              roots=[str(sample_album)])) as library:
        assert library.index().added == len(SAMPLE_PHOTOS)
        assert len(library.search_text("a cat", k=3).results) == 3


def tiny_siglip2(folder: Path) -> Path:
    """A random SiglipModel beside a Gemma tokenizer.json, as SigLIP 2 checkpoints ship (tokenizer_config
    naming GemmaTokenizer, which keeps capitals): a byte-level BPE over a few words, cased."""
    from transformers import GemmaTokenizer

    folder.mkdir(parents=True)
    vocab = {"<pad>": 0, "<eos>": 1, "<bos>": 2, "<unk>": 3, "<mask>": 4}
    merges = [("▁", "a"), ("d", "o"), ("do", "g"), ("▁", "dog"), ("D", "o"), ("Do", "g"), ("▁", "Dog"), ("▁", "k")]
    for token in [*"▁.,!'", *string.ascii_letters, *string.digits, *("".join(m) for m in merges)]:
        vocab.setdefault(token, len(vocab))
    GemmaTokenizer(vocab=vocab, merges=merges).save_pretrained(str(folder))
    return save_tiny_siglip_model(folder, vocab_size=len(vocab), pad_id=0, seed=3)


def test_a_siglip2_checkpoint_reads_lower_cased_text_as_it_was_trained(tmp_path: Path) -> None:
    """SigLIP 2's Gemma tokenizer keeps capitals, so "A Dog" and "a dog" would be different queries; the
    model was trained on lower-cased text, and the bundle must lower-case as it did."""
    from transformers import AutoTokenizer

    source = tiny_siglip2(tmp_path / "tiny-siglip2")
    cased = AutoTokenizer.from_pretrained(str(source))
    assert cased("A Dog")["input_ids"] != cased("a dog")["input_ids"]  # the shipped tokenizer is cased
    assert main(["model", "import", str(source), "--out", str(tmp_path / "bundle"), "-q"]) == 0
    manifest = read_manifest(tmp_path / "bundle")
    assert manifest.text.lowercase and manifest.text.pad_id == 0
    assert manifest.metrics["parity_text_min_cosine"] >= 0.9999
    tokenize = load_encoders(tmp_path / "bundle").text.tokenize
    served = tokenize(["A Dog", "a dog"])["input_ids"]
    assert served[0].tolist() == served[1].tolist()
    assert unpadded(served[0].tolist(), 0) == cased("a dog")["input_ids"]


def test_a_bundle_of_a_later_format_is_refused_with_the_fix(imported: tuple[Path, Path], tmp_path: Path) -> None:
    from clipalbum.server.errors import BundleError

    _, bundle = imported
    later = tmp_path / "later"
    later.mkdir()
    manifest = json.loads((bundle / "manifest.json").read_text())
    (later / "manifest.json").write_text(json.dumps({**manifest, "format_version": 3}))
    with pytest.raises(BundleError, match="format version 3, this clipalbum reads versions 1, 2; upgrade"):
        read_manifest(later)


def test_the_siglip_tokenizer_conversion_gives_the_original_ids(tmp_path: Path) -> None:
    """Beyond the import's parity captions: every text here, through the converted tokenizer.json, gives
    SiglipTokenizer's ids (without truncation, so long texts compare in full)."""
    from tokenizers import Tokenizer
    from transformers import SiglipTokenizer

    from clipalbum.export.import_siglip import spm_to_siglip_tokenizer

    source = tiny_siglip(tmp_path / "tiny-siglip")
    converted = spm_to_siglip_tokenizer(source / "spiece.model", lowercase=True, eos="</s>")
    converted.save(str(tmp_path / "tokenizer.json"))
    converted = Tokenizer.from_file(str(tmp_path / "tokenizer.json"))
    original = SiglipTokenizer.from_pretrained(str(source))
    texts = [*SIGLIP_CAPTIONS, "", "   ", "!!!", "ÜBER café naïve", "ｆｕｌｌ width", "x▁y", "emoji 😀 ok",
             "don't stop—ever", "tabs\tand\r\nnewlines"]
    for text in texts:
        assert converted.encode(text).ids == original(text)["input_ids"], text


# -- OpenCLIP ----------------------------------------------------------------------------------------------

TINY_OPEN_CLIP = {"embed_dim": 16,
                  "vision_cfg": {"image_size": 64, "layers": 1, "width": 32, "patch_size": 16, "head_width": 16},
                  "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}}


@pytest.fixture(scope="module")
def open_clip_arch(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A small ViT architecture registered with open_clip as its own configs are (no weights exist for it)."""
    open_clip = pytest.importorskip("open_clip", reason="OpenCLIP import needs open-clip-torch")
    folder = tmp_path_factory.mktemp("open-clip-configs")
    (folder / "clipalbum-tiny-vit.json").write_text(json.dumps(TINY_OPEN_CLIP))
    # A text tower without a causal mask (as MobileCLIP's): every position counts, so queries are padded to 77.
    bidirectional = {**TINY_OPEN_CLIP, "text_cfg": {**TINY_OPEN_CLIP["text_cfg"], "no_causal_mask": True}}
    (folder / "clipalbum-tiny-vit-bidirectional.json").write_text(json.dumps(bidirectional))
    open_clip.add_model_config(folder)
    return "clipalbum-tiny-vit"


@pytest.mark.parametrize("variant", ["", "-bidirectional"], ids=["causal text", "bidirectional text"])
def test_an_open_clip_model_from_a_weights_file_serves_its_own_vectors(open_clip_arch: str, variant: str,
                                                                       tmp_path: Path, sample_album: Path) -> None:
    import open_clip

    open_clip_arch += variant
    torch.manual_seed(1)
    original = open_clip.create_model(open_clip_arch, pretrained=None).eval()
    weights = tmp_path / "tiny.pt"
    torch.save(original.state_dict(), weights)
    assert main(["model", "import", f"open_clip:{open_clip_arch}", "--pretrained", str(weights),
                 "--out", str(tmp_path / "bundle"), "-q"]) == 0
    manifest = read_manifest(tmp_path / "bundle")
    assert manifest.model_id.startswith(f"openclip-{open_clip_arch}-tiny-") and manifest.embed_dim == 16
    # A causal tower runs only the query's own tokens; a bidirectional one all 77.
    assert manifest.text.input_names == ("input_ids",) and manifest.text.pad_to_max_length == bool(variant)
    assert (manifest.text.max_length, manifest.text.lowercase, manifest.image.size) == (77, True, 64)
    assert manifest.metrics["preprocess_min_cosine"] > 0.99
    assert manifest.metrics.get("original_text_min_cosine", 1.0) >= 0.9999  # checked where the text path differs
    assert ("original_text_min_cosine" in manifest.metrics) == (not variant)

    encoders = load_encoders(tmp_path / "bundle")
    tokenizer = open_clip.get_tokenizer(open_clip_arch)
    pixels = np.stack([load_model_input(p, manifest.image) for p in _sample_photos()])
    with torch.no_grad():
        texts = original.encode_text(tokenizer(CAPTIONS), normalize=True).numpy()
        images = original.encode_image(torch.from_numpy(pixels), normalize=True).numpy()
    assert float((encoders.text.encode(CAPTIONS) * texts).sum(axis=1).min()) >= 0.9999
    assert float((encoders.image.encode(pixels) * images).sum(axis=1).min()) >= 0.9999
    with closing(Library.open(data_paths(tmp_path / "data"), model=tmp_path / "bundle",
                              roots=[str(sample_album)])) as library:
        assert library.index().added == len(SAMPLE_PHOTOS)
        assert len(library.search_text("a cat", k=3).results) == 3


@pytest.mark.parametrize(("arch", "args", "message"), [
    (None, ["--pretrained", "none"], None),  # random weights: for measuring an architecture's speed
    (None, [], "say which weights with --pretrained"),
    ("no-such-arch", ["--pretrained", "none"], "open_clip has no architecture 'no-such-arch'"),
])
def test_open_clip_sources_need_an_architecture_and_weights(open_clip_arch: str, tmp_path: Path, arch: str | None,
                                                            args: list[str], message: str | None,
                                                            capsys: pytest.CaptureFixture) -> None:
    code = main(["model", "import", f"open_clip:{arch or open_clip_arch}", *args, "--out", str(tmp_path / "out"),
                 "-q"])
    err = capsys.readouterr().err
    if message is None:
        assert code == 0 and read_manifest(tmp_path / "out").model_id.startswith("openclip-clipalbum-tiny-vit-none-")
    else:
        assert code == 2 and message in err and not (tmp_path / "out").exists()


def test_a_dev_set_measures_a_quantized_import_against_fp32(imported: tuple[Path, Path], tmp_path: Path,
                                                            sample_album: Path, monkeypatch: pytest.MonkeyPatch,
                                                            capsys: pytest.CaptureFixture) -> None:
    from clipalbum.export import model_import

    source, _ = imported
    monkeypatch.setattr(model_import, "PARITY_FLOORS", {"fp32": 0.9999, "int8": 0.5})  # the recall gate's turn
    captions = tmp_path / "captions.csv"
    captions.write_text("image,caption\n" + "".join(
        f"{p.relative_to(sample_album)},{SAMPLE_PHOTOS[p.name]}\n" for p in sorted(sample_album.rglob("*.*"))))
    args = ["model", "import", str(source), "--quantize", "text-int8", "--dev-set", str(sample_album),
            str(captions), "-q"]
    assert main([*args, "--out", str(tmp_path / "checked")]) == 0
    metrics = read_manifest(tmp_path / "checked").metrics
    assert metrics["dev_photos"] == len(SAMPLE_PHOTOS)
    assert metrics["dev_recall_at_10_fp32"] - metrics["dev_recall_at_10_text_int8"] <= 0.01
    assert read_manifest(tmp_path / "checked").text.quantization == "int8"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".checked")]  # the fp32 copy is gone

    monkeypatch.setattr(model_import, "MAX_RECALL_LOSS", -1.0)  # no loss is small enough
    assert main([*args, "--out", str(tmp_path / "refused")]) == 3
    err = capsys.readouterr().err
    assert "text-int8 loses" in err and "points of text -> image Recall@10 on the dev set" in err
    assert not (tmp_path / "refused").exists()


def test_an_output_folder_that_is_not_a_bundle_is_never_replaced(imported: tuple[Path, Path], tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture) -> None:
    source, bundle = imported
    photos = tmp_path / "Pictures"
    photos.mkdir()
    (photos / "holiday.jpg").write_bytes(b"a photo")
    assert main(["model", "import", str(source), "--out", str(photos), "-q"]) == 2
    err = capsys.readouterr().err
    assert "is not empty and holds no manifest.json" in err and "Traceback" not in err
    assert [p.name for p in photos.iterdir()] == ["holiday.jpg"] and not list(tmp_path.glob(".Pictures*"))
    assert main(["model", "import", str(source), "--out", str(bundle), "-q"]) == 0  # an earlier bundle: replaced
