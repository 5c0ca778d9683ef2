#!/usr/bin/env bash
# Try pop3server by hand: a private Dovecot on 127.0.0.1:10143 with user
# demo/demo (3 messages), and pop3server in the foreground on 127.0.0.1:10110.
# Ctrl-C stops both. Run as root (Dovecot needs it); nothing in /etc is changed.
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$(pwd)
IMAP_PORT=${IMAP_PORT:-10143}
POP3_PORT=${POP3_PORT:-10110}

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
    if [ -n "${SERVER_PID:-}" ]; then kill "$SERVER_PID" 2>/dev/null || true; wait "$SERVER_PID" 2>/dev/null || true; fi
    python3 "$ROOT/scripts/testbed.py" stop --dir "$DEMO_DIR/dovecot" || true
    rm -rf "$DEMO_DIR"
    echo "demo stopped."
}
trap cleanup EXIT INT TERM

cargo build --release

python3 "$ROOT/scripts/testbed.py" start-demo --dir "$DEMO_DIR/dovecot" --port "$IMAP_PORT"
mkdir -p "$DEMO_DIR/locks"

cat <<MSG

pop3server is starting on 127.0.0.1:$POP3_PORT (backend Dovecot 127.0.0.1:$IMAP_PORT).
Try it from another terminal:

    curl pop3://demo:demo@127.0.0.1:$POP3_PORT/        # LIST
    curl pop3://demo:demo@127.0.0.1:$POP3_PORT/1       # RETR 1
    telnet 127.0.0.1 $POP3_PORT                        # USER demo / PASS demo / STAT / RETR 2 / QUIT
                                                       # (telnet: apt-get install telnet)

Press Ctrl-C to stop the server and Dovecot.

MSG

"$ROOT/target/release/pop3server" --config /dev/null --listen "127.0.0.1:$POP3_PORT" \
    --backend-host 127.0.0.1 --backend-port "$IMAP_PORT" --backend-tls none \
    --lock-dir "$DEMO_DIR/locks" --cache-dir "$DEMO_DIR/cache" --log stderr &
SERVER_PID=$!
wait "$SERVER_PID" || true
