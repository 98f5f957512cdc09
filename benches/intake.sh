#!/usr/bin/env bash
# Durable intake: mmsrelay vs Postfix smtpd, same load tool (Postfix's smtp-source), same
# message (a 100 KB MM4_forward.REQ), same disk, same run. Prints one table with the ratio.
#
#   benches/intake.sh [MESSAGES] [SESSIONS]      (defaults: 2000 messages, 50 sessions)
#
# Not a test: run it on an otherwise idle machine and compare figures from one run only.
set -euo pipefail
cd "$(dirname "$0")/.."
MSGS=${1:-2000}
SESS=${2:-50}
SIZE=${SIZE:-102400}
. benches/lib.sh
need_packages
cargo build --release -q -p mmsrelay
BIN=${BIN:-$PWD/target/release/mmsrelay}   # BIN=… measures another build in the same session

make_forward "$WORK/forward.eml" "$SIZE" Yes
FROM="+491721234567/TYPE=PLMN@mms.mnc002.mcc262.gprs"
TO="+15550000001/TYPE=PLMN@mms.mnc001.mcc001.gprs"

PPORT=$(port)
start_postfix "$WORK/postfix" "$PPORT"

RPORT=$(port)
relay_config "$WORK/relay.toml" "$RPORT" "$(port)" "$WORK/relay-data" '
[[peer]]
name = "operator-b"
domains = ["mms.mnc002.mcc262.gprs"]
allow = ["127.0.0.0/8"]'
"$BIN" serve -c "$WORK/relay.toml" 2> "$WORK/relay.log" &
RPID=$!; PIDS+=("$RPID")
wait_port "$RPORT" mmsrelay

run_load() { # port -> seconds
  local t0 t1
  t0=$(now)
  smtp-source -s "$SESS" -m "$MSGS" -F "$WORK/forward.eml" -f "$FROM" -t "$TO" "127.0.0.1:$1" >/dev/null
  t1=$(now)
  echo "$t1 - $t0" | bc -l
}

echo "load: $(cut -d' ' -f1-3 /proc/loadavg) (1/5/15 min); $(nproc) cores; data under $WORK"
echo "message: $(wc -c < "$WORK/forward.eml") bytes, $MSGS messages over $SESS sessions"

P_SECS=$(run_load "$PPORT")
P_QUEUED=$(postfix_queue_size "$WORK/postfix")
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }   # user + system, in clock ticks
T0=$(cpu_ticks "$RPID")
R_SECS=$(run_load "$RPORT")
sleep 2   # the events of the last MMs (RES, charging) are handled after their 250
T1=$(cpu_ticks "$RPID")
kill -TERM "$RPID"; wait "$RPID" || true
STATS=$(grep -o 'commits=[0-9]* syncs=[0-9]*' "$WORK/relay.log" | tail -1)
COMMITS=$(echo "$STATS" | sed -E 's/commits=([0-9]+).*/\1/')
SYNCS=$(echo "$STATS" | sed -E 's/.*syncs=([0-9]+)/\1/')

P_RATE=$(echo "$MSGS / $P_SECS" | bc -l)
R_RATE=$(echo "$MSGS / $R_SECS" | bc -l)
printf '\n%-32s %12s %12s %10s\n' "durable intake (100 KB MM4)" "msg/s" "seconds" "ratio"
printf '%-32s %12.0f %12.2f %10s\n' "postfix smtpd (queue on disk)" "$P_RATE" "$P_SECS" "1.00"
printf '%-32s %12.0f %12.2f %10.2f\n' "mmsrelay (group commit)" "$R_RATE" "$R_SECS" "$(echo "$R_RATE / $P_RATE" | bc -l)"
printf '\nmmsrelay CPU: %.0f µs per message (user + system, intake and its events)\n' \
  "$(echo "($T1 - $T0) * 1000000 / $(getconf CLK_TCK) / $MSGS" | bc -l)"
printf 'mmsrelay: %s commits in %s fsync batches = %.3f fsyncs per message; postfix queued %s files\n' \
  "$COMMITS" "$SYNCS" "$(echo "$SYNCS / $COMMITS" | bc -l)" "$P_QUEUED"
