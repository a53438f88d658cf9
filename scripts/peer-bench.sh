#!/usr/bin/env bash
# Peer benchmark: our vswitch against DPDK's own vhost-user back-end, same guest driver, same
# machine, one run, each direction of one vhost port measured on its own. See
# scripts/README-peer-bench.md.
#
# Every run is exactly two processes: one switch and one guest, each with one vhost-user
# connection (one socket, one queue pair).
# Guest: dpdk-testpmd with one virtio-user port (DPDK's virtio driver over vhost-user, mergeable
#   RX buffers on: mrg_rxbuf=1), forward mode txonly --txpkts=<size> (guest->host) or rxonly
#   (host->guest).
# Switch (a) "dpdk": dpdk-testpmd with one net_vhost port, rxonly (guest->host) or txonly
#   --txpkts=<size> (host->guest), one forwarding lcore.
# Switch (b) "memcpy", "worker": target/release/vswitch, one PMD thread, --engine <name> (adaptive
#   offload on, as by default; "worker-noadapt" is the worker engine with --no-adaptive), with
#   --port vhost-user:<sock> --port sink (guest->host) or --port source:<size> --port
#   vhost-user:<sock> (host->guest).
# Jumbo settings, for sizes > 1518 (JUMBO=auto) or every size (JUMBO=all): every txonly sender
#   (the guest, or DPDK's switch) gets --mbuf-size=10240 so that a packet is one segment
#   (testpmd's txonly refuses a --txpkts longer than its mbufs and falls back to 64 B); DPDK's
#   switch receiving gets the same, one buffer per packet like our switch's 9280 B buffers; the
#   receiving guest keeps its 2 KB mbufs and gets --max-pkt-len=9234 --enable-scatter: a packet
#   spans several mergeable RX buffers. The mbuf size alone moves rates by 10-70 % (a guest
#   sending from 10 KB mbufs is faster), so a sweep over sizes wants JUMBO=all: cells that
#   differ in packet size only.
# Rate of a run = packets per second received by the receiving side over WINDOW seconds after
#   WARMUP seconds of traffic: guest->host, the switch (testpmd's Rx-pps / the vswitch sink's
#   counter); host->guest, the guest (testpmd's Rx-pps), the same for both switches. The sending
#   side's rate is printed next to it as a cross-check. A run whose receiver counted packets of
#   another size than asked (bytes / packets) fails: it measured something else.
# Rings: RINGS="split packed" measures each cell with split virtqueues and again with packed ones
#   (VIRTIO 1.1): the guest's virtio-user port gets packed_vq=1, and both switches must have
#   negotiated VIRTIO_F_RING_PACKED (checked in their logs: DPDK's "negotiated Virtio features",
#   our switch's vhost-user trace, VSWITCH_VHOST_TRACE=1), else the run fails: a guest quietly
#   falling back to split rings would be measured as packed.
# Rounds: for each cell (size, direction, ring) round 1 runs every switch once, then round 2 ..., so
#   drift over time hits every switch alike. Per cell and switch: the median of the rounds, the
#   spread (min - max), and the ratio of medians ours / DPDK.
# Cores (this machine has 2): the switch's forwarding thread on CPU 0, the guest's forwarding
#   lcore on CPU 1; each testpmd's main lcore (idle: it only prints stats) on the other CPU.
# Cache-line round trip: before and after every run, `vswitch cpu-latency` measures how long one
#   cache line takes from the switch's CPU to the guest's and back ("c2c <before>/<after>" in the
#   round lines, both in the CSV). Every packet pays such hand-offs: on the 2-CPU VMs here it
#   reads 75-130 ns (the two vCPUs share a cache) or 290-450 ns (they do not), changing within
#   minutes or seconds, and the host->guest rates of every switch follow it. A run whose two
#   readings differ 2x or more changed state during the run; the end counts them. Compare runs
#   of like c2c. C2C_MAX=<ns> waits before each run (up to C2C_WAIT seconds, 120) until a
#   reading is at most that (C2C_MAX=150: the vCPUs share a cache); a run that could not wait it
#   out says so.
#
# Environment: ROUNDS (5), WARMUP (2 s), WINDOW (4 s), SIZES ("64 1518"; 42..9216), DIRS
#   ("g2h h2g"), RINGS ("split"; or "packed", or "split packed"), ENGINES ("memcpy worker"; an
#   entry <engine>@<path> runs that engine on another vswitch binary, for an A/B of two builds in
#   one alternated run: ENGINES="memcpy memcpy@/tmp/vswitch-b"), TESTPMD (dpdk-testpmd), VSWITCH_BIN (built here if
#   unset), JUMBO (auto; or all), CSV=<path> to also write the results as CSV (one row per cell and switch),
#   KEEP_LOGS=1 to keep the per-run logs, C2C_MAX and C2C_WAIT (see "Cache-line round trip").
# Arguments: none (--help prints this text; anything else is refused with exit 2).
# Exit status: 0 every run measured; 1 some run failed (its cell says FAIL and why; the tables
#   and the CSV are still written); 2 nothing measured (setup error).
set -uo pipefail
export LC_ALL=C  # a decimal point in every number printed, whatever the caller's locale
cd "$(dirname "$0")/.." || exit 2

ROUNDS=${ROUNDS:-5}
WARMUP=${WARMUP:-2}
WINDOW=${WINDOW:-4}
SIZES=${SIZES:-"64 1518"}
DIRS=${DIRS:-"g2h h2g"}
RINGS=${RINGS:-split}
ENGINES=${ENGINES:-"memcpy worker"}
TESTPMD=${TESTPMD:-dpdk-testpmd}
SWITCH_CPU=0
GUEST_CPU=1
MEM_MB=512
JUMBO_MBUF=10240  # mbuf data room (with its 128 B headroom) that holds a 9216 B packet whole
JUMBO_PKT_LEN=9234  # the largest size, 9216 B, + 18: the --max-pkt-len of a receiving guest
JUMBO=${JUMBO:-auto}
CSV=${CSV:-}
C2C_MAX=${C2C_MAX:-}
C2C_WAIT=${C2C_WAIT:-120}

die() { echo "peer-bench: $*" >&2; exit 2; }
# Settings are environment variables (above); an argument is a mistake, not a run.
usage() { sed -n '2,/^set -uo/p' "$0" | sed '$d; s/^# \{0,1\}//'; }
case ${1:-} in
  "") ;;
  -h | --help) usage; exit 0 ;;
  *) usage >&2; die "takes no arguments (settings are environment variables, above); got $*" ;;
esac
command -v "$TESTPMD" >/dev/null 2>&1 || die "$TESTPMD not found (Debian: apt-get install dpdk-dev; scripts/test.sh installs it)"
[ "$(nproc)" -ge 2 ] || die "needs at least 2 CPUs (switch on one, guest on the other)"
for d in $DIRS; do case $d in g2h | h2g) ;; *) die "DIRS: expected g2h and/or h2g, got $d" ;; esac; done
for r in $RINGS; do case $r in split | packed) ;; *) die "RINGS: expected split and/or packed, got $r" ;; esac; done
for s in $SIZES; do
  case $s in '' | *[!0-9]*) die "SIZES: expected packet sizes in bytes, got $s" ;; esac
  # 42: the Ethernet/IPv4/UDP header both senders write; 9216: the vswitch source's largest.
  if [ "$s" -lt 42 ] || [ "$s" -gt 9216 ]; then die "SIZES: $s is outside 42..9216"; fi
done
case $JUMBO in auto | all) ;; *) die "JUMBO: expected auto or all, got $JUMBO" ;; esac
case $ROUNDS in '' | *[!0-9]* | 0) die "ROUNDS: expected a count >= 1, got $ROUNDS" ;; esac
if [ -n "$CSV" ]; then
  if ! mkdir -p "$(dirname "$CSV")" || ! : >"$CSV"; then die "CSV=$CSV cannot be written"; fi
fi
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
# A vswitch binary with sink/source ports, or the run stops here.
check_vswitch() {
  local help_text
  help_text=$("$1" --help 2>&1 || true)
  case $help_text in
    *'source:<bytes>'*) ;;
    *) die "$1 --help does not mention source:<bytes> ports; it printed: $help_text" ;;
  esac
}
check_vswitch "$VSWITCH"
# The cache-line round trip between the two CPUs now (ns), or "-" if $VSWITCH cannot measure it.
C2C_OK=0
"$VSWITCH" cpu-latency --help >/dev/null 2>&1 && C2C_OK=1
if [ -n "$C2C_MAX" ]; then
  [ $C2C_OK = 1 ] || die "C2C_MAX: $VSWITCH has no cpu-latency subcommand"
  case $C2C_MAX$C2C_WAIT in *[!0-9]*) die "C2C_MAX and C2C_WAIT: whole numbers (ns, s)" ;; esac
fi
c2c_ns() {
  [ $C2C_OK = 1 ] || { echo -; return; }
  local v
  v=$("$VSWITCH" cpu-latency "$SWITCH_CPU" "$GUEST_CPU" --round-trips 20000 --runs 3 2>/dev/null |
    sed -n 's/.*: \([0-9.]*\) ns per.*/\1/p')
  echo "${v:--}"
}

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
# The mean size of the packets the receiver counted, from its last cumulative counters:
# bytes / packets (testpmd: RX-bytes / RX-packets of port 0; vswitch: "<port>: ... tx <n> pkts
# <b> bytes"); 0 if it counted none.
rx_size() { # <log> testpmd Rx   or   <log> vswitch <port name> rx|tx
  if [ "$2" = testpmd ]; then
    awk '/NIC statistics for port/ { port = $(NF-1) + 0 }
         $1 == "RX-packets:" && $5 == "RX-bytes:" && port == 0 { p = $2; b = $6 }
         END { if (p > 0) printf "%d\n", b / p + 0.5; else print 0 }' "$1"
  else
    awk -v name="$3:" -v f="$4" '
      $1 == name { for (i = 2; i < NF - 3; i++) if ($i == f && $(i + 2) == "pkts") { p = $(i + 1); b = $(i + 3); break } }
      END { if (p > 0) printf "%d\n", b / p + 0.5; else print 0 }' "$1"
  fi
}
# The first line of a testpmd or vswitch log that says why it did not do what it was asked (or
# nothing); died: that, else the log's last line.
complaint() {
  grep -a -E 'give up|[Ee]rror|[Ff]ail|[Ii]nvalid|[Cc]annot|^vswitch: ' "$1" 2>/dev/null \
    | grep -a -v -E 'promiscuous mode|-errors:|signal received|^vswitch: stopped' | head -n 1 | tr -d '\r' | cut -c1-160
}
died() { local c; c=$(complaint "$1"); [ -n "$c" ] || c=$(tail -n 1 "$1" | tr -d '\r' | cut -c1-160); echo "$c"; }

# The virtio feature word a switch's log says was negotiated (hex, no 0x), or nothing: DPDK's
# vhost library logs it (lib.vhost.config at info); our switch traces SET_FEATURES with its
# payload bytes, little-endian.
negotiated() { # <log> dpdk|vswitch
  if [ "$2" = dpdk ]; then
    sed -n 's/.*negotiated Virtio features: 0x\([0-9a-fA-F]*\).*/\1/p' "$1" | tail -n 1
  else
    sed -n 's/.*<- SET_FEATURES .*\[\([0-9a-f]\{16\}\)\].*/\1/p' "$1" | tail -n 1 \
      | sed 's/\(..\)\(..\)\(..\)\(..\)\(..\)\(..\)\(..\)\(..\)/\8\7\6\5\4\3\2\1/'
  fi
}
# Whether VIRTIO_F_RING_PACKED (bit 34) is set in a hex feature word.
has_packed() { [ -n "$1" ] && [ $(((16#$1 >> 34) & 1)) = 1 ]; }

# run_one <label> <size> <dir> <ring>: starts the switch <label> (dpdk | memcpy | worker ...) and
# the guest, measures, stops both; sets RESULT to "<rx pps> <sender pps>" or "FAIL <why>". (Not
# run in a subshell, so that PIDS and PREFIXES reach the cleanup trap.)
run_one() {
  local label=$1 size=$2 dir=$3 ring=$4 rundir
  rundir="$WORK/$label-$size-$dir-$ring-$RANDOM"; mkdir -p "$rundir"
  local s0="$rundir/s0.sock" sw_pid guest_pid rx_src tx_src
  local swlog="$rundir/switch.log" glog="$rundir/guest.log"
  # Jumbo settings (see the top): whole-packet mbufs for testpmd senders and DPDK's switch,
  # scattered mergeable RX for the guest.
  local big_mbuf=() guest_rx=()
  if [ "$size" -gt 1518 ] || [ "$JUMBO" = all ]; then
    big_mbuf=(--mbuf-size="$JUMBO_MBUF")
    guest_rx=(--max-pkt-len="$JUMBO_PKT_LEN" --enable-scatter)
  fi
  if [ "$label" = dpdk ]; then
    # (--mbuf-size before --txpkts: testpmd checks --txpkts against the mbuf size when it reads it.)
    local mode=("${big_mbuf[@]}" --forward-mode=rxonly)
    [ "$dir" = h2g ] && mode=("${big_mbuf[@]}" --forward-mode=txonly --txpkts="$size")
    eal vhost "0@$GUEST_CPU,1@$SWITCH_CPU"
    # Packed: the vhost library's negotiation log at info (the global level must allow it).
    [ "$ring" = packed ] && EAL=${EAL/--log-level=5/--log-level=lib.vhost.config:info}
    # shellcheck disable=SC2086
    $STDBUF "$TESTPMD" $EAL --vdev "net_vhost0,iface=$s0,queues=1" -- "${mode[@]}" \
      --port-topology=loop --auto-start --nb-cores=1 --total-num-mbufs=16384 --stats-period=1 \
      </dev/null >"$swlog" 2>&1 &
  else
    local ports=(--port "vhost-user:$s0" --port sink)
    [ "$dir" = h2g ] && ports=(--port "source:$size" --port "vhost-user:$s0")
    # "<engine>-noadapt": the engine with adaptive offload off (--no-adaptive); "...@<build>":
    # another binary (ENGINES="memcpy memcpy@/tmp/vswitch-b").
    local spec=${label%%@*} bin=${BIN[$label]:-$VSWITCH}
    local engine=(--engine "${spec%-noadapt}")
    [ "$spec" != "${spec%-noadapt}" ] && engine+=(--no-adaptive)
    local trace=0
    [ "$ring" = packed ] && trace=1
    VSWITCH_VHOST_TRACE=$trace "$bin" "${ports[@]}" "${engine[@]}" --pmd-cores "$SWITCH_CPU" --stats-interval 1 \
      </dev/null >"$swlog" 2>&1 &
  fi
  sw_pid=$!; PIDS+=("$sw_pid")
  if ! wait_sockets "$sw_pid" "$s0"; then
    RESULT="FAIL switch did not come up${big_mbuf:+ (jumbo settings: ${big_mbuf[*]})}: $(died "$swlog")"
    tail -n 5 "$swlog" >&2; stop "$sw_pid"; return
  fi
  local mode=("${big_mbuf[@]}" --forward-mode=txonly --txpkts="$size")
  [ "$dir" = h2g ] && mode=(--forward-mode=rxonly "${guest_rx[@]}")
  eal guest "0@$SWITCH_CPU,1@$GUEST_CPU"
  local packed_vq=""
  [ "$ring" = packed ] && packed_vq=",packed_vq=1"
  # shellcheck disable=SC2086
  $STDBUF "$TESTPMD" $EAL --vdev "net_virtio_user0,path=$s0,queues=1,mrg_rxbuf=1$packed_vq" -- "${mode[@]}" \
    --port-topology=loop --auto-start --nb-cores=1 --total-num-mbufs=16384 --stats-period=1 \
    </dev/null >"$glog" 2>&1 &
  guest_pid=$!; PIDS+=("$guest_pid")
  # Where the rate is read: the receiving side; and the sending side, as a cross-check.
  local sender_log=$glog
  case $label/$dir in
    dpdk/g2h) rx_src=("$swlog" testpmd Rx); tx_src=("$glog" testpmd Tx) ;;
    */g2h) rx_src=("$swlog" vswitch sink1 tx); tx_src=("$glog" testpmd Tx) ;;
    dpdk/h2g) rx_src=("$glog" testpmd Rx); tx_src=("$swlog" testpmd Tx); sender_log=$swlog ;;
    */h2g) rx_src=("$glog" testpmd Rx); tx_src=("$swlog" vswitch vhost1 tx); sender_log=$swlog ;;
  esac
  # Until the receiver has WARMUP + WINDOW samples after the first with traffic (or a deadline).
  local deadline=$((SECONDS + WARMUP + WINDOW + 20))
  while [ $SECONDS -lt $deadline ]; do
    sleep 1
    if ! kill -0 "$sw_pid" 2>/dev/null || ! kill -0 "$guest_pid" 2>/dev/null; then break; fi
    [ "$(series "${rx_src[@]}" | samples)" -gt $((WARMUP + WINDOW)) ] && break
  done
  local sw_alive=1 guest_alive=1
  kill -0 "$sw_pid" 2>/dev/null || sw_alive=0
  kill -0 "$guest_pid" 2>/dev/null || guest_alive=0
  stop "$guest_pid"
  stop "$sw_pid"
  [ "$label" != dpdk ] && cp "$swlog" "$WORK/last-switch-$label-$dir.log" 2>/dev/null
  if [ "$ring" = packed ]; then
    local feats kind=vswitch
    [ "$label" = dpdk ] && kind=dpdk
    feats=$(negotiated "$swlog" $kind)
    if ! has_packed "$feats"; then
      RESULT="FAIL packed rings not negotiated (features ${feats:-not found in the log of the switch})"; return
    fi
  fi
  local rx tx got why
  rx=$(series "${rx_src[@]}" | rate)
  tx=$(series "${tx_src[@]}" | rate)
  if [ "${rx:-0}" = 0 ]; then
    why=$(complaint "$sender_log")
    [ -z "$why" ] && why=$(complaint "$glog")
    [ -z "$why" ] && [ $sw_alive = 0 ] && why="the switch exited: $(died "$swlog")"
    [ -z "$why" ] && [ $guest_alive = 0 ] && why="the guest exited: $(died "$glog")"
    RESULT="FAIL no traffic${why:+: $why}"; tail -n 5 "$glog" >&2; tail -n 5 "$swlog" >&2; return
  fi
  # The receiver must have counted packets of the asked size: testpmd's txonly, for one, falls
  # back to 64 B packets when --txpkts does not fit its mbufs, and would be measured as a success.
  got=$(rx_size "${rx_src[@]}")
  if [ "$got" != "$size" ]; then
    why=$(complaint "$sender_log")
    RESULT="FAIL received ${got}-byte packets, not $size${why:+ (sender: $why)}"; return
  fi
  RESULT="$rx ${tx:-0}"
}

mpps() { awk -v p="$1" 'BEGIN { printf "%.3f", p / 1e6 }'; }
gbps() { awk -v p="$1" -v s="$2" 'BEGIN { printf "%.2f", p * s * 8 / 1e9 }'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (a > 0 && b > 0) printf "%.2f", a / b; else printf "n/a" }'; }
dirname_() { [ "$1" = g2h ] && echo "guest->host" || echo "host->guest"; }
# summary <pps>...: "<count> <median> <min> <max>" of the numbers among the arguments ("FAIL"
# entries are skipped); the median of an even count is the mean of the middle two.
summary() {
  printf '%s\n' "$@" | awk '$1 ~ /^[0-9]+$/' | sort -n | awk '
    { v[NR] = $1 }
    END { if (!NR) { print "0 0 0 0"; exit }
          m = NR % 2 ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2
          printf "%d %d %d %d\n", NR, m, v[1], v[NR] }'
}
csv_field() { local f=${1//\"/\'}; printf '"%s"' "$f"; }

# ENGINES entries: <engine>[-noadapt][@<vswitch binary>]; the label of one with a binary of its
# own is <engine>[-noadapt]@<the binary's file name>, so two builds alternate in one run (A/B).
labels=(dpdk)
declare -A BIN
for e in $ENGINES; do
  if [ "$e" != "${e#*@}" ]; then
    b=${e#*@}
    [ -x "$b" ] || die "ENGINES: $b (in $e) is not an executable vswitch"
    check_vswitch "$b"
    e="${e%%@*}@$(basename "$b")"
    [ -z "${BIN[$e]:-}" ] || die "ENGINES: two binaries named $(basename "$b")"
    BIN[$e]=$b
  fi
  labels+=("$e")
done

echo "== peer benchmark: rounds=$ROUNDS warmup=${WARMUP}s window=${WINDOW}s sizes=[$SIZES] directions=[$DIRS] rings=[$RINGS] switches=[${labels[*]}] jumbo=$JUMBO"
echo "   switch forwarding thread on CPU $SWITCH_CPU, guest (testpmd, 1 virtio-user port, txonly/rxonly) on CPU $GUEST_CPU"
T0=$SECONDS
# Per "<switch>/<size>/<dir>": the received pps of each round, in order ("FAIL" for a failed
# round), the sender's pps of the rounds that worked, and why rounds failed.
# C2C: per key, "<before>/<after>" readings of each round ("-" where not measured).
declare -A VALS SENT WHY C2C
for size in $SIZES; do
  for dir in $DIRS; do
   for ring in $RINGS; do
    # Rounds alternate the switches: A B C, A B C, ...
    for round in $(seq "$ROUNDS"); do
      for label in "${labels[@]}"; do
        c2c=$(c2c_ns)
        if [ -n "$C2C_MAX" ]; then
          waited=0
          while [ "$c2c" = - ] || awk -v v="$c2c" -v m="$C2C_MAX" 'BEGIN { exit !(v > m) }'; do
            if [ $waited -ge "$C2C_WAIT" ]; then
              echo "   (c2c still $c2c ns > $C2C_MAX after ${waited} s: this run starts in the other state)"
              break
            fi
            sleep 2; waited=$((waited + 2)); c2c=$(c2c_ns)
          done
        fi
        run_one "$label" "$size" "$dir" "$ring"; out=$RESULT
        c2c_after=$(c2c_ns)
        k="$label/$size/$dir/$ring"
        C2C[$k]="${C2C[$k]:-}${C2C[$k]:+ }$c2c/$c2c_after"
        case $out in
          FAIL*)
            printf '   %5s B %-11s %-6s round %s %-7s %s (c2c %s/%s ns)\n' "$size" "$(dirname_ "$dir")" "$ring" "$round" "$label" "$out" "$c2c" "$c2c_after"
            VALS[$k]="${VALS[$k]:-}${VALS[$k]:+ }FAIL"
            r=${out#FAIL }
            case "${WHY[$k]:-}" in *"$r"*) ;; *) WHY[$k]="${WHY[$k]:-}${WHY[$k]:+; }$r" ;; esac
            continue ;;
        esac
        read -r rx tx <<<"$out"
        printf '   %5s B %-11s %-6s round %s %-7s received %7s Mpps (sender %7s Mpps) c2c %5s/%-5s ns\n' "$size" \
          "$(dirname_ "$dir")" "$ring" "$round" "$label" "$(mpps "$rx")" "$(mpps "$tx")" "$c2c" "$c2c_after"
        VALS[$k]="${VALS[$k]:-}${VALS[$k]:+ }$rx"
        SENT[$k]="${SENT[$k]:-}${SENT[$k]:+ }$tx"
      done
    done
   done
  done
done

echo
echo "Mpps received (guest->host: by the switch; host->guest: by the guest): median of $ROUNDS round(s), spread"
echo "min - max (and (max - min) / median); Gbit/s = median pps x size x 8; ratio = median ours / median DPDK"
row() { printf '%5s %-11s %-6s %-13s | %8s %8s %8s %7s | %8s | %9s | %s\n' "$@"; }
row size direction ring switch median min max spread Gbit/s ours/dpdk rounds
if [ -n "$CSV" ]; then
  {
    printf 'size,direction,switch,status,median_mpps,min_mpps,max_mpps,spread_pct,median_gbps,ratio_vs_dpdk,rounds,ok_rounds,sender_median_mpps,reason,ring'
    for r in $(seq "$ROUNDS"); do printf ',round_%s_mpps' "$r"; done
    for r in $(seq "$ROUNDS"); do printf ',round_%s_c2c_ns' "$r"; done
    for r in $(seq "$ROUNDS"); do printf ',round_%s_c2c_after_ns' "$r"; done
    echo
  } >>"$CSV"
fi
FAILED=0
for size in $SIZES; do
  for dir in $DIRS; do
   for ring in $RINGS; do
    # shellcheck disable=SC2086
    read -r _ dmed _ _ <<<"$(summary ${VALS[dpdk/$size/$dir/$ring]:-})"
    for label in "${labels[@]}"; do
      k="$label/$size/$dir/$ring"
      # shellcheck disable=SC2086
      read -r n med lo hi <<<"$(summary ${VALS[$k]:-})"
      # shellcheck disable=SC2086
      read -r _ smed _ _ <<<"$(summary ${SENT[$k]:-})"
      why=${WHY[$k]:-}
      if [ "$label" = dpdk ]; then rat="-"; else rat=$(ratio "$med" "$dmed"); fi
      spread=$(awk -v a="$lo" -v b="$hi" -v m="$med" 'BEGIN { if (m > 0) printf "%.1f%%", (b - a) * 100 / m; else printf "-" }')
      if [ "$n" = 0 ]; then
        status=FAIL; FAILED=1
        printf '%5s %-11s %-6s %-13s | FAIL %s\n' "$size" "$(dirname_ "$dir")" "$ring" "$label" "$why"
      else
        status=ok
        [ "$n" -lt "$ROUNDS" ] && { status=partial; FAILED=1; }
        row "$size" "$(dirname_ "$dir")" "$ring" "$label" "$(mpps "$med")" "$(mpps "$lo")" "$(mpps "$hi")" \
          "$spread" "$(gbps "$med" "$size")" "$rat" "$n/$ROUNDS${why:+ (failed: $why)}"
      fi
      if [ -n "$CSV" ]; then
        {
          if [ "$n" = 0 ]; then
            printf '%s,%s,%s,%s,,,,,,,%s,%s,,%s,%s' "$size" "$dir" "$label" "$status" "$ROUNDS" "$n" "$(csv_field "$why")" "$ring"
          else
            printf '%s,%s,%s,%s,%.6f,%.6f,%.6f,%s,%s,%s,%s,%s,%.6f,%s,%s' "$size" "$dir" "$label" "$status" \
              "$(awk -v p="$med" 'BEGIN { print p / 1e6 }')" "$(awk -v p="$lo" 'BEGIN { print p / 1e6 }')" \
              "$(awk -v p="$hi" 'BEGIN { print p / 1e6 }')" "${spread%\%}" "$(gbps "$med" "$size")" \
              "$(case $rat in -) echo 1.00 ;; n/a) ;; *) echo "$rat" ;; esac)" "$ROUNDS" "$n" \
              "$(awk -v p="$smed" 'BEGIN { print p / 1e6 }')" "$(csv_field "$why")" "$ring"
          fi
          for v in ${VALS[$k]:-}; do
            if [ "$v" = FAIL ]; then printf ',FAIL'; else printf ',%.6f' "$(awk -v p="$v" 'BEGIN { print p / 1e6 }')"; fi
          done
          for v in ${C2C[$k]:-}; do v=${v%/*}; printf ',%s' "${v/-/}"; done
          for v in ${C2C[$k]:-}; do v=${v#*/}; printf ',%s' "${v/-/}"; done
          echo
        } >>"$CSV"
      fi
    done
   done
  done
done
if [ $C2C_OK = 1 ]; then
  # shellcheck disable=SC2086
  echo "Cache-line round trip CPU $SWITCH_CPU <-> CPU $GUEST_CPU before and after each run (vswitch cpu-latency): $(printf '%s\n' ${C2C[*]} | tr / '\n' | grep -v '^-$' | sort -n | awk '{ v[NR] = $1 } END { if (NR) printf "%s - %s ns, median %s ns over %d readings", v[1], v[NR], v[int((NR + 1) / 2)], NR; else printf "not measured" }')"
  # shellcheck disable=SC2086
  echo "Runs whose readings before and after differ 2x or more (the state changed during the run): $(printf '%s\n' ${C2C[*]} | awk -F/ '$1 != "-" && $2 != "-" && ($1 >= 2 * $2 || $2 >= 2 * $1) { n++ } END { printf "%d of %d", n, NR }')"
fi
echo "Both switches get one forwarding core (CPU $SWITCH_CPU), the guest one (CPU $GUEST_CPU); a ratio near 1"
echo "may mean the guest, not the switch, is the bottleneck (compare the sender column of the rounds above)."
[ -n "$CSV" ] && echo "CSV: $CSV"
echo "total time $((SECONDS - T0)) s"
for e in "${labels[@]:1}"; do
  for dir in $DIRS; do
    if [ -f "$WORK/last-switch-$e-$dir.log" ]; then
      echo "-- vswitch --engine $e, $(dirname_ "$dir"), per-port counters at exit of its last run:"
      grep -E '^t=|^  ' "$WORK/last-switch-$e-$dir.log" | tail -n 3
    fi
  done
done
[ $FAILED = 0 ] || { echo "peer-bench: some runs failed (FAIL above)" >&2; exit 1; }
