#!/usr/bin/env bash
# The acknowledged path alone, beside Postfix's relay in the same run (the quick loop for work
# on that path; benches/run.sh has the same rows among all the others).
#
#   benches/acks.sh [MESSAGES] [BINARY]   (default 2000; the release build of this tree)
set -euo pipefail
cd "$(dirname "$0")/.."
MSGS=${1:-2000}
SIZE=102400
. benches/lib.sh
need_packages
cargo build --release -q -p mmsrelay -p bench
BIN=${2:-$PWD/target/release/mmsrelay}
LOAD=$PWD/target/release/mmsrelay-bench
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
echo "load: $(cut -d' ' -f1-3 /proc/loadavg); $(nproc) cores; relay binary $BIN"
make_forward "$WORK/fwd.eml" "$SIZE" No
SINK=$(port)
smtp-sink -u nobody "127.0.0.1:$SINK" 1024 >/dev/null 2>&1 & PIDS+=("$!")
wait_port "$SINK" smtp-sink
postfix_relay_rate "$MSGS" "$WORK/fwd.eml" "$SINK"
acked_pair_rate "$BIN" "$LOAD" "$MSGS" "$SIZE" false; E_RES=$PAIR_RATE
acked_pair_rate "$BIN" "$LOAD" "$MSGS" "$SIZE" true; E_SYNC=$PAIR_RATE
printf '%-58s %8.0f msg/s %s\n' "relay, 100 KB: smtp-source → postfix → smtp-sink" "$P_RELAY" "1.00"
printf '%-58s %8.0f msg/s %.2f × postfix relay\n' "acknowledged A → B, 100 KB, RES as mail" "$E_RES" "$(echo "$E_RES / $P_RELAY" | bc -l)"
printf '%-58s %8.0f msg/s %.2f × postfix relay, %.2f × RES mail\n' "acknowledged A → B, 100 KB, XMM4 SYNC" "$E_SYNC" "$(echo "$E_SYNC / $P_RELAY" | bc -l)" "$(echo "$E_SYNC / $E_RES" | bc -l)"
