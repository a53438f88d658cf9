#!/usr/bin/env bash
# Peer benchmark: our vswitch against DPDK's own vhost-user back-end, same guest driver, same
# machine, one run. See scripts/README-peer-bench.md.
#
# Guest: one dpdk-testpmd with two virtio-user ports (DPDK's virtio driver over vhost-user),
#   port 0 on the switch's socket 0, port 1 on socket 1, forward mode flowgen: it generates
#   packets on each port and receives-and-drops on each port, so both directions of the switch
#   carry traffic at once: guest port 0 -> switch port 0 (southbound) -> switch port 1
#   (northbound) -> guest port 1, and the reverse. The rate of a direction is the guest's
#   RX rate on the arriving port (testpmd's Rx-pps).
# Switch (a): dpdk-testpmd with two net_vhost ports, io forwarding 0<->1, one forwarding lcore.
# Switch (b): target/release/vswitch, one PMD thread, --engine memcpy / worker.
# Cores (this machine has 2): the switch's forwarding thread on CPU 0, the guest's forwarding
#   lcore on CPU 1; each testpmd's main lcore (idle: it only prints stats) on the other CPU.
#
# Environment: ROUNDS (2), WARMUP (2 s), WINDOW (5 s), SIZES ("64 1518"),
#   ENGINES ("memcpy worker"), TESTPMD (dpdk-testpmd), VSWITCH_BIN (built here if unset),
#   KEEP_LOGS=1 to keep the per-run logs.
set -uo pipefail
cd "$(dirname "$0")/.."

ROUNDS=${ROUNDS:-2}
WARMUP=${WARMUP:-2}
WINDOW=${WINDOW:-5}
SIZES=${SIZES:-"64 1518"}
ENGINES=${ENGINES:-"memcpy worker"}
TESTPMD=${TESTPMD:-dpdk-testpmd}
SWITCH_CPU=0
GUEST_CPU=1
MEM_MB=512

die() { echo "peer-bench: $*" >&2; exit 1; }
command -v "$TESTPMD" >/dev/null 2>&1 || die "$TESTPMD not found (Debian: apt-get install dpdk-dev; scripts/test.sh installs it)"
[ "$(nproc)" -ge 2 ] || die "needs at least 2 CPUs (switch on one, guest on the other)"
STDBUF=""; command -v stdbuf >/dev/null 2>&1 && STDBUF="stdbuf -oL -eL"

# Same machine-wide lock as the interop tests: never two runs pinning busy pollers at once.
exec 9>"${TMPDIR:-/tmp}/copy-engine-interop.lock"
flock -w 900 9 || die "another interop test or benchmark run holds ${TMPDIR:-/tmp}/copy-engine-interop.lock"

WORK=$(mktemp -d /tmp/ce-peer-bench.XXXXXX)
PIDS=()
PREFIXES=()
cleanup() {
  local p
  for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null; done
  for p in "${PIDS[@]}"; do
    for _ in $(seq 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$p" 2>/dev/null
  done
  for p in "${PREFIXES[@]}"; do rm -rf "/var/run/dpdk/$p" "${XDG_RUNTIME_DIR:-/tmp}/dpdk/$p" "/tmp/dpdk/$p"; done
  if [ "${KEEP_LOGS:-0}" = 1 ]; then echo "logs kept in $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ---- the vswitch binary ----
VSWITCH=${VSWITCH_BIN:-}
VSWITCH_OK=0
if [ -n "$VSWITCH" ]; then
  [ -x "$VSWITCH" ] && VSWITCH_OK=1 || echo "peer-bench: VSWITCH_BIN=$VSWITCH is not executable"
else
  VSWITCH=target/release/vswitch
  echo "== building $VSWITCH (cargo build --release -p vswitch-datapath --bin vswitch)"
  if cargo build --release -p vswitch-datapath --bin vswitch >"$WORK/build.log" 2>&1; then
    VSWITCH_OK=1
  else
    tail -n 20 "$WORK/build.log"
    if [ -x "$VSWITCH" ]; then
      echo "peer-bench: the build FAILED; using the existing, possibly stale, $VSWITCH"
      VSWITCH_OK=1
    else
      echo "peer-bench: the build FAILED and there is no $VSWITCH: DPDK baseline only"
    fi
  fi
fi

eal() { # <name> <lcores>: sets EAL to EAL arguments with a unique file prefix
  local prefix="ce-pb-$1-$$-$RANDOM"
  PREFIXES+=("$prefix")
  EAL="--lcores=$2 --no-huge --no-pci -m $MEM_MB --file-prefix=$prefix --no-shconf --no-telemetry --log-level=5"
}

wait_sockets() { # <pid> <sock>...: until every socket exists (10 s) and the process lives
  local pid=$1; shift
  for _ in $(seq 100); do
    kill -0 "$pid" 2>/dev/null || return 1
    local all=1 s
    for s in "$@"; do [ -S "$s" ] || all=0; done
    [ $all = 1 ] && return 0
    sleep 0.1
  done
  return 1
}

stop() { # <pid>: SIGINT (clean exit, prints stats), SIGKILL after 10 s
  kill -INT "$1" 2>/dev/null
  for _ in $(seq 100); do kill -0 "$1" 2>/dev/null || { wait "$1" 2>/dev/null; return; }; sleep 0.1; done
  kill -KILL "$1" 2>/dev/null; wait "$1" 2>/dev/null
}

# Average Rx-pps per port over the stats blocks after the warm-up: prints "<port0> <port1>" in pps.
rx_pps() {
  awk -v skip="$WARMUP" '
    /NIC statistics for port/ { port = $(NF-1) + 0 }
    /Rx-pps:/ { n[port]++; if (n[port] > skip) { sum[port] += $2; cnt[port]++ } }
    END { printf "%d %d\n", (cnt[0] ? sum[0]/cnt[0] : 0), (cnt[1] ? sum[1]/cnt[1] : 0) }' "$1"
}

# run_one <label> <size>: starts the switch <label> (dpdk | memcpy | worker ...), the guest,
# measures, stops both; sets RESULT to "<pps 0->1> <pps 1->0>" or "FAIL <why>". (Not run in a
# subshell, so that PIDS and PREFIXES reach the cleanup trap.)
run_one() {
  local label=$1 size=$2 dir
  dir="$WORK/$label-$size-$RANDOM"; mkdir -p "$dir"
  local s0="$dir/s0.sock" s1="$dir/s1.sock" sw_pid
  if [ "$label" = dpdk ]; then
    eal vhost "0@$GUEST_CPU,1@$SWITCH_CPU"
    # shellcheck disable=SC2086
    $STDBUF "$TESTPMD" $EAL \
      --vdev "net_vhost0,iface=$s0,queues=1" --vdev "net_vhost1,iface=$s1,queues=1" -- \
      --forward-mode=io --auto-start --nb-cores=1 --total-num-mbufs=16384 --stats-period=60 \
      </dev/null >"$dir/switch.log" 2>&1 &
  else
    "$VSWITCH" --port "vhost-user:$s0" --port "vhost-user:$s1" --engine "$label" \
      --pmd-cores "$SWITCH_CPU" --stats-interval 0 </dev/null >"$dir/switch.log" 2>&1 &
  fi
  sw_pid=$!; PIDS+=("$sw_pid")
  if ! wait_sockets "$sw_pid" "$s0" "$s1"; then
    RESULT="FAIL switch did not come up (see below)"; tail -n 5 "$dir/switch.log" >&2; stop "$sw_pid"; return
  fi
  local guest_pid
  eal guest "0@$SWITCH_CPU,1@$GUEST_CPU"
  # shellcheck disable=SC2086
  $STDBUF "$TESTPMD" $EAL \
    --vdev "net_virtio_user0,path=$s0,queues=1" --vdev "net_virtio_user1,path=$s1,queues=1" -- \
    --forward-mode=flowgen --txpkts="$size" --auto-start --nb-cores=1 --total-num-mbufs=16384 \
    --stats-period=1 </dev/null >"$dir/guest.log" 2>&1 &
  guest_pid=$!; PIDS+=("$guest_pid")
  sleep $((WARMUP + WINDOW + 1))
  stop "$guest_pid"
  stop "$sw_pid"
  cp "$dir/switch.log" "$WORK/last-switch-$label.log" 2>/dev/null
  local r; r=$(rx_pps "$dir/guest.log")
  if [ "$r" = "0 0" ]; then
    RESULT="FAIL no traffic"; tail -n 5 "$dir/guest.log" >&2; tail -n 5 "$dir/switch.log" >&2; return
  fi
  # The guest's port 1 receives direction 0->1, its port 0 direction 1->0.
  set -- $r
  RESULT="$2 $1"
}

mpps() { awk -v p="$1" 'BEGIN { printf "%.3f", p / 1e6 }'; }

labels=(dpdk)
[ $VSWITCH_OK = 1 ] && for e in $ENGINES; do labels+=("$e"); done

echo "== peer benchmark: rounds=$ROUNDS warmup=${WARMUP}s window=${WINDOW}s sizes=[$SIZES] switches=[${labels[*]}]"
echo "   switch forwarding thread on CPU $SWITCH_CPU, guest (testpmd flowgen, 2 virtio-user ports) on CPU $GUEST_CPU"
declare -A BEST01 BEST10 SUM01 CNT
for size in $SIZES; do
  for round in $(seq "$ROUNDS"); do
    for label in "${labels[@]}"; do
      run_one "$label" "$size"; out=$RESULT
      printf '   size %5s round %s %-8s %s\n' "$size" "$round" "$label" "$out"
      case $out in FAIL*) continue ;; esac
      set -- $out
      k="$label/$size"
      # Best round by the sum of both directions: interference only ever lowers a rate.
      if [ $(( $1 + $2 )) -gt $(( ${BEST01[$k]:-0} + ${BEST10[$k]:-0} )) ]; then
        BEST01[$k]=$1; BEST10[$k]=$2
      fi
      SUM01[$k]=$(( ${SUM01[$k]:-0} + $1 + $2 ))
      CNT[$k]=$(( ${CNT[$k]:-0} + 1 ))
    done
  done
done

best() { # <assoc name> <key>
  local -n a=$1
  echo "${a[$2]:-0}"
}
mean_sum() { # <key>: mean over the rounds of both directions summed
  local c=${CNT[$1]:-0}
  [ "$c" -gt 0 ] && echo $(( ${SUM01[$1]} / c )) || echo 0
}
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else printf "n/a" }'; }

echo
echo "Mpps received by the guest, best of $ROUNDS rounds (0->1 = guest port 0 -> switch port 0 -> switch port 1 -> guest port 1)"
printf '%-6s %-8s %9s %9s %9s | %9s %9s %9s | %6s %6s\n' size engine "ours 0->1" "ours 1->0" "ours sum" "dpdk 0->1" "dpdk 1->0" "dpdk sum" ratio "(mean)"
for size in $SIZES; do
  d01=$(best BEST01 "dpdk/$size"); d10=$(best BEST10 "dpdk/$size"); dsum=$((d01 + d10))
  dmean=$(mean_sum "dpdk/$size")
  if [ $VSWITCH_OK != 1 ]; then
    printf '%-6s %-8s %9s %9s %9s | %9s %9s %9s | %6s %6s\n' "$size" "-" "-" "-" "-" \
      "$(mpps "$d01")" "$(mpps "$d10")" "$(mpps "$dsum")" "n/a" "n/a"
    continue
  fi
  for e in $ENGINES; do
    o01=$(best BEST01 "$e/$size"); o10=$(best BEST10 "$e/$size"); osum=$((o01 + o10))
    printf '%-6s %-8s %9s %9s %9s | %9s %9s %9s | %6s %6s\n' "$size" "$e" \
      "$(mpps "$o01")" "$(mpps "$o10")" "$(mpps "$osum")" \
      "$(mpps "$d01")" "$(mpps "$d10")" "$(mpps "$dsum")" "$(ratio "$osum" "$dsum")" \
      "$(ratio "$(mean_sum "$e/$size")" "$dmean")"
  done
done
echo "ratio = ours sum / dpdk sum of the best rounds; (mean) = the same over the means. Both switches get one forwarding core; on a 2-core machine the"
echo "guest's single forwarding core may be the bottleneck of either, which caps the ratio near 1."
if [ $VSWITCH_OK = 1 ]; then
  for e in $ENGINES; do
    if [ -f "$WORK/last-switch-$e.log" ]; then
      echo "-- vswitch --engine $e, per-port counters at exit of its last run:"
      grep -E '^t=|^  ' "$WORK/last-switch-$e.log" | tail -n 3
    fi
  done
fi
