#!/usr/bin/env bash
# Install mlx-dpo and everything it needs on a fresh machine (macOS or Linux).
#   scripts/setup.sh          the tool
#   scripts/setup.sh test     the tool plus the test tools
set -euo pipefail
cd "$(dirname "$0")/.."

extras=""
[ "${1:-}" = "test" ] && extras="[test]"

if [ "$(uname -s)" = "Linux" ] && command -v apt-get >/dev/null 2>&1; then
    # MLX's CPU backend runs 35x faster on a system OpenBLAS (mlx_dpo loads it by itself);
    # tmux drives the dashboard in the end-to-end test.
    packages="libopenblas0-pthread tmux"
    missing=$(for p in $packages; do dpkg -s "$p" >/dev/null 2>&1 || echo "$p"; done)
    if [ -n "$missing" ]; then
        sudo=""
        [ "$(id -u)" -ne 0 ] && sudo="sudo"
        $sudo apt-get update -qq
        # shellcheck disable=SC2086
        DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq $missing >/dev/null
    fi
fi

python3 -m pip install -q --upgrade pip >/dev/null 2>&1 || true
python3 -m pip install -q -e ".${extras}"
