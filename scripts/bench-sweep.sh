#!/usr/bin/env bash
# Packet-size sweep of the peer benchmark: scripts/peer-bench.sh over every size and both
# directions, the vswitch's memcpy and worker engines against DPDK's net_vhost, then a table
# and a plot of the results. See scripts/README-peer-bench.md.
#
#   scripts/bench-sweep.sh            # full sweep: 8 sizes x 2 directions x 3 switches x 5 rounds
#   scripts/bench-sweep.sh --quick    # smoke check: 2 sizes, 1 round, short windows
#
# Writes into OUTDIR (bench/results), NAME = sweep-<date>-<time> (sweep-<date>-<time>-quick):
#   NAME.csv   peer-bench's CSV: one row per size, direction and switch (median, min, max, ...)
#   NAME.md    Markdown tables per direction: Mpps median (min - max), Gbit/s, ratio vs DPDK
#   NAME.svg   Mpps vs packet size, one line per switch, one panel per direction, log-log
#   NAME.png   the same as PNG
#   NAME.log   peer-bench's output (every round of every cell)
# Installs gnuplot-nox if missing (apt-get; sudo when not root); without gnuplot it still writes
# the CSV and the tables and says why there is no plot.
#
# Environment: SIZES ("64 128 256 512 1024 1518 4096 9000"; quick: "64 9000"), DIRS ("g2h h2g"),
#   RINGS ("split"; "split packed": packed rings too, a second series per switch), ENGINES
#   ("memcpy worker"), ROUNDS (5; quick: 1), WARMUP (2 s; quick: 1), WINDOW (4 s;
#   quick: 2), JUMBO (all: the jumbo settings for every size, see peer-bench.sh), OUTDIR
#   (bench/results); the rest (VSWITCH_BIN, TESTPMD, KEEP_LOGS) goes to
#   peer-bench.sh as is.
# Exit status: 0 every cell measured; 1 some cell failed (FAIL in the table, with the reason);
#   2 nothing measured.
set -uo pipefail
export LC_ALL=C
cd "$(dirname "$0")/.." || exit 2

die() { echo "bench-sweep: $*" >&2; exit 2; }
usage() { sed -n '2,/^set -uo/p' "$0" | sed '$d; s/^# \{0,1\}//'; }

QUICK=0
for a in "$@"; do
  case $a in
    --quick) QUICK=1 ;;
    -h | --help) usage; exit 0 ;;
    *) usage >&2; die "unknown argument $a" ;;
  esac
done

if [ $QUICK = 1 ]; then
  SIZES=${SIZES:-"64 9000"} ROUNDS=${ROUNDS:-1} WARMUP=${WARMUP:-1} WINDOW=${WINDOW:-2}
else
  SIZES=${SIZES:-"64 128 256 512 1024 1518 4096 9000"} ROUNDS=${ROUNDS:-5} WARMUP=${WARMUP:-2} WINDOW=${WINDOW:-4}
fi
# In increasing order, so that the plot's lines run left to right.
# shellcheck disable=SC2086
SIZES=$(printf '%s\n' $SIZES | sort -n -u | tr '\n' ' '); SIZES=${SIZES% }
DIRS=${DIRS:-"g2h h2g"}
ENGINES=${ENGINES:-"memcpy worker"}
# The jumbo settings (10 KB mbufs for testpmd senders and DPDK's receiving switch, a scattered
# guest RX) for every size, not only above 1518 B: the mbuf size alone moves the rates by 10-70 %,
# and the curve should change with the packet size only.
JUMBO=${JUMBO:-all}
RINGS=${RINGS:-split}
export SIZES ROUNDS WARMUP WINDOW DIRS ENGINES JUMBO RINGS
OUTDIR=${OUTDIR:-bench/results}
NAME="sweep-$(date +%Y-%m-%d-%H%M%S)"
[ $QUICK = 1 ] && NAME="$NAME-quick"
mkdir -p "$OUTDIR" || die "cannot create $OUTDIR"
OUT="$OUTDIR/$NAME"

# ---- gnuplot, installed before the measuring so that apt does not run during it ----
NOPLOT=""
if ! command -v gnuplot >/dev/null 2>&1; then
  echo "== installing: gnuplot-nox"
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  if ! { $SUDO apt-get update -qq &&
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends gnuplot-nox; }; then
    NOPLOT="gnuplot is not installed and apt-get install gnuplot-nox failed"
  fi
  command -v gnuplot >/dev/null 2>&1 || NOPLOT=${NOPLOT:-"gnuplot-nox installed no gnuplot"}
  [ -n "$NOPLOT" ] && echo "bench-sweep: $NOPLOT: no plot, only the CSV and the tables" >&2
fi

# ---- the measuring ----
echo "== sweep -> $OUT.{csv,md,svg,png,log}"
CSV="$OUT.csv" scripts/peer-bench.sh 2>&1 | tee "$OUT.log"
rc=${PIPESTATUS[0]}
if [ "$rc" -ge 2 ] || [ ! -s "$OUT.csv" ]; then die "peer-bench.sh measured nothing (exit $rc; see $OUT.log)"; fi

# ---- the Markdown table ----
# CSV columns (scripts/peer-bench.sh): size direction switch status median_mpps min_mpps max_mpps
# spread_pct median_gbps ratio_vs_dpdk rounds ok_rounds sender_median_mpps reason ring round_<i>_mpps...
# A packed-ring row's switch is shown as <switch>-packed (RINGS="split packed": two series each).
# Only the reason may be quoted (and hold commas); mawk has no FPAT, so split by hand.
CSV_SPLIT='
function csv(line, f,    n, c, i, q, cur) {
  n = 0; cur = ""; q = 0
  for (i = 1; i <= length(line); i++) {
    c = substr(line, i, 1)
    if (q) { if (c == "\"") { if (substr(line, i + 1, 1) == "\"") { cur = cur "\""; i++ } else q = 0 } else cur = cur c }
    else if (c == "\"") q = 1
    else if (c == ",") { f[++n] = cur; cur = "" }
    else cur = cur c
  }
  f[++n] = cur
  return n
}'
commit=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
git diff --quiet HEAD 2>/dev/null || commit="$commit (with uncommitted changes)"
dpdk_ver=$(pkg-config --modversion libdpdk 2>/dev/null || echo unknown)
cpu=$(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo 2>/dev/null)
{
  echo "# Peer benchmark sweep, $(date '+%Y-%m-%d %H:%M')"
  echo
  echo "Our \`vswitch\` (commit $commit; engines: $ENGINES) against DPDK $dpdk_ver testpmd with one"
  echo "\`net_vhost\` port, one vhost-user queue pair, the guest a testpmd with one \`net_virtio_user\`"
  echo "port (txonly guest->host, rxonly host->guest, \`mrg_rxbuf=1\`). Switch forwarding on CPU 0, guest on CPU 1;"
  echo "machine: ${cpu:-unknown CPU}, $(nproc) CPUs, Linux $(uname -r)."
  if [ "$JUMBO" = all ]; then
    echo "Every size runs with the jumbo settings (JUMBO=all): 10 KB mbufs for the testpmd that sends"
    echo "and for DPDK's switch receiving, the receiving guest's 2 KB mbufs scattered (\`--max-pkt-len=9234"
    echo "--enable-scatter\`)."
  else
    echo "Sizes above 1518 B run with the jumbo settings (JUMBO=auto: 10 KB mbufs for the sending testpmd and"
    echo "DPDK's receiving switch, scattered guest RX), smaller ones with testpmd's 2 KB mbufs: the"
    echo "curve steps there."
  fi
  echo
  echo "Mpps: median of $ROUNDS round(s) (min-max), rounds alternating the switches, each run $WINDOW s"
  echo "after $WARMUP s of warm-up. Gbit/s: median pps x packet size x 8 (the frame without FCS,"
  echo "preamble and gap). ours/DPDK: ratio of the medians. Regenerate: \`scripts/bench-sweep.sh\`"
  echo "(\`$NAME.csv\` holds every round; plot: \`$NAME.svg\`). How it measures:"
  echo "scripts/README-peer-bench.md."
  awk "$CSV_SPLIT"'
    NR == 1 { next }
    { csv($0, f); if (f[15] == "packed") f[3] = f[3] "-packed"; k = f[1] SUBSEP f[2] SUBSEP f[3]
      if (!(f[1] in seen_size)) { seen_size[f[1]] = 1; sizes[++ns] = f[1] }
      if (!(f[2] in seen_dir)) { seen_dir[f[2]] = 1; dirs[++nd] = f[2] }
      if (!(f[3] in seen_sw)) { seen_sw[f[3]] = 1; sws[++nw] = f[3] }
      st[k] = f[4]; med[k] = f[5]; lo[k] = f[6]; hi[k] = f[7]; gb[k] = f[9]; rat[k] = f[10]
      rounds[k] = f[11]; ok[k] = f[12]; why[k] = f[14] }
    function name(s) { return s == "dpdk" ? "DPDK" : s }
    END {
      nmiss = 0
      for (d = 1; d <= nd; d++) {
        dir = dirs[d]
        printf "\n## %s\n\n", dir == "g2h" ? "guest->host (g2h): guest txonly, rate counted by the switch" \
                                          : "host->guest (h2g): the switch sends, rate counted by the guest (rxonly)"
        line = "| size (B)"; sep = "|---:"
        for (w = 1; w <= nw; w++) {
          line = line " | " name(sws[w]) " Mpps | " name(sws[w]) " Gbit/s"; sep = sep "|---:|---:"
          if (sws[w] != "dpdk") { line = line " | " sws[w] "/DPDK"; sep = sep "|---:" }
        }
        print line " |"; print sep "|"
        for (i = 1; i <= ns; i++) {
          line = "| " sizes[i]
          for (w = 1; w <= nw; w++) {
            k = sizes[i] SUBSEP dir SUBSEP sws[w]
            if (!(k in st)) { cell = "not run"; g = "-"; r = "-" }
            else if (st[k] == "FAIL") {
              miss[++nmiss] = sizes[i] " B " dir " " name(sws[w]) ": FAIL, " why[k]
              cell = "FAIL [" nmiss "]"; g = "-"; r = "-"
            } else {
              cell = sprintf("%.3f (%.3f-%.3f)", med[k], lo[k], hi[k])
              if (st[k] == "partial") {
                miss[++nmiss] = sizes[i] " B " dir " " name(sws[w]) ": " ok[k] " of " rounds[k] " rounds, the others failed: " why[k]
                cell = cell " [" nmiss "]"
              }
              g = sprintf("%.2f", gb[k]); r = rat[k] == "" ? "n/a" : sprintf("%.2f", rat[k])
            }
            line = line " | " cell " | " g
            if (sws[w] != "dpdk") line = line " | " r
          }
          print line " |"
        }
      }
      if (nmiss) {
        print "\n## Missing or partial cells\n"
        for (i = 1; i <= nmiss; i++) print "[" i "] " miss[i] "  "
      } else print "\nEvery cell was measured in every round."
    }' "$OUT.csv"
} >"$OUT.md"

# ---- the plot ----
if [ -z "$NOPLOT" ]; then
  PLOTDIR=$(mktemp -d /tmp/ce-bench-sweep.XXXXXX)
  trap 'rm -rf "$PLOTDIR"' EXIT
  # Per direction one data file, one block per switch ("size median min max"; FAIL cells left
  # out, the table says why), and the list of switches that have points.
  awk "$CSV_SPLIT"'
    NR == 1 { next }
    { csv($0, f); if (f[4] == "FAIL") next
      if (f[15] == "packed") f[3] = f[3] "-packed"
      k = f[2] SUBSEP f[3]
      if (!(k in n)) order[f[2], ++nsw[f[2]]] = f[3]
      pts[k, ++n[k]] = f[1] " " f[5] " " f[6] " " f[7] }
    END {
      for (d in nsw) {
        for (w = 1; w <= nsw[d]; w++) {
          s = order[d, w]; k = d SUBSEP s
          for (i = 1; i <= n[k]; i++) print pts[k, i] > (dir "/" d ".dat")
          printf "\n\n" > (dir "/" d ".dat")
          print s > (dir "/" d ".switches")
        }
      }
    }' dir="$PLOTDIR" "$OUT.csv"
  # shellcheck disable=SC2086
  xtics=$(printf '%s,' $SIZES); xtics=${xtics%,}
  npanel=0
  for d in $DIRS; do [ -s "$PLOTDIR/$d.switches" ] && npanel=$((npanel + 1)); done
  if [ $npanel = 0 ]; then
    NOPLOT="no cell was measured"
  else
    {
      echo "set logscale x 2; set logscale y 10"
      echo "set xtics ($xtics) nomirror; set mxtics default; set grid xtics ytics mytics"
      echo "set xrange [$(echo "$SIZES" | tr ' ' '\n' | sort -n | head -n1)*0.8:$(echo "$SIZES" | tr ' ' '\n' | sort -n | tail -n1)*1.25]"
      echo "set xlabel 'packet size (bytes)'; set ylabel 'Mpps (median; bars: min-max)'"
      echo "set key top right; set pointsize 0.8"
      echo "set multiplot layout 1,$npanel title 'vswitch vs DPDK net\\_vhost, one vhost-user queue, $ROUNDS round(s)'"
      for d in $DIRS; do
        [ -s "$PLOTDIR/$d.switches" ] || continue
        title=$([ "$d" = g2h ] && echo "guest -> host" || echo "host -> guest")
        echo "set title '$title'"
        plot="plot"; i=0
        while read -r s; do
          t=$([ "$s" = dpdk ] && echo "DPDK" || echo "vswitch $s")
          plot="$plot '$PLOTDIR/$d.dat' index $i using 1:2:3:4 with yerrorlines lw 2 title '$t',"
          i=$((i + 1))
        done <"$PLOTDIR/$d.switches"
        echo "${plot%,}"
      done
      echo "unset multiplot"
    } >"$PLOTDIR/plot.gp"
    w=$((560 * npanel + 40))
    if ! gnuplot -e "set terminal svg size $w,480 dynamic enhanced font 'sans,11'; set output '$OUT.svg'" \
      "$PLOTDIR/plot.gp" >"$PLOTDIR/gnuplot.log" 2>&1; then
      NOPLOT="gnuplot failed: $(head -n 3 "$PLOTDIR/gnuplot.log" | tr '\n' ' ')"
      rm -f "$OUT.svg"
    elif grep -q pngcairo <<<"$(gnuplot -e 'set terminal' 2>&1)"; then
      # (Not `gnuplot | grep -q` under pipefail: grep may exit at the first match, its writer
      # then dies of SIGPIPE and the pipeline fails although the text was there.)
      gnuplot -e "set terminal pngcairo size $w,480 enhanced font 'sans,10'; set output '$OUT.png'" \
        "$PLOTDIR/plot.gp" >>"$PLOTDIR/gnuplot.log" 2>&1 || rm -f "$OUT.png"
    fi
  fi
fi
if [ -n "$NOPLOT" ]; then
  printf '\nNo plot: %s.\n' "$NOPLOT" >>"$OUT.md"
else
  printf '\n![Mpps vs packet size](%s.svg)\n' "$NAME" >>"$OUT.md"
fi

echo
cat "$OUT.md"
echo
echo "== written:"
for f in "$OUT".csv "$OUT".md "$OUT".svg "$OUT".png "$OUT".log; do [ -f "$f" ] && echo "   $f"; done
[ -n "$NOPLOT" ] && echo "   (no plot: $NOPLOT)"
exit $((rc == 0 ? 0 : 1))
