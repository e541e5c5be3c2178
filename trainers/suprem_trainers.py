"""SuPreM pre-training trainers: ``nnUNetv2_train D 3d_fullres F -tr SuPreMTrainer``."""
from nnunet_suprem.training.suprem_trainer import (  # noqa: F401  (exposed to nnU-Net's trainer lookup)
    SuPreMTrainer,
    SuPreMTrainerExclusion,
    SuPreMTrainerRecipe,
)
from nnunet_suprem.training.variants import (  # noqa: F401  (exposed to nnU-Net's trainer lookup)
    SuPreMTrainer_5epochs,
    SuPreMTrainer_12epochs_40iterations,
    SuPreMTrainer_30epochs_50iterations,
    SuPreMTrainer_40epochs_25iterations,
    SuPreMTrainer_50epochs,
    SuPreMTrainer_100epochs_25iterations,
    SuPreMTrainer_250epochs,
    SuPreMTrainer_1000epochs,
    SuPreMTrainer_smoke,
)
