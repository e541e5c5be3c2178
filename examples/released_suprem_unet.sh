#!/usr/bin/env bash
# (d) The released SuPreM U-Net (supervised_suprem_unet_2100.pth) inside nnU-Net.
#
# Shows: `nnunet-suprem import-suprem` checking the release file (read with torch.load(weights_only=True)), planning
#   the target dataset for SuPreM's U-Net with SuPreM's preprocessing (RAS, 1.5 mm, 96^3, CT window) and writing its
#   backbone as an nnU-Net weights file (the Universal Model's head is dropped and reported); then stock
#   nnUNetv2_train with SuPreMFinetuneTrainer and -pretrained_weights, and nnUNetv2_predict.
#   The Swin UNETR and SegResNet releases work the same way with --arch swinunetr / segresnet (pip install
#   "nnunet-suprem[monai]").
# Needs: the release file from the SuPreM repository; a target dataset in $nnUNet_raw; a CUDA GPU.
# Usage: bash examples/released_suprem_unet.sh supervised_suprem_unet_2100.pth TARGET_DATASET_ID
#        bash examples/released_suprem_unet.sh --smoke   (no download here: a randomly initialised file in the
#            release's exact layout, {"net": {"module.backbone.<key>": ...}}; phantoms at 16 mm, 16^3 patches)
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
usage_unless 2 "$0 RELEASE_CHECKPOINT TARGET_DATASET_ID | --smoke"

TRAINER=SuPreMFinetuneTrainer
IMPORT_OPTIONS=()
if [ "$SMOKE" = 1 ]; then
  CHECKPOINT="$WORKDIR/supervised_suprem_unet_2100.pth"
  DATASET=530
  say "a stand-in for the release file (random weights, the release's keys and wrapper)"
  python - "$CHECKPOINT" <<'PY'
import sys
import torch
from nnunet_suprem.architectures.suprem_unet3d import SuPreMUNet3D

backbone = SuPreMUNet3D(1, 32).state_dict()  # 32 classes: the Universal Model's backbone output
torch.save({"net": {f"module.backbone.{k}": v for k, v in backbone.items()}, "epoch": 0}, sys.argv[1])
PY
  nnunet-suprem synth -d $DATASET --name SuPreMTarget --cases 2 --test-cases 1 --shape 32 32 32 --seed 5 \
    --annotate hospA=liver,spleen,kidney_left,kidney_right hospB=liver,spleen,kidney_left,kidney_right \
    hospC=liver,spleen,kidney_left,kidney_right
  TRAINER=SuPreMFinetuneTrainer_smoke
  IMPORT_OPTIONS=(--spacing 16 16 16 --patch-size 16 16 16)
else
  CHECKPOINT=${ARGS[0]}
  DATASET=${ARGS[1]}
fi

NAME=$(basename "$(ls -d "$nnUNet_raw/Dataset$(printf %03d "$DATASET")_"*)")
WEIGHTS="$nnUNet_preprocessed/$NAME/suprem_unet_backbone.pth"
say "check the release, plan $NAME for SuPreM's U-Net, preprocess, write the backbone as nnU-Net weights"
nnunet-suprem import-suprem "$CHECKPOINT" --arch unet -d "$DATASET" "${IMPORT_OPTIONS[@]}" -o "$WEIGHTS"

say "fine-tune with stock nnU-Net (the log lists what was loaded and what is new)"
nnUNetv2_train "$DATASET" 3d_fullres 0 -p nnUNetPlans_suprem_unet -tr $TRAINER -device "$DEVICE" \
  -pretrained_weights "$WEIGHTS"

if [ -d "$nnUNet_raw/$NAME/imagesTs" ]; then
  say "predict the test images (written back in their original orientation and spacing)"
  nnUNetv2_predict -i "$nnUNet_raw/$NAME/imagesTs" -o "$nnUNet_results/$NAME/test_predictions_suprem_unet" \
    -d "$DATASET" -c 3d_fullres -p nnUNetPlans_suprem_unet -tr $TRAINER -f 0 -device "$DEVICE" \
    $PREDICT_WORKERS
fi
