"""Packaging for gn-keras: the library, the model zoo and the training scripts."""

from setuptools import find_packages, setup

setup(
    name="gn-keras",
    version="0.1.0",
    description="Group Normalization (Wu & He, 2018) for Keras 3 and TensorFlow",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10,<3.13",
    packages=find_packages(include=["gn_keras*", "models*", "train*"]),
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
            "gn-train=train.classify:run",
            "gn-export=train.export:run",
            "gn-finetune=train.finetune:run",
            "gn-study=train.study:run",
        ],
    },
    extras_require={
        "test": [
            "pytest>=8",
            "pytest-timeout",
            # Other Keras backends, so the layer is checked on them too.
            "jax[cpu]",
            "torch==2.13.0",
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
