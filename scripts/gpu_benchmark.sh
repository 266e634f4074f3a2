#!/usr/bin/env bash
# GPU benchmark of adaptive_ls on real CIFAR-10, for any CUDA machine. It measures:
#   1. scripts/benchmark.py for fastnet and resnet18 at batch 512: package (a) vs raw loop (b) vs torchvision +
#      DataLoader (c); targets a/b >= 0.90 and a/c >= 3;
#   2. the adaptive policy's cost over fixed eps (fastnet, a and b, interleaved);
#   3. host-device synchronisations inside the timed steps (torch.cuda.set_sync_debug_mode) + a torch.profiler table;
#   4. a fastnet training run (experiment=fastnet_cifar10, 16 epochs): clean test accuracy (target >= 93%), next to
#      scripts/airbench_reference.py (airbench94, 9.9 epochs) on the same CIFAR-10;
#   5. the quickstart sweep (digits, 8 jobs) under the basic, joblib and stacked launchers, and torch.compile (fastnet);
#   6. stacked sweeps: fastnet and resnet18 stacks of 1, 4, 8, 16 and 32 jobs (hydra/launcher=stacked's engine),
#      total images/s and device memory against one job; target for fastnet: 8 members >= 4x one job's images/s.
#
# Usage, in the repository root (the package's dependencies installed; no internet needed):
#   bash scripts/gpu_benchmark.sh <cifar10 root> [out dir]
# <cifar10 root> is the folder holding cifar-10-batches-py (torchvision's layout; ADAPTIVE_LS_DATA when omitted);
# [out dir] defaults to outputs/gpu_benchmark. Results: <out dir>/summary.md (all tables: read this first),
# all.json (every figure), profile.txt, train.log, and each step's log and JSON under <out dir>/work/.
# A local copy whose pixels were re-encoded fails torchvision's checksums: run it with DATA_VERIFY=false.
# Expect 10-20 minutes on a recent GPU, most of it the two training runs, the sweep and compiling.
#
# Rehearsal on a CPU (tiny sizes, no GPU needed, about 8 minutes on 2 cores; the figures mean nothing):
#   SMOKE=1 bash scripts/gpu_benchmark.sh <cifar10 root> [out dir]
set -u
SMOKE=${SMOKE:-0}
if [ "$SMOKE" = 1 ]; then  # appended to every benchmark call (argparse: the last value wins)
  TINY=(--steps 2 --warmup 1 --batch-size 16 --num-images 64 --repeats 1 --workers 1)
  TRAIN_TINY=(trainer.max_epochs=1 +trainer.limit_train_batches=2 +trainer.limit_val_batches=1
              +trainer.limit_test_batches=1 data.val_size=100)
else
  TINY=(); TRAIN_TINY=()
fi
DATA=${1:-${ADAPTIVE_LS_DATA:-}}
OUT=${2:-outputs/gpu_benchmark}
DATA_VERIFY=${DATA_VERIFY:-true}
if [ -z "$DATA" ] || [ ! -d "$DATA/cifar-10-batches-py" ]; then
  echo "usage: bash scripts/gpu_benchmark.sh <cifar10 root> [out dir]" >&2
  echo "  <cifar10 root> must hold cifar-10-batches-py (got '${DATA}'); to download it once:" >&2
  echo "  python -c \"import torchvision; torchvision.datasets.CIFAR10('<cifar10 root>', download=True)\"" >&2
  exit 2
fi
DATA=$(cd "$DATA" && pwd)
mkdir -p "$OUT/work/json"
OUT=$(cd "$OUT" && pwd)
WORK=$OUT/work
export PYTHONUNBUFFERED=1 WANDB_MODE=disabled HYDRA_FULL_ERROR=1
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
START=$SECONDS
SUMMARY="$OUT/summary.md"
: > "$SUMMARY"

say() { echo "$*" | tee -a "$SUMMARY"; }
merge_json() {  # every figure so far in one file, so an interrupted run still leaves what was measured
  python3 - "$WORK/json" "$OUT/all.json" <<'EOF'
import json, sys
from pathlib import Path
out = {p.stem: json.loads(p.read_text()) for p in sorted(Path(sys.argv[1]).glob("*.json")) if p.stat().st_size}
Path(sys.argv[2]).write_text(json.dumps(out, indent=1, default=str))
EOF
}
bench() {  # bench NAME ARGS...: one benchmark run, its table into the summary, its JSON into all.json
  local name=$1; shift
  say ""; say "### $name: benchmark.py $*"
  python3 scripts/benchmark.py --data "$DATA" --json "$WORK/json/$name.json" "$@" "${TINY[@]}" \
      > "$WORK/$name.log" 2>&1
  local rc=$?
  grep -E '^(\||a/|host syncs|machine|data:|model |adaptive vs)' "$WORK/$name.log" | tee -a "$SUMMARY"
  if [ $rc -ne 0 ]; then
    say "($name exited $rc; last lines of $WORK/$name.log:)"; tail -5 "$WORK/$name.log" | tee -a "$SUMMARY"
  fi
  merge_json
}

say "# adaptive_ls GPU benchmark ($(date -u +%FT%TZ))"
if command -v nvidia-smi > /dev/null; then
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm --format=csv,noheader 2>&1 | tee -a "$SUMMARY"
fi

# -- packages ---------------------------------------------------------------------------------------------------------
python3 -c "import hydra, omegaconf, torch, pytorch_lightning as pl, torchvision, adaptive_ls
print('torch', torch.__version__, 'lightning', pl.__version__, 'hydra', hydra.__version__,
      'cuda', torch.cuda.is_available())" \
  2>&1 | tee -a "$SUMMARY" | grep -q "cuda True\|cuda False" || { say "missing packages: see above"; exit 1; }
python3 -c "import torch; assert torch.cuda.is_available()" 2>/dev/null || [ "$SMOKE" = 1 ] \
  || { say "no CUDA GPU visible to torch (SMOKE=1 rehearses this script on a CPU)"; exit 1; }
say "data: $DATA (data.verify=$DATA_VERIFY)"

# -- 1. throughput: package vs raw vs DataLoader ----------------------------------------------------------------------
bench fastnet --model fastnet --batch-size 512 --steps 300 --warmup 50 --repeats 2
bench resnet18 --model resnet18 --batch-size 512 --steps 120 --warmup 30 --repeats 2

# -- 2. adaptive vs fixed, interleaved ---------------------------------------------------------------------------------
bench fastnet_adaptive --model fastnet --batch-size 512 --steps 300 --warmup 50 --repeats 2 \
    --modes package,raw --policy fixed,adaptive

# -- 3. host syncs in the step + where the time goes (slower: not figures) -------------------------------------------
bench fastnet_syncs --model fastnet --batch-size 512 --steps 100 --warmup 30 --modes package,raw \
    --policy adaptive --sync-debug --profile "$WORK/prof"
cat "$WORK"/prof/*_profile.txt > "$OUT/profile.txt" 2> /dev/null

# -- 4. a fastnet training run: clean test accuracy, next to airbench94 on the same data ------------------------------
say ""; TRAIN_NOTE="16 epochs, 45k train / 5k val"; [ "$SMOKE" = 1 ] && TRAIN_NOTE="SMOKE: 1 epoch, 2 batches"
say "### fastnet training: experiment=fastnet_cifar10 ($TRAIN_NOTE, clean labels)"
T0=$SECONDS
rm -rf "$WORK/train"  # a fresh run every time (the package refuses to reuse a folder holding a completed run)
python3 -m adaptive_ls experiment=fastnet_cifar10 data.root="$DATA" data.verify="$DATA_VERIFY" \
    hydra.run.dir="$WORK/train" trainer.enable_progress_bar=false "${TRAIN_TINY[@]}" > "$OUT/train.log" 2>&1
say "exit $? after $((SECONDS - T0)) s (log: $OUT/train.log)"
python3 - "$WORK/train/results.json" "$WORK/json/train_fastnet.json" <<'EOF' 2>&1 | tee -a "$SUMMARY"
import json, sys
r = json.load(open(sys.argv[1]))
json.dump({k: v for k, v in r.items() if k != "history"} | {"epochs": len(r.get("history", []))}, open(sys.argv[2], "w"))
fmt = lambda key: f"{r[key]:.4f}" if isinstance(r.get(key), (int, float)) else "n/a"
print(f"test/acc {fmt('test/acc')}  test/acc_at_best_val {fmt('test/acc_at_best_val')}  "
      f"test/ece {fmt('test/ece')}  epochs {len(r.get('history', []))}  wall {fmt('wall_time_s')} s")
EOF
merge_json
AIRBENCH_EPOCHS=9.9; [ "$SMOKE" = 1 ] && AIRBENCH_EPOCHS=0.05
say "airbench94 reference on the same data (scripts/airbench_reference.py, $AIRBENCH_EPOCHS epochs):"
python3 scripts/airbench_reference.py --data "$DATA" --epochs $AIRBENCH_EPOCHS \
    --json "$WORK/json/airbench_reference.json" > "$WORK/airbench_reference.log" 2>&1 \
  || say "(airbench_reference.py exited $?; see $WORK/airbench_reference.log)"
grep "test accuracy" "$WORK/airbench_reference.log" | tee -a "$SUMMARY"
merge_json

# -- 5. the quickstart sweep: basic vs joblib vs stacked; then torch.compile --------------------------------------
EPOCHS=10; [ "$SMOKE" = 1 ] && EPOCHS=1
say ""; say "### quickstart sweep (digits, 8 jobs, $EPOCHS epochs): basic vs joblib n_jobs=4 vs stacked"
python3 scripts/benchmark.py --sweep --sweep-epochs $EPOCHS --n-jobs 4 --json "$WORK/json/sweep.json" \
    > "$WORK/sweep.log" 2>&1 || say "(sweep exited $?; see $WORK/sweep.log)"
grep -E "^(\||sweep:|note:)" "$WORK/sweep.log" | tee -a "$SUMMARY"
merge_json
if [ "$SMOKE" = 1 ]; then say ""; say "(torch.compile skipped in SMOKE mode: compiling takes minutes on a CPU)"; else
  bench fastnet_compile --model fastnet --batch-size 512 --steps 300 --warmup 60 --modes package,raw --compile
fi

# -- 6. stacked sweeps: M jobs as one model on the GPU ------------------------------------------------------------
MEMBERS=1,4,8,16,32; [ "$SMOKE" = 1 ] && MEMBERS=1,2
bench fastnet_members --model fastnet --batch-size 512 --steps 100 --warmup 20 --modes package --members $MEMBERS
bench resnet18_members --model resnet18 --batch-size 128 --steps 60 --warmup 15 --modes package --members $MEMBERS

say ""; say "done in $((SECONDS - START)) s; figures in $OUT (summary.md, all.json)"
