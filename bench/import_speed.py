"""What an imported CLIP costs on this machine: bundle size, indexing photos/s and text-query latency for real
architectures (random weights: the same graphs, so the same speed), side by side with the default bundle in
the same run; prints JSON.

The transformers ones are built with CLIPConfig or SiglipConfig at their published sizes and saved as a
checkpoint folder (CLIP's stand-in tokenizer is the packaged BERT-uncased one: English queries come out at
about CLIP's token counts; SigLIP's is a SentencePiece model trained here on the queries, and every SigLIP
query runs all 64 positions whatever its length); the OpenCLIP ones are imported by name with random weights (`--pretrained none`, OpenAI's BPE).
All go through `clipalbum model import`, parity gates included.

    python bench/import_speed.py [--arch vit-b-32 rn50 ...] [--quantize none text-int8] [--photos 32]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from contextlib import closing
from pathlib import Path

from index_throughput import skimage_photos
from serving import queries, resolve_model

from clipalbum.server.encoders import load_encoders
from clipalbum.server.library import Library
from clipalbum.server.settings import data_paths

# transformers CLIPConfig sizes of the published checkpoints (openai/clip-vit-base-patch32 and -patch16),
# SiglipConfig's defaults (google/siglip-base-patch16-224's sizes), and open_clip architectures by name
# (imported with --pretrained none).
ARCHITECTURES: dict[str, tuple[str, object]] = {
    "vit-b-32": ("hf", {"patch_size": 32}),
    "vit-b-16": ("hf", {"patch_size": 16}),
    "siglip-b-16": ("siglip", {}),
    "rn50": ("open_clip", "RN50"),
    "vit-b-32-256": ("open_clip", "ViT-B-32-256"),
    "mobileclip2-s0": ("open_clip", "MobileCLIP2-S0"),
}


def random_source(arch: str, folder: Path) -> tuple[str, str | None]:
    """What `clipalbum model import` takes for `arch`: (SOURCE, --pretrained)."""
    kind, spec = ARCHITECTURES[arch]
    if kind == "open_clip":
        return f"open_clip:{spec}", "none"
    if kind == "siglip":
        return str(random_siglip_checkpoint(folder)), None
    return str(random_checkpoint(spec, folder)), None


def random_checkpoint(vision: dict, folder: Path) -> Path:
    import torch
    from transformers import CLIPConfig, CLIPModel

    from clipalbum.training.pretrained import bert_uncased_tokenizer_file

    torch.manual_seed(0)
    config = CLIPConfig(text_config={"bos_token_id": 101, "eos_token_id": 102, "pad_token_id": 0},
                        vision_config=vision)
    CLIPModel(config).save_pretrained(str(folder))
    shutil.copyfile(bert_uncased_tokenizer_file(), folder / "tokenizer.json")
    return folder


def random_siglip_checkpoint(folder: Path) -> Path:
    """SiglipConfig's defaults with random weights, and a SentencePiece vocabulary trained on the bench's
    queries with SigLIP's ids (pad 0, </s> 1, unk 2), saved as SiglipTokenizer saves it."""
    import io

    import sentencepiece
    import torch
    from transformers import SiglipConfig, SiglipModel, SiglipTokenizer

    folder.mkdir(parents=True)
    model = io.BytesIO()
    texts, _ = queries(2000)
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter([t.lower() for t in texts]), model_writer=model, vocab_size=4000,
        hard_vocab_limit=False, model_type="unigram", pad_id=0, eos_id=1, unk_id=2, bos_id=-1, minloglevel=2)
    (folder / "spiece.model").write_bytes(model.getvalue())
    SiglipTokenizer(vocab_file=str(folder / "spiece.model")).save_pretrained(str(folder))
    torch.manual_seed(0)
    SiglipModel(SiglipConfig()).save_pretrained(str(folder))
    return folder


def album(folder: Path, photos: int) -> Path:
    """`photos` copies of index_throughput's real photos, round-robin."""
    sources = skimage_photos()
    folder.mkdir(parents=True)
    for i in range(photos):
        source = sources[i % len(sources)]
        shutil.copyfile(source, folder / f"{i:03d}-{source.name}")
    return folder


def measure(bundle: Path, photos: Path, work: Path, texts: list[str]) -> dict:
    size = sum(p.stat().st_size for p in bundle.iterdir() if p.is_file())
    with closing(Library.open(data_paths(work), model=bundle, roots=[str(photos)])) as library:
        summary = library.index()
    encoders = load_encoders(bundle)
    for text in texts[:5]:
        encoders.text.encode([text])  # warm-up
    times = []
    for text in texts:
        started = time.perf_counter()
        encoders.text.encode([text])
        times.append((time.perf_counter() - started) * 1000)
    times.sort()
    return {"model_id": encoders.manifest.model_id, "embed_dim": encoders.manifest.embed_dim,
            "bundle_mb": round(size / 1e6, 1), "index_photos_per_s": round(summary.embedded / summary.seconds, 2),
            "text_query_ms_p50": round(statistics.median(times), 2),
            "text_query_ms_p95": round(times[int(0.95 * (len(times) - 1))], 2),
            "parity": {k: round(v, 6) for k, v in encoders.manifest.metrics.items() if "parity" in k}}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", nargs="+", default=list(ARCHITECTURES), choices=list(ARCHITECTURES),
                        help="architectures to import (default: all)")
    parser.add_argument("--no-baseline", action="store_true", help="skip measuring the default bundle")
    parser.add_argument("--quantize", nargs="+", default=["none", "text-int8"], choices=["none", "text-int8", "int8"],
                        help="import variants to measure (default: none text-int8)")
    parser.add_argument("--photos", type=int, default=32, help="photos indexed per model (default 32)")
    parser.add_argument("--queries", type=int, default=60, help="text queries timed per model (default 60)")
    parser.add_argument("--model", help="the baseline bundle (default: the default model)")
    args = parser.parse_args()
    from clipalbum.export.model_import import import_model

    texts, source = queries(args.queries)
    report: dict = {"machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count()},
                    "photos": args.photos, "queries": f"{len(texts)} {source}", "models": {}}
    with tempfile.TemporaryDirectory(prefix="bench-import-") as tmp:
        root = Path(tmp)
        photos = album(root / "album", args.photos)
        if not args.no_baseline:
            report["models"]["default"] = measure(resolve_model(args.model), photos, root / "data-default", texts)
        for arch in args.arch:
            source, pretrained = random_source(arch, root / arch)
            for quantize in args.quantize:
                bundle = root / f"{arch}-{quantize}"
                started = time.perf_counter()
                import_model(source, bundle, quantize=quantize, progress=False, pretrained=pretrained)
                imported_s = time.perf_counter() - started
                result = {**measure(bundle, photos, root / f"data-{arch}-{quantize}", texts),
                          "import_seconds": round(imported_s, 1)}
                report["models"][f"{arch} {quantize}"] = result
                shutil.rmtree(bundle)
                print(json.dumps({arch: quantize, **result}), flush=True, file=sys.stderr)  # progress
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
