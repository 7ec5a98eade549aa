#!/usr/bin/env bash
# Issue 14, "unit and end-to-end tests apart": moves tests/test_*.py into tests/unit/ and
# tests/e2e/ and fixes what names them. Run once, from the repository root, on a clean tree
# (after the other branches are merged): scripts/split_tests.sh, then review and commit.
#
# End to end (tests/e2e/): a file with at least one test that runs the trainer (a training
# run in-process or `mlx-dpo train`), a CLI command on a model, or a child process
# (the CLI, the dashboard, the collect worker). Unit (tests/unit/): everything else, including
# tests that load a tiny model and compute on it (log-probs, a step, a session) without running
# anything end to end. tests/tui/ stays where it is (its snapshots are kept beside it), and so
# do the shared helpers (conftest.py, shared.py, interop.py, training.py, faults.py,
# hub_fixtures.py, collect_models.py): tests/conftest.py applies to every folder below it.
#
# A test file added after this list was written is named at the end (not moved): place it.
set -euo pipefail
cd "$(dirname "$0")/.."

UNIT="
architecture audit batching checkpoints cli_eval cli_flags cli_terminal cli_view collect
config data errors events formatting generation gguf_tokenizer grad_checkpoint health hub
journal judge layout logprobs loss_catalog losses memory_arithmetic model optimizer pairs
paths platform prompts sampling scoring session shapes token_cache trainer_batch_logps
trainer_control trainer_evaluation trainer_progress trainer_reporting trainer_schedule
trainer_step unpaired
"
E2E="
cli cli_collect cli_compare cli_data cli_export cli_rounds cli_train collect_e2e
collect_worker compare dashboard_e2e demo distributed evaluate export export_gguf gguf
init_adapter memory_guard memory_session qlora real_model reference reliability rounds rundir
security sources trainer_resume trainer_run trainer_samples
"

if [ -n "$(git status --porcelain)" ]; then
    echo "split_tests.sh: the tree has uncommitted changes; commit or stash them first" >&2
    exit 2
fi
mkdir -p tests/unit tests/e2e

MOVED=()
move() {  # move <folder> <name>...: git mv, then the moved file's own paths one folder deeper
    local folder=$1
    shift
    for name in "$@"; do
        local file="tests/test_${name}.py"
        if [ ! -f "$file" ]; then
            echo "split_tests.sh: $file is not here (renamed or gone?): not moved" >&2
            continue
        fi
        git mv "$file" "tests/$folder/test_${name}.py"
        sed -i -E \
            -e 's#Path\(__file__\)\.resolve\(\)\.parents\[1\]#Path(__file__).resolve().parents[2]#g' \
            -e 's#Path\(__file__\)\.parent\.parent\b#Path(__file__).parents[2]#g' \
            -e 's#Path\(__file__\)\.parent / #Path(__file__).parent.parent / #g' \
            "tests/$folder/test_${name}.py"
        MOVED+=("$folder/$name")
    done
}

# shellcheck disable=SC2086  # the lists are split on white space on purpose
move unit $UNIT
# shellcheck disable=SC2086
move e2e $E2E

# Mentions anywhere (sources, docs, configuration, CI; not snapshots): tests/test_x.py ->
# tests/<folder>/test_x.py, and the module tests.test_x -> tests.<folder>.test_x.
mapfile -t TEXT_FILES < <(git ls-files '*.py' '*.md' '*.toml' '*.sh' '*.cfg' '.ci/*' \
    | grep -v '__snapshots__' | grep -v '^scripts/split_tests.sh$')
expressions=()
for moved in "${MOVED[@]}"; do
    folder=${moved%%/*} name=${moved#*/}
    expressions+=(-e "s#tests/test_${name}\.py#tests/${folder}/test_${name}.py#g")
    expressions+=(-e "s#\btests\.test_${name}\b#tests.${folder}.test_${name}#g")
done
sed -i -E "${expressions[@]}" "${TEXT_FILES[@]}"

# The README's test command: the whole suite stays `python3 -m pytest` (testpaths = tests takes
# every folder below it); say how to run each part alone.
python3 - <<'PY'
from pathlib import Path

readme = Path("README.md")
text = readme.read_text(encoding="utf-8")
old = "```\nscripts/setup.sh test && python3 -m pytest\n```\n"
new = old + (
    "\nThe unit tests alone: `python3 -m pytest tests/unit tests/tui`; the end-to-end\n"
    "tests (training runs, the CLI and its child processes): `python3 -m pytest tests/e2e`.\n"
)
if old in text and "The unit tests alone" not in text:
    readme.write_text(text.replace(old, new, 1), encoding="utf-8")
else:
    print("split_tests.sh: README.md's test command not found as expected: add the line by hand")

pyproject = Path("pyproject.toml")
text = pyproject.read_text(encoding="utf-8")
old = 'testpaths = ["tests"]'
new = 'testpaths = ["tests/unit", "tests/tui", "tests/e2e"]  # unit tests first: they fail fastest'
if old in text:
    pyproject.write_text(text.replace(old, new, 1), encoding="utf-8")
PY

# A renamed import (tests.test_x -> tests.unit.test_x) may now sort elsewhere in its block.
python3 -m ruff check --select I --fix -q tests \
    || echo "split_tests.sh: sort the imports: ruff check --select I --fix tests" >&2

left=$(ls tests/test_*.py 2>/dev/null || true)
if [ -n "$left" ]; then
    echo "split_tests.sh: not in either list, left in tests/ (move them by hand):" >&2
    echo "$left" >&2
fi
echo "moved $(ls tests/unit | wc -l) unit and $(ls tests/e2e | wc -l) end-to-end test files"
echo "next: python3 -m pytest -q -x, ruff check ., then commit"
