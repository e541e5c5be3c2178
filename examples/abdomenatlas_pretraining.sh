#!/usr/bin/env bash
# (a) AbdomenAtlas 1.1 -> SuPreM-style pre-training in nnU-Net.
#
# Shows: converting the AbdomenAtlas 1.1 release (one folder per case, one mask file per class; a case without a
#   mask file has that class unannotated) into an nnU-Net raw dataset with a partial-label manifest, planning it
#   with SuPreM's recipe (1.5 mm, 96^3 patch, CT window [-175, 250] HU) and pre-training with SuPreMTrainer on
#   fold "all" (every case trains: a pre-training has no validation split to spare).
# Needs: nnunet-suprem installed; nnUNet_raw/nnUNet_preprocessed/nnUNet_results set; the AbdomenAtlas 1.1 (Mini)
#   folder; a CUDA GPU (days for the full atlas; DEVICE=cpu to override).
# Usage: bash examples/abdomenatlas_pretraining.sh /data/AbdomenAtlas1.1Mini
#        bash examples/abdomenatlas_pretraining.sh --smoke   (synthetic atlas of 6 phantoms, a 2-epoch training)
# Result: $nnUNet_results/Dataset500_AbdomenAtlas1_1/SuPreMTrainer__nnUNetPlans_suprem__3d_fullres/fold_all
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
usage_unless 1 "$0 ABDOMENATLAS_FOLDER | --smoke"

DATASET=500
TRAINER=SuPreMTrainer
PLAN_OPTIONS=()
if [ "$SMOKE" = 1 ]; then
  ATLAS="$WORKDIR/AbdomenAtlas1.1Mini"
  say "a synthetic AbdomenAtlas: 3 hospitals annotate different organs (the missing masks are the partial labels)"
  [ -d "$ATLAS" ] || nnunet-suprem synth -o "$ATLAS" --cases 2 --shape 32 32 32 --annotate \
    hospA=liver,aorta,postcava,kidney_left,kidney_right,spleen hospB=liver,stomach,pancreas,gall_bladder \
    hospC=liver,spleen,kidney_left,kidney_right,lung_left,lung_right
  TRAINER=SuPreMTrainer_smoke
  PLAN_OPTIONS=(--spacing 10 10 10 --patch-size 32 32 32)  # the recipe at phantom scale
else
  ATLAS=${ARGS[0]}
fi

say "convert (resumable; bad cases are skipped and listed in conversion_report.json)"
nnunet-suprem convert-abdomenatlas "$ATLAS" -d $DATASET --name AbdomenAtlas1_1 --version 1.1

say "plan and preprocess with the SuPreM recipe (plans nnUNetPlans_suprem)"
nnunet-suprem plan --preset suprem -d $DATASET "${PLAN_OPTIONS[@]}"

say "pre-train: partial-label loss, laterality-safe mirroring"
nnUNetv2_train $DATASET 3d_fullres all -p nnUNetPlans_suprem -tr $TRAINER -device "$DEVICE"

MODEL="$nnUNet_results/Dataset${DATASET}_AbdomenAtlas1_1/${TRAINER}__nnUNetPlans_suprem__3d_fullres"
say "pre-trained model: $MODEL (checkpoint fold_all/checkpoint_final.pth)"
