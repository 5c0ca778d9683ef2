#!/usr/bin/env bash
# debian-root.sh DEST [PKG...]: makes DEST a fresh Debian 12 (bookworm) root
# made by `debootstrap --variant=minbase` plus the named packages, the way a
# newcomer's bare machine or a freshly installed server looks.
#
# debootstrap takes about a minute; the result is kept as a tarball under
# $POP3SERVER_ROOT_CACHE (default /var/cache/pop3server-tests), keyed by the
# package list, and reused for POP3SERVER_ROOT_MAX_DAYS (default 7) days, so
# that later runs only unpack it (seconds). DEST must not exist or be empty.
#
# Environment:
#   DEBIAN_MIRROR            default http://deb.debian.org/debian
#   POP3SERVER_ROOT_CACHE    where the tarballs live
#   POP3SERVER_ROOT_MAX_DAYS rebuild a tarball older than this
set -euo pipefail

[ "$#" -ge 1 ] || { echo "usage: $0 DEST [PKG...]" >&2; exit 2; }
DEST=$1
shift
HERE=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=scripts/lib.sh
. "$HERE/lib.sh"

MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
CACHE=${POP3SERVER_ROOT_CACHE:-/var/cache/pop3server-tests}
MAX_DAYS=${POP3SERVER_ROOT_MAX_DAYS:-7}
SUITE=bookworm

if [ "$(id -u)" -ne 0 ]; then
    echo "$0: debootstrap and unpacking a root need root" >&2
    exit 1
fi
if [ -e "$DEST" ] && [ -n "$(ls -A "$DEST" 2>/dev/null)" ]; then
    echo "$0: $DEST exists and is not empty" >&2
    exit 1
fi

# The key names what is in the root; sorting makes it independent of order.
pkgs=$(printf '%s\n' "$@" | sort -u | tr '\n' ',' | sed 's/,$//')
key=$(printf '%s %s minbase %s v1' "$SUITE" "$MIRROR" "$pkgs" | sha256sum | cut -c1-16)
tarball="$CACHE/$SUITE-minbase-$key.tar"

if [ -f "$tarball" ] && [ -n "$(find "$tarball" -mtime -"$MAX_DAYS" -print)" ]; then
    echo "debian-root: unpacking cached $tarball"
else
    command -v debootstrap >/dev/null 2>&1 || install_debs debootstrap
    mkdir -p "$CACHE"
    build=$(mktemp -d "$CACHE/build.XXXXXX")
    trap 'rm -rf "$build"' EXIT
    echo "debian-root: debootstrap --variant=minbase $SUITE ${pkgs:+--include=$pkgs} (about a minute)"
    start=$SECONDS
    if ! debootstrap --variant=minbase ${pkgs:+--include="$pkgs"} "$SUITE" "$build/root" "$MIRROR" \
            > "$build/debootstrap.log" 2>&1; then
        tail -n 30 "$build/debootstrap.log" >&2
        [ -f "$build/root/debootstrap/debootstrap.log" ] && tail -n 30 "$build/root/debootstrap/debootstrap.log" >&2
        echo "$0: debootstrap failed (mirror $MIRROR reachable?)" >&2
        exit 1
    fi
    # Updates and security fixes, as an installed machine has them.
    cat > "$build/root/etc/apt/sources.list" <<EOF
deb $MIRROR $SUITE main
deb $MIRROR $SUITE-updates main
EOF
    rm -rf "$build/root/var/cache/apt/archives/"*.deb
    tar --numeric-owner --xattrs -C "$build/root" -cf "$build/root.tar" .
    mv "$build/root.tar" "$tarball"
    echo "debian-root: built in $((SECONDS - start)) s, cached as $tarball"
    rm -rf "$build"
    trap - EXIT
fi

mkdir -p "$DEST"
tar --numeric-owner --xattrs -C "$DEST" -xpf "$tarball"
