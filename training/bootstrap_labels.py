"""ImageNet-1k class texts for the bootstrap recipe: names and definitions from timm, coarse kinds by index range."""

from __future__ import annotations

from dataclasses import dataclass

# Hypernyms timm does not ship: ImageNet-1k orders its classes by WordNet subtree, so the animal
# classes fall in contiguous index ranges (checked against timm's names in tests). Captions say
# "a dog", not "a Border collie", so each fine class also learns its everyday kind.
KIND_RANGES: tuple[tuple[int, int, str], ...] = (
    (0, 6, "fish"),
    (7, 24, "bird"),
    (25, 32, "frog"),
    (33, 37, "turtle"),
    (38, 48, "lizard"),
    (49, 50, "crocodile"),
    (52, 68, "snake"),
    (70, 79, "bug"),
    (80, 100, "bird"),
    (118, 126, "crab"),
    (127, 146, "bird"),
    (147, 150, "sea animal"),
    (151, 268, "dog"),
    (269, 280, "wild dog"),
    (281, 285, "cat"),
    (286, 293, "big cat"),
    (294, 297, "bear"),
    (300, 326, "insect"),
    (330, 332, "rabbit"),
    (333, 338, "rodent"),
    (339, 339, "horse"),
    (341, 343, "pig"),
    (345, 347, "cow"),
    (348, 353, "goat"),
    (365, 384, "monkey"),
    (385, 386, "elephant"),
    (389, 397, "fish"),
)


@dataclass(frozen=True)
class ImageNetClass:
    index: int
    names: tuple[str, ...]  # WordNet lemmas, most common first ("golden retriever")
    definition: str  # WordNet gloss
    kind: str | None  # everyday hypernym for animals ("dog"), else None

    @property
    def name(self) -> str:
        return self.names[0]


def kind_of(index: int) -> str | None:
    for first, last, kind in KIND_RANGES:
        if first <= index <= last:
            return kind
    return None


def imagenet_classes() -> list[ImageNetClass]:
    """The 1000 classes in logit order, from the synset files that timm ships (no download)."""
    from timm.data import ImageNetInfo

    info = ImageNetInfo()
    classes = []
    for index in range(info.num_classes()):
        names = tuple(n.strip() for n in info.index_to_description(index).split(",") if n.strip())
        detailed = info.index_to_description(index, detailed=True)
        definition = detailed.split(":", 1)[1].strip() if ":" in detailed else ""
        classes.append(ImageNetClass(index=index, names=names, definition=definition, kind=kind_of(index)))
    return classes
