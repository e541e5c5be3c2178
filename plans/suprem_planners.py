"""nnunet-suprem's experiment planners (defined in ``nnunet_suprem.planning.planners``).

nnU-Net looks up ``-pl`` planners only inside nnunetv2, so these run through ``nnunet-suprem plan-transfer`` and
``nnunet-suprem plan --preset suprem|cpu``, or from Python: ``SuPreMPlanner(dataset_id).plan_experiment()``.
"""
from nnunet_suprem.planning.planners import (  # noqa: F401  (the presets, in one place to find them)
    CPUPlanner,
    SuPreMPlanner,
    SuPreMReleasePlanner,
    TransferPlanner,
    TransferResEncLPlanner,
    TransferResEncMPlanner,
    TransferResEncUNetPlanner,
    TransferResEncXLPlanner,
    transfer_planner_class,
)
