#!/bin/bash
# Run transformers' own tests/trainer against Trainer and against CriticalPeriodTrainer, out of tree.
#
#   benchmarks/upstream_trainer/run.sh GIT_DIR COMMIT [WORK_DIR]
#
# GIT_DIR: a git directory holding COMMIT (e.g. the fork kaixuanliu/transformers at
# 3cd1a2307acd8e9262917ee85fda8333af4fb5fc); the tests are extracted to WORK_DIR (default
# /tmp/upstream_trainer), never into this repository. Needs `parameterized` (pip install --target
# WORK_DIR/deps parameterized: it is not one of hf_critical's dependencies). Writes
# WORK_DIR/results/{plain,off,default}.{log,xml,fail}: pytest's output, JUnit XML and the sorted
# FAILED/ERROR lines. Tests needing the Hub fail in every mode offline; compare the .fail files.
set -euo pipefail
git_dir=$1; commit=$2; work=${3:-/tmp/upstream_trainer}
repo=$(cd "$(dirname "$0")/../.." && pwd)
python=${PYTHON:-$repo/.venv/bin/python}
mkdir -p "$work/results"
git --git-dir="$git_dir" archive "$commit" tests/trainer tests/__init__.py | tar -x -C "$work"
cp "$(dirname "$0")/conftest.py" "$work/conftest.py"
printf '[pytest]\nmarkers =\n    slow\n' > "$work/pytest.ini"
test -d "$work/deps" || "$python" -m pip install --quiet --target "$work/deps" parameterized
for mode in plain off default; do
  (cd "$work" && OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HFC_MODE=$mode \
    PYTHONPATH="$repo:$work/deps" "$python" -m pytest tests/trainer -q -p no:cacheprovider \
    --ignore=tests/trainer/test_data_collator.py --ignore=tests/trainer/distributed \
    --junitxml="results/$mode.xml" > "results/$mode.log" 2>&1) || true
  grep -E "^(FAILED|ERROR) " "$work/results/$mode.log" | sort > "$work/results/$mode.fail" || true
  echo "$mode: $(tail -n 1 "$work/results/$mode.log")"
done
diff "$work/results/plain.fail" "$work/results/off.fail" && echo "off: the same failures as plain"
diff "$work/results/plain.fail" "$work/results/default.fail" || true
