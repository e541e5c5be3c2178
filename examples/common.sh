# Shared by the example scripts (sourced, not run): --smoke set-up and the nnU-Net environment.
#
# Real mode uses your nnUNet_raw / nnUNet_preprocessed / nnUNet_results. --smoke works in $WORKDIR (default: a new
# temporary folder), points the three nnU-Net folders there and never touches yours.
set -euo pipefail

if [ "${1:-}" = "--help" ] || [ "${1:-}" = "-h" ]; then  # the calling script's header comment
  sed -n '2,/^[^#]/p' "$0" | sed '$d; s/^# \{0,1\}//'
  exit 0
fi

SMOKE=0
ARGS=()
for arg in "$@"; do
  if [ "$arg" = "--smoke" ]; then SMOKE=1; else ARGS+=("$arg"); fi
done

if [ "$SMOKE" = 1 ]; then
  WORKDIR=${WORKDIR:-$(mktemp -d -t nnunet_suprem_example_XXXXXX)}
  mkdir -p "$WORKDIR"
  export nnUNet_raw="$WORKDIR/nnUNet_raw" nnUNet_preprocessed="$WORKDIR/nnUNet_preprocessed" \
         nnUNet_results="$WORKDIR/nnUNet_results"
  mkdir -p "$nnUNet_raw" "$nnUNet_preprocessed" "$nnUNet_results"
  export nnUNet_def_n_proc=${nnUNet_def_n_proc:-2}
  PREDICT_WORKERS="-npp 1 -nps 1"  # not nnUNetv2_predict's 3 + 3 workers, each a Python process importing nnU-Net
  DEVICE=${DEVICE:-cpu}
  echo "smoke mode: synthetic phantoms and tiny trainings in $WORKDIR (the numbers mean nothing)"
else
  for variable in nnUNet_raw nnUNet_preprocessed nnUNet_results; do
    [ -n "${!variable:-}" ] || { echo "set $variable first (see nnU-Net's documentation)" >&2; exit 1; }
  done
  PREDICT_WORKERS=""  # nnU-Net's defaults
  DEVICE=${DEVICE:-cuda}
fi

# nnUNetv2_train / nnUNetv2_predict find our trainers (SuPreMTrainer, SuPreMFinetuneTrainer, ...) here
export nnUNet_extTrainer="$(nnunet-suprem trainers-dir)${nnUNet_extTrainer:+:$nnUNet_extTrainer}"

usage_unless() {  # usage_unless N "usage text": exit with the usage unless real mode got N arguments
  if [ "$SMOKE" = 0 ] && [ "${#ARGS[@]}" -ne "$1" ]; then echo "usage: $2" >&2; exit 2; fi
}

say() { printf '\n== %s\n' "$*"; }
