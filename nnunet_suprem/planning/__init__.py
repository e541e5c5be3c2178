"""Planning for transfer: target plans with a pre-trained network's topology, the SuPreM preset, few-shot splits.

- :mod:`~nnunet_suprem.planning.planners`: the experiment planners (nnU-Net ``ExperimentPlanner`` subclasses);
- :mod:`~nnunet_suprem.planning.pretrained`, :mod:`~nnunet_suprem.planning.topology`,
  :mod:`~nnunet_suprem.planning.recipes`: what they use (pre-trained plans, patch sizes for a fixed topology, the
  preset numbers);
- :mod:`~nnunet_suprem.planning.pipeline`: fingerprint, plan, preprocess;
- the ``plan-transfer``, ``plan`` and ``split`` commands.
"""
