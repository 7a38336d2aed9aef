#!/usr/bin/env bash
# Every GPU figure in BENCHMARKS.md, in one command, most important first:
#
#     bash bench/gpu.sh [OUT_DIR]          # default OUT_DIR: bench-gpu
#
# Each stage has its own time limit (seconds, from the environment: IVIT_BENCH_LIMIT_<STAGE>), writes its table to
# OUT_DIR/<stage>.md as it finishes, and a stage that fails or runs out of time is reported and skipped, so a run cut
# short still leaves the tables of the stages before it. Runs from a checkout without installing (PYTHONPATH=src);
# the machine needs PyTorch with CUDA, timm, torchvision, safetensors, typer, rich, torchmetrics, PyYAML, scipy and
# matplotlib (the GPU modes use random prompt features: no prompt encoder is loaded).
#
# IVIT_BENCH_TOTAL=SECONDS caps the whole run (each stage gets at most what is left); IVIT_BENCH_MODE=tiny runs the
# same stages at the scripts' smoke size on the CPU (the test suite checks the script that way).
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:-bench-gpu}
mkdir -p "$out"
export PYTHONPATH="src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
python=${PYTHON:-python3}
total=${IVIT_BENCH_TOTAL:-0}
mode=${IVIT_BENCH_MODE:-gpu}
device=cuda images=8000 batch=256 workers=15
if [ "$mode" != gpu ]; then device=cpu images=64 batch=16 workers=0; fi

stage() {  # stage NAME DEFAULT_LIMIT COMMAND...
    local name=$1 limit_var="IVIT_BENCH_LIMIT_${1^^}" default=$2
    shift 2
    local limit=${!limit_var:-$default} start=$SECONDS
    if [ "$total" -gt 0 ]; then
        local left=$((total - SECONDS - 5))
        if [ "$left" -lt 30 ]; then echo "!! $name: skipped, ${left} s left of IVIT_BENCH_TOTAL=$total"; return; fi
        [ "$left" -lt "$limit" ] && limit=$left
    fi
    echo "== $name (limit ${limit} s): $*"
    timeout --kill-after=10 "$limit" "$@" > "$out/$name.md" 2> "$out/$name.err"
    local rc=$?
    cat "$out/$name.md"
    if [ $rc -ne 0 ]; then
        echo "!! $name: exit $rc after $((SECONDS - start)) s (124: out of time); last lines of its errors:"
        tail -n 15 "$out/$name.err"
    else
        echo "-- $name: $((SECONDS - start)) s"
    fi
}

{
    [ "$mode" = gpu ] && nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
    "$python" -c 'import torch, timm; print("torch", torch.__version__, "cuda", torch.version.cuda, "timm", timm.__version__)'
    nproc
} > "$out/machine.txt" 2>&1
cat "$out/machine.txt"

size=$([ "$mode" = gpu ] && echo 224 || echo 32)
stage step_eager 150 "$python" bench/throughput.py --mode "$mode" --compile eager
stage e2e_store 330 "$python" bench/train_e2e.py --mode "$mode" --cells store-k1,store-all
stage step_compiled 330 "$python" bench/throughput.py --mode "$mode" --compile compiled
stage data_path 150 "$python" bench/data_path.py --device $device --size "$size" --images $images --batch $batch \
    --workers $workers
stage e2e_pil 330 "$python" bench/train_e2e.py --mode "$mode" --cells pil-k1,pil-all
