"""Planning for transfer: target plans with a pre-trained network's topology, the SuPreM preset, few-shot splits.

The planner classes themselves live in ``plans/`` (installed as ``nnunet_suprem.plans_presets``); this package holds
the logic they use and the ``plan-transfer``, ``plan`` and ``split`` commands.
"""
