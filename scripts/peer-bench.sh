#!/usr/bin/env bash
# Peer benchmark: our vswitch against DPDK's own vhost-user back-end, same guest driver, same
# machine, one run, each direction of one vhost port measured on its own. See
# scripts/README-peer-bench.md.
#
# Every run is exactly two processes: one switch and one guest, each with one vhost-user
# connection (one socket, one queue pair).
# Guest: dpdk-testpmd with one virtio-user port (DPDK's virtio driver over vhost-user), forward
#   mode txonly --txpkts=<size> (guest->host) or rxonly (host->guest).
# Switch (a) "dpdk": dpdk-testpmd with one net_vhost port, rxonly (guest->host) or txonly
#   --txpkts=<size> (host->guest), one forwarding lcore.
# Switch (b) "memcpy", "worker": target/release/vswitch, one PMD thread, --engine <name> (adaptive
#   offload on, as by default; "worker-noadapt" is the worker engine with --no-adaptive), with
#   --port vhost-user:<sock> --port sink (guest->host) or --port source:<size> --port
#   vhost-user:<sock> (host->guest).
# Rate of a run = packets per second received by the receiving side over WINDOW seconds after
#   WARMUP seconds of traffic: guest->host, the switch (testpmd's Rx-pps / the vswitch sink's
#   counter); host->guest, the guest (testpmd's Rx-pps), the same for both switches. The sending
#   side's rate is printed next to it as a cross-check.
# Cores (this machine has 2): the switch's forwarding thread on CPU 0, the guest's forwarding
#   lcore on CPU 1; each testpmd's main lcore (idle: it only prints stats) on the other CPU.
#
# Environment: ROUNDS (2), WARMUP (2 s), WINDOW (4 s), SIZES ("64 1518"), DIRS ("g2h h2g"),
#   ENGINES ("memcpy worker"), TESTPMD (dpdk-testpmd), VSWITCH_BIN (built here if unset),
#   KEEP_LOGS=1 to keep the per-run logs.
set -uo pipefail
cd "$(dirname "$0")/.."

ROUNDS=${ROUNDS:-2}
WARMUP=${WARMUP:-2}
WINDOW=${WINDOW:-4}
SIZES=${SIZES:-"64 1518"}
DIRS=${DIRS:-"g2h h2g"}
ENGINES=${ENGINES:-"memcpy worker"}
TESTPMD=${TESTPMD:-dpdk-testpmd}
SWITCH_CPU=0
GUEST_CPU=1
MEM_MB=512

die() { echo "peer-bench: $*" >&2; exit 1; }
command -v "$TESTPMD" >/dev/null 2>&1 || die "$TESTPMD not found (Debian: apt-get install dpdk-dev; scripts/test.sh installs it)"
[ "$(nproc)" -ge 2 ] || die "needs at least 2 CPUs (switch on one, guest on the other)"
for d in $DIRS; do case $d in g2h | h2g) ;; *) die "DIRS: expected g2h and/or h2g, got $d" ;; esac; done
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
# The switch under test must be there: a benchmark that quietly measured only the baseline
# would look like a result. (No `cmd | grep -q` under pipefail: grep exits at the first match,
# the writer gets SIGPIPE and the pipeline "fails" although the text was there.)
if [ -n "$VSWITCH" ]; then
  [ -x "$VSWITCH" ] || die "VSWITCH_BIN=$VSWITCH is not executable"
else
  VSWITCH=target/release/vswitch
  echo "== building $VSWITCH (cargo build --release -p vswitch-datapath --bin vswitch)"
  if ! cargo build --release -p vswitch-datapath --bin vswitch >"$WORK/build.log" 2>&1; then
    tail -n 20 "$WORK/build.log"
    die "building $VSWITCH failed"
  fi
fi
help_text=$("$VSWITCH" --help 2>&1 || true)
case $help_text in
  *'source:<bytes>'*) ;;
  *) die "$VSWITCH --help does not mention source:<bytes> ports; it printed: $help_text" ;;
esac

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

# A rate series is one sample per line, one a second, from the log of a run:
#   testpmd: "<pps>" (its Rx-pps or Tx-pps of port 0, the only port; --stats-period=1);
#   vswitch: "<t seconds> <cumulative packets>" of one port (--stats-interval 1).
series() { # <log> testpmd Rx|Tx   or   <log> vswitch <port name> rx|tx
  if [ "$2" = testpmd ]; then
    awk -v f="$3-pps:" '/NIC statistics for port/ { port = $(NF-1) + 0 } $1 == f && port == 0 { print $2 }' "$1"
  else
    awk -v name="$3:" -v f="$4" '
      /^t=/ { t = substr($1, 3) + 0 }
      $1 == name { for (i = 2; i < NF - 1; i++) if ($i == f && $(i + 2) == "pkts") { print t, $(i + 1); break } }' "$1"
  fi
}
# How many samples since the first one with traffic.
samples() { awk '!go && $NF > 0 { go = 1 } go { n++ } END { print n + 0 }'; }
# The rate in pps over WINDOW samples after the first one with traffic and WARMUP more (fewer if
# the series is shorter; if it has no sample after the warm-up, every sample after the first with
# traffic: a sender's stats, printed by a main lcore that shares a CPU with the switch, may lag).
rate() {
  awk -v w="$WARMUP" -v n="$WINDOW" '
    !go && $NF > 0 { go = 1 }
    go { k++
         if (NF == 1) { if (k > w + 1 && k <= w + n + 1) { sum += $1; cnt++ } if (k > 1) { fsum += $1; fcnt++ } }
         else { if (k == 1) { f0 = $1; g0 = $2 } if (k == w + 1) { t0 = $1; c0 = $2 }
                if (k > w + 1 && k <= w + n + 1) { t1 = $1; c1 = $2 } if (k > 1) { f1 = $1; g1 = $2 } } }
    END {
      if (cnt) printf "%d\n", sum / cnt
      else if (t1 > t0) printf "%d\n", (c1 - c0) / (t1 - t0)
      else if (fcnt) printf "%d\n", fsum / fcnt
      else if (f1 > f0) printf "%d\n", (g1 - g0) / (f1 - f0)
      else print 0
    }'
}

# run_one <label> <size> <dir>: starts the switch <label> (dpdk | memcpy | worker ...) and the
# guest, measures, stops both; sets RESULT to "<rx pps> <sender pps>" or "FAIL <why>". (Not run
# in a subshell, so that PIDS and PREFIXES reach the cleanup trap.)
run_one() {
  local label=$1 size=$2 dir=$3 rundir
  rundir="$WORK/$label-$size-$dir-$RANDOM"; mkdir -p "$rundir"
  local s0="$rundir/s0.sock" sw_pid guest_pid rx_src tx_src
  local swlog="$rundir/switch.log" glog="$rundir/guest.log"
  if [ "$label" = dpdk ]; then
    local mode=(--forward-mode=rxonly)
    [ "$dir" = h2g ] && mode=(--forward-mode=txonly --txpkts="$size")
    eal vhost "0@$GUEST_CPU,1@$SWITCH_CPU"
    # shellcheck disable=SC2086
    $STDBUF "$TESTPMD" $EAL --vdev "net_vhost0,iface=$s0,queues=1" -- "${mode[@]}" \
      --port-topology=loop --auto-start --nb-cores=1 --total-num-mbufs=16384 --stats-period=1 \
      </dev/null >"$swlog" 2>&1 &
  else
    local ports=(--port "vhost-user:$s0" --port sink)
    [ "$dir" = h2g ] && ports=(--port "source:$size" --port "vhost-user:$s0")
    # "<engine>-noadapt": the engine with adaptive offload off (--no-adaptive).
    local engine=(--engine "${label%-noadapt}")
    [ "$label" != "${label%-noadapt}" ] && engine+=(--no-adaptive)
    "$VSWITCH" "${ports[@]}" "${engine[@]}" --pmd-cores "$SWITCH_CPU" --stats-interval 1 \
      </dev/null >"$swlog" 2>&1 &
  fi
  sw_pid=$!; PIDS+=("$sw_pid")
  if ! wait_sockets "$sw_pid" "$s0"; then
    RESULT="FAIL switch did not come up (see below)"; tail -n 5 "$swlog" >&2; stop "$sw_pid"; return
  fi
  local mode=(--forward-mode=txonly --txpkts="$size")
  [ "$dir" = h2g ] && mode=(--forward-mode=rxonly)
  eal guest "0@$SWITCH_CPU,1@$GUEST_CPU"
  # shellcheck disable=SC2086
  $STDBUF "$TESTPMD" $EAL --vdev "net_virtio_user0,path=$s0,queues=1" -- "${mode[@]}" \
    --port-topology=loop --auto-start --nb-cores=1 --total-num-mbufs=16384 --stats-period=1 \
    </dev/null >"$glog" 2>&1 &
  guest_pid=$!; PIDS+=("$guest_pid")
  # Where the rate is read: the receiving side; and the sending side, as a cross-check.
  case $label/$dir in
    dpdk/g2h) rx_src=("$swlog" testpmd Rx); tx_src=("$glog" testpmd Tx) ;;
    */g2h) rx_src=("$swlog" vswitch sink1 tx); tx_src=("$glog" testpmd Tx) ;;
    dpdk/h2g) rx_src=("$glog" testpmd Rx); tx_src=("$swlog" testpmd Tx) ;;
    */h2g) rx_src=("$glog" testpmd Rx); tx_src=("$swlog" vswitch vhost1 tx) ;;
  esac
  # Until the receiver has WARMUP + WINDOW samples after the first with traffic (or a deadline).
  local deadline=$((SECONDS + WARMUP + WINDOW + 20))
  while [ $SECONDS -lt $deadline ]; do
    sleep 1
    kill -0 "$sw_pid" 2>/dev/null && kill -0 "$guest_pid" 2>/dev/null || break
    [ "$(series "${rx_src[@]}" | samples)" -gt $((WARMUP + WINDOW)) ] && break
  done
  stop "$guest_pid"
  stop "$sw_pid"
  [ "$label" != dpdk ] && cp "$swlog" "$WORK/last-switch-$label-$dir.log" 2>/dev/null
  local rx tx
  rx=$(series "${rx_src[@]}" | rate)
  tx=$(series "${tx_src[@]}" | rate)
  if [ "${rx:-0}" = 0 ]; then
    RESULT="FAIL no traffic"; tail -n 5 "$glog" >&2; tail -n 5 "$swlog" >&2; return
  fi
  RESULT="$rx ${tx:-0}"
}

mpps() { awk -v p="$1" 'BEGIN { printf "%.3f", p / 1e6 }'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (a > 0 && b > 0) printf "%.2f", a / b; else printf "n/a" }'; }
dirname_() { [ "$1" = g2h ] && echo "guest->host" || echo "host->guest"; }

labels=(dpdk)
for e in $ENGINES; do labels+=("$e"); done

echo "== peer benchmark: rounds=$ROUNDS warmup=${WARMUP}s window=${WINDOW}s sizes=[$SIZES] directions=[$DIRS] switches=[${labels[*]}]"
echo "   switch forwarding thread on CPU $SWITCH_CPU, guest (testpmd, 1 virtio-user port, txonly/rxonly) on CPU $GUEST_CPU"
T0=$SECONDS
declare -A BEST SUM CNT
for size in $SIZES; do
  for dir in $DIRS; do
    for round in $(seq "$ROUNDS"); do
      for label in "${labels[@]}"; do
        run_one "$label" "$size" "$dir"; out=$RESULT
        case $out in
          FAIL*) printf '   %5s B %-11s round %s %-7s %s\n' "$size" "$(dirname_ "$dir")" "$round" "$label" "$out"; continue ;;
        esac
        set -- $out
        printf '   %5s B %-11s round %s %-7s received %7s Mpps (sender %7s Mpps)\n' "$size" "$(dirname_ "$dir")" \
          "$round" "$label" "$(mpps "$1")" "$(mpps "$2")"
        k="$label/$size/$dir"
        [ "$1" -gt "${BEST[$k]:-0}" ] && BEST[$k]=$1
        SUM[$k]=$(( ${SUM[$k]:-0} + $1 ))
        CNT[$k]=$(( ${CNT[$k]:-0} + 1 ))
      done
    done
  done
done
mean() { local c=${CNT[$1]:-0}; [ "$c" -gt 0 ] && echo $(( ${SUM[$1]} / c )) || echo 0; }

echo
echo "Mpps received (guest->host: by the switch; host->guest: by the guest), best of $ROUNDS rounds and mean of the rounds"
fmt='%-5s %-11s %-7s | %9s %9s %6s | %9s %9s %6s\n'
printf "$fmt" size direction engine "ours best" "dpdk best" ratio "ours mean" "dpdk mean" ratio
for size in $SIZES; do
  for dir in $DIRS; do
    db=${BEST[dpdk/$size/$dir]:-0}; dm=$(mean "dpdk/$size/$dir")
    for e in $ENGINES; do
      ob=${BEST[$e/$size/$dir]:-0}; om=$(mean "$e/$size/$dir")
      printf "$fmt" "$size" "$(dirname_ "$dir")" "$e" "$(mpps "$ob")" "$(mpps "$db")" "$(ratio "$ob" "$db")" \
        "$(mpps "$om")" "$(mpps "$dm")" "$(ratio "$om" "$dm")"
    done
  done
done
echo "ratio = ours / dpdk. Both switches get one forwarding core (CPU $SWITCH_CPU), the guest one (CPU $GUEST_CPU); a"
echo "ratio near 1 may mean the guest, not the switch, is the bottleneck (compare the sender column above)."
echo "total time $((SECONDS - T0)) s"
for e in $ENGINES; do
  for dir in $DIRS; do
    if [ -f "$WORK/last-switch-$e-$dir.log" ]; then
      echo "-- vswitch --engine $e, $(dirname_ "$dir"), per-port counters at exit of its last run:"
      grep -E '^t=|^  ' "$WORK/last-switch-$e-$dir.log" | tail -n 3
    fi
  done
done
