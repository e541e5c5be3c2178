"""Defaults of the weight transfer, free of torch imports (so that the command line starts fast)."""
from __future__ import annotations

DEFAULT_MIN_ENCODER_FRACTION = 0.9
"""Share of the encoder that must load for a transfer to go ahead."""
NOVEL_ROWS = ("background", "init")
"""How the output rows of classes the checkpoint does not know start (see :mod:`nnunet_suprem.transfer.head`)."""
DEFAULT_NOVEL_ROWS = "background"
