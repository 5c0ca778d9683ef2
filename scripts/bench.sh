#!/usr/bin/env bash
# Performance comparison: pop3server against Dovecot's POP3, perdition,
# a direct IMAP client and Dovecot's imapc POP3, on the same mail, in one
# run; prints one table of medians and ratios (no pass/fail). See
# scripts/bench.py for the systems, workloads and options (--quick,
# --rounds N, --only W[,W..], --binary PATH, --keep).
#
# Run as root on Debian 12. Installs what is missing (dovecot-imapd,
# dovecot-pop3d, perdition, systemd for systemd-socket-activate, python3);
# a peer whose package cannot be installed is left out of the table rather
# than failing the run. Builds the static release binary (scripts/lib.sh
# build_release, as the packages ship it) unless --binary is given.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/lib.sh
. scripts/lib.sh

# Without these there is nothing to measure.
required=()
[ -x /usr/sbin/dovecot ] || required+=(dovecot-imapd)
[ -x /usr/bin/python3 ] || required+=(python3)
install_debs "${required[@]}"

# Each of these is one column (pop3d serves B, C and E); try them together,
# then one by one, so that one that cannot be had does not keep the others out.
optional=()
[ -e /usr/lib/dovecot/pop3 ] || optional+=(dovecot-pop3d)
[ -x /usr/sbin/perdition ] || optional+=(perdition)
[ -x /usr/bin/systemd-socket-activate ] || optional+=(systemd)
if [ "${#optional[@]}" -gt 0 ] && ! install_debs "${optional[@]}"; then
    for pkg in "${optional[@]}"; do
        install_debs "$pkg" || echo "could not install $pkg: its systems are left out" >&2
    done
fi

ensure_session_user

# --binary PATH means: measure that build, do not build.
build=1
for arg in "$@"; do
    case "$arg" in --binary | --binary=*) build= ;; esac
done
if [ -n "$build" ]; then
    build_release
fi

# Debian's python3: bench.py uses the standard library only.
# Without --binary: the static build just made, as the packages ship it.
[ -z "$build" ] || set -- --binary "$PWD/$RELEASE_BIN" "$@"
exec /usr/bin/python3 scripts/bench.py "$@"
