#!/usr/bin/env bash
# Try pop3server by hand: a private Dovecot on 127.0.0.1:10143 (STARTTLS)
# with user demo/demo (3 messages), and pop3server in the foreground on
# 127.0.0.1:10110 (STLS) and 127.0.0.1:10995 (POP3S), TLS on both sides with
# a demo CA made for this run. Ctrl-C stops all. Run as root (Dovecot needs
# it); nothing in /etc is changed.
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$(pwd)
IMAP_PORT=${IMAP_PORT:-10143}
IMAPS_PORT=${IMAPS_PORT:-10993}
POP3_PORT=${POP3_PORT:-10110}
POP3S_PORT=${POP3S_PORT:-10995}

# shellcheck source=scripts/lib.sh
. "$ROOT/scripts/lib.sh"
# Dovecot is the backend; curl is what the lines below tell you to try.
demo_pkgs=()
[ -x /usr/sbin/dovecot ] || demo_pkgs+=(dovecot-imapd)
command -v curl >/dev/null 2>&1 || demo_pkgs+=(curl)
install_debs "${demo_pkgs[@]}"
ensure_session_user
ensure_cargo

DEMO_DIR=$(mktemp -d /tmp/pop3demo.XXXXXX)
chmod 755 "$DEMO_DIR"

cleanup() {
    trap - EXIT INT TERM
    for pid in ${SERVER_PID:-} ${SERVER2_PID:-}; do
        kill "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    python3 "$ROOT/scripts/testbed.py" stop --dir "$DEMO_DIR/dovecot" || true
    rm -rf "$DEMO_DIR"
    echo "demo stopped."
}
trap cleanup EXIT INT TERM

build_release

python3 "$ROOT/scripts/testbed.py" start-demo --dir "$DEMO_DIR/dovecot" --port "$IMAP_PORT" \
    --imaps-port "$IMAPS_PORT"
mkdir -p "$DEMO_DIR/locks"
# The demo CA signed Dovecot's certificate, which pop3server's STLS and
# POP3S use too (it names 127.0.0.1 and localhost): TLS on both sides, and
# every client below checks the certificate against the demo CA.
TLS="$DEMO_DIR/dovecot/tls"
CA="$TLS/ca.pem"
echo demo > "$DEMO_DIR/demo.password"
common=(--config /dev/null --backend-host 127.0.0.1 --backend-port "$IMAP_PORT"
        --backend-tls starttls --backend-ca-file "$CA"
        --lock-dir "$DEMO_DIR/locks" --cache-dir "$DEMO_DIR/cache" --log stderr)
BIN="$ROOT/$RELEASE_BIN"

# Prove the backend side first, as an admin would.
"$BIN" "${common[@]}" --check --user demo --password-file "$DEMO_DIR/demo.password"

cat <<MSG

pop3server is starting on 127.0.0.1:$POP3_PORT (STLS) and 127.0.0.1:$POP3S_PORT (POP3S),
in front of Dovecot on 127.0.0.1:$IMAP_PORT (STARTTLS, certificate checked against the demo CA).
Try it from another terminal:

    curl pop3://demo:demo@127.0.0.1:$POP3_PORT/                          # LIST (plaintext: loopback only)
    curl --ssl-reqd --cacert $CA pop3://demo:demo@127.0.0.1:$POP3_PORT/1   # RETR 1 after STLS
    curl --cacert $CA pop3s://demo:demo@127.0.0.1:$POP3S_PORT/2           # RETR 2 over POP3S
    openssl s_client -quiet -starttls pop3 -CAfile $CA -connect 127.0.0.1:$POP3_PORT
                                                   # then: USER demo / PASS demo / STAT / QUIT
    mpop --host=127.0.0.1 --port=$POP3_PORT --tls=on --tls-starttls=on --tls-trust-file=$CA \\
         --auth=user --user=demo --passwordeval='echo demo' --keep=on --only-new=off \\
         --delivery=mbox,$DEMO_DIR/demo.mbox       # (mpop: apt-get install mpop)
    $BIN ${common[*]} --check --user demo --password-file $DEMO_DIR/demo.password

Press Ctrl-C to stop the servers and Dovecot.

MSG

"$BIN" "${common[@]}" --listen "127.0.0.1:$POP3_PORT" \
    --tls-cert "$TLS/server.pem" --tls-key "$TLS/server.key" &
SERVER_PID=$!
"$BIN" "${common[@]}" --listen "127.0.0.1:$POP3S_PORT" --implicit-tls \
    --tls-cert "$TLS/server.pem" --tls-key "$TLS/server.key" &
SERVER2_PID=$!
wait "$SERVER_PID" "$SERVER2_PID" || true
