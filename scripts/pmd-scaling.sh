#!/usr/bin/env bash
# PMD scaling: packets/s of the vswitch with 1 PMD and with 2 PMDs, on source -> sink pairs
# (64 B, no guest), each PMD with its own engine. Configurations:
#   1pmd        1 PMD, 1 pair
#   2pmd-local  2 PMDs, 2 pairs, each pair on one PMD (no packet crosses)
#   2pmd-cross  2 PMDs, 2 pairs, each pair across the PMDs (every packet crosses on a ring)
# Usage: scripts/pmd-scaling.sh [SECS] [ENGINE]   (default 3 s, memcpy)
# Limit: this machine has 2 cores, so 2 PMDs is as far as the curve goes, and the sources, the
# sinks, the worker threads (ENGINE=worker) and anything else running share those 2 cores.
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-3}
engine=${2:-memcpy}
cargo build --release -q -p vswitch-datapath --bin vswitch
bin=target/release/vswitch
cores=$(nproc)

total() { # sums the sinks' tx packets of the final stats blocks
  grep -E '^  sink[0-9]+:' | awk '{ for (i = 1; i <= NF; i++) if ($i == "tx") { s += $(i+1) } } END { print s + 0 }'
}

run() {
  local name=$1; shift
  local pkts
  pkts=$("$bin" --engine "$engine" --duration "$secs" --stats-interval 0 "$@" | total)
  awk -v n="$name" -v p="$pkts" -v s="$secs" 'BEGIN { printf "%-12s %8.2f Mpps\n", n, p / s / 1e6 }'
}

echo "vswitch PMD scaling, 64 B source -> sink, engine $engine, ${secs}s each, $cores cores"
run 1pmd --port source:64 --port sink --pmd-cores 0
if [ "$cores" -ge 2 ]; then
  run 2pmd-local --port source:64 --port sink --port source:64 --port sink --pmd-cores 0,1 \
    --port-pmd 0:0 --port-pmd 1:0 --port-pmd 2:1 --port-pmd 3:1
  run 2pmd-cross --port source:64 --port sink --port source:64 --port sink --pmd-cores 0,1 \
    --port-pmd 0:0 --port-pmd 1:1 --port-pmd 2:1 --port-pmd 3:0
else
  echo "one core: no second PMD to measure"
fi
