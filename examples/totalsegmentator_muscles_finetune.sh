#!/usr/bin/env bash
# (c) TotalSegmentator muscles: fine-tune a SuPreM-pre-trained nnU-Net model on 64 cases (SuPreM's few-shot setting).
#
# Shows: converting SuPreM's "muscles" class group (21 classes) of TotalSegmentator (meta.csv's test cases go to
#   imagesTs) with a reproducible 64-case training subset, planning it onto the pre-trained network (plan-transfer:
#   same topology and CT intensity mapping, the target's spacing and patch), SuPreMFinetuneTrainer on fold "all" (the
#   64 cases) from the pre-trained checkpoint through nnU-Net's own -pretrained_weights, then prediction and
#   per-class Dice/NSD on the test cases.
# Needs: a TotalSegmentator v1 or v2 release folder; a pre-trained nnU-Net model folder (example (a), or any
#   3d_fullres nnU-Net model); nnUNet_* variables; a CUDA GPU.
# Usage: bash examples/totalsegmentator_muscles_finetune.sh TOTALSEGMENTATOR_FOLDER PRETRAINED_MODEL_FOLDER [PRETRAINED_FOLD]
#        bash examples/totalsegmentator_muscles_finetune.sh --smoke   (phantoms in the TotalSegmentator layout;
#            phantoms have no muscles, so the organs group stands in for them; the model of (a) --smoke)
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
if [ "$SMOKE" = 0 ] && [ "${#ARGS[@]}" -lt 2 ]; then
  echo "usage: $0 TOTALSEGMENTATOR_FOLDER PRETRAINED_MODEL_FOLDER [PRETRAINED_FOLD] | --smoke" >&2; exit 2
fi

DATASET=520
GROUP=(--group muscles)
TRAIN_CASES=64
TRAINER=SuPreMFinetuneTrainer
if [ "$SMOKE" = 1 ]; then
  TOTALSEG="$WORKDIR/TotalSegmentatorLike"
  PRETRAINED="$WORKDIR/nnUNet_results/Dataset500_AbdomenAtlas1_1/SuPreMTrainer_smoke__nnUNetPlans_suprem__3d_fullres"
  PRETRAINED_FOLD=all
  [ -f "$PRETRAINED/fold_all/checkpoint_final.pth" ] || WORKDIR=$WORKDIR bash "$(dirname "$0")/abdomenatlas_pretraining.sh" --smoke
  say "phantoms in the TotalSegmentator layout (sXXXX/ct.nii.gz, sXXXX/segmentations/*.nii.gz, meta.csv)"
  nnunet-suprem synth -o "$TOTALSEG" --cases 3 --shape 32 32 32 --seed 7
  python - "$TOTALSEG" <<'PY'
import sys
from pathlib import Path

import nibabel as nib
import numpy as np

# a release stores a mask for every class of its version, empty ones included; "heart" marks v2
for case in sorted(Path(sys.argv[1]).iterdir()):
    ct = nib.load(case / "ct.nii.gz")
    nib.save(nib.Nifti1Image(np.zeros(ct.shape, np.uint8), ct.affine), case / "segmentations" / "heart.nii.gz")
PY
  { echo "image_id;split"; for case in "$TOTALSEG"/*/; do
      case=$(basename "$case"); split=train; [[ $case == *_0002 ]] && split=test; echo "$case;$split"; done
  } > "$TOTALSEG/meta.csv"
  GROUP=(--group organs --classes spleen kidney_right kidney_left liver stomach)
  TRAIN_CASES=4
  TRAINER=SuPreMFinetuneTrainer_smoke
else
  TOTALSEG=${ARGS[0]}
  PRETRAINED=${ARGS[1]}
  PRETRAINED_FOLD=${ARGS[2]:-all}
fi
NAME=TotalSegmentator_${GROUP[1]}

say "convert the class group, $TRAIN_CASES training cases (test cases of meta.csv -> imagesTs/labelsTs)"
nnunet-suprem convert-totalsegmentator "$TOTALSEG" -d $DATASET "${GROUP[@]}" --name "$NAME" \
  --train-cases $TRAIN_CASES --seed 0

say "plan with the pre-trained network and intensity mapping, then preprocess"
nnunet-suprem plan-transfer -d $DATASET --pretrained "$PRETRAINED"

say "fine-tune from the pre-trained checkpoint (the log lists what was loaded, skipped and re-initialised)"
nnUNetv2_train $DATASET 3d_fullres all -p nnUNetPlans_transfer -tr $TRAINER -device "$DEVICE" \
  -pretrained_weights "$PRETRAINED/fold_$PRETRAINED_FOLD/checkpoint_final.pth"

say "predict the test cases and evaluate"
PREDICTIONS="$nnUNet_results/Dataset${DATASET}_$NAME/test_predictions"
nnUNetv2_predict -i "$nnUNet_raw/Dataset${DATASET}_$NAME/imagesTs" -o "$PREDICTIONS" -d $DATASET -c 3d_fullres \
  -p nnUNetPlans_transfer -tr $TRAINER -f all -device "$DEVICE" $PREDICT_WORKERS
nnunet-suprem evaluate "$PREDICTIONS" "$nnUNet_raw/Dataset${DATASET}_$NAME/labelsTs" -o "$PREDICTIONS/evaluation"
