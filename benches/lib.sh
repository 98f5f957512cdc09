# Shared by the benchmark scripts: free ports, waiting for listeners, a private Postfix
# instance, the MM4 test message. Source it; it sets WORK and cleans up on exit.

need_packages() {
  local need=()
  command -v smtp-source >/dev/null 2>&1 || need+=(postfix)
  command -v bc >/dev/null 2>&1 || need+=(bc)
  ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1 || need+=(postgresql)
  if [ ${#need[@]} -gt 0 ]; then
    echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
  fi
}

WORK=$(mktemp -d "${TMPDIR:-/var/tmp}/mmsrelay-bench.XXXXXX")
chmod 755 "$WORK"   # Postfix's unprivileged daemons must reach their queue inside it
PIDS=()
POSTFIXES=()
PG_PID=
bench_cleanup() {
  for p in "${PIDS[@]:-}"; do [ -n "$p" ] && kill "$p" 2>/dev/null || true; done
  # PostgreSQL last, fast shutdown (SIGINT), once its clients are gone.
  if [ -n "$PG_PID" ]; then sleep 0.5; kill -INT "$PG_PID" 2>/dev/null || true; wait "$PG_PID" 2>/dev/null || true; fi
  for d in "${POSTFIXES[@]:-}"; do [ -n "$d" ] && postfix -c "$d" stop >/dev/null 2>&1 || true; done
  rm -rf "$WORK"
}
trap bench_cleanup EXIT

port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

wait_port() { # port what
  for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.1; done
  echo "$2 did not start"; exit 1
}

# make_forward FILE SIZE ACK(Yes|No): an MM4 forward from operator B (+49172…) to +1555…, with a
# base64 part of about SIZE bytes.
make_forward() {
  python3 - "$1" "$2" "$3" <<'PY'
import base64, os, sys
path, size, ack = sys.argv[1], int(sys.argv[2]), sys.argv[3]
head = (
    "X-Mms-3GPP-MMS-Version: 6.16.0\n"
    "X-Mms-Message-Type: MM4_forward.REQ\n"
    "X-Mms-Transaction-ID: \"BENCH-1\"\n"
    "X-Mms-Message-ID: \"BENCH-1@mms.mnc002.mcc262.gprs\"\n"
    "Date: Wed, 25 Nov 2026 12:34:56 +0100\n"
    "From: +491721234567/TYPE=PLMN\n"
    "To: +15550000001/TYPE=PLMN\n"
    f"X-Mms-Ack-Request: {ack}\n"
    "X-Mms-Originator-System: system-user@mms.mnc002.mcc262.gprs\n"
    "MIME-Version: 1.0\n"
    "Content-Type: multipart/related; type=\"image/jpeg\"; boundary=\"b1\"\n\n"
    "--b1\nContent-Type: image/jpeg\nContent-Transfer-Encoding: base64\n\n"
)
raw = os.urandom(size * 3 // 4)
b64 = base64.b64encode(raw).decode()
body = "\n".join(b64[i:i+76] for i in range(0, len(b64), 76))
open(path, "w").write(head + body + "\n--b1--\n")
PY
}

# start_postfix DIR PORT [TRANSPORT_LINE]: a private Postfix on 127.0.0.1:PORT relaying
# mms.mnc001.mcc001.gprs; without a transport the mail stays queued (intake only).
start_postfix() {
  local pf=$1 pport=$2 transport=${3:-}
  mkdir -p "$pf/spool" "$pf/data" "$pf/log"
  chown postfix:postfix "$pf/data"
  cat > "$pf/main.cf" <<CF
compatibility_level = 3.6
queue_directory = $pf/spool
data_directory = $pf/data
command_directory = /usr/sbin
daemon_directory = /usr/lib/postfix/sbin
meta_directory = /etc/postfix
shlib_directory = /usr/lib/postfix
mail_owner = postfix
setgid_group = postdrop
maillog_file = $pf/log/maillog
maillog_file_prefixes = /var, /dev/stdout, $pf
myhostname = mta.bench.local
mydestination =
relay_domains = mms.mnc001.mcc001.gprs
local_recipient_maps =
alias_maps =
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
smtp_dns_support_level = disabled
local_header_rewrite_clients =
smtpd_forbid_bare_newline = yes
message_size_limit = 10485760
default_process_limit = 200
CF
  if [ -n "$transport" ]; then
    echo "$transport" > "$pf/transport"
    echo "transport_maps = texthash:$pf/transport" >> "$pf/main.cf"
  else
    echo "defer_transports = smtp" >> "$pf/main.cf"
  fi
  sed -e "s/^smtp      inet  n       -       y       -       -       smtpd/127.0.0.1:$pport inet n - n - - smtpd/" \
      -e 's/^\([a-z]*[[:space:]]*\(unix\|inet\|fifo\|pass\)[[:space:]]*[-ny][[:space:]]*[-ny][[:space:]]*\)y/\1n/' \
      /etc/postfix/master.cf > "$pf/master.cf"
  grep -q "^127.0.0.1:$pport" "$pf/master.cf" || { echo "master.cf rewrite failed"; exit 1; }
  script -qc "postfix -c $pf start" /dev/null >/dev/null
  POSTFIXES+=("$pf")
  wait_port "$pport" "postfix (see $pf/log/maillog)"
}

# start_postgres DIR PORT: a private PostgreSQL cluster (as the package's postgres user) on
# 127.0.0.1:PORT with trust auth for role mmsrelay and a database "bench"; sets PG_PID.
start_postgres() {
  local dir=$1 pport=$2 bin
  bin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
  mkdir -p "$dir" && chown postgres:postgres "$dir"
  setpriv --reuid=postgres --regid=postgres --init-groups "$bin/initdb" -D "$dir" -U mmsrelay \
    --auth=trust -E UTF8 --no-sync >/dev/null
  setpriv --reuid=postgres --regid=postgres --init-groups "$bin/postgres" -D "$dir" -p "$pport" \
    -c listen_addresses=127.0.0.1 -c "unix_socket_directories=$dir" -c max_connections=300 \
    >/dev/null 2>&1 &
  PG_PID=$!
  for _ in $(seq 100); do pg_isready -q -h 127.0.0.1 -p "$pport" && break; sleep 0.1; done
  "$bin/createdb" -h 127.0.0.1 -p "$pport" -U mmsrelay bench
}

postfix_queue_size() { find "$1/spool/incoming" "$1/spool/active" "$1/spool/deferred" "$1/spool/maildrop" -type f 2>/dev/null | wc -l; }

# relay_config FILE SMTP_PORT API_PORT DATA [extra TOML]
relay_config() {
  cat > "$1" <<TOML
[mmse]
domain = "mms.mnc001.mcc001.gprs"
local_prefixes = ["+1555"]
[smtp]
listen = ["127.0.0.1:$2"]
max_message_size = 10485760
max_connections_per_source = 1000
[api]
listen = "127.0.0.1:$3"
[dns]
servers = ["127.0.0.1:9"]
enum_suffixes = []
[store]
path = "$4"
$5
TOML
}

now() { date +%s.%N; }

rate() { echo "$1 / $2" | bc -l; }
# (No python per poll: a polling loop must not take CPU from what it measures.)
queue_depth() { curl -s "127.0.0.1:$1/v1/queue" | sed -n 's/^{"depth":\([0-9]*\).*/\1/p'; }
stop_pid() { kill -TERM "$1" 2>/dev/null || true; wait "$1" 2>/dev/null || true; }

# postfix_relay_rate MSGS FILE SINK_PORT: smtp-source → a private Postfix → smtp-sink on
# SINK_PORT, 50 sessions, until Postfix's queue is empty; sets P_RELAY (msg/s).
postfix_relay_rate() {
  local pport t0 t1
  pport=$(port)
  start_postfix "$WORK/pf-relay" "$pport" "mms.mnc007.mcc262.gprs smtp:[127.0.0.1]:$3"
  t0=$(now)
  smtp-source -s 50 -m "$1" -F "$2" -f "+491721234567/TYPE=PLMN@mms.mnc002.mcc262.gprs" \
    -t "+491790000001/TYPE=PLMN@mms.mnc007.mcc262.gprs" "127.0.0.1:$pport" >/dev/null
  while [ "$(postfix_queue_size "$WORK/pf-relay")" -gt 0 ]; do sleep 0.05; done
  t1=$(now)
  postfix -c "$WORK/pf-relay" stop >/dev/null 2>&1 || true
  rm -rf "$WORK/pf-relay"
  P_RELAY=$(rate "$1" "$(echo "$t1 - $t0" | bc -l)")
}

# acked_pair_rate BIN LOAD MSGS SIZE XMM4(true|false): the acknowledged path between two
# mmsrelays. MMs originated at A through its API (50 keep-alive connections) go to B; B files
# them and answers with an MM4_forward.RES mail back into A, or — with XMM4 SYNC — in the reply
# to the forward. Timed from the first submission until nothing waits at A (every forward
# acknowledged) or B. Sets PAIR_RATE (msg/s). No subshell: PIDS must stay ours.
acked_pair_rate() {
  local bin=$1 load=$2 msgs=$3 size=$4 xmm4=$5 ap aapi bp bapi apid bpid t0 t1
  ap=$(port); aapi=$(port); bp=$(port); bapi=$(port)
  cat > "$WORK/ack-b-$xmm4.toml" <<TOML
[mmse]
domain = "mms.mnc007.mcc262.gprs"
local_prefixes = ["+49179"]
[smtp]
listen = ["127.0.0.1:$bp"]
max_message_size = 10485760
max_connections_per_source = 1000
xmm4 = $xmm4
[api]
listen = "127.0.0.1:$bapi"
[dns]
servers = ["127.0.0.1:9"]
enum_suffixes = []
[store]
path = "$WORK/ack-b-$xmm4"
[[peer]]
name = "operator-a"
domains = ["mms.mnc001.mcc001.gprs"]
prefixes = ["+1555"]
hosts = ["127.0.0.1:$ap"]
tls = "none"
max_connections = 16
allow = ["127.0.0.0/8"]
TOML
  relay_config "$WORK/ack-a-$xmm4.toml" "$ap" "$aapi" "$WORK/ack-a-$xmm4" "
[[peer]]
name = \"operator-b\"
domains = [\"mms.mnc007.mcc262.gprs\"]
prefixes = [\"+49179\"]
hosts = [\"127.0.0.1:$bp\"]
tls = \"none\"
max_connections = 16
allow = [\"127.0.0.0/8\"]"
  "$bin" serve -c "$WORK/ack-b-$xmm4.toml" >/dev/null 2> "$WORK/ack-b-$xmm4.log" & PIDS+=("$!"); bpid=$!
  "$bin" serve -c "$WORK/ack-a-$xmm4.toml" >/dev/null 2> "$WORK/ack-a-$xmm4.log" & PIDS+=("$!"); apid=$!
  wait_port "$bp" "relay B"; wait_port "$ap" "relay A"; wait_port "$aapi" "relay A's API"
  t0=$(now)
  "$load" submit --api "127.0.0.1:$aapi" --connections 50 --count "$msgs" --size "$size" >/dev/null
  while [ "$(queue_depth "$aapi")" != 0 ] || [ "$(queue_depth "$bapi")" != 0 ]; do sleep 0.05; done
  t1=$(now)
  stop_pid "$apid"; stop_pid "$bpid"
  rm -rf "$WORK/ack-a-$xmm4" "$WORK/ack-b-$xmm4"
  PAIR_RATE=$(rate "$msgs" "$(echo "$t1 - $t0" | bc -l)")
}
