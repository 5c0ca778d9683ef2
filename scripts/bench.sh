#!/usr/bin/env bash
# Performance check: pop3server against Dovecot's own POP3 server on the same
# mail, measured in the same run; prints medians and ratios (no pass/fail).
# Run as root on Debian; installs dovecot-imapd and dovecot-pop3d if missing.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/lib.sh
. scripts/lib.sh
missing=()
[ -x /usr/sbin/dovecot ] || missing+=(dovecot-imapd)
[ -e /usr/lib/dovecot/pop3 ] || missing+=(dovecot-pop3d)
install_debs "${missing[@]}"
ensure_session_user
ensure_cargo
cargo build --release
exec python3 scripts/bench.py "$@"
