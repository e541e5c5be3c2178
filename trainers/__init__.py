"""Trainer modules for nnU-Net's ``nnUNet_extTrainer`` lookup.

Put this directory on ``nnUNet_extTrainer`` (``export nnUNet_extTrainer=$(nnunet-suprem trainers-dir)``).
nnU-Net imports each module here by its top-level name and picks the class named by ``-tr``.
The modules only expose classes defined in the installed ``nnunet_suprem`` package. The
folder is installed as ``nnunet_suprem.ext_trainers``.
"""
