"""What the trainer, predictor and compiler need to know about a dataset, by its TFDS name.

`card` reads the builder's code only (class names, polarities, media options), so prediction and
ahead-of-time compilation work on machines without the data; `info` opens a built dataset and adds its
splits, failing with the build command when the dataset is not there.
"""

from __future__ import annotations

import dataclasses

from tfds_emotions.classes import POLARITIES
from tfds_emotions.media import MediaOptions


@dataclasses.dataclass(frozen=True)
class Card:
    class_names: tuple[str, ...]
    class_polarity: tuple[int, ...]  # Index into POLARITIES per class, what EP-CE takes.
    media_options: MediaOptions

    @property
    def polarity_names(self) -> tuple[str, ...]:
        return tuple(POLARITIES[p] for p in self.class_polarity)


@dataclasses.dataclass(frozen=True)
class Info:
    card: Card
    splits: frozenset[str]


def check_num_classes(num_classes: int, dataset: str, card_: Card) -> None:
    """The model's head must match the dataset's classes (checked before anything compiles)."""
    from avcanet_jax.config_checks import ConfigError

    if num_classes != len(card_.class_names):
        raise ConfigError(f"config.model.num_classes ({num_classes}) != {len(card_.class_names)} classes in {dataset}")


def check_splits(dataset: str, info_: Info, needed) -> None:
    """Every split a run will read exists, checked before anything compiles (a small build can leave a
    split empty, and TFDS then writes none)."""
    from avcanet_jax.config_checks import ConfigError

    missing = [s for s in needed if s not in info_.splits]
    if missing:
        hint = " or set config.select_on_validation=False to test the last state" if missing == ["validation"] else ""
        raise ConfigError(
            f"config.data.dataset: {dataset} has no {' or '.join(missing)} split (it has {sorted(info_.splits)}; "
            f"its build_report.json says why under 'empty_splits'); rebuild it from more videos{hint}"
        )


def card(dataset: str) -> Card:
    """The card of a registered builder config ("emotions/full", "video_emotion8/split03", ...)."""
    import tensorflow_datasets as tfds

    import tfds_emotions  # noqa: F401 - registers the builders.
    from tfds_emotions.classes import class_polarities

    name, _, config = dataset.partition("/")
    cls = tfds.builder_cls(name)
    configs = {bc.name: bc for bc in cls.BUILDER_CONFIGS}
    bc = configs.get(config or cls.DEFAULT_CONFIG_NAME)
    if bc is None:
        from avcanet_jax.config_checks import ConfigError

        raise ConfigError(f"config.data.dataset: {dataset!r} has no config {config!r}; known: {sorted(configs)}")
    classes = tuple(cls.CLASSES)
    return Card(classes, tuple(class_polarities(classes, cls.POLARITY)), bc.media_options)


def info(dataset: str, data_dir: str | None) -> Info:
    """The card and splits of a built dataset; a clear error naming the build command if it is not built."""
    import tensorflow_datasets as tfds

    from avcanet_jax.config_checks import ConfigError

    c = card(dataset)  # First: names the config field when the dataset or its config is unknown.
    builder = tfds.builder(dataset, data_dir=data_dir)
    name, _, config = dataset.partition("/")
    if not builder.is_prepared():
        raise ConfigError(
            f"config.data.dataset: {dataset} is not built under {builder.data_dir}; build it with "
            f"`python -m tfds_emotions.build --dataset={name} --config={config} --data_dir=...` "
            "(and set config.data.data_dir to the same place)"
        )
    names = tuple(builder.info.features["label"].names)
    if names != c.class_names:
        raise ConfigError(
            f"config.data.dataset: {dataset} was built with classes {names}, the code has {c.class_names}"
        )
    return Info(c, frozenset(builder.info.splits))
