#!/usr/bin/env bash
# Runs every fuzz target for SECONDS (default 60) each. The machine has only the
# stable toolchain; RUSTC_BOOTSTRAP=1 lets cargo-fuzz pass its -Z sanitizer flags.
# New inputs go to fuzz/corpus/ (not committed); crashes to fuzz/artifacts/, and
# the script fails. A crash found becomes a case in tests/properties.rs.
set -euo pipefail
cd "$(dirname "$0")"
seconds="${1:-60}"
command -v cargo-fuzz >/dev/null 2>&1 || cargo install cargo-fuzz --locked
export RUSTC_BOOTSTRAP=1
cargo fuzz build -O
for target in config token_response route rewrite framing; do
  mkdir -p "corpus/$target"
  echo "fuzzing $target for ${seconds}s"
  cargo fuzz run -O "$target" "corpus/$target" "seeds/$target" -- -max_total_time="$seconds" 2>&1 | grep -E '^(Done|#[0-9]+ +DONE)|ERROR|SUMMARY|panicked' || true
  if [ -n "$(ls -A "artifacts/$target" 2>/dev/null)" ]; then
    echo "fuzz target $target crashed: see fuzz/artifacts/$target" >&2
    exit 1
  fi
done
