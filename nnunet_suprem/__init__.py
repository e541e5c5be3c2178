"""nnunet-suprem: SuPreM-style supervised pre-training and transfer learning for nnU-Net v2."""
from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("nnunet-suprem")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+unknown"
