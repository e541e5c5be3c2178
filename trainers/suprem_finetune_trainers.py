"""Fine-tuning trainers: ``nnUNetv2_train D 3d_fullres F -tr SuPreMFinetuneTrainer -pretrained_weights FILE``."""
from nnunet_suprem.training.finetune_trainer import (  # noqa: F401  (exposed to nnU-Net's trainer lookup)
    SuPreMFinetuneTrainer,
    SuPreMFinetuneTrainerEncoder,
    SuPreMFinetuneTrainerFullLR,
    SuPreMFinetuneTrainerNoHeadTransfer,
)
from nnunet_suprem.training.variants import (  # noqa: F401  (exposed to nnU-Net's trainer lookup)
    SuPreMFinetuneTrainer_12epochs_40iterations,
    SuPreMFinetuneTrainer_40epochs_25iterations,
    SuPreMFinetuneTrainer_50epochs,
    SuPreMFinetuneTrainer_100epochs,
    SuPreMFinetuneTrainer_250epochs,
    SuPreMFinetuneTrainer_smoke,
    SuPreMFinetuneTrainerEncoder_40epochs_25iterations,
    SuPreMFinetuneTrainerEncoder_100epochs,
    SuPreMFinetuneTrainerFullLR_40epochs_25iterations,
)
