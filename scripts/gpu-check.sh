#!/usr/bin/env bash
# The GPU check. Runs on the GPU machine (the `device` tool), which has PyTorch 2.11 with CUDA
# but no Rust and no internet, with the bundle `cargo xtask gpu-bundle` builds here:
#
#   bash scripts/gpu-check.sh target/gpu-bundle/bundle.tar.xz      (carry that one file)
#
# Every step has its own time limit and the whole stays under 8 minutes; a step that fails is
# recorded and the next one runs. Results go to $OUT (the device tool brings that folder back):
#   log.txt         what ran, when, with exit codes
#   steps.jsonl     one line per step: name, exit code, seconds
#   *.out / *.err   each step's output
#   summary.json    the figures gathered from them (python3 scripts/gpu_check_summary.py)
#   gpu-memory.csv  the GPU's memory in use, sampled every 200 ms (peak in summary.json)
#
# A rehearsal on the CPU machine runs the same steps on the CPU, from a bundle of the normal
# build (`cargo xtask gpu-bundle --rehearsal` prints the command): GPU_CHECK_DEVICE=cpu.
set -uo pipefail

BUNDLE=${1:?usage: gpu-check.sh BUNDLE.tar.xz}
OUT=${OUT:-$PWD/gpu-check-out}
BUDGET_S=${GPU_CHECK_BUDGET_S:-470}
DEV=${GPU_CHECK_DEVICE:-cuda}
# GPU_CHECK_QUICK=1: a few steps of everything (a rehearsal on the CPU checks the plumbing).
if [ "${GPU_CHECK_QUICK:-0}" = 1 ]; then
    TRAIN_STEPS=100 BENCH_STEPS=4 WARMUP=2 SAMPLES=100 FID_IMAGES=40
else
    TRAIN_STEPS=2000 BENCH_STEPS=60 WARMUP=10 SAMPLES=2000 FID_IMAGES=2000
fi
REPO=$(cd "$(dirname "$0")/.." && pwd)
mkdir -p "$OUT"
DEADLINE=$((SECONDS + BUDGET_S))

log() { echo "[$(date +%T) +${SECONDS}s] $*" | tee -a "$OUT/log.txt"; }

# step NAME LIMIT_S COMMAND...: runs COMMAND with stdout/stderr to $OUT/NAME.{out,err}, under
# the smaller of LIMIT_S and the time left.
step() {
    local name=$1 limit=$2
    shift 2
    local left=$((DEADLINE - SECONDS))
    local t=$((limit < left ? limit : left))
    if [ "$t" -le 5 ]; then
        log "SKIP $name: no time left"
        echo "{\"step\":\"$name\",\"status\":\"skipped\"}" >>"$OUT/steps.jsonl"
        return
    fi
    log "START $name (limit ${t}s): $*"
    local start=$SECONDS
    timeout --kill-after=5 "$t" "$@" >"$OUT/$name.out" 2>"$OUT/$name.err"
    local rc=$?
    log "END $name rc=$rc after $((SECONDS - start))s"
    echo "{\"step\":\"$name\",\"rc\":$rc,\"seconds\":$((SECONDS - start))}" >>"$OUT/steps.jsonl"
    return 0
}

W=$(mktemp -d)
tar -xf "$BUNDLE" -C "$W" || { log "cannot unpack $BUNDLE"; exit 1; }
PY=${PYTHON:-python3}
TORCH_LIB=$("$PY" -c 'import os, torch; print(os.path.join(os.path.dirname(torch.__file__), "lib"))') ||
    { log "no PyTorch for $PY"; exit 1; }
# The bundled binaries were linked against LibTorch 2.11; the machine's own copy is the one
# inside its torch package (their rpath points at the build machine's, which is not here).
export LD_LIBRARY_PATH="$TORCH_LIB${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
DATA="$W/data/cifar-10-batches-bin"

{
    echo "date: $(date -u +%FT%TZ)"
    echo "cpu: $(lscpu | sed -n 's/^Model name: *//p' | head -1), $(nproc) cores"
    echo "device: $DEV"
    nvidia-smi --query-gpu=name,compute_cap,memory.total,driver_version --format=csv,noheader 2>&1
    "$PY" -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda, "cudnn", torch.backends.cudnn.version())'
    echo "torch lib: $TORCH_LIB"
} >"$OUT/machine.txt" 2>&1
cat "$OUT/machine.txt" | tee -a "$OUT/log.txt"

nvidia-smi --query-gpu=timestamp,memory.used --format=csv,noheader,nounits -lms 200 \
    >"$OUT/gpu-memory.csv" 2>/dev/null &
MEMORY_PID=$!
trap 'kill $MEMORY_PID 2>/dev/null' EXIT

# 1. Does LibTorch see the GPU, and does the bundled model give the CPU's answers on it?
step device 60 "$W/bin/vq-cli" --json device

# 2. The unit tests that take a device, on CUDA (VQ_TEST_DEVICE).
for t in "$W"/tests/*; do
    step "test-$(basename "$t")" 90 env VQ_TEST_DEVICE="$DEV" "$t" --test-threads 4
done

# 3. 2,000 steps of the default recipe on CUDA, evaluated on the carried test images. The same
#    config on the CPU (same data, same binary recipe) is the comparison: docs/experiments.md.
cat >"$W/train-config.json" <<EOF
{"format": 2, "data": {"path": "$DATA", "any_record_count": true},
 "schedule": {"steps": $TRAIN_STEPS, "eval_every": $TRAIN_STEPS, "checkpoint_every": 1000}}
EOF
step train 150 "$W/bin/vq-train" --config "$W/train-config.json" --run-dir "$W/run" --device "$DEV"
cp "$W/run/summary.json" "$OUT/train-summary.json" 2>/dev/null
cp "$W/run/metrics.jsonl" "$OUT/train-metrics.jsonl" 2>/dev/null

# 4. Training images/s, ours and the PyTorch reference (the machine's PyTorch) side by side.
for batch in 32 128 512; do
    steps=$((batch >= 512 ? BENCH_STEPS / 2 : BENCH_STEPS))
    step "bench-ours-f32-b$batch" 40 "$W/benches/train_step" --device "$DEV" --data "$DATA" \
        --batch-size "$batch" --steps "$steps" --warmup "$WARMUP" --compute f32
    step "bench-reference-f32-b$batch" 40 "$PY" "$REPO/scripts/vqvae_reference.py" --mode speed \
        --device "$DEV" --data "$DATA" --batch-size "$batch" --steps "$steps" --warmup "$WARMUP"
    step "bench-ours-bf16-b$batch" 40 "$W/benches/train_step" --device "$DEV" --data "$DATA" \
        --batch-size "$batch" --steps "$steps" --warmup "$WARMUP" --compute bf16
    step "bench-reference-bf16cl-b$batch" 40 "$PY" "$REPO/scripts/vqvae_reference.py" --mode speed \
        --device "$DEV" --data "$DATA" --batch-size "$batch" --steps "$steps" --warmup "$WARMUP" \
        --amp bf16 --channels-last
done

# 5. Data-parallel training's NCCL path (issue 43): a world of two ranks on two GPUs or more, one
#    rank on a one-GPU machine, runs all-reduce, broadcast and barrier through ProcessGroupNCCL on CUDA
#    tensors (summary.json's `values_ok` checks what each rank got); with two GPUs or more, also
#    200 steps of `vq-train --nproc 2` on NCCL, whose distributed.json names the engine. On the
#    CPU (a rehearsal) the same steps run on gloo, with two ranks.
GPUS=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | wc -l)
if [ "$DEV" = cuda ]; then BACKEND=nccl; else BACKEND=gloo; GPUS=2; fi
DP_STEPS=$((TRAIN_STEPS / 10))
NRANKS=$((GPUS >= 2 ? 2 : 1))
# probe.sh SCENARIO PORT: NRANKS ranks of vq-dist-probe at once, each rank's JSON on its own line.
cat >"$W/probe.sh" <<EOF
pids=()
for ((r = 0; r < $NRANKS; r++)); do
    RANK=\$r LOCAL_RANK=\$r WORLD_SIZE=$NRANKS MASTER_ADDR=127.0.0.1 MASTER_PORT=\$2 \\
        VQVAE_DIST_TIMEOUT=30 VQVAE_DIST_BACKEND=$BACKEND "$W/bin/vq-dist-probe" "\$1" &
    pids+=(\$!)
done
rc=0
for p in "\${pids[@]}"; do wait "\$p" || rc=1; done
exit \$rc
EOF
step "dist-$BACKEND-sum" 60 bash "$W/probe.sh" sum 29611
step "dist-$BACKEND-broadcast" 60 bash "$W/probe.sh" broadcast 29612
step "dist-$BACKEND-barrier" 60 bash "$W/probe.sh" barrier 29613
if [ "$NRANKS" -ge 2 ]; then
    cat >"$W/dp-config.json" <<EOF
{"format": 2, "data": {"path": "$DATA", "any_record_count": true},
 "schedule": {"steps": $DP_STEPS, "eval_every": $DP_STEPS, "checkpoint_every": $DP_STEPS}}
EOF
    step "dist-train-$BACKEND" 120 "$W/bin/vq-train" --config "$W/dp-config.json" \
        --run-dir "$W/dp-run" --device "$DEV" --nproc 2
    cp "$W/dp-run/distributed.json" "$OUT/dist-train-distributed.json" 2>/dev/null
    cp "$W/dp-run/summary.json" "$OUT/dist-train-summary.json" 2>/dev/null
fi

# 6. Prior sampling (the bundled transformer prior) and FID feature extraction rates.
step sampling 60 "$W/benches/sampling" --device "$DEV" --images "$SAMPLES"
step fid-features 60 "$W/benches/features" --device "$DEV" --images "$FID_IMAGES" \
    --timing-weights "$W/fid/inception-zeroed.pt"

kill $MEMORY_PID 2>/dev/null
"$PY" "$REPO/scripts/gpu_check_summary.py" "$OUT" >"$OUT/summary.json" 2>"$OUT/summary.err"
cat "$OUT/summary.json"
log "done in ${SECONDS}s"
