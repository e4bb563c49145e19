#!/usr/bin/env bash
# Reproduce the paper's tables (MAE / F-beta / IoU, official protocol) for our checkpoints.
#
#   bash test.sh                          # checkpoint/D-DFFNet.pth, and checkpoint/DFFNet.pth when present
#   bash test.sh a.pth b.pth --workers 4  # these checkpoints; any --flag is passed on to test.py
#
# Every present test set is evaluated; each missing one is named in one line with where it should be.
# Prints a markdown table in the paper's layout with the paper's row for each model (matched by the
# checkpoint's file stem, e.g. D-DFFNet) and the difference; writes OUT/results.json, per-image CSVs
# and OUT/pr_curves.png. Settings (environment variables):
#   CHECKPOINTS space-separated checkpoint files, when none is given as an argument
#   TEST_SETS   space-separated test sets   (default: CUHK-TE-1 DUT-TE CTCUG EBD EBD-1305; DATASETS also works)
#   DATA_ROOT   data root                   (default: data)
#   OUT         output folder               (default: results/paper)
#   PROTOCOL    official | standard         (default: official)
#   IMG_SIZE    network input size          (default: 320)
#   BASELINES   space-separated LABEL=DIR of other methods' saved maps (white = in-focus), evaluated with
#               test.py --pred-dir and added as rows; DIR/<set name>/ is used when it exists, else DIR
#   PYTHON      interpreter                 (default: .venv/bin/python, else python3)
set -euo pipefail
cd "$(dirname "$0")"

if [[ -z "${PYTHON:-}" ]]; then
    if [[ -x .venv/bin/python ]]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
checkpoints=()
while [[ $# -gt 0 && "$1" != --* ]]; do checkpoints+=("$1"); shift; done
if [[ ${#checkpoints[@]} -eq 0 && -n "${CHECKPOINTS:-}" ]]; then
    read -r -a checkpoints <<< "$CHECKPOINTS"
elif [[ ${#checkpoints[@]} -eq 0 ]]; then
    checkpoints=(checkpoint/D-DFFNet.pth)
    [[ -f checkpoint/DFFNet.pth ]] && checkpoints+=(checkpoint/DFFNet.pth)
fi
read -r -a test_sets <<< "${TEST_SETS:-${DATASETS:-CUHK-TE-1 DUT-TE CTCUG EBD EBD-1305}}"
out="${OUT:-results/paper}"
common=(--data-root "${DATA_ROOT:-data}" --protocol "${PROTOCOL:-official}" --img-size "${IMG_SIZE:-320}")

extra=()
failed=()
for baseline in ${BASELINES:-}; do
    label="${baseline%%=*}"
    maps="${baseline#*=}"
    for set in "${test_sets[@]}"; do
        name="$("$PYTHON" -c 'import sys; from engine.evaluate import set_label; print(set_label(sys.argv[1]))' "$set")"
        folder="$maps"
        [[ -d "$maps/$name" ]] && folder="$maps/$name"
        result="$out/baselines/$label/$name"
        if "$PYTHON" test.py --pred-dir "$folder" --label "$label" --dataset "$set" --out "$result" \
                "${common[@]}" --skip-missing --grid 0 > /dev/null; then
            extra+=("$result/results.json")
        else
            failed+=("$label on $set")
        fi
    done
done

"$PYTHON" test.py --checkpoint "${checkpoints[@]}" --dataset "${test_sets[@]}" --out "$out" "${common[@]}" \
    --skip-missing ${extra[@]+--extra-results "${extra[@]}"} "$@"
if [[ ${#failed[@]} -gt 0 ]]; then
    printf 'test.sh: these baseline evaluations failed (errors above): %s\n' "${failed[*]}" >&2
    exit 1
fi
