#!/usr/bin/env bash
# The whole D-DFFNet method, offline, on the embedded synthetic defocus data (2-core CPU: about 13 minutes with
# AMX, about 30 without):
#   1. the depth teacher: the real depth_pretrained/midas_v21-f6b98070.pt when it is present, else the
#      MiDaS-architecture teacher this repository pretrained on synthetic depth and ships beside it (loaded once
#      here, so that a damaged file stops the demo at once)
#   2. generate a synthetic train / test set (thin-lens defocus, exact masks, depth maps)
#   3. stage 1, train_single.py: DFFNet
#   4. stage 2, train_kd.py: D-DFFNet distilled from DFFNet and the depth teacher
#   5. test.sh on the synthetic test set, with two trivial baselines; PR curves and a qualitative grid
#   6. the real-photo DFFNet this repository ships (checkpoint/release/) on redistributable sample photos
# Every step runs the same scripts a user runs on the real data. The settings are the demo's own: from
# scratch on a CPU (no ImageNet weights) the paper's fine-tuning settings barely move in 15 minutes, so
# the backbone, resolution, learning rate and step counts below come from bench/demo_sweep.py.
# Sizes can be changed through the DEMO_* variables below (the tests run a tiny version); DEMO_DEPTH_TEACHER names
# another depth teacher file.
set -euo pipefail
cd "$(dirname "$0")"

PY=${PYTHON:-.venv/bin/python}
OUT=${DEMO_OUT:-results/demo}
TRAIN_N=${DEMO_TRAIN_N:-1024}       # training images
TEST_N=${DEMO_TEST_N:-64}           # test images
IMG=${DEMO_IMG_SIZE:-160}           # generated and network resolution
BACKBONE=${DEMO_BACKBONE:-resnet18}
BATCH=${DEMO_BATCH:-8}
LR=${DEMO_LR:-1e-3}                 # from scratch (the paper fine-tunes ImageNet weights at 1e-4)
EPOCHS=${DEMO_EPOCHS:-6}            # stage 1 (128 steps each at the defaults)
KD_EPOCHS=${DEMO_KD_EPOCHS:-$EPOCHS}  # stage 2: as many steps as stage 1, as in the paper
WORKERS=${DEMO_WORKERS:-1}
MINUTES=${DEMO_MINUTES:-13}
AMP=${DEMO_AMP:-$($PY -c 'import torch, utils.runtime as r; d = r.select_device("auto"); print("bf16" if r.bf16_is_fast(d) else "off")')}
FAST=(--amp "$AMP")
[[ $AMP == bf16 ]] && FAST+=(--channels-last)

DATA=$OUT/data
CKPT=$OUT/checkpoints
LOGS=$OUT/logs
REAL_MIDAS=depth_pretrained/midas_v21-f6b98070.pt
SHIPPED_MIDAS=depth_pretrained/midas_synthetic_cpu.pth
SHIPPED=checkpoint/release/dffnet_cuhk_cpu.pth
# Step lines carry the wall-clock time, [HH:MM:SS], as the Python scripts stamp theirs (utils/log.py).
stamp() { printf '\n[%s] == %s\n' "$(date +%H:%M:%S)" "$*"; }

echo "D-DFFNet demo: synthetic data, $BACKBONE at ${IMG}px, $EPOCHS + $KD_EPOCHS epochs, amp $AMP, on $($PY -c 'import torch; print("CUDA" if torch.cuda.is_available() else "the CPU")')."
echo "This takes about $MINUTES minutes on a 2-core CPU with AMX (about 30 without). Results go to $OUT/."
mkdir -p "$CKPT" "$LOGS"

if [[ -n ${DEMO_DEPTH_TEACHER:-} ]]; then
  stamp "1/6 depth teacher: $DEMO_DEPTH_TEACHER (DEMO_DEPTH_TEACHER)"
  DEPTH_TEACHER=$DEMO_DEPTH_TEACHER
elif [[ -f $REAL_MIDAS ]]; then
  stamp "1/6 depth teacher: $REAL_MIDAS (the released MiDaS v2.1)"
  DEPTH_TEACHER=$REAL_MIDAS
else
  stamp "1/6 depth teacher: $REAL_MIDAS is absent; using $SHIPPED_MIDAS (MiDaS v2.1 / resnet18 pretrained on synthetic depth by this repository, depth_pretrained/MODEL_CARD.md)"
  DEPTH_TEACHER=$SHIPPED_MIDAS
fi
# loaded once now (a shipped file against its recorded SHA-256), so that a damaged teacher stops the demo before
# any work rather than after stage 1
$PY -c 'import sys; from models import load_midas; from utils.checkpoint import CheckpointError
try: load_midas(sys.argv[1])
except (CheckpointError, FileNotFoundError, ValueError) as e: sys.exit(f"demo.sh: the depth teacher: {e}")' "$DEPTH_TEACHER"

stamp "2/6 synthetic defocus data: $TRAIN_N training and $TEST_N test images"
$PY tools/make_synthetic.py "$DATA/train" --n "$TRAIN_N" --seed 1 --size "$IMG" --workers 2 --overwrite
$PY tools/make_synthetic.py "$DATA/test" --n "$TEST_N" --seed 2 --size "$IMG" --workers 2 --overwrite

PRETRAINED=$($PY -c 'import sys, models; print("imagenet" if models.pretrained_available(sys.argv[1]) else "none")' "$BACKBONE")
echo "backbone initialisation: $PRETRAINED (ImageNet weights are used when they are in the local cache)"

stamp "3/6 stage 1: DFFNet (train_single.py)"
$PY train_single.py --train-set "synthetic:$DATA/train" --backbone "$BACKBONE" --pretrained "$PRETRAINED" \
    --img-size "$IMG" --batch-size "$BATCH" --lr "$LR" --epochs "$EPOCHS" --schedule-epochs "$EPOCHS" \
    --workers "$WORKERS" "${FAST[@]}" --save "$CKPT/DFFNet.pth" --log-dir "$LOGS/DFFNet" --overwrite

stamp "4/6 stage 2: D-DFFNet (train_kd.py)"
$PY train_kd.py --train-set "synthetic:$DATA/train" --backbone "$BACKBONE" --pretrained "$PRETRAINED" \
    --img-size "$IMG" --batch-size "$BATCH" --lr "$LR" --epochs "$KD_EPOCHS" --schedule-epochs "$KD_EPOCHS" \
    --workers "$WORKERS" "${FAST[@]}" --teacher "$CKPT/DFFNet.pth" --depth-teacher "$DEPTH_TEACHER" \
    --save "$CKPT/D-DFFNet.pth" --log-dir "$LOGS/D-DFFNet" --overwrite

stamp "5/6 evaluation (test.sh) with two trivial baselines"
for baseline in all-in-focus prior; do
  $PY tools/baselines.py "$baseline" --train-set "synthetic:$DATA/train" --test-set "synthetic:$DATA/test" \
      --img-size "$IMG" --out "$OUT/baselines/$baseline" --overwrite
done
BASELINES="all-in-focus=$OUT/baselines/all-in-focus prior=$OUT/baselines/prior" \
  TEST_SETS="synthetic:$DATA/test" IMG_SIZE="$IMG" PYTHON="$PY" OUT="$OUT/eval" \
  bash test.sh "$CKPT/DFFNet.pth" "$CKPT/D-DFFNet.pth" | tee "$OUT/table.md"
$PY tools/figures.py --dataset "synthetic:$DATA/test" --img-size "$IMG" --count 6 \
    --checkpoint "DFFNet=$CKPT/DFFNet.pth" "D-DFFNet=$CKPT/D-DFFNet.pth" \
    --depth-teacher "$DEPTH_TEACHER" --out "$OUT/qualitative.png"

stamp "6/6 the shipped real-photo model on redistributable photos (scikit-image's CC0 / public-domain samples)"
$PY tools/sample_photos.py "$OUT/photos"
$PY tools/figures.py --photos "$OUT/photos" --checkpoint "shipped=$SHIPPED" --out "$OUT/real_photos.png"

stamp "done"
echo "table:             $OUT/table.md"
echo "PR curves:         $OUT/eval/pr_curves.png"
echo "qualitative grid:  $OUT/qualitative.png"
echo "real photos:       $OUT/real_photos.png (the shipped model; licences in $OUT/photos/LICENCES.md)"
echo "checkpoints, logs: $CKPT/, $LOGS/"
