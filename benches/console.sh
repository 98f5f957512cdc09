#!/usr/bin/env bash
# The console and the search API on a large store: seeds MESSAGES MM4 forwards (2 KB, from peer
# B to one subscriber, through SMTP as a peer would), one more to a second subscriber (the needle),
# then times each console page and search, REPEAT requests each, and prints the median and the
# slowest in milliseconds.
#
#   benches/console.sh [MESSAGES] [REPEAT]      (defaults: 1000000 messages, 20 requests)
#
# Not a test: run it on an otherwise idle machine.
set -euo pipefail
cd "$(dirname "$0")/.."
MSGS=${1:-1000000}
REPEAT=${2:-20}
. benches/lib.sh
need_packages
cargo build --release -q -p mmsrelay -p bench
BIN=$PWD/target/release/mmsrelay
LOAD=$PWD/target/release/mmsrelay-bench

RPORT=$(port); APORT=$(port)
relay_config "$WORK/relay.toml" "$RPORT" "$APORT" "$WORK/relay-data" '
[[peer]]
name = "operator-b"
domains = ["mms.mnc002.mcc262.gprs"]
allow = ["127.0.0.0/8"]'
sed -i 's/^\[api\]$/[api]\ntoken = "bench"/' "$WORK/relay.toml"
"$BIN" serve -c "$WORK/relay.toml" 2> "$WORK/relay.log" &
PIDS+=("$!")
wait_port "$APORT" mmsrelay
API="127.0.0.1:$APORT"

t0=$(now)
"$LOAD" send --target "127.0.0.1:$RPORT" --connections 50 --count "$MSGS" --size 2048 >/dev/null
"$LOAD" send --target "127.0.0.1:$RPORT" --connections 1 --count 1 --size 2048 \
  --to "+15550000002/TYPE=PLMN@mms.mnc001.mcc001.gprs" >/dev/null
stored=$(curl -s -H "Authorization: Bearer bench" "http://$API/metrics" | sed -n 's/^mmsrelay_messages_in_total{type="MM4_forward.REQ"} \([0-9]*\).*/\1/p')
printf 'seeded %s MMs (%s stored) in %.0f s\n' "$((MSGS + 1))" "$stored" "$(echo "$(now) - $t0" | bc -l)"

curl -s -c "$WORK/cookies" -o /dev/null -d token=bench "http://$API/console/login"
AUTH=(-H "Authorization: Bearer bench")
newest=$(curl -s "${AUTH[@]}" "http://$API/v1/messages?q=%2B15550000001&limit=1" | sed -n 's/.*"next":\([0-9]*\).*/\1/p')
middle=$((newest / 2))
tid=$(curl -s "${AUTH[@]}" "http://$API/v1/messages/$middle" | sed -n 's/.*"transaction_id":"\([^"]*\)".*/\1/p')

# time_get NAME URL [curl args…]: REPEAT requests; median and slowest in ms.
time_get() {
  local name=$1 url=$2; shift 2
  local code
  code=$(curl -s -o /dev/null -w '%{http_code}' "$@" "$url")
  [ "$code" = 200 ] || { echo "$name: HTTP $code for $url"; exit 1; }
  local times
  times=$(for _ in $(seq "$REPEAT"); do
    curl -s -o /dev/null -w '%{time_total}\n' "$@" "$url"
  done | sort -n)
  local med max
  med=$(echo "$times" | sed -n "$(( (REPEAT + 1) / 2 ))p")
  max=$(echo "$times" | tail -n 1)
  printf '| %-44s | %8.1f | %8.1f |\n' "$name" "$(echo "$med * 1000" | bc -l)" "$(echo "$max * 1000" | bc -l)"
}

# What is timed is what a page shows: a full first page of the subscriber's MMs.
rows=$(curl -s -b "$WORK/cookies" "http://$API/console/messages?q=%2B15550000001" | grep -o 'class="mm"' | wc -l)
[ "$rows" -eq "$(( MSGS < 50 ? MSGS : 50 ))" ] || { echo "the search page lists $rows MMs"; exit 1; }
echo "the search page lists $rows MMs a page; overview $(curl -s -b "$WORK/cookies" "http://$API/console" | wc -c) bytes"

# The charging page's first look (the exporter counted what it wrote): shown apart.
first=$(curl -s -o /dev/null -w '%{time_total}' -b "$WORK/cookies" "http://$API/console/charging")
echo
echo "| page or query ($((MSGS + 1)) MMs stored) | median ms | slowest ms |"
echo "|---|---|---|"
C=(-b "$WORK/cookies")
time_get "console: overview" "http://$API/console" "${C[@]}"
time_get "console: peers" "http://$API/console/peers" "${C[@]}"
time_get "console: search, the newest page (+15550000001)" "http://$API/console/messages?q=%2B15550000001" "${C[@]}"
time_get "console: search, a page from the middle" "http://$API/console/messages?q=%2B15550000001&before=$middle" "${C[@]}"
time_get "console: search, the needle (+15550000002)" "http://$API/console/messages?q=%2B15550000002" "${C[@]}"
time_get "console: search by transaction id" "http://$API/console/messages?q=$tid" "${C[@]}"
time_get "console: one MM with its timeline" "http://$API/console/messages/$middle" "${C[@]}"
time_get "console: queue" "http://$API/console/queue" "${C[@]}"
time_get "console: charging (later looks)" "http://$API/console/charging" "${C[@]}"
time_get "console: configuration" "http://$API/console/config" "${C[@]}"
time_get "API: GET /v1/messages?q=+15550000001" "http://$API/v1/messages?q=%2B15550000001" "${AUTH[@]}"
time_get "API: GET /v1/queue" "http://$API/v1/queue" "${AUTH[@]}"
printf '| %-44s | %8.1f | %8s |\n' "console: charging (first look after seeding)" "$(echo "$first * 1000" | bc -l)" "-"
