#!/usr/bin/env bash
# The GPU check in one command (docs/benchmarks.md, "GPU check"): the default-budget demo's pre-training and
# fine-tuning on CUDA, benchmarks/cuda_step.py, and a 2-process torchrun training when the machine has two GPUs;
# a short summary at the end, logs under $OUT when it is set. For a GPU machine that has torch but not nnunetv2:
#
#   bash benchmarks/gpu_check.sh --prepare-wheels .whl   # here, where pip reaches PyPI: nnunetv2, what it needs
#                                                        # beyond torch's stack, and this project, as wheels
#   bash benchmarks/gpu_check.sh --wheels .whl           # there: install them (pip --no-index), then check
#   bash benchmarks/gpu_check.sh --cpu --smoke           # with the installed package: the parts on the CPU, tiny
#
# Other options go to benchmarks/gpu_check.py (--work DIR, --budget SECONDS, --compile; see its --help).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
wheels= prepare= args=()
while (($#)); do
    case $1 in
        --wheels) wheels=${2:?--wheels needs a folder}; shift 2 ;;
        --prepare-wheels) prepare=${2:?--prepare-wheels needs a folder}; shift 2 ;;
        -h|--help) sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//'; exec "$PYTHON" benchmarks/gpu_check.py --help ;;
        *) args+=("$1"); shift ;;
    esac
done
if [[ -n $prepare ]]; then
    exec "$PYTHON" benchmarks/gpu_check.py prepare --wheels-dir "$prepare" "${args[@]}"
fi
if [[ -n $wheels ]]; then
    if ! ls "$wheels"/*.whl >/dev/null 2>&1; then
        echo "gpu_check: no wheels in $wheels (make them with --prepare-wheels)" >&2
        exit 2
    fi
    site=${TMPDIR:-/tmp}/nnunet_suprem_gpu_check_site
    log=${OUT:-${TMPDIR:-/tmp}}/install.log
    # only the wheels of distributions this Python lacks: the machine's own torch stack stays as it is
    missing=$("$PYTHON" -I - "$wheels" <<'PY'  # -I: what is installed, not the checkout
import importlib.metadata, pathlib, sys
for wheel in sorted(pathlib.Path(sys.argv[1]).glob("*.whl")):
    try:
        importlib.metadata.distribution(wheel.name.split("-")[0])
    except importlib.metadata.PackageNotFoundError:
        print(wheel)
PY
)
    if [[ -n $missing ]]; then
        start=$SECONDS
        # shellcheck disable=SC2086  # one wheel path per word
        "$PYTHON" -m pip install --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" $missing \
            >"$log" 2>&1 || { tail -5 "$log" >&2; echo "gpu_check: installing wheels failed (log: $log)" >&2; exit 2; }
        echo "installed $(wc -w <<<"$missing") wheels into $site in $((SECONDS - start)) s"
        export PYTHONPATH=$site${PYTHONPATH:+:$PYTHONPATH} PATH=$site/bin:$PATH
    fi
fi
exec "$PYTHON" benchmarks/gpu_check.py "${args[@]}"
