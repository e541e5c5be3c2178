#!/usr/bin/env bash
# (e) Direct inference with a pre-trained model and SuPreM Table-3-style evaluation (no fine-tuning).
#
# Shows: stock nnUNetv2_predict_from_modelfolder on an external dataset, then `nnunet-suprem evaluate` on the 9
#   classes of SuPreM's Table 3 (spleen, kidneys, gall bladder, liver, stomach, aorta, postcava, pancreas): classes are
#   paired by name and synonym (TotalSegmentator's inferior_vena_cava = postcava, gallbladder = gall_bladder), ground
#   truth may be label maps or per-organ mask folders, and the output is per-class Dice and NSD (1 mm) with
#   bootstrap confidence intervals, summary.json, CSV tables and a box plot.
# Needs: a pre-trained nnU-Net model folder (example (a)); external CT images named <case>_0000.nii.gz; their
#   ground truth (e.g. TotalSegmentator v1 case folders); a CUDA GPU for real-size CT.
# Usage: bash examples/direct_inference_evaluation.sh MODEL_FOLDER IMAGES_FOLDER GROUND_TRUTH_FOLDER OUT_FOLDER
#        bash examples/direct_inference_evaluation.sh --smoke   (the model of (a) --smoke on phantoms of a new seed)
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
usage_unless 4 "$0 MODEL_FOLDER IMAGES_FOLDER GROUND_TRUTH_FOLDER OUT_FOLDER | --smoke"

TABLE3_CLASSES=(spleen kidney_right kidney_left gall_bladder liver stomach aorta postcava pancreas)
if [ "$SMOKE" = 1 ]; then
  MODEL="$WORKDIR/nnUNet_results/Dataset500_AbdomenAtlas1_1/SuPreMTrainer_smoke__nnUNetPlans_suprem__3d_fullres"
  [ -f "$MODEL/fold_all/checkpoint_final.pth" ] || WORKDIR=$WORKDIR bash "$(dirname "$0")/abdomenatlas_pretraining.sh" --smoke
  GROUND_TRUTH="$WORKDIR/external"
  IMAGES="$WORKDIR/external_images"
  OUT="$WORKDIR/direct_inference"
  say "an external dataset: fully annotated phantoms of another seed, one mask file per organ"
  nnunet-suprem synth -o "$GROUND_TRUTH" --cases 1 --shape 32 32 32 --seed 11
  mkdir -p "$IMAGES"
  for case in "$GROUND_TRUTH"/*/; do ln -sf "$case/ct.nii.gz" "$IMAGES/$(basename "$case")_0000.nii.gz"; done
else
  MODEL=${ARGS[0]} IMAGES=${ARGS[1]} GROUND_TRUTH=${ARGS[2]} OUT=${ARGS[3]}
fi

say "direct inference with the pre-trained model"
nnUNetv2_predict_from_modelfolder -i "$IMAGES" -o "$OUT/predictions" -m "$MODEL" -f all -device "$DEVICE" \
  $PREDICT_WORKERS

say "Table-3-style evaluation: Dice and NSD per class"
nnunet-suprem evaluate "$OUT/predictions" "$GROUND_TRUTH" --classes "${TABLE3_CLASSES[@]}" -o "$OUT/evaluation"
