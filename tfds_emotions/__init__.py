"""TFDS builders for eMotions; importing this package registers `emotions` with TFDS."""

from tfds_emotions.emotions import Emotions, EmotionsConfig

__all__ = ["Emotions", "EmotionsConfig"]
