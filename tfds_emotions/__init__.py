"""TFDS builders for eMotions and the public benchmarks; importing this package registers `emotions`,
`video_emotion8` and `ekman6` with TFDS."""

from tfds_emotions.emotions import Emotions, EmotionsConfig
from tfds_emotions.public_benchmarks import Ekman6, VideoEmotion8

__all__ = ["Ekman6", "Emotions", "EmotionsConfig", "VideoEmotion8"]
