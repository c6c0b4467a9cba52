"""Builders for the public video-emotion benchmarks the paper also reports on: VideoEmotion-8 and Ekman-6.

They are the `emotions` builder with other classes, polarity maps and configs: the same discovery
(raw class folders, the processed JPEG + mp3 layout, parquet), decoding, storage and bad-input report.
What differs is the split: these benchmarks have official train/test splits, so a config never draws a
random one; it reads the user's split files and fails with a clear message when they are missing.
Validation is always carved from train (stratified, seeded), so test is never used to pick a model.
"""

from __future__ import annotations

import tensorflow_datasets as tfds

from tfds_emotions.classes import EKMAN6_CLASSES, EKMAN6_POLARITY, VE8_CLASSES, VE8_POLARITY
from tfds_emotions.emotions import ROWS_RELEASE_NOTE, Emotions, EmotionsConfig

_SPLIT_FILES = """\
Split files, searched under the manual dir: UCF101-style `trainlistNN.txt` + `testlistNN.txt` ("Class/id"
per line), an ActivityNet-style JSON per split (VAANet/CTEN annotations; with several files the one whose
name ends in NN), or `train/` and `test/` folders holding the class folders (split 1 only).
"""


class VideoEmotion8(Emotions):
    """VideoEmotion-8 (Jiang et al., AAAI 2014): 1,101 user-generated videos, Plutchik's 8 emotions."""

    VERSION = tfds.core.Version("2.0.0")
    RELEASE_NOTES = {
        "1.0.0": "First release; one config per official train/test split.",
        "2.0.0": ROWS_RELEASE_NOTE,
    }
    CLASSES = VE8_CLASSES
    POLARITY = VE8_POLARITY
    DESCRIPTION = (
        "VideoEmotion-8: 1,101 YouTube/Flickr videos labelled with one of eight emotions (Anger, Anticipation, "
        "Disgust, Fear, Joy, Sadness, Surprise, Trust); ten official train/test splits."
    )
    HOMEPAGE = "https://doi.org/10.1609/aaai.v28i1.8724"
    MANUAL_DOWNLOAD_INSTRUCTIONS = (
        "Download VideoEmotion-8 and its split lists yourself and pass the folder as --manual_dir. Videos in "
        "class folders (`Anger/` or the release's `VideoEmotionDataset1-Anger/`), or the processed layout "
        "`img/<Class>/<id>/000001.jpg` + `mp3/<Class>/<id>.mp3`.\n" + _SPLIT_FILES
    )
    BUILDER_CONFIGS = [
        EmotionsConfig(
            name=f"split{n:02d}",
            split_number=n,
            require_split_files=True,
            description=f"Official split {n}; validation carved from its train list (1/8, stratified).",
        )  # fmt: skip
        for n in range(1, 11)
    ]
    DEFAULT_CONFIG_NAME = "split01"


class Ekman6(Emotions):
    """Ekman-6 (Xu et al., 2016): 1,637 videos, Ekman's six basic emotions, the standard 819/818 split."""

    VERSION = tfds.core.Version("2.0.0")
    RELEASE_NOTES = {
        "1.0.0": "First release; the standard train/test split.",
        "2.0.0": ROWS_RELEASE_NOTE,
    }
    CLASSES = EKMAN6_CLASSES
    POLARITY = EKMAN6_POLARITY
    DESCRIPTION = (
        "Ekman-6: 1,637 user-generated videos labelled with one of Ekman's six emotions (anger, disgust, fear, "
        "joy, sadness, surprise); the standard split has 819 train and 818 test videos."
    )
    HOMEPAGE = "https://doi.org/10.1109/TAFFC.2016.2622690"
    MANUAL_DOWNLOAD_INSTRUCTIONS = (
        "Download Ekman-6 yourself and pass the folder as --manual_dir: class folders of videos or the "
        "processed `img/` + `mp3/` layout, with the standard split.\n" + _SPLIT_FILES
    )
    BUILDER_CONFIGS = [
        EmotionsConfig(
            name="standard",
            split_number=1,
            require_split_files=True,
            description="The standard train/test split; validation carved from train (1/8, stratified).",
        )  # fmt: skip
    ]
    DEFAULT_CONFIG_NAME = "standard"
