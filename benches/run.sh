#!/usr/bin/env bash
# The benchmark suite: mmsrelay beside Postfix and the machine's own limits, in one run, one
# table. Not a test: run it on an otherwise idle machine; compare figures from one run only.
#
#   benches/run.sh [MESSAGES]          (default 2000 per measurement; BIN=path for another build)
set -euo pipefail
cd "$(dirname "$0")/.."
MSGS=${1:-2000}
SIZE=102400
. benches/lib.sh
need_packages
cargo build --release -q -p mmsrelay -p bench
BIN=${BIN:-$PWD/target/release/mmsrelay}   # BIN=… compares another build in the same session
LOAD=$PWD/target/release/mmsrelay-bench
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
FROM="+491721234567/TYPE=PLMN@mms.mnc002.mcc262.gprs"
TO_LOCAL="+15550000001/TYPE=PLMN@mms.mnc001.mcc001.gprs"
TO_ONWARD="+491790000001/TYPE=PLMN@mms.mnc007.mcc262.gprs"
ROWS=()
row() { ROWS+=("$(printf '%-50s %10s %12s %s' "$1" "$2" "$3" "$4")"); }
kv() { echo "$1" | tr ' ' '\n' | sed -n "s/^$2=//p"; }

echo "load: $(cut -d' ' -f1-3 /proc/loadavg); $(nproc) cores; $(free -g | awk '/Mem/{print $2}') GiB; data under $WORK ($(df -h "$WORK" | awk 'NR==2{print $1}'))"

# --- The machine: fsyncs per second on the data disk; raw loopback SMTP.
FSYNCS=$(python3 - "$WORK" <<'PY'
import os, sys, time
path = os.path.join(sys.argv[1], "fsync.probe")
fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
n, t0 = 0, time.time()
while time.time() - t0 < 2.0:
    os.write(fd, b"x" * 4096); os.fsync(fd); n += 1
os.close(fd); os.unlink(path)
print(f"{n / (time.time() - t0):.0f}")
PY
)
row "disk: 4 KB write + fsync" "$FSYNCS/s" "" "the ceiling of unbatched durable writes"
# The data disk's durable sequential write rate, as 100 KB messages: what intake could reach
# if storing were nothing but appending the message once. Measured as the relay writes its
# bodies (O_DIRECT, 4 MB writes, then fdatasync) — that is the limit the share below is of;
# the same through the page cache is shown too, but on a VM it swings with the guest's page
# cache (339 and 1,352 MB/s twenty minutes apart, BENCHMARKS.md 2026-12-05).
SEQ_MB=512
seq_write() { # dd flags... -> seconds
  local t0 t1
  t0=$(now)
  dd if=/dev/zero of="$WORK/seq.probe" bs=4M count=$((SEQ_MB / 4)) conv=fdatasync "$@" status=none || return 1
  t1=$(now)
  rm -f "$WORK/seq.probe"
  echo "$t1 - $t0" | bc -l
}
CACHED_S=$(seq_write)
# A file system without O_DIRECT (tmpfs): the relay writes through the page cache there too.
DIRECT_S=$(seq_write oflag=direct 2>/dev/null) || DIRECT_S=$CACHED_S
DISK_MSGS=$(echo "$SEQ_MB * 1048576 / $SIZE / $DIRECT_S" | bc -l)
row "disk: sequential write + fdatasync, O_DIRECT ($SEQ_MB MB)" "$(printf %.0f "$DISK_MSGS")" "100 KB/s" "$(printf '%.0f MB/s' "$(echo "$SEQ_MB / $DIRECT_S" | bc -l)")"
row "disk: the same through the page cache" "$(printf %.0f "$(echo "$SEQ_MB * 1048576 / $SIZE / $CACHED_S" | bc -l)")" "100 KB/s" "$(printf '%.0f MB/s' "$(echo "$SEQ_MB / $CACHED_S" | bc -l)")"
make_forward "$WORK/fwd.eml" "$SIZE" No
SINK=$(port)
smtp-sink -u nobody "127.0.0.1:$SINK" 1024 >/dev/null 2>&1 & PIDS+=("$!")
wait_port "$SINK" smtp-sink
BSINK=$(port)
"$LOAD" sink --listen "127.0.0.1:$BSINK" >/dev/null 2>&1 & PIDS+=("$!")
wait_port "$BSINK" "bench sink"
# The protocol bound: our own load generator into our own sink, nothing stored — what 50
# sessions of 100 KB can move over loopback on this machine.
r=$("$LOAD" send --target "127.0.0.1:$BSINK" --connections 50 --count "$MSGS" --size "$SIZE")
PROTO=$(kv "$r" msg_per_s)
row "protocol bound: mmsrelay-bench send → sink, 50 conns" "$(printf %.0f "$PROTO")" "msg/s" "no storage"
t0=$(now); smtp-source -s 10 -m "$MSGS" -F "$WORK/fwd.eml" -f "$FROM" -t "$TO_LOCAL" "127.0.0.1:$SINK" >/dev/null; t1=$(now)
RAW=$(rate "$MSGS" "$(echo "$t1 - $t0" | bc -l)")
row "smtp-source → smtp-sink (no storage), 10 sessions" "$(printf %.0f "$RAW")" "msg/s" "Postfix's tools, for reference"
# What the intake rows' load generator can push at all: smtp-source (one message per session,
# no pipelining, DATA in 4 KB writes) into a sink that stores nothing.
t0=$(now); smtp-source -s 50 -m "$MSGS" -F "$WORK/fwd.eml" -f "$FROM" -t "$TO_LOCAL" "127.0.0.1:$BSINK" >/dev/null; t1=$(now)
SRC_BOUND=$(rate "$MSGS" "$(echo "$t1 - $t0" | bc -l)")
row "smtp-source → mmsrelay-bench sink, 50 sessions" "$(printf %.0f "$SRC_BOUND")" "msg/s" "no storage: the intake rows' load generator's own limit"

# --- Intake: Postfix smtpd vs mmsrelay, both durable, smtp-source for both.
PPORT=$(port)
start_postfix "$WORK/pf-intake" "$PPORT"
t0=$(now); smtp-source -s 50 -m "$MSGS" -F "$WORK/fwd.eml" -f "$FROM" -t "$TO_LOCAL" "127.0.0.1:$PPORT" >/dev/null; t1=$(now)
P_IN=$(rate "$MSGS" "$(echo "$t1 - $t0" | bc -l)")
postfix -c "$WORK/pf-intake" stop >/dev/null 2>&1 || true
start_relay() { # name smtp_port api_port extra_toml
  relay_config "$WORK/$1.toml" "$2" "$3" "$WORK/$1-data" "$4"
  sed -i 's/^max_connections_per_source = 1000/max_connections_per_source = 30000\nmax_connections = 30000/' "$WORK/$1.toml"
  "$BIN" serve -c "$WORK/$1.toml" >/dev/null 2> "$WORK/$1.log" & PIDS+=("$!")
  wait_port "$2" "$1"
}
PEER_SRC='
[[peer]]
name = "src"
domains = ["mms.mnc002.mcc262.gprs"]
allow = ["127.0.0.0/8"]
transit = true'
RP=$(port); start_relay intake "$RP" "$(port)" "$PEER_SRC"; RPID=${PIDS[-1]}
t0=$(now); smtp-source -s 50 -m "$MSGS" -F "$WORK/fwd.eml" -f "$FROM" -t "$TO_LOCAL" "127.0.0.1:$RP" >/dev/null; t1=$(now)
R_IN=$(rate "$MSGS" "$(echo "$t1 - $t0" | bc -l)")
stop_pid "$RPID"
row "intake, 100 KB, 50 sessions: postfix smtpd" "$(printf %.0f "$P_IN")" "msg/s" "1.00"
BOUND=$(echo "if ($DISK_MSGS < $PROTO) $DISK_MSGS else $PROTO" | bc -l)
row "intake, 100 KB, 50 sessions: mmsrelay" "$(printf %.0f "$R_IN")" "msg/s" "$(printf '%.2f × postfix; %.0f %% of the lower limit (disk or protocol); %.0f %% of smtp-source'"'"'s' "$(echo "$R_IN / $P_IN" | bc -l)" "$(echo "100 * $R_IN / $BOUND" | bc -l)" "$(echo "100 * $R_IN / $SRC_BOUND" | bc -l)")"

# --- Relay: load → Postfix → smtp-sink vs load → mmsrelay A → sink (mmsrelay-bench sink).
postfix_relay_rate "$MSGS" "$WORK/fwd.eml" "$SINK"
onward_peer() { # name port
  printf '\n[[peer]]\nname = "%s"\ndomains = ["mms.mnc007.mcc262.gprs"]\nprefixes = ["+49179"]\nhosts = ["127.0.0.1:%s"]\ntls = "none"\nmax_connections = 16\nallow = ["127.0.0.0/8"]\n' "$1" "$2"
}
AP=$(port); AAPI=$(port); start_relay relay-a "$AP" "$AAPI" "$PEER_SRC$(onward_peer sink "$BSINK")"; APID=${PIDS[-1]}
t0=$(now)
smtp-source -s 50 -m "$MSGS" -F "$WORK/fwd.eml" -f "$FROM" -t "$TO_ONWARD" "127.0.0.1:$AP" >/dev/null
while [ "$(queue_depth "$AAPI")" != 0 ]; do sleep 0.05; done
t1=$(now)
R_RELAY=$(rate "$MSGS" "$(echo "$t1 - $t0" | bc -l)")
stop_pid "$APID"
row "relay, 100 KB: smtp-source → postfix → smtp-sink" "$(printf %.0f "$P_RELAY")" "msg/s" "1.00"
row "relay, 100 KB: smtp-source → mmsrelay → sink" "$(printf %.0f "$R_RELAY")" "msg/s" "$(printf '%.2f × postfix' "$(echo "$R_RELAY / $P_RELAY" | bc -l)")"

# --- Several nodes on one PostgreSQL: intake and relay through 1, 2 and 3 nodes (smtp-source
# split across them, 50 sessions in all). All nodes, PostgreSQL and the load share 2 cores and
# one disk here: this measures the cost of the shared store, not a cluster's capacity.
PGPORT=$(port)
start_postgres "$WORK/pg" "$PGPORT"
PG_URL="postgres://mmsrelay@127.0.0.1:$PGPORT/bench"
cluster_run() { # nodes what(intake|relay); sets CLUSTER_RATE
  local n=$1 what=$2 i ports=() apis=() pids=() to=$TO_LOCAL t0 t1 db="bench_${2}_$1"
  "$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)/createdb" -h 127.0.0.1 -p "$PGPORT" -U mmsrelay "$db"
  [ "$what" = relay ] && to=$TO_ONWARD
  for i in $(seq "$n"); do
    ports+=("$(port)"); apis+=("$(port)")
    start_relay "pg-$what-$n-$i" "${ports[-1]}" "${apis[-1]}" "backend = \"postgres\"
url = \"postgres://mmsrelay@127.0.0.1:$PGPORT/$db\"
pool_size = 16
[cluster]
node = \"n$i\"
$PEER_SRC$(onward_peer sink "$BSINK")"
    pids+=("${PIDS[-1]}")
  done
  local loads=()
  t0=$(now)
  for i in $(seq "$n"); do
    smtp-source -s $((50 / n)) -m $((MSGS / n)) -F "$WORK/fwd.eml" -f "$FROM" -t "$to" "127.0.0.1:${ports[$((i - 1))]}" >/dev/null &
    loads+=("$!")
  done
  for p in "${loads[@]}"; do wait "$p"; done
  if [ "$what" = relay ]; then
    while [ "$(queue_depth "${apis[0]}")" != 0 ]; do sleep 0.05; done
  fi
  t1=$(now)
  for p in "${pids[@]}"; do stop_pid "$p"; done
  CLUSTER_RATE=$(rate $(( (MSGS / n) * n )) "$(echo "$t1 - $t0" | bc -l)")
}
for what in intake relay; do
  for n in 1 2 3; do
    cluster_run "$n" "$what"
    base=$P_IN; [ "$what" = relay ] && base=$P_RELAY
    row "$what, 100 KB: $n node(s) on PostgreSQL" "$(printf %.0f "$CLUSTER_RATE")" "msg/s" "$(printf '%.2f × postfix' "$(echo "$CLUSTER_RATE / $base" | bc -l)")"
  done
done

# --- The acknowledged path: MMs originated at A's API → B, B's RES as mail back to A, or folded
# into the reply by XMM4 SYNC (both durable at both ends).
acked_pair_rate "$BIN" "$LOAD" "$MSGS" "$SIZE" false; E_RES=$PAIR_RATE
acked_pair_rate "$BIN" "$LOAD" "$MSGS" "$SIZE" true; E_SYNC=$PAIR_RATE
row "acknowledged A → B: RES as mail" "$(printf %.0f "$E_RES")" "msg/s" "$(printf '%.2f × postfix relay' "$(echo "$E_RES / $P_RELAY" | bc -l)")"
row "acknowledged A → B: XMM4 SYNC" "$(printf %.0f "$E_SYNC")" "msg/s" "$(printf '%.2f × postfix relay, %.2f × RES mail' "$(echo "$E_SYNC / $P_RELAY" | bc -l)" "$(echo "$E_SYNC / $E_RES" | bc -l)")"

# --- Scaling and latency: durable intake by connections and by size (mmsrelay-bench).
SP=$(port); start_relay scale "$SP" "$(port)" "$PEER_SRC"; SPID=${PIDS[-1]}
for c in 1 10 50 200; do
  r=$("$LOAD" send --target "127.0.0.1:$SP" --connections "$c" --count "$MSGS" --size "$SIZE")
  [ "$c" = 50 ] && PEAK=$(kv "$r" msg_per_s)
  share=""
  # The same load generator and connections as the protocol bound: the share of it.
  [ "$c" = 50 ] && share=$(printf '; %.0f %% of the protocol bound' "$(echo "100 * $PEAK / $PROTO" | bc -l)")
  row "intake 100 KB, $c connections" "$(printf %.0f "$(kv "$r" msg_per_s)")" "msg/s" "p50 $(kv "$r" p50_ms) ms, p99 $(kv "$r" p99_ms) ms$share"
done
for s in 10240 1048576; do
  n=$MSGS; [ "$s" -gt 200000 ] && n=$((MSGS / 10))
  r=$("$LOAD" send --target "127.0.0.1:$SP" --connections 50 --count "$n" --size "$s")
  row "intake $((s / 1024)) KB, 50 connections" "$(printf %.0f "$(kv "$r" msg_per_s)")" "msg/s" "p50 $(kv "$r" p50_ms) ms, p99 $(kv "$r" p99_ms) ms"
done
# Latency at half the peak rate (the 50-connection figure above), offered open-loop.
half=$(echo "$PEAK / 2" | bc -l)
r=$("$LOAD" send --target "127.0.0.1:$SP" --connections 50 --count "$MSGS" --size "$SIZE" --rate "$half")
row "intake 100 KB at half the peak ($(printf %.0f "$half") msg/s offered)" "$(printf %.0f "$(kv "$r" msg_per_s)")" "msg/s" "p50 $(kv "$r" p50_ms) ms, p99 $(kv "$r" p99_ms) ms (target < 50)"

# --- Connections: memory of 10 000 idle sessions, time to accept them.
rss() { awk '/VmRSS/{print $2}' "/proc/$1/status"; }
before=$(rss "$SPID")
"$LOAD" idle --target "127.0.0.1:$SP" --connections 10000 --hold 5 > "$WORK/idle.out" &
IPID=$!
# Measured while all of them are held (the line appears once they are open).
until grep -q open= "$WORK/idle.out" 2>/dev/null; do sleep 0.2; done
sleep 1
during=$(rss "$SPID")
wait "$IPID" || true
open=$(kv "$(cat "$WORK/idle.out")" open); secs=$(kv "$(cat "$WORK/idle.out")" seconds)
row "10 000 idle sessions: accepted" "$open" "sessions" "in $secs s"
row "10 000 idle sessions: memory" "$(( (during - before) * 1024 / open ))" "bytes/session" "RSS $before → $during KB (target < 20 KB/session)"
stop_pid "$SPID"

printf '\n%-50s %10s %12s %s\n' "measurement" "value" "unit" "note"
printf '%s\n' "${ROWS[@]}"
