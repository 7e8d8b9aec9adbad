#!/usr/bin/env bash
# The GPU checks of issue #13 in one go, for a short lease of a GPU machine that gets a copy of the working tree
# (no git history, no package index):
#
#   mkdir -p .speed-baseline && git archive 32c80bc | tar -x -C .speed-baseline
#   bash benchmarks/gpu_check.sh OUTDIR
#
# 0. the README main job alone (main-job), with its accuracy on the GPU;
# 1. `benchmarks/speed.py` on ResNet-50 at 224 px (paper-profile batch 128, bf16), this checkout against the
#    baseline exported to .speed-baseline;
# 2. tests/test_cuda.py (the GPU path computes what the CPU path computes);
# 3. benchmarks/gpu_floor.py (the generator + ResNet-50 step alone: what a synthesis step cannot beat);
# 4. ResNet-50 again with 4 synthesis batches per step; 5. ResNet-18 with --compile; 6. the compiled synthesis
#    step of ResNet-50 (--compile --synthesis-only: no unit is compiled).
# Each stage has its own time limit, so a slow or failing one leaves the others' results in OUTDIR; STAGES="a b"
# runs only the stages named (main-job speed-resnet50 test-cuda floor speed-resnet50-k4 speed-resnet18-compile
# speed-resnet50-compile-synthesis).
# Python packages missing on the machine travel as wheels in .whl/ (installed to /tmp/site first).
set -u
out=${1:?usage: bash benchmarks/gpu_check.sh OUTDIR}
mkdir -p "$out"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_VERBOSITY=error HF_HUB_DISABLE_PROGRESS_BARS=1
known=" main-job speed-resnet50 test-cuda floor speed-resnet50-k4 speed-resnet18-compile speed-resnet50-compile-synthesis all "
for name in ${STAGES:-all}; do
    [[ $known == *" $name "* ]] || { echo "unknown stage '$name'; the stages are:$known" >&2; exit 2; }
done
current=${CURRENT:-$(git rev-parse --short HEAD 2>/dev/null || echo unknown)}  # CURRENT=<commit> where git is absent
# The main job evaluates on the Fashion-MNIST test files, which a GPU machine lacks: carried in .fmnist/ (a copy of
# /usr/share/datasets/fashion-mnist/t10k-*), where there.
[ -d .fmnist ] && export GENIE_HUB_FASHION_MNIST_DIR=$PWD/.fmnist
baseline=(--baseline 32c80bc --baseline-dir .speed-baseline --current "$current" --device cuda --mixed-precision bf16
          --repeats 1)
stage() {  # stage SECONDS NAME COMMAND...: runs COMMAND with a limit, its output in run.log
    local limit=$1 name=$2; shift 2
    [[ " ${STAGES:-all} " == *" all "* || " ${STAGES:-all} " == *" $name "* ]] || return 0
    echo "=== $name ($(date -u +%T), limit ${limit}s): $*"
    timeout -k 5 "$limit" "$@"
    echo "=== $name ended: rc=$? at $(date -u +%T)"
}
{
    if compgen -G ".whl/*.whl" >/dev/null; then
        python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
            .whl/*.whl && export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
    fi
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
    python3 -c "import torch, transformers, accelerate; print('torch', torch.__version__, 'cuda', torch.version.cuda,
'transformers', transformers.__version__, 'accelerate', accelerate.__version__, 'bf16', torch.cuda.is_bf16_supported())"
    stage 60 main-job python3 -m genie_hub quantize --profile quick -o "$(mktemp -d)/main-job"
    stage 150 speed-resnet50 python3 benchmarks/speed.py "${baseline[@]}" --models resnet50-224 --warmup 5 \
        --steps 30 --output "$out/speed_gpu"
    stage 120 test-cuda python3 -m pytest -q -p no:cacheprovider tests/test_cuda.py
    stage 60 floor python3 benchmarks/gpu_floor.py
    stage 90 speed-resnet50-k4 python3 benchmarks/speed.py "${baseline[@]}" --models resnet50-224 --warmup 3 \
        --steps 12 --synthesis-batches-per-step 4 --output "$out/speed_gpu_k4"
    stage 120 speed-resnet18-compile python3 benchmarks/speed.py "${baseline[@]}" --models resnet18-224 --warmup 5 \
        --steps 30 --compile --output "$out/speed_gpu_resnet18_compile"
    stage 300 speed-resnet50-compile-synthesis python3 benchmarks/speed.py "${baseline[@]}" --models resnet50-224 \
        --warmup 5 --steps 30 --compile --synthesis-only --output "$out/speed_gpu_compile_synthesis"
} 2>&1 | tee "$out/run.log"
