#!/usr/bin/env bash
# Check the import contracts of pyproject.toml ([tool.importlinter]) on the package laid out as
# it installs: the dashboard's top-level folder tui/ is the package mlx_dpo.tui, which
# import-linter cannot see in the source tree (setuptools' package-dir maps it). It runs from
# the staged copy so that the checkout's own mlx_dpo/ is not the one imported.
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
staged=$(mktemp -d)
trap 'rm -rf "$staged"' EXIT
cp -r "$repo/mlx_dpo" "$staged/mlx_dpo"
rm -rf "$staged/mlx_dpo/tui"
cp -r "$repo/tui" "$staged/mlx_dpo/tui"
cd "$staged"
PYTHONPATH="$staged" lint-imports --no-cache "$repo/pyproject.toml"
