"""nnunet-suprem's experiment planners (this folder is installed as the package ``nnunet_suprem.plans_presets``).

nnU-Net looks up ``-pl`` planners only inside nnunetv2, so these run through ``nnunet-suprem plan-transfer`` and
``nnunet-suprem plan --preset suprem``, or from Python: ``SuPreMPlanner(dataset_id).plan_experiment()``.
"""
from nnunet_suprem.plans_presets.suprem import SuPreMPlanner
from nnunet_suprem.plans_presets.transfer import (
    TransferPlanner,
    TransferResEncLPlanner,
    TransferResEncMPlanner,
    TransferResEncUNetPlanner,
    TransferResEncXLPlanner,
    transfer_planner_class,
)

__all__ = ["SuPreMPlanner", "TransferPlanner", "TransferResEncUNetPlanner", "TransferResEncMPlanner",
           "TransferResEncLPlanner", "TransferResEncXLPlanner", "transfer_planner_class"]
