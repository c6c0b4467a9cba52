"""Emotion class names and their polarities, shared by the builders, the loss and the metrics.

Index order is part of the dataset format: eMotions classes are sorted alphabetically (SPEC §1), so a
label index means the same thing in a stored example, a config and a confusion matrix.
"""

from __future__ import annotations

POLARITIES = ("positive", "neutral", "negative")

EMOTIONS_CLASSES = ("Excitation", "Fear", "Neutral", "Relaxation", "Sadness", "Tension")
EMOTIONS_POLARITY = {
    "Excitation": "positive",
    "Fear": "negative",
    "Neutral": "neutral",
    "Relaxation": "positive",
    "Sadness": "negative",
    "Tension": "negative",
}

# Polarity maps of the public benchmarks (SPEC §1): VE-8 as in VAANet; Ekman-6 joy and surprise positive.
VE8_POLARITY = {
    "Anger": "negative", "Anticipation": "positive", "Disgust": "negative", "Fear": "negative",
    "Joy": "positive", "Sadness": "negative", "Surprise": "positive", "Trust": "positive",
}  # fmt: skip
EKMAN6_POLARITY = {
    "anger": "negative", "disgust": "negative", "fear": "negative", "joy": "positive",
    "sadness": "negative", "surprise": "positive",
}  # fmt: skip

# Class order of the public benchmarks: alphabetical, as their releases and peer code index them.
VE8_CLASSES = tuple(sorted(VE8_POLARITY))
EKMAN6_CLASSES = tuple(sorted(EKMAN6_POLARITY))

# Spellings seen in the raw release and in user copies, mapped to the canonical class name.
_ALIASES = {"sad": "Sadness"}


def canonical_class(name: str, classes: tuple[str, ...] = EMOTIONS_CLASSES) -> str | None:
    """Returns the canonical spelling of a class folder or label name, or None when unknown.

    Matching ignores case so that `excitation/` and `Excitation/` are the same class, accepts the
    release's "Sad" for "Sadness", and reads a dash-prefixed archive name by its last part. Unknown
    names return None rather than a guess: a video is never filed under a class it was not labelled with.
    """
    key = name.strip().lower()
    for c in classes:
        if c.lower() == key:
            return c
    alias = _ALIASES.get(key)
    if alias in classes:
        return alias
    # Release archives prefix the class, e.g. VideoEmotion-8's "VideoEmotionDataset1-Anger".
    prefix, sep, last = key.rpartition("-")
    return canonical_class(last, classes) if sep and prefix else None


def polarity_index(class_name: str, polarity_map: dict[str, str] = EMOTIONS_POLARITY) -> int:
    """Index into POLARITIES of a class's polarity."""
    return POLARITIES.index(polarity_map[class_name])


def class_polarities(classes: tuple[str, ...] | list[str], polarity_map: dict[str, str]) -> list[int]:
    """Polarity index (into POLARITIES) of each class, in class-index order; what the EP-CE loss takes."""
    return [polarity_index(c, polarity_map) for c in classes]
