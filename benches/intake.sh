#!/usr/bin/env bash
# Durable intake: mmsrelay vs Postfix smtpd, same load tool (Postfix's smtp-source), same
# message (a 100 KB MM4_forward.REQ), same disk, same run. Prints one table with the ratio.
#
#   benches/intake.sh [MESSAGES] [SESSIONS]      (defaults: 2000 messages, 50 sessions)
#
# Needs postfix (smtp-source) from Debian; installs it when missing. Not a test: run it on an
# otherwise idle machine and compare figures from one run only.
set -euo pipefail
cd "$(dirname "$0")/.."

MSGS=${1:-2000}
SESS=${2:-50}
SIZE=${SIZE:-102400}

need_postfix() {
  if ! command -v smtp-source >/dev/null 2>&1; then
    echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postfix >/dev/null
  fi
}
need_postfix

cargo build --release -q -p mmsrelay
BIN=$PWD/target/release/mmsrelay
WORK=$(mktemp -d "${TMPDIR:-/var/tmp}/mmsrelay-intake.XXXXXX")
chmod 755 "$WORK"   # Postfix's unprivileged daemons must reach their queue inside it
PIDS=()
cleanup() {
  for p in "${PIDS[@]:-}"; do [ -n "$p" ] && kill "$p" 2>/dev/null || true; done
  [ -d "$WORK/postfix" ] && postfix -c "$WORK/postfix" stop >/dev/null 2>&1 || true
  rm -rf "$WORK"
}
trap cleanup EXIT

port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# The message: an MM4 forward from operator B to a local subscriber, ~100 KB of base64.
python3 - "$WORK/forward.eml" "$SIZE" <<'PY'
import base64, os, sys
path, size = sys.argv[1], int(sys.argv[2])
head = (
    "X-Mms-3GPP-MMS-Version: 6.16.0\n"
    "X-Mms-Message-Type: MM4_forward.REQ\n"
    "X-Mms-Transaction-ID: \"BENCH-1\"\n"
    "X-Mms-Message-ID: \"BENCH-1@mms.mnc002.mcc262.gprs\"\n"
    "Date: Wed, 25 Nov 2026 12:34:56 +0100\n"
    "From: +491721234567/TYPE=PLMN\n"
    "To: +15550000001/TYPE=PLMN\n"
    "X-Mms-Ack-Request: Yes\n"
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
FROM="+491721234567/TYPE=PLMN@mms.mnc002.mcc262.gprs"
TO="+15550000001/TYPE=PLMN@mms.mnc001.mcc001.gprs"

# --- Postfix: a private instance, its queue on the same disk; mail stays queued (intake only).
PF=$WORK/postfix; PPORT=$(port)
mkdir -p "$PF/spool" "$PF/data" "$PF/log"
chown postfix:postfix "$PF/data"
cat > "$PF/main.cf" <<EOF
compatibility_level = 3.6
queue_directory = $PF/spool
data_directory = $PF/data
command_directory = /usr/sbin
daemon_directory = /usr/lib/postfix/sbin
meta_directory = /etc/postfix
shlib_directory = /usr/lib/postfix
mail_owner = postfix
setgid_group = postdrop
maillog_file = $PF/log/maillog
maillog_file_prefixes = /var, /dev/stdout, $PF
myhostname = mta.intake.local
mydestination =
relay_domains = mms.mnc001.mcc001.gprs
local_recipient_maps =
alias_maps =
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
smtp_dns_support_level = disabled
defer_transports = smtp
local_header_rewrite_clients =
smtpd_forbid_bare_newline = yes
message_size_limit = 10485760
default_process_limit = 200
EOF
sed -e "s/^smtp      inet  n       -       y       -       -       smtpd/127.0.0.1:$PPORT inet n - n - - smtpd/" \
    -e 's/^\([a-z]*[[:space:]]*\(unix\|inet\|fifo\|pass\)[[:space:]]*[-ny][[:space:]]*[-ny][[:space:]]*\)y/\1n/' \
    /etc/postfix/master.cf > "$PF/master.cf"
grep -q "^127.0.0.1:$PPORT" "$PF/master.cf" || { echo "master.cf rewrite failed"; exit 1; }
script -qc "postfix -c $PF start" /dev/null >/dev/null
wait_port() { # port what
  for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.1; done
  echo "$2 did not start"; exit 1
}
wait_port "$PPORT" "postfix (see $PF/log/maillog)"

# --- mmsrelay.
RPORT=$(port); APORT=$(port)
cat > "$WORK/mmsrelay.toml" <<EOF
[mmse]
domain = "mms.mnc001.mcc001.gprs"
local_prefixes = ["+1555"]
[smtp]
listen = ["127.0.0.1:$RPORT"]
max_message_size = 10485760
[api]
listen = "127.0.0.1:$APORT"
[store]
path = "$WORK/relay-data"
[[peer]]
name = "operator-b"
domains = ["mms.mnc002.mcc262.gprs"]
allow = ["127.0.0.0/8"]
EOF
"$BIN" serve -c "$WORK/mmsrelay.toml" 2> "$WORK/relay.log" &
RPID=$!; PIDS+=("$RPID")
wait_port "$RPORT" "mmsrelay"

run_load() { # port -> seconds
  local t0 t1
  t0=$(date +%s.%N)
  smtp-source -s "$SESS" -m "$MSGS" -F "$WORK/forward.eml" -f "$FROM" -t "$TO" "127.0.0.1:$1" >/dev/null
  t1=$(date +%s.%N)
  echo "$t1 - $t0" | bc -l
}

echo "load: $(cut -d' ' -f1-3 /proc/loadavg) (1/5/15 min); $(nproc) cores; data under $WORK"
echo "message: $(wc -c < "$WORK/forward.eml") bytes, $MSGS messages over $SESS sessions"

P_SECS=$(run_load "$PPORT")
P_QUEUED=$(find "$PF/spool/deferred" "$PF/spool/active" "$PF/spool/incoming" -type f 2>/dev/null | wc -l)
R_SECS=$(run_load "$RPORT")
kill -TERM "$RPID"; wait "$RPID" || true
STATS=$(grep -o 'commits=[0-9]* syncs=[0-9]*' "$WORK/relay.log" | tail -1)
COMMITS=$(echo "$STATS" | sed -E 's/commits=([0-9]+).*/\1/')
SYNCS=$(echo "$STATS" | sed -E 's/.*syncs=([0-9]+)/\1/')

P_RATE=$(echo "$MSGS / $P_SECS" | bc -l)
R_RATE=$(echo "$MSGS / $R_SECS" | bc -l)
printf '\n%-32s %12s %12s %10s\n' "durable intake (100 KB MM4)" "msg/s" "seconds" "ratio"
printf '%-32s %12.0f %12.2f %10s\n' "postfix smtpd (queue on disk)" "$P_RATE" "$P_SECS" "1.00"
printf '%-32s %12.0f %12.2f %10.2f\n' "mmsrelay (redb, group commit)" "$R_RATE" "$R_SECS" "$(echo "$R_RATE / $P_RATE" | bc -l)"
printf '\nmmsrelay: %s commits in %s fsync batches = %.3f fsyncs per message; postfix queued %s files\n' \
  "$COMMITS" "$SYNCS" "$(echo "$SYNCS / $COMMITS" | bc -l)" "$P_QUEUED"
