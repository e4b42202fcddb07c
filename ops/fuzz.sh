#!/usr/bin/env bash
# Fuzzes what switchboard reads from outside (fuzz/fuzz_targets): client frames, HTTP bodies and
# events from the log. Each target runs for SECONDS (default 30), starting from the seeds in
# fuzz/corpus/<target>. A crash, a panic included, fails the run and leaves the input that caused
# it in fuzz/artifacts/<target>/; `cargo +nightly fuzz run <target> <file>` replays it.
#
#   ops/fuzz.sh [SECONDS] [TARGET...]
#
# Needs the nightly toolchain (for libFuzzer's instrumentation) and cargo-fuzz; installs cargo-fuzz
# when it is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

seconds=${1:-30}
targets=("${@:2}")
if [ ${#targets[@]} -eq 0 ]; then
    targets=(client_frame http_body event_frame)
fi

if ! rustup run nightly rustc --version >/dev/null 2>&1; then
    echo "ops/fuzz.sh: the nightly toolchain is missing; rustup toolchain install nightly" >&2
    exit 1
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
    cargo install cargo-fuzz --locked
fi

# Its own flags make every crate build anew: kept apart from the workspace's builds.
target_dir="${CARGO_TARGET_DIR:-$PWD/target}/fuzz"
for target in "${targets[@]}"; do
    # New inputs a run finds go to a scratch directory; the committed seeds stay as they are.
    found=$(mktemp -d)
    echo "== fuzzing $target for ${seconds}s"
    cargo +nightly fuzz run --sanitizer none --target-dir "$target_dir" "$target" \
        "$found" "fuzz/corpus/$target" -- -max_total_time="$seconds" -print_final_stats=1
    rm -rf "$found"
done
