#!/usr/bin/env bash
# The GPU check (issue 33): one prepared script, planned to finish within 10 minutes on
# one CUDA GPU, that runs every CUDA path cellstack has and reports each figure:
#
#   1. the CUDA tests (tests/test_cuda.py: AMP training, AMP predict of a run and of an
#      ensemble with flips, one nccl process under torchrun), then the rest of the suite
#      on the GPU machine's cores (pytest-xdist when there);
#   2. benchmarks/speed.py train --device cuda --amp (torchvision v1 against ours, Cascade,
#      HTC), and the same two first rows without AMP;
#   3. predict with and without AMP, and the batch sweep: benchmarks/speed.py batch
#      --device cuda over 100 images of 512x512 at batch 1, 4, 8 and 16;
#   4. a 1-process nccl `torchrun` training run of configs/demo.yaml on synthetic data.
#
# Usage, in the repository root of the GPU machine (its python3 holds torch,
# torchvision and timm; the rest of cellstack's needs travel as wheels in .whl/):
#
#   bash benchmarks/gpu_check.sh --fetch-wheels   # here, with PyPI and .venv: fills .whl/
#                                                 # (Python 3.12, .venv's versions, ~14 MB)
#   bash benchmarks/gpu_check.sh [OUTDIR]         # there (default benchmarks/results/gpu)
#
# Every step has its own time limit and writes OUTDIR/NAME.log; OUTDIR/summary.txt has
# one line per step (exit status and seconds) and the JSON of each benchmark is beside
# it. A step that fails does not stop the next.
set -u

PY=${PYTHON:-python3}
WHEELS=(pycocotools albumentations albucore stringzilla simsimd pydantic pydantic-core
  annotated-types typing-inspection roifile ijson dask distributed partd locket zict tblib
  tornado zarr numcodecs donfig google-crc32c)

if [ "${1:-}" = "--fetch-wheels" ]; then
  mkdir -p .whl
  grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
  rm -f .whl/*.whl
  for name in "${WHEELS[@]}"; do
    # The versions .venv holds (make's install): tested together here.
    version=$(.venv/bin/python -m pip show "$name" 2> /dev/null | awk '/^Version:/ {print $2}')
    $PY -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
      --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
      --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .whl \
      "$name${version:+==$version}" || echo "no wheel for $name"
  done
  du -sh .whl
  exit 0
fi

OUT=${1:-benchmarks/results/gpu}
mkdir -p "$OUT"
SUMMARY=$OUT/summary.txt
: > "$SUMMARY"
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH}
if ls .whl/*.whl > /dev/null 2>&1; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/cellstack-site .whl/*.whl && export PYTHONPATH=$PYTHONPATH:/tmp/cellstack-site
fi

step() { # NAME LIMIT_S COMMAND...: run it, log it, one summary line
  local name=$1 limit=$2
  shift 2
  local t0=$SECONDS
  timeout "$limit" "$@" > "$OUT/$name.log" 2>&1
  local rc=$?
  echo "$name: exit $rc, $((SECONDS - t0)) s" | tee -a "$SUMMARY"
  tail -n 12 "$OUT/$name.log"
}

$PY - <<'EOF' | tee -a "$SUMMARY"
import torch, torchvision, timm
print(f"torch {torch.__version__}, torchvision {torchvision.__version__}, timm {timm.__version__}")
print(f"cuda {torch.version.cuda}, {torch.cuda.get_device_name(0)}")
EOF

step cuda_tests 120 $PY -m pytest tests/test_cuda.py -q -rs -p no:cacheprovider
XDIST=()
$PY -c "import xdist" 2> /dev/null && XDIST=(-n 8)
step tests 180 $PY -m pytest tests -q -x -p no:cacheprovider "${XDIST[@]}" --ignore tests/test_cuda.py

ROWS=("torchvision v1" "cellstack maskrcnn" "cellstack cascade" "cellstack htc")
step train_speed_amp 90 $PY benchmarks/speed.py train --device cuda --amp --threads 8 \
  --steps 10 --warmup 3 --rows "${ROWS[@]}" --out "$OUT/train_speed_amp.json"
step train_speed_fp32 40 $PY benchmarks/speed.py train --device cuda --threads 8 \
  --steps 10 --warmup 3 --rows "${ROWS[@]:0:2}" --out "$OUT/train_speed_fp32.json"

step batch_sweep_amp 50 $PY benchmarks/speed.py batch --device cuda --images 100 \
  --batches 1 4 8 16 --workers 0 --threads 8 --out "$OUT/batch_sweep_amp.json"
step batch_sweep_fp32 30 $PY benchmarks/speed.py batch --device cuda --no-amp --images 100 \
  --batches 1 8 --workers 0 --threads 8 --out "$OUT/batch_sweep_fp32.json"

DATA=/tmp/cellstack-gpu-data
rm -rf "$DATA" /tmp/cellstack-gpu-run
$PY -m cellstack synth "$DATA" --n-images 12 --quiet
step torchrun_nccl 60 $PY -m torch.distributed.run --standalone --nproc-per-node 1 \
  -m cellstack train "$DATA" --out /tmp/cellstack-gpu-run --config configs/demo.yaml \
  train.iterations=40 train.eval_every=0 train.device=cuda
grep -h "it/s\|s/it\|trained" "$OUT/torchrun_nccl.log" | tail -n 3 | tee -a "$SUMMARY"
