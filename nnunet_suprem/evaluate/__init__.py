"""Direct inference evaluation: per-class Dice and NSD of predictions against external ground truth.

``metrics`` (Dice, NSD), ``stats`` (bootstrap CI, paired test), ``labels`` (label sets and class
pairing by taxonomy name), ``folders`` (label maps and per-organ mask folders), ``evaluation``
(per-case scoring), ``report`` (outputs) and ``command`` (``nnunet-suprem evaluate``).
"""
from nnunet_suprem.evaluate.command import add_subparser, evaluate

__all__ = ["add_subparser", "evaluate"]
