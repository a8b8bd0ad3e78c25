#!/usr/bin/env bash
# The GPU measurements of BENCHMARKS.md, in commands of at most 10 minutes each (device/README.md).
# On the GPU machine, after unpacking the wheel bundle (../shared/gpu/make-bundle.sh prints the line):
#   bash benchmarks/gpu_session.sh job            # the seed job cold, stage by stage, then an experiment (lr)
#   bash benchmarks/gpu_session.sh curves         # loss curves: auto (no checkpointing, 8 x 1) vs 4 x 2 "unsloth"
#   bash benchmarks/gpu_session.sh peers          # the stage vs Unsloth + TRL packing=True vs the seed's recipe
#   bash benchmarks/gpu_session.sh ddp            # 2 GPUs: the train stage's wall with 1 and 2 processes
#   bash benchmarks/gpu_session.sh bench checks   # train-step benchmark; packing checks on the GPU
# Phases: job (benchmarks.gpu_job job: every stage of dvc.yaml in a fresh workspace, then the stages a
# train.learning_rate change reruns; $JOB_PHASES adds "warm", the job again with the compile caches),
# curves (the train stage twice on the same data: params.yaml's auto plan, and the seed's 4 x 2 with Unsloth's
# checkpointing; the loss curves and their largest difference), peers (benchmarks.peers, $PEER_STEPS steps),
# ddp (benchmarks.ddp_scaling: the whole epoch with train.num_processes 1 and 2 for $DDP_BACKENDS; $DDP_ARGS
# adds arguments), bench (benchmarks.train_step, backends from $BENCH_BACKENDS), checks
# (benchmarks.packing_check: Unsloth and hf on the 7B geometry, Unsloth on the tiny model), pair (20
# optimizer steps packed and unpacked from the same seed, and the plot). genpaths / genstages
# (benchmarks.generation_paths) first make /tmp/gpu-job/gen: sample, format and a $GEN_STEPS-step train stage;
# $GEN_PATHS (default unsloth,hf,merged; the first is the agreement reference), $GEN_STAGES (default
# unsloth,merged) and $GEN_ARGS (e.g. --single-stream 2) choose what runs.
# Results go to $OUT (default build/gpu-out): one .tgz plus the log.
# MODEL / PRESETS / JOB_SET / BENCH_ARGS override the model and profile for a CPU dry run with offline:tiny-mistral.
set -uo pipefail
[ $# -gt 0 ] || { echo "usage: gpu_session.sh job|curves|peers|ddp|bench|checks|pair|genpaths|genstages ..."; exit 2; }
OUT=${OUT:-build/gpu-out}
MODEL=${MODEL:-build/offline-models/mistral-7b-geometry-seed0-bnb4}
PRESETS=${PRESETS:-mistral-7b-geometry,tiny-mistral}
JOB_SET=${JOB_SET:-}
BENCH_ARGS=${BENCH_ARGS:-}
JOB_PHASES=${JOB_PHASES:-cold,experiment}
PEER_STEPS=${PEER_STEPS:-20}
BENCH_BACKENDS=${BENCH_BACKENDS:-unsloth,hf}
DDP_BACKENDS=${DDP_BACKENDS:-unsloth}
DDP_ARGS=${DDP_ARGS:-}
GEN_STEPS=${GEN_STEPS:-20}
GEN_PATHS=${GEN_PATHS:-unsloth,hf,merged}
GEN_STAGES=${GEN_STAGES:-unsloth,merged}
GEN_ARGS=${GEN_ARGS:-}
name=$(IFS=-; echo "$*")
results=build/gpu-results/$name
mkdir -p "$OUT" "$results"
exec > >(tee "$OUT/$name.log") 2>&1
started=$SECONDS
step() { echo "=== [$((SECONDS - started)) s] $*"; "$@"; echo "=== rc=$? after $((SECONDS - started)) s"; }
set_args=(); for kv in $JOB_SET; do set_args+=(--set "$kv"); done

# The bundle is unpacked from wheels without bytecode; pip compiles it at install time on a user's machine, so
# compile it here too, or the first stage to import a library would pay for it.
[ -d /tmp/site ] && python3 -m compileall -q -j 0 /tmp/site > /dev/null 2>&1
date -u +"%Y-%m-%dT%H:%M:%SZ"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
python3 -c "import torch, sys; print('python', sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.version.cuda)"
step python3 -m benchmarks.gpu_job prepare --tokenizer-model .gpu/tokenizer.model.v1 --presets "$PRESETS"

for phase in "$@"; do
  case $phase in
  bench)
    step python3 -m benchmarks.train_step --model "$MODEL" --backends "$BENCH_BACKENDS" \
      --out "$results/train_step.json" $BENCH_ARGS ;;
  checks)
    for backend in unsloth hf; do
      step python3 -m benchmarks.packing_check --backend $backend --model "$MODEL" --synthetic-rows 400 \
        --out "$results/packing_${backend}_7b.json"
    done
    step python3 -m benchmarks.packing_check --backend unsloth --model offline:tiny-mistral --synthetic-rows 400 \
      --out "$results/packing_unsloth_tiny.json" ;;
  job)
    step python3 -m benchmarks.gpu_job job --out "$results/job" --phases "$JOB_PHASES" "${set_args[@]}" ;;
  curves)
    [ -d /tmp/gpu-job/curves/data/formatted ] || step python3 -m benchmarks.gpu_job run --out "$results/data" \
      --workspace /tmp/gpu-job/curves --stages sample,format "${set_args[@]}"
    step python3 -m benchmarks.gpu_job run --out "$results/auto" --stages train --reuse-data /tmp/gpu-job/curves \
      "${set_args[@]}"
    step python3 -m benchmarks.gpu_job run --out "$results/seed-4x2-unsloth" --stages train \
      --reuse-data /tmp/gpu-job/curves "${set_args[@]}" --set train.batch_size=4 --set train.gradient_checkpointing=unsloth
    step python3 -m benchmarks.gpu_job plot "$results/auto" "$results/seed-4x2-unsloth" \
      --labels "auto (params.yaml),4 x 2 with Unsloth's checkpointing" --out "$results/loss_curves.png" ;;
  peers)
    step python3 -m benchmarks.peers --out "$results/peers.json" --steps "$PEER_STEPS" "${set_args[@]}" ;;
  pair)
    # Same seed and ~80 examples per optimizer step in both: 8 packed rows of 2048 (~10 examples each), against
    # 80 padded examples as 16 x accumulation 5. 20 steps each, the same schedule.
    [ -d /tmp/gpu-job/packed/data/formatted ] || step python3 -m benchmarks.gpu_job run --out "$results/data" \
      --workspace /tmp/gpu-job/packed --stages sample,format "${set_args[@]}"
    step python3 -m benchmarks.gpu_job run --out "$results/packed20" --stages train \
      --reuse-data /tmp/gpu-job/packed "${set_args[@]}" --set train.max_steps=20
    step env UNSLOTH_DISABLE_AUTO_PADDING_FREE=1 python3 -m benchmarks.gpu_job run --out "$results/unpacked20" \
      --stages train --reuse-data /tmp/gpu-job/packed "${set_args[@]}" --set train.max_steps=20 \
      --set train.packing=false --set train.rows_per_step=80 --set train.batch_size=16
    step python3 -m benchmarks.gpu_job plot "$results/packed20" "$results/unpacked20" \
      --labels "packed (train.batch_size x accumulation from params.yaml),unpacked (16 padded rows x accum 5)" \
      --out "$results/loss_curves.png" ;;
  ddp)
    step python3 -m benchmarks.ddp_scaling --out "$results/ddp_scaling.json" --backends "$DDP_BACKENDS" \
      "${set_args[@]}" $DDP_ARGS
    cp "$results/ddp_scaling.json" "$OUT/" 2>/dev/null ;;
  genpaths|genstages)
    [ -f /tmp/gpu-job/gen/models/adapter/metadata.json ] || step python3 -m benchmarks.gpu_job run \
      --out "$results/gen-train" --workspace /tmp/gpu-job/gen --stages sample,format,train "${set_args[@]}" \
      --set train.max_steps=$GEN_STEPS
    if [ "$phase" = genpaths ]; then
      step python3 -m benchmarks.generation_paths --workspace /tmp/gpu-job/gen --paths "$GEN_PATHS" \
        --out "$results/generation_paths.json" $GEN_ARGS
    else
      step python3 -m benchmarks.generation_paths --workspace /tmp/gpu-job/gen --paths "" --stages "$GEN_STAGES" \
        --out "$results/generation_stages.json" $GEN_ARGS
    fi
    cp "$results"/generation_*.json "$OUT/" 2>/dev/null ;;
  *) echo "unknown phase $phase" ;;
  esac
done
tar czf "$OUT/$name.tgz" -C build/gpu-results "$name"
echo "=== done in $((SECONDS - started)) s"
