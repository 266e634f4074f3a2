#!/usr/bin/env bash
# One-shot GPU check for issue #4 (speed), for a session that is lent an H200 (15 min of device time in all, one
# command <= 10 min). Measures, on real CIFAR-10 (the offline JPEG copy):
#   1. scripts/benchmark.py for fastnet and resnet18: package (a) vs raw loop (b) vs torchvision+DataLoader (c);
#      targets a/b >= 0.90 and a/c >= 3;
#   2. the adaptive policy's cost over fixed eps (fastnet, a and b);
#   3. host-device synchronisations inside the timed steps (torch.cuda.set_sync_debug_mode) + a torch.profiler table;
#   4. a short fastnet training run (experiment=fastnet_cifar10, 16 epochs): clean test accuracy (>= 93%);
#   5. if time is left: the quickstart sweep sequential vs joblib, and torch.compile.
# Everything goes to $OUT (at most 8 files come back): summary.md (all tables, read this first), all.json (every
# figure), profile.txt, train.log.
#
# ---- Before the call, on the CPU machine, in the repository root (the device machine has torch 2.11 + Lightning
# ---- 2.6.6 + torchmetrics + torchvision + scikit-learn + joblib, but not Hydra/OmegaConf, and cannot download) ----
#   echo /.whl/ >> .git/info/exclude; echo /.gpu_data/ >> .git/info/exclude
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#       --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
#       -d .whl hydra-core==1.3.8 omegaconf==2.3.1 hydra-joblib-launcher==1.2.0  # the versions pinned here
#   python3 -m pip wheel --no-deps -w .whl antlr4-python3-runtime==4.9.3   # sdist only on PyPI; pure Python
#   mkdir -p .gpu_data && cp ../shared/data/cifar10/cifar10_jpeg.npz ../shared/data/cifar10/export.py .gpu_data/
#   (wandb is not needed: logger=csv and WANDB_MODE=disabled; if a later merge imports wandb at import time, carry its
#   wheel and missing dependencies too, and mind the 64 MiB limit: the CIFAR copy alone is 53 MiB.)
# ---- Then one call (carry both folders; the wheels install into /tmp/site below):
#   run(command="bash scripts/gpu_check.sh", carry=[".whl", ".gpu_data"], timeout_s=570)
# and give the machine back unless rerunning at once. Budget: ~1-2 min to start, ~8 min for this script.
# Rehearse it first on the CPU machine (tiny sizes, no GPU needed, ~3 min):  GPU_CHECK_SMOKE=1 bash scripts/gpu_check.sh
set -u
SMOKE=${GPU_CHECK_SMOKE:-0}
if [ "$SMOKE" = 1 ]; then  # appended to every benchmark call (argparse: the last value wins)
  TINY=(--steps 2 --warmup 1 --batch-size 16 --num-images 64 --repeats 1 --workers 1)
  TRAIN_TINY=(trainer.max_epochs=1 +trainer.limit_train_batches=2 +trainer.limit_val_batches=1 data.val_size=100)
else
  TINY=(); TRAIN_TINY=()
fi
OUT=${OUT:-/tmp/gpu_check_out}
WORK=/tmp/gpu_check
mkdir -p "$OUT" "$WORK/json"
export PYTHONUNBUFFERED=1 WANDB_MODE=disabled HYDRA_FULL_ERROR=1
START=$SECONDS
SUMMARY="$OUT/summary.md"

say() { echo "$*" | tee -a "$SUMMARY"; }
left() { echo $((520 - (SECONDS - START))); }  # seconds left of the ~8.7 min this script allows itself
merge_json() {  # every figure so far in one file, so a timeout still brings back what was measured
  python3 - "$WORK/json" "$OUT/all.json" <<'EOF'
import json, sys
from pathlib import Path
out = {p.stem: json.loads(p.read_text()) for p in sorted(Path(sys.argv[1]).glob("*.json")) if p.stat().st_size}
Path(sys.argv[2]).write_text(json.dumps(out, indent=1, default=str))
EOF
}
bench() {  # bench NAME SECONDS ARGS...: one benchmark run, its table into the summary, its JSON into all.json
  local name=$1 limit=$2; shift 2
  if [ "$(left)" -lt 40 ]; then say "skipped $name: out of time"; return; fi
  [ "$limit" -gt "$(left)" ] && limit=$(left)
  say ""; say "### $name: benchmark.py $*"
  timeout "$limit" python3 scripts/benchmark.py --data "$DATA" --json "$WORK/json/$name.json" "$@" "${TINY[@]}" \
      > "$WORK/$name.log" 2>&1
  local rc=$?
  grep -E '^(\||a/|host syncs|machine|data:|model |adaptive vs)' "$WORK/$name.log" | tee -a "$SUMMARY"
  [ $rc -ne 0 ] && { say "($name exited $rc after ${limit}s limit; last lines:)"; tail -5 "$WORK/$name.log" | tee -a "$SUMMARY"; }
  merge_json
}

say "# adaptive_ls GPU check ($(date -u +%FT%TZ))"
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm --format=csv,noheader 2>&1 | tee -a "$SUMMARY"

# -- packages ---------------------------------------------------------------------------------------------------------
if ls .whl/*.whl > /dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || { say "wheel install failed"; exit 1; }
  export PYTHONPATH=/tmp/site
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
python3 -c "import hydra, omegaconf, torch, pytorch_lightning as pl, torchvision, adaptive_ls
print('torch', torch.__version__, 'lightning', pl.__version__, 'hydra', hydra.__version__, 'cuda', torch.cuda.is_available())" \
  2>&1 | tee -a "$SUMMARY" | grep -q "cuda True\|cuda False" || { say "missing packages: see above"; exit 1; }
python3 -c "import torch; assert torch.cuda.is_available()" 2>/dev/null || [ "$SMOKE" = 1 ] || { say "no GPU"; exit 1; }

# -- data: the offline JPEG copy, exported once to torchvision's layout (all 60,000 images) ---------------------------
NPZ_DIR=${CIFAR_DIR:-.gpu_data}
DATA=$WORK/cifar10
if [ ! -d "$DATA/cifar-10-batches-py" ]; then
  SUBSET=(); [ "$SMOKE" = 1 ] && SUBSET=(--train 1000 --test 200)
  python3 "$NPZ_DIR/export.py" "$DATA" --format torchvision "${SUBSET[@]}" > /dev/null \
    || { say "CIFAR-10 export failed"; exit 1; }
fi
say "data: real CIFAR-10 (offline JPEG re-encoding, 50k train / 10k test) exported to $DATA in $((SECONDS - START)) s"

# -- 1. throughput: package vs raw vs DataLoader ----------------------------------------------------------------------
bench fastnet 110 --model fastnet --batch-size 512 --steps 300 --warmup 50 --repeats 2
bench resnet18 130 --model resnet18 --batch-size 512 --steps 120 --warmup 30 --repeats 2

# -- 2. adaptive vs fixed, interleaved ---------------------------------------------------------------------------------
bench fastnet_adaptive 80 --model fastnet --batch-size 512 --steps 300 --warmup 50 --repeats 2 \
    --modes package,raw --policy fixed,adaptive

# -- 3. host syncs in the step + where the time goes (slower: not figures) -------------------------------------------
bench fastnet_syncs 60 --model fastnet --batch-size 512 --steps 100 --warmup 30 --modes package,raw \
    --policy adaptive --sync-debug --profile "$WORK/prof"
cat "$WORK"/prof/*_profile.txt > "$OUT/profile.txt" 2> /dev/null

# -- 4. a short fastnet training run: clean test accuracy --------------------------------------------------------------
if [ "$(left)" -gt 90 ]; then
  say ""; say "### fastnet training: experiment=fastnet_cifar10 (16 epochs, 45k train / 5k val, clean labels)"
  T0=$SECONDS
  timeout $(( $(left) - 30 )) python3 -m adaptive_ls.train experiment=fastnet_cifar10 data.root="$DATA" data.verify=false \
      hydra.run.dir="$WORK/train" trainer.enable_progress_bar=false "${TRAIN_TINY[@]}" > "$OUT/train.log" 2>&1
  say "exit $? after $((SECONDS - T0)) s"
  python3 - "$WORK/train/results.json" "$WORK/json/train_fastnet.json" <<'EOF' 2>&1 | tee -a "$SUMMARY"
import json, sys
r = json.load(open(sys.argv[1]))
json.dump({k: v for k, v in r.items() if k != "history"} | {"epochs": len(r.get("history", []))}, open(sys.argv[2], "w"))
print(f"test/acc {r.get('test/acc'):.4f}  test/acc_at_best_val {r.get('test/acc_at_best_val'):.4f}  "
      f"test/ece {r.get('test/ece'):.4f}  epochs {len(r.get('history', []))}  wall {r.get('wall_time_s'):.1f} s")
EOF
  merge_json
  if [ "$SMOKE" = 1 ]; then say "(airbench reference skipped: the smoke data is smaller than its batch)"; else
    say "airbench94 reference on the same data (scripts/airbench_reference.py, 9.9 epochs):"
    timeout 120 python3 scripts/airbench_reference.py --data "$DATA" --json "$WORK/json/airbench_reference.json" \
        2>&1 | grep "test accuracy" | tee -a "$SUMMARY"
    merge_json
  fi
fi

# -- 5. if time is left: a whole quickstart sweep, sequential vs joblib; then torch.compile -------------------------
if [ "$(left)" -gt 100 ]; then
  say ""; say "### quickstart sweep (digits, 8 jobs, 10 epochs): sequential vs joblib n_jobs=4"
  EPOCHS=10; [ "$SMOKE" = 1 ] && EPOCHS=1
  timeout $(( $(left) - 10 )) python3 scripts/benchmark.py --sweep --sweep-epochs $EPOCHS --n-jobs 4 \
      --json "$WORK/json/sweep.json" 2>&1 | grep -E "^(sequential|joblib)" | tee -a "$SUMMARY"
  merge_json
fi
[ "$SMOKE" = 1 ] || bench fastnet_compile 150 --model fastnet --batch-size 512 --steps 300 --warmup 60 --modes package,raw --compile

say ""; say "done in $((SECONDS - START)) s"
