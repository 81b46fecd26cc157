"""The generic dual-encoder exporter: a tiny torch model round-trips into a verified ONNX bundle."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="export needs clipalbum[export]")
timm = pytest.importorskip("timm")
transformers = pytest.importorskip("transformers")

from torch import nn  # noqa: E402

from clipalbum.export import onnx_export  # noqa: E402
from clipalbum.export.onnx_export import ParityError, export_dual_encoder  # noqa: E402
from clipalbum.server.errors import BundleError  # noqa: E402
from clipalbum.server.bundle import ImageSpec, TextSpec, read_manifest, verify_bundle  # noqa: E402
from clipalbum.server.encoders import load_encoders  # noqa: E402
from clipalbum.server.preprocess import load_model_input  # noqa: E402
from clipalbum.server.textprep import TextTokenizer  # noqa: E402
from tests.conftest import skimage_data_dir  # noqa: E402
from tests.tinybundle import bert_tokenizer_file  # noqa: E402

IMAGE_SPEC = ImageSpec(size=64)
TEXT_SPEC = TextSpec(max_length=32)
TEXTS = ["a cat", "a cup of coffee on a table", "an astronaut in a white suit holding a helmet"]


class TinyDualEncoder(nn.Module):
    """A timm CNN and a one-layer BERT, as a trainer's dual encoder would wrap bigger ones."""

    embed_dim = 24

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.image = timm.create_model("resnet10t", pretrained=False, num_classes=self.embed_dim)
        config = transformers.BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                         intermediate_size=64, max_position_embeddings=64)
        self.text = transformers.BertModel(config)
        self.text_proj = nn.Linear(32, self.embed_dim)

    def encode_image(self, pixels: torch.Tensor) -> torch.Tensor:
        return nn.functional.normalize(self.image(pixels), dim=-1)

    def encode_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        states = self.text(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        mask = attention_mask.unsqueeze(-1).float()
        return nn.functional.normalize(self.text_proj((states * mask).sum(1) / mask.sum(1)), dim=-1)


@pytest.fixture(scope="module")
def photos() -> list[Path]:
    data = skimage_data_dir()
    return [data / "chelsea.png", data / "coffee.png", data / "astronaut.png"]


@pytest.fixture(scope="module")
def tiny_model() -> TinyDualEncoder:
    return TinyDualEncoder().eval()


def _export(model: nn.Module, out: Path, photos: list[Path], **kwargs):
    return export_dual_encoder(model, out, model_id="tiny-export-test", image_spec=IMAGE_SPEC, text_spec=TEXT_SPEC,
                               tokenizer_file=bert_tokenizer_file(), parity_images=photos, parity_texts=TEXTS,
                               **kwargs)


def test_fp32_export_round_trips_to_a_verified_bundle(tmp_path: Path, tiny_model: TinyDualEncoder,
                                                      photos: list[Path]) -> None:
    out = tmp_path / "bundle"
    manifest = _export(tiny_model, out, photos, description="tiny", metrics={"val_recall_at_10": 0.5})

    assert sorted(p.name for p in out.iterdir()) == ["image.onnx", "manifest.json", "text.onnx", "tokenizer.json"]
    assert read_manifest(out) == manifest
    verify_bundle(out, manifest)
    assert manifest.embed_dim == 24 and manifest.model_id == "tiny-export-test"
    assert manifest.image.quantization == "fp32" and manifest.text.quantization == "fp32"
    assert manifest.metrics["val_recall_at_10"] == 0.5
    assert manifest.metrics["parity_image_min_cosine"] > 0.999
    assert manifest.metrics["parity_text_min_cosine"] > 0.999
    assert not list(tmp_path.glob(".bundle.*")), "no build directory is left behind"

    # ORT outputs equal torch outputs, for batch sizes and text lengths other than the traced ones.
    encoders = load_encoders(out)
    pixels = np.stack([load_model_input(p, IMAGE_SPEC) for p in photos])
    tokens = TextTokenizer(out / "tokenizer.json", TEXT_SPEC)(TEXTS)
    with torch.inference_mode():
        torch_images = tiny_model.encode_image(torch.from_numpy(pixels)).numpy()
        torch_texts = tiny_model.encode_text(torch.from_numpy(tokens["input_ids"]),
                                             torch.from_numpy(tokens["attention_mask"])).numpy()
    onnx_images = np.concatenate([encoders.image.encode(pixels[:1]), encoders.image.encode(pixels[1:])])
    onnx_texts = encoders.text.encode(TEXTS)
    np.testing.assert_allclose(onnx_images, torch_images, atol=1e-4)
    np.testing.assert_allclose(onnx_texts, torch_texts, atol=1e-4)
    np.testing.assert_allclose(np.linalg.norm(onnx_texts, axis=1), 1.0, atol=1e-5)


def test_int8_export_is_smaller_and_records_parity(tmp_path: Path, tiny_model: TinyDualEncoder,
                                                   photos: list[Path]) -> None:
    fp32 = _export(tiny_model, tmp_path / "fp32", photos)
    int8 = _export(tiny_model, tmp_path / "int8", photos, quantize="int8")

    assert int8.image.quantization == "int8" and int8.text.quantization == "int8"
    assert (tmp_path / "int8" / "text.onnx").stat().st_size < (tmp_path / "fp32" / "text.onnx").stat().st_size / 2
    assert int8.metrics["parity_text_min_cosine"] >= onnx_export.MIN_PARITY_COSINE["int8"]
    assert fp32.sha256["tokenizer.json"] == int8.sha256["tokenizer.json"]
    verify_bundle(tmp_path / "int8", int8)


def test_export_replaces_an_existing_bundle_whole(tmp_path: Path, tiny_model: TinyDualEncoder,
                                                  photos: list[Path]) -> None:
    out = tmp_path / "bundle"
    _export(tiny_model, out, photos)
    (out / "stale.onnx").write_bytes(b"old")  # a file of the earlier build's that the new one lacks
    _export(tiny_model, out, photos)
    assert not (out / "stale.onnx").exists()
    verify_bundle(out, read_manifest(out))


def test_export_never_replaces_a_folder_that_is_not_a_bundle(tmp_path: Path, tiny_model: TinyDualEncoder,
                                                             photos: list[Path]) -> None:
    out = tmp_path / "Pictures"
    out.mkdir()
    (out / "holiday.jpg").write_bytes(b"a photo")
    with pytest.raises(BundleError, match="holds no manifest.json"):
        _export(tiny_model, out, photos)
    assert [p.name for p in out.iterdir()] == ["holiday.jpg"] and [p.name for p in tmp_path.iterdir()] == ["Pictures"]


def test_failed_parity_leaves_the_previous_bundle_untouched(tmp_path: Path, tiny_model: TinyDualEncoder,
                                                            photos: list[Path],
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "bundle"
    before = _export(tiny_model, out, photos)
    monkeypatch.setitem(onnx_export.MIN_PARITY_COSINE, "fp32", 1.5)  # unreachable: every export now fails parity

    with pytest.raises(ParityError, match="min cosine"):
        export_dual_encoder(tiny_model, out, model_id="would-replace", image_spec=IMAGE_SPEC, text_spec=TEXT_SPEC,
                            tokenizer_file=bert_tokenizer_file(), parity_images=photos)

    assert read_manifest(out) == before
    verify_bundle(out, before)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle"], "the half-built directory is removed"


def test_a_model_that_cannot_export_writes_nothing(tmp_path: Path, photos: list[Path]) -> None:
    class NoText(TinyDualEncoder):
        def encode_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
            raise RuntimeError("text tower broken")

    with pytest.raises(RuntimeError, match="text tower broken"):
        _export(NoText().eval(), tmp_path / "bundle", photos)
    assert list(tmp_path.iterdir()) == []


class TinyDistilBertDualEncoder(TinyDualEncoder):
    """The same with a one-layer DistilBERT, the text tower `clipalbum train` starts from."""

    def __init__(self) -> None:
        super().__init__()
        config = transformers.DistilBertConfig(vocab_size=30522, dim=32, n_layers=1, n_heads=2, hidden_dim=64,
                                               max_position_embeddings=64)
        self.text = transformers.DistilBertModel(config)


@pytest.mark.parametrize("family", [TinyDualEncoder, TinyDistilBertDualEncoder])
@pytest.mark.parametrize("quantize", ["none", "int8"])
def test_bert_attention_is_fused_into_one_kernel_per_layer(tmp_path: Path, photos: list[Path], family: type,
                                                           quantize: str) -> None:
    import onnx

    model = family().eval()
    before = model.text.config._attn_implementation
    manifest = _export(model, tmp_path / "bundle", photos, quantize=quantize)
    ops = [node.op_type for node in onnx.load(tmp_path / "bundle" / "text.onnx").graph.node]
    assert ops.count("QAttention" if quantize == "int8" else "Attention") == 1  # one layer, one kernel
    assert "Softmax" not in ops
    assert manifest.metrics["parity_text_min_cosine"] >= (0.999 if quantize == "none" else 0.95)
    assert model.text.config._attn_implementation == before  # the model is left as it was
    # Padding is masked inside the fused kernel: a text alone and in a batch with a longer one agree.
    encoders = load_encoders(tmp_path / "bundle")
    alone = encoders.text.encode(["a cat"])[0]
    batched = encoders.text.encode(["a cat", TEXTS[2]])[0]
    assert float(alone @ batched) > 0.999
