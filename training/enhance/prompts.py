"""What a prompt can ask of the global correction, and the phrasings the head learns it from.

The head sees a prompt only as the search bundle's text embedding, so any wording near these in that space
moves the photo the same way; `clipalbum enhance eval --prompts` measures how far each one moves it.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Intent:
    name: str
    delta: tuple[float, float, float, float]  # added to the correction (PARAM_NAMES order)
    phrasings: tuple[str, ...]


INTENTS: tuple[Intent, ...] = (
    Intent("warmer", (0.0, 0.15, -0.15, 0.0), (
        "warm evening light", "warmer", "make it warmer", "golden hour", "warm tones", "warm sunset light",
        "cozy warm colours", "a warm orange glow")),
    Intent("cooler", (0.0, -0.15, 0.15, 0.0), (
        "cooler", "cold blue light", "cool tones", "a crisp winter morning", "make it cooler", "icy blue")),
    Intent("brighter", (0.6, 0.0, 0.0, 0.0), (
        "brighter", "bright and airy", "more light", "lighten it up", "bright sunny day", "a well lit room")),
    Intent("darker", (-0.6, 0.0, 0.0, 0.0), (
        "darker", "moody and dark", "dim light", "a dark night mood", "low key", "make it darker")),
    Intent("more contrast", (0.0, 0.0, 0.0, 0.3), (
        "more contrast", "punchy", "dramatic contrast", "crisp and vivid", "high contrast")),
    Intent("less contrast", (0.0, 0.0, 0.0, -0.25), (
        "less contrast", "soft and gentle", "a flat matte look", "faded film", "low contrast")),
)


def all_phrasings() -> list[str]:
    return [p for intent in INTENTS for p in intent.phrasings]
