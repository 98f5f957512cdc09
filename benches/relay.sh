#!/usr/bin/env bash
# Relay throughput, end to end: smtp-source → Postfix → smtp-sink, against smtp-source →
# mmsrelay A → mmsrelay B (over loopback, A relaying as a transit hop), acks off and then on with
# XMM4 SYNC. Same message (100 KB MM4 forward), same load tool, same run; prints one table.
#
#   benches/relay.sh [MESSAGES] [SESSIONS]      (defaults: 2000 messages, 50 sessions)
set -euo pipefail
cd "$(dirname "$0")/.."
MSGS=${1:-2000}
SESS=${2:-50}
SIZE=${SIZE:-102400}
. benches/lib.sh
need_packages
cargo build --release -q -p mmsrelay
BIN=$PWD/target/release/mmsrelay
FROM="+491721234567/TYPE=PLMN@mms.mnc002.mcc262.gprs"
# A serves +1555 and hands +4917 onwards to B.
TO="+491790000001/TYPE=PLMN@mms.mnc007.mcc262.gprs"
make_forward "$WORK/ack-no.eml" "$SIZE" No
make_forward "$WORK/ack-yes.eml" "$SIZE" Yes
sed -i 's#^To: .*#To: +491790000001/TYPE=PLMN#' "$WORK/ack-no.eml" "$WORK/ack-yes.eml"

echo "load: $(cut -d' ' -f1-3 /proc/loadavg) (1/5/15 min); $(nproc) cores; data under $WORK"
echo "message: $(wc -c < "$WORK/ack-no.eml") bytes, $MSGS messages over $SESS sessions"

# --- Postfix relaying to smtp-sink.
SINK=$(port); PPORT=$(port)
smtp-sink -u nobody "127.0.0.1:$SINK" 256 &
PIDS+=("$!")
wait_port "$SINK" smtp-sink
start_postfix "$WORK/postfix" "$PPORT" "mms.mnc001.mcc001.gprs smtp:[127.0.0.1]:$SINK"
t0=$(now)
smtp-source -s "$SESS" -m "$MSGS" -F "$WORK/ack-no.eml" -f "$FROM" -t "+15550000001/TYPE=PLMN@mms.mnc001.mcc001.gprs" "127.0.0.1:$PPORT" >/dev/null
while [ "$(postfix_queue_size "$WORK/postfix")" -gt 0 ]; do sleep 0.05; done
t1=$(now)
P_SECS=$(echo "$t1 - $t0" | bc -l)
postfix -c "$WORK/postfix" stop >/dev/null 2>&1 || true

# --- mmsrelay A → mmsrelay B.
run_pair() { # eml -> seconds
  local eml=$1 tag=$2 apt=$(port) aapi=$(port) bpt=$(port) bapi=$(port)
  cat > "$WORK/$tag-b.toml" <<TOML
[mmse]
domain = "mms.mnc007.mcc262.gprs"
local_prefixes = ["+4917"]
[smtp]
listen = ["127.0.0.1:$bpt"]
max_message_size = 10485760
max_connections_per_source = 1000
[api]
listen = "127.0.0.1:$bapi"
[dns]
servers = ["127.0.0.1:9"]
enum_suffixes = []
[store]
path = "$WORK/$tag-b-data"
[[peer]]
name = "operator-a"
domains = ["mms.mnc001.mcc001.gprs"]
allow = ["127.0.0.0/8"]
[[peer]]
name = "operator-b"
domains = ["mms.mnc002.mcc262.gprs"]
allow = ["127.0.0.0/8"]
TOML
  relay_config "$WORK/$tag-a.toml" "$apt" "$aapi" "$WORK/$tag-a-data" "
[[peer]]
name = \"operator-b\"
domains = [\"mms.mnc002.mcc262.gprs\"]
allow = [\"127.0.0.0/8\"]
transit = true
[[peer]]
name = \"operator-c\"
domains = [\"mms.mnc007.mcc262.gprs\"]
prefixes = [\"+4917\"]
hosts = [\"127.0.0.1:$bpt\"]
tls = \"none\"
max_connections = 16"
  "$BIN" serve -c "$WORK/$tag-b.toml" 2> "$WORK/$tag-b.log" & PIDS+=("$!"); local bpid=$!
  "$BIN" serve -c "$WORK/$tag-a.toml" 2> "$WORK/$tag-a.log" & PIDS+=("$!"); local apid=$!
  wait_port "$bpt" "relay B"; wait_port "$apt" "relay A"
  local t0 t1
  t0=$(now)
  smtp-source -s "$SESS" -m "$MSGS" -F "$eml" -f "$FROM" -t "$TO" "127.0.0.1:$apt" >/dev/null
  while [ "$(curl -s "127.0.0.1:$aapi/v1/queue" | python3 -c 'import json,sys; print(json.load(sys.stdin)["depth"])')" != 0 ]; do sleep 0.05; done
  t1=$(now)
  kill -TERM "$apid" "$bpid"; wait "$apid" "$bpid" 2>/dev/null || true
  echo "$t1 - $t0" | bc -l
}
R1=$(run_pair "$WORK/ack-no.eml" noack)
R2=$(run_pair "$WORK/ack-yes.eml" sync)

rate() { echo "$MSGS / $1" | bc -l; }
P_RATE=$(rate "$P_SECS")
printf '\n%-44s %10s %10s %8s\n' "relay end to end (100 KB MM4)" "msg/s" "seconds" "ratio"
printf '%-44s %10.0f %10.2f %8s\n' "smtp-source → postfix → smtp-sink" "$P_RATE" "$P_SECS" "1.00"
printf '%-44s %10.0f %10.2f %8.2f\n' "smtp-source → mmsrelay A → B (acks off)" "$(rate "$R1")" "$R1" "$(echo "$(rate "$R1") / $P_RATE" | bc -l)"
printf '%-44s %10.0f %10.2f %8.2f\n' "smtp-source → mmsrelay A → B (XMM4 SYNC)" "$(rate "$R2")" "$R2" "$(echo "$(rate "$R2") / $P_RATE" | bc -l)"
