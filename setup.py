"""Packaging for gn-keras: the library, the model zoo and the training scripts."""

from setuptools import find_packages, setup

# The repo keeps models/ and train/ at the top, but they install inside the one
# gn_keras namespace: top-level "models" or "train" packages would clash with
# the many research repos that ship their own.
SUBPACKAGES = {"models": "gn_keras.models", "train": "gn_keras.train"}


def _packages():
    packages = find_packages(include=["gn_keras", "gn_keras.*"])
    for folder, name in SUBPACKAGES.items():
        packages += [name] + [f"{name}.{sub}" for sub in find_packages(where=folder)]
    return packages


setup(
    name="gn-keras",
    version="0.1.0",
    description="Group Normalization (Wu & He, 2018) for Keras 3 and TensorFlow",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10,<3.13",
    packages=_packages(),
    package_dir={name: folder for folder, name in SUBPACKAGES.items()},
    # The optional compiled kernels are built from source on first use.
    package_data={"gn_keras.kernels": ["*.cc", "*.h"]},
    install_requires=[
        "tensorflow~=2.20.0",
        "keras>=3.10,<4",
        "tf-models-official~=2.20.0",
        "tensorflow-datasets",
        "absl-py",
        "scikit-learn",
        "matplotlib",
    ],
    entry_points={
        "console_scripts": [
            "gn-train=gn_keras.train.classify:run",
            "gn-export=gn_keras.train.export:run",
            "gn-finetune=gn_keras.train.finetune:run",
            "gn-study=gn_keras.train.study:run",
            "gn-convert=gn_keras.train.convert:run",
            "gn-video=gn_keras.train.video.main:run",
            "gn-detect=gn_keras.train.detect:run",
        ],
    },
    extras_require={
        "test": [
            "pytest>=8",
            "pytest-timeout",
            # pytest.ini runs the suite on two workers (-n 2).
            "pytest-xdist>=3.5",
            # Lint and format check; pinned so that a new release cannot
            # reformat the tree under CI.
            "ruff==0.17.6",
            # Other Keras backends, so the layer is checked on them too.
            "jax[cpu]",
            # torch with the torchvision built for it (PyPI's torchvision does
            # not load beside the +cpu torch wheel): the Keras torch backend
            # and gn-convert's reference, with timm, whose ResNets share
            # torchvision's names, and safetensors for .safetensors files.
            "torch==2.14.1",
            "torchvision==0.29.1",
            "timm==1.0.29",
            "safetensors==0.8.0",
            # keras-hub's VAE (Stable Diffusion 3's) for the GN drop-in's
            # tests and bench; it brings tensorflow-text, which TF 2.20 has.
            "keras-hub==0.32.*",
            # Runtimes this project did not write, to check exported models:
            # tf2onnx >= 1.17 is the first without an old protobuf pin that
            # clashes with TensorFlow 2.20.
            "tf2onnx>=1.17",
            "onnx>=1.16",
            "onnxruntime>=1.18",
            "ai-edge-litert>=1.2",
        ],
    },
)
