#!/usr/bin/env bash
# Reproduce the paper's tables (MAE / F-beta / IoU, official protocol) for our checkpoints.
#
#   bash test.sh                          # checkpoint/D-DFFNet.pth (+ DFFNet.pth) when present, else the shipped
#                                         # CPU model (checkpoint/release/, see its MODEL_CARD.md)
#   bash test.sh a.pth b.pth --workers 4  # these checkpoints; any --flag is passed on to test.py
#
# Every present test set is evaluated; each missing one is named in one line with where it should be.
# Prints a markdown table in the paper's layout with the paper's row for each model (matched by the
# checkpoint's file stem, e.g. D-DFFNet) and the difference; writes OUT/results.json, per-image CSVs
# and OUT/pr_curves.png. Settings (environment variables):
#   CHECKPOINTS space-separated checkpoint files, when none is given as an argument
#   TEST_SETS   space-separated test sets   (default: test.py's, the paper's five; DATASETS also works)
#   DATA_ROOT   data root                   (default: data)
#   OUT         output folder               (default: results/paper)
#   PROTOCOL    official | standard         (default: official)
#   IMG_SIZE    network input size          (default: each checkpoint's training size, else 320)
#   BASELINES   space-separated LABEL=DIR of other methods' saved maps (white = in-focus), passed to
#               test.py --baseline and added as rows; DIR/<set name>/ is used when it exists, else DIR
#   PYTHON      interpreter with the project's packages (default: .venv/bin/python, as `make` makes it;
#               else python3 when it has torch). Without one, test.sh stops with one line saying so.
set -euo pipefail
cd "$(dirname "$0")"

if [[ -z "${PYTHON:-}" ]]; then
    if [[ -x .venv/bin/python ]]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
checkpoints=()
while [[ $# -gt 0 && "$1" != --* ]]; do checkpoints+=("$1"); shift; done
if [[ ${#checkpoints[@]} -eq 0 && -n "${CHECKPOINTS:-}" ]]; then
    read -r -a checkpoints <<< "$CHECKPOINTS"
elif [[ ${#checkpoints[@]} -eq 0 && -f checkpoint/D-DFFNet.pth ]]; then
    checkpoints=(checkpoint/D-DFFNet.pth)
    [[ -f checkpoint/DFFNet.pth ]] && checkpoints+=(checkpoint/DFFNet.pth)
fi
for checkpoint in "${checkpoints[@]}"; do
    if [[ ! -e $checkpoint ]]; then
        echo "test.sh: error: $checkpoint: no such file. The authors' trained weights: see checkpoint/README.md" \
             "(download them and put them there); or \`make demo\` trains a small model offline." >&2
        exit 2
    fi
done
args=(--out "${OUT:-results/paper}" --data-root "${DATA_ROOT:-data}" --protocol "${PROTOCOL:-official}" --skip-missing)
[[ ${#checkpoints[@]} -gt 0 ]] && args+=(--checkpoint "${checkpoints[@]}")
[[ -n "${IMG_SIZE:-}" ]] && args+=(--img-size "$IMG_SIZE")
test_sets="${TEST_SETS:-${DATASETS:-}}"
if [[ -n "$test_sets" ]]; then
    read -r -a sets <<< "$test_sets"
    args+=(--dataset "${sets[@]}")
fi
if [[ -n "${BASELINES:-}" ]]; then
    read -r -a baselines <<< "$BASELINES"
    args+=(--baseline "${baselines[@]}")
fi
if ! "$PYTHON" -c 'import importlib.util, sys; sys.exit(importlib.util.find_spec("torch") is None)' 2>/dev/null; then
    echo "test.sh: error: $PYTHON does not run or has no torch; test.sh needs the project's interpreter" \
         ".venv/bin/python (\`make .venv/.installed\` creates it) or PYTHON=/path/to/python with requirements.txt." >&2
    exit 2
fi
exec "$PYTHON" test.py "${args[@]}" "$@"
