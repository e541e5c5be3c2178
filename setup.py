"""nnunet-suprem: SuPreM-style supervised pre-training and transfer for nnU-Net v2."""
from setuptools import find_packages, setup

setup(
    name="nnunet-suprem",
    version="0.1.0",
    description="SuPreM-style partial-label pre-training and transfer learning as an nnU-Net v2 plugin",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    # `trainers/` is the directory users put on nnUNet_extTrainer. It is installed as the
    # package `nnunet_suprem.ext_trainers` so that a non-editable install ships it too
    # (one source; `nnunet-suprem trainers-dir` prints where it is).
    packages=[*find_packages(include=["nnunet_suprem", "nnunet_suprem.*"]), "nnunet_suprem.ext_trainers"],
    package_dir={"nnunet_suprem.ext_trainers": "trainers"},
    install_requires=[
        "nnunetv2>=2.8",
        "torch",
        "SimpleITK",
        "nibabel",
        "batchgenerators",
        "dynamic-network-architectures",
        "numpy",
        "scipy",
        "tqdm",
    ],
    extras_require={
        "test": ["pytest>=7", "pytest-xdist>=3", "filelock", "markdown-it-py"],
        "monai": ["monai>=1.3"],  # SuPreM's SegResNet and Swin UNETR (import-suprem --arch segresnet|swinunetr)
    },
    entry_points={
        "console_scripts": ["nnunet-suprem=nnunet_suprem.cli:main"],
    },
)
