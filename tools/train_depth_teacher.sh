#!/usr/bin/env bash
# Pretrain, export and score a synthetic-depth MiDaS teacher shipped in depth_pretrained/ (its model cards).
#
#   bash tools/train_depth_teacher.sh              # midas_synthetic_cpu.pth: about 85 min on the 2 threads of a
#                                                  # quiet 2-core CPU with AMX, about 2 h 20 min without (derived)
#   RECIPE=lite2 bash tools/train_depth_teacher.sh # midas_lite2_synthetic_cpu.pth (MODEL_CARD_lite2.md)
#
# RECIPE=lite2: MiDaS v2.1 architecture with a tf_efficientnet_lite2 encoder initialised from ImageNet (the wheel
# of models/imagenet_wheels.py), 64-channel decoder, 160 px, batch 8, bf16, the ordinal loss: one run of 3 epochs
# (3,072 steps) on the 8,192 scenes of seeds 100 and 102 at lr 3e-4 with a 100-step warm-up.
#
# RECIPE=resnet18 (the default):
# MiDaS v2.1 architecture with a resnet18 encoder and a 64-channel decoder, from scratch, 160 px, batch 8, bf16,
# the ordinal loss (L1 to the per-image mid-rank of inverse depth, losses.depth.ordinal_depth_loss), in three runs:
#   1. 6 epochs (6,144 steps) on 8,192 scenes (seeds 100 and 102), lr 1e-3 with a 300-step warm-up;
#   2. from its weights (--init), 2 epochs (4,096 steps) on those plus 8,192 new scenes (seed 103), lr 5e-4
#      with a 100-step warm-up (a warm restart: the teacher was still improving when run 1's schedule ended);
#   3. from run 2's weights, 2 more epochs (4,096 steps) on the same 16,384 scenes at lr 2.5e-4.
# Every epoch is scored on 128 held-out scenes (seed 101); the export is scored at 128, 160 and 320 px.
#
# Environment (defaults in brackets):
#   PYTHON      interpreter with the requirements                        [.venv/bin/python]
#   OUT         run folder: data, checkpoints, logs, scores              [results/depth_teacher]
#   THREADS     CPU threads                                              [2]
#   RECIPE      resnet18 | lite2                                         [resnet18]
#   EXPORT      where the fp16 teacher goes     [$OUT/midas_synthetic_cpu.pth, lite2: $OUT/midas_lite2_synthetic_cpu.pth]
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-.venv/bin/python}
OUT=${OUT:-results/depth_teacher}
export OMP_NUM_THREADS=${THREADS:-2}
RECIPE=${RECIPE:-resnet18}
case "$RECIPE" in
    resnet18) EXPORT=${EXPORT:-$OUT/midas_synthetic_cpu.pth} ;;
    lite2) EXPORT=${EXPORT:-$OUT/midas_lite2_synthetic_cpu.pth} ;;
    *) echo "train_depth_teacher.sh: RECIPE must be resnet18 or lite2, got '$RECIPE'" >&2; exit 2 ;;
esac
DATA=$OUT/data

generate() {  # generate SEED COUNT SIZE FOLDER, unless the folder is complete
    [ -f "$4/meta.json" ] || "$PY" tools/make_synthetic.py "$4" --n "$2" --seed "$1" --size "$3" --workers 2 --overwrite
}
link_into() {  # link_into FOLDER PREFIX SOURCE: SOURCE's image/ and depth/ files, renamed PREFIX<name>
    for sub in image depth; do
        mkdir -p "$1/$sub"
        for file in "$3/$sub"/*.png; do ln -sfn "$(realpath "$file")" "$1/$sub/$2$(basename "$file")"; done
    done
}

echo "[$(date +%T)] synthetic depth: 4,096 + 4,096 training scenes and 128 held-out, 160 px"
generate 100 4096 160 "$DATA/seed100"
generate 102 4096 160 "$DATA/seed102"
for size in 128 160 320; do generate 101 128 "$size" "$DATA/held_out_$size"; done
link_into "$DATA/train_8k" train4k_ "$DATA/seed100"
link_into "$DATA/train_8k" train4k_b_ "$DATA/seed102"
COMMON=(--val-data "$DATA/held_out_160" --features 64 --img-size 160 --batch-size 8 --workers 1 --amp bf16
        --loss ordinal --anchor-weight 0 --overwrite)

if [ "$RECIPE" = lite2 ]; then
    echo "[$(date +%T)] one run: 3 epochs on 8,192 scenes from ImageNet, lr 3e-4, $OMP_NUM_THREADS thread(s)"
    "$PY" train_depth.py --data "$DATA/train_8k" --encoder tf_efficientnet_lite2 --pretrained imagenet \
        --lr 3e-4 --warmup-steps 100 --epochs 3 "${COMMON[@]}" --save "$OUT/lite2.pth" --log-dir "$OUT/logs/lite2"
    TRAINED="$OUT/lite2.pth"
    DESCRIPTION="MiDaS v2.1 architecture (tf_efficientnet_lite2 from ImageNet, width 64) trained on synthetic depth by this repository on a CPU; depth_pretrained/MODEL_CARD_lite2.md"
else
    echo "[$(date +%T)] synthetic depth: 8,192 more training scenes, 160 px"
    generate 103 8192 160 "$DATA/seed103"
    link_into "$DATA/train_16k" train4k_ "$DATA/seed100"
    link_into "$DATA/train_16k" train4k_b_ "$DATA/seed102"
    link_into "$DATA/train_16k" c_ "$DATA/seed103"
    COMMON+=(--encoder resnet18)
    echo "[$(date +%T)] run 1: 6 epochs on 8,192 scenes, lr 1e-3, $OMP_NUM_THREADS thread(s)"
    "$PY" train_depth.py --data "$DATA/train_8k" --epochs 6 --lr 1e-3 --warmup-steps 300 "${COMMON[@]}" \
        --save "$OUT/run1.pth" --log-dir "$OUT/logs/run1"
    echo "[$(date +%T)] run 2: from run 1, 2 epochs on 16,384 scenes, lr 5e-4"
    "$PY" train_depth.py --data "$DATA/train_16k" --epochs 2 --lr 5e-4 --warmup-steps 100 --init "$OUT/run1.pth" \
        "${COMMON[@]}" --save "$OUT/run2.pth" --log-dir "$OUT/logs/run2"
    echo "[$(date +%T)] run 3: from run 2, 2 epochs on the same scenes, lr 2.5e-4"
    "$PY" train_depth.py --data "$DATA/train_16k" --epochs 2 --lr 2.5e-4 --warmup-steps 100 --init "$OUT/run2.pth" \
        "${COMMON[@]}" --save "$OUT/run3.pth" --log-dir "$OUT/logs/run3"
    TRAINED="$OUT/run3.pth"
    DESCRIPTION="MiDaS v2.1 architecture (resnet18, width 64) pretrained on synthetic depth by this repository on a CPU; depth_pretrained/MODEL_CARD.md"
fi

echo "[$(date +%T)] export: fp16 weights + training configuration -> $EXPORT"
"$PY" tools/export_model.py "$TRAINED" "$EXPORT" --description "$DESCRIPTION"
for size in 128 160 320; do
    "$PY" tools/score_depth.py "$EXPORT" "$DATA/held_out_$size" --img-size "$size" --json "$OUT/scores_$size.json"
done
echo "[$(date +%T)] done: $EXPORT; copy it to depth_pretrained/ and update models/shipped.py's SHA-256"
