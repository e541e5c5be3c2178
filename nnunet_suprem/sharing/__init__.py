"""Sharing trained models: ``nnunet-suprem export`` (an nnU-Net model zip with a model card) and the model-folder
check of ``nnunet-suprem doctor --model-folder``."""
