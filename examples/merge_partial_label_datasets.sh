#!/usr/bin/env bash
# (b) Merging BTCV + AMOS + MSD-style datasets into one partial-label pre-training dataset.
#
# Shows: `nnunet-suprem merge` relabelling datasets that name and number their classes differently ("right kidney",
#   "Right Kidney", AMOS's "arota", "inferior vena cava" -> AbdomenAtlas 1.1 names) into one taxonomy, recording per
#   case which classes its source annotates (the dataset.json manifest), then stock nnU-Net planning and SuPreMTrainer,
#   whose loss ignores the classes a case's source did not annotate.
# Needs: the source datasets already in $nnUNet_raw (BTCV converted by you, AMOS with nnU-Net's
#   Dataset218_AMOS2022 conversion script, MSD tasks with nnUNetv2_convert_MSD_dataset); labels that no synonym
#   resolves (e.g. MSD's "cancer") need a --map file, see `nnunet-suprem merge --help`; a CUDA GPU.
# Usage: bash examples/merge_partial_label_datasets.sh SRC_ID SRC_ID [SRC_ID ...]   (e.g. 60 218 9)
#        bash examples/merge_partial_label_datasets.sh --smoke   (phantom stand-ins named as BTCV, AMOS and MSD name
#                                                               their classes; a 2-epoch training)
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
if [ "$SMOKE" = 0 ] && [ "${#ARGS[@]}" -lt 2 ]; then echo "usage: $0 SRC_ID SRC_ID [SRC_ID ...] | --smoke" >&2; exit 2; fi

DATASET=510
TRAINER=SuPreMTrainer
if [ "$SMOKE" = 1 ]; then
  TRAINER=SuPreMTrainer_smoke
  say "stand-ins for BTCV (hospA), AMOS (hospB) and MSD Task09_Spleen (hospC), each annotating its own classes"
  nnunet-suprem synth -d 511 --name BTCVLike --hospitals hospA --cases 2 --shape 32 32 32 --seed 1 \
    --annotate hospA=spleen,kidney_right,kidney_left,gall_bladder,liver,stomach,aorta,postcava,pancreas
  nnunet-suprem synth -d 512 --name AMOSLike --hospitals hospB --cases 2 --shape 32 32 32 --seed 2 \
    --annotate hospB=spleen,kidney_right,kidney_left,gall_bladder,liver,stomach,aorta,postcava,pancreas,bladder
  nnunet-suprem synth -d 513 --name MSDSpleenLike --hospitals hospC --cases 2 --shape 32 32 32 --seed 3 \
    --annotate hospC=spleen
  say "name the stand-ins' classes the way the real datasets do"
  python - "$nnUNet_raw" <<'PY'
import json, sys
from pathlib import Path

names = {"Dataset511_BTCVLike": {"kidney_right": "right kidney", "kidney_left": "left kidney",
                                 "gall_bladder": "gallbladder", "postcava": "inferior vena cava"},
         "Dataset512_AMOSLike": {"kidney_right": "right kidney", "kidney_left": "left kidney",
                                 "gall_bladder": "gall bladder", "aorta": "arota", "bladder": "bladder"}}
for dataset, renames in names.items():
    path = Path(sys.argv[1]) / dataset / "dataset.json"
    dataset_json = json.loads(path.read_text())
    dataset_json["labels"] = {renames.get(k, k): v for k, v in dataset_json["labels"].items()}
    for group in dataset_json.get("partial_labels", {}).get("groups", {}).values():  # nnunet-suprem's manifest
        group["annotated"] = [renames.get(c, c) for c in group["annotated"]]
    path.write_text(json.dumps(dataset_json, indent=2))
    print(f"{dataset}: {list(dataset_json['labels'])}")
PY
  SOURCES=(511 512 513)
else
  SOURCES=("${ARGS[@]}")
fi

say "merge into AbdomenAtlas 1.1's taxonomy (images are referenced, not copied)"
nnunet-suprem merge "${SOURCES[@]}" -d $DATASET --name PartialLabelUnion

say "stock nnU-Net planning and preprocessing, after its integrity check (it follows the referenced images)"
nnUNetv2_plan_and_preprocess -d $DATASET -c 3d_fullres --verify_dataset_integrity

say "pre-train with the partial-label loss"
nnUNetv2_train $DATASET 3d_fullres 0 -tr $TRAINER -device "$DEVICE"
say "model: $nnUNet_results/Dataset${DATASET}_PartialLabelUnion/${TRAINER}__nnUNetPlans__3d_fullres"
