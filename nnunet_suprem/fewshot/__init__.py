"""Few-shot studies: ``study`` (``nnunet-suprem fewshot``: the commands, the study folder) and ``report`` (the
long table, the summary with confidence intervals and the figure)."""
from nnunet_suprem.fewshot.study import FewShot, Study, add_subparser

__all__ = ["FewShot", "Study", "add_subparser"]
