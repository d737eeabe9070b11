"""Install ibc_geo: ``pip install -e .`` (extras: ``scatter``, ``test``, ``bench``, ``export``, ``pml``)."""
from setuptools import find_packages, setup

setup(
    name="ibc_geo",
    version="0.1.0",
    description=(
        "Learning Intra-Batch Connections for Deep Metric Learning (ICML 2021) "
        "in PyTorch Geometric"
    ),
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["ibc_geo", "ibc_geo.*"]),
    include_package_data=True,
    install_requires=[
        # The machines of this project cap torch at 2.14.1 / torchvision 0.29.1 (pip config);
        # ranges, not pins, so users' environments resolve freely.
        "torch>=2.4",
        "torchvision>=0.19",
        "torch-geometric>=2.5",
        "faiss-cpu>=1.8",
        "scikit-learn>=1.3",
        "scipy>=1.10",
        "numpy>=1.24",
        "pillow>=10",
        "pyyaml>=6.0",
        "omegaconf>=2.3,<3",
        "tensorboard>=2.14",
        "tqdm>=4.64",
        "matplotlib>=3.7",  # TensorBoard's batch figures
    ],
    entry_points={
        "console_scripts": [
            "ibc-train = ibc_geo.cli.train:console",
            "ibc-eval = ibc_geo.cli.eval:console",
            "ibc-ablate = ibc_geo.cli.ablate:console",
            "ibc-check-dataset = ibc_geo.cli.check_dataset:console",
            "ibc-embed = ibc_geo.cli.embed:console",
            "ibc-search = ibc_geo.cli.search:console",
            "ibc-export = ibc_geo.cli.export:console",
        ],
    },
    extras_require={
        # torch-scatter compiles from source against the installed torch:
        #   pip install --no-build-isolation -e ".[scatter]"
        "scatter": ["torch-scatter>=2.1"],
        "test": ["pytest>=7.4", "pytorch-metric-learning>=2.5", "timm>=1.0"],
        # model.backbone timm/<name>: any timm model (ViTs, ConvNeXts, ...), its preprocessing and weights.
        "timm": ["timm>=1.0"],
        # loss.backbone pml/<LossName>, loss.miner pml/<MinerName>: pytorch-metric-learning's losses and miners.
        "pml": ["pytorch-metric-learning>=2.5"],
        # Only for benchmarks/eval.py's comparison column.
        "bench": ["pytorch-metric-learning>=2.5", "psutil>=5.9"],
        # tools/export.py --format onnx: onnx for the exporter, onnxruntime for its check (and its test).
        "export": ["onnx>=1.14", "onnxruntime>=1.16"],
    },
)
