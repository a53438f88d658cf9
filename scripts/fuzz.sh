#!/usr/bin/env bash
# Coverage-guided fuzzing of vswitch-datapath on stable Rust (libFuzzer through libfuzzer-sys;
# coverage from LLVM's SanitizerCoverage pass, enabled with stable -C flags). See fuzz/README.md.
#
#   scripts/fuzz.sh build                      build the fuzz binaries (target/fuzz)
#   scripts/fuzz.sh smoke [SECS]               every target for SECS s (default 15) on the corpus: CI
#   scripts/fuzz.sh run TARGET SECS [ARGS...]  one target; extra ARGS go to libFuzzer
#   scripts/fuzz.sh all SECS                   every target, SECS s each
#   scripts/fuzz.sh minimize [TARGET...]       merge what the runs found into fuzz/corpus (minimized)
#   scripts/fuzz.sh repro TARGET FILE...       run inputs once, with the target's output shown
#   scripts/fuzz.sh seeds                      rewrite the hand-written seeds into fuzz/corpus
#
# Targets: split_ring packed_ring net_header guest_memory vhost_user. Runs are niced (FUZZ_NICE, default
# "nice -n 19") and single-process, single-thread; the build uses one job (FUZZ_BUILD_JOBS).
# New inputs go to target/fuzz/corpus/TARGET (the repository's corpus is only read), crashes to
# fuzz/artifacts/TARGET/, logs to target/fuzz/logs/TARGET.log. Exit status: non-zero on a crash.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
TARGETS=(split_ring packed_ring net_header guest_memory vhost_user)
export CARGO_TARGET_DIR="$ROOT/target/fuzz"
TRIPLE=$(rustc -vV | sed -n 's/^host: //p')
BIN="$CARGO_TARGET_DIR/$TRIPLE/release"
NICE=${FUZZ_NICE-nice -n 19}
# SanitizerCoverage: inline 8-bit edge counters + PC table (libFuzzer's cov/ft), comparison
# tracing (libFuzzer's value profile / CMP dictionary). `--cfg fuzzing` as cargo-fuzz sets it;
# debug assertions and overflow checks on, so arithmetic overflow in the switch is a crash.
FUZZ_RUSTFLAGS="-Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4 \
-Cllvm-args=-sanitizer-coverage-inline-8bit-counters -Cllvm-args=-sanitizer-coverage-pc-table \
-Cllvm-args=-sanitizer-coverage-trace-compares --cfg fuzzing -Cdebug-assertions -Coverflow-checks"

die() { echo "fuzz.sh: $*" >&2; exit 2; }
is_target() { local t; for t in "${TARGETS[@]}"; do [[ $t == "$1" ]] && return 0; done; return 1; }

build() {
  local bins=() t
  for t in "${TARGETS[@]}"; do bins+=(--bin "$t"); done
  # --target: RUSTFLAGS then apply to the fuzzed code only, not to build scripts or proc macros.
  RUSTFLAGS="$FUZZ_RUSTFLAGS" $NICE cargo build --manifest-path fuzz/Cargo.toml --release \
    --features fuzzer --target "$TRIPLE" -j "${FUZZ_BUILD_JOBS:-1}" "${bins[@]}"
}

# libFuzzer options every run uses.
fuzzer_args() {
  local t=$1
  local a=(-timeout=30 -rss_limit_mb=2048 -max_len=4096 -print_final_stats=1
    "-artifact_prefix=$ROOT/fuzz/artifacts/$t/")
  # The session logs each refused request on stderr; keep libFuzzer's own output only.
  [[ $t == vhost_user ]] && a+=(-close_fd_mask=2)
  printf '%s\n' "${a[@]}"
}

# run_one TARGET SECS [ARGS...]: fuzz, log, print the final stats; returns libFuzzer's status.
run_one() {
  local t=$1 secs=$2; shift 2
  is_target "$t" || die "unknown target $t (one of: ${TARGETS[*]})"
  local work="$CARGO_TARGET_DIR/corpus/$t" log="$CARGO_TARGET_DIR/logs/$t.log"
  mkdir -p "$work" "$ROOT/fuzz/artifacts/$t" "$(dirname "$log")" "$ROOT/fuzz/corpus/$t"
  local args
  mapfile -t args < <(fuzzer_args "$t")
  echo "== $t: ${secs}s (log: ${log#"$ROOT"/})"
  local rc=0
  $NICE "$BIN/$t" "${args[@]}" -max_total_time="$secs" "$@" "$work" "$ROOT/fuzz/corpus/$t" >"$log" 2>&1 || rc=$?
  local execs rate cov
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
  rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)
  cov=$(grep -E '^#[0-9]+' "$log" | tail -1 | grep -oE 'cov: [0-9]+ ft: [0-9]+ corp: [0-9]+/[0-9]+[a-zA-Z]*' || true)
  echo "   $t: ${execs:-?} executions, ${rate:-?} exec/s, ${cov:-no coverage line}, exit $rc"
  if [[ $rc -ne 0 ]]; then
    echo "   $t FAILED; the end of its log:" >&2
    tail -40 "$log" >&2
  fi
  return "$rc"
}

cmd=${1:-}
[[ -n $cmd ]] || { sed -n '4,17p' "$0"; exit 2; }
shift
case $cmd in
  build) build ;;
  smoke | all)
    if [[ $cmd == smoke ]]; then secs=${1:-15}; else secs=${1:?all SECS}; fi
    build
    failed=0
    for t in "${TARGETS[@]}"; do run_one "$t" "$secs" || failed=1; done
    exit $failed
    ;;
  run)
    t=${1:?run TARGET SECS}; secs=${2:?run TARGET SECS}; shift 2
    build
    run_one "$t" "$secs" "$@"
    ;;
  minimize)
    build
    (($#)) || set -- "${TARGETS[@]}"
    for t in "$@"; do
      is_target "$t" || die "unknown target $t"
      new="$CARGO_TARGET_DIR/corpus-merged/$t"
      rm -rf "$new"; mkdir -p "$new" "$CARGO_TARGET_DIR/corpus/$t"
      mapfile -t args < <(fuzzer_args "$t")
      $NICE "$BIN/$t" "${args[@]}" -set_cover_merge=1 "$new" "$ROOT/fuzz/corpus/$t" "$CARGO_TARGET_DIR/corpus/$t" \
        >"$CARGO_TARGET_DIR/logs/$t.merge.log" 2>&1
      rm -rf "$ROOT/fuzz/corpus/$t"; cp -r "$new" "$ROOT/fuzz/corpus/$t"
    done
    # The merge names files by content hash: put the named seeds back, without duplicates.
    CARGO_TARGET_DIR="$ROOT/target/fuzz" cargo run -q --manifest-path fuzz/Cargo.toml --bin seeds -- "$ROOT/fuzz/corpus" >/dev/null
    for f in "$ROOT"/fuzz/corpus/*/seed-*; do
      dup="$(dirname "$f")/$(sha1sum "$f" | cut -d' ' -f1)"
      [[ -f $dup ]] && rm "$dup"
    done
    for t in "$@"; do echo "$t: $(find "$ROOT/fuzz/corpus/$t" -type f | wc -l) inputs in fuzz/corpus/$t"; done
    ;;
  repro)
    t=${1:?repro TARGET FILE...}; shift
    is_target "$t" || die "unknown target $t"
    build
    RUST_BACKTRACE=${RUST_BACKTRACE:-1} "$BIN/$t" -timeout=30 "$@"
    ;;
  seeds)
    cargo run --manifest-path fuzz/Cargo.toml --bin seeds -- "$ROOT/fuzz/corpus"
    ;;
  *) die "unknown command $cmd (build, smoke, run, all, minimize, repro, seeds)" ;;
esac
