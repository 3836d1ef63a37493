#!/usr/bin/env bash
# The whole test suite: starts the real servers the tests need, then runs every test of the workspace.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/services.sh
cargo test --workspace --all-targets -- --test-threads "${MAYFLY_TEST_THREADS:-4}"
