#!/usr/bin/env bash
# fresh-debian.sh: runs the README's two commands, exactly as written, on a
# bare Debian 12 machine, the way a newcomer would: a fresh root made by
# `debootstrap --variant=minbase` with only ca-certificates, git,
# build-essential, python3, procps and iproute2, the Rust toolchain of this
# machine bound in read-only, an empty cargo registry, and a fresh
# `git clone` of this repository's HEAD (commit first: uncommitted changes
# are not in the clone). Run it before a release; it needs root and takes
# about 15 minutes (the tests download and build every crate from scratch).
#
# In the root: `./scripts/demo.sh` is started, `curl pop3://` must list and
# fetch the demo's messages through it, then it is stopped with Ctrl-C
# (SIGINT); then `./scripts/test.sh` must pass. Without CI=true it leaves the
# package tests out (they install the .deb and boot a container, which cannot
# nest in this root) and says so in one line.
#
# Environment:
#   RUSTUP_HOME, CARGO_BIN   the toolchain to bind in (default ~/.rustup and
#                            the directory of `cargo` on PATH)
#   KEEP_ROOT=1              keep the root (its path is printed)
#   DEMO_TIMEOUT, TEST_TIMEOUT   seconds, default 1200 and 2400
set -euo pipefail

cd "$(dirname "$0")/.."
REPO=$(pwd)
# shellcheck source=scripts/lib.sh
. "$REPO/scripts/lib.sh"

[ "$(id -u)" -eq 0 ] || { echo "$0: needs root (debootstrap, chroot)" >&2; exit 1; }
ensure_cargo
RUSTUP_HOME=${RUSTUP_HOME:-$HOME/.rustup}
CARGO_BIN=${CARGO_BIN:-$(dirname "$(command -v cargo)")}
[ -d "$RUSTUP_HOME/toolchains" ] || { echo "$0: no rustup toolchains in $RUSTUP_HOME" >&2; exit 1; }
DEMO_TIMEOUT=${DEMO_TIMEOUT:-1200}
TEST_TIMEOUT=${TEST_TIMEOUT:-2400}

WORK=$(mktemp -d /var/tmp/pop3server-fresh.XXXXXX)
ROOTFS="$WORK/root"
cleanup() {
    if [ -n "${KEEP_ROOT:-}" ]; then
        echo "root kept in $ROOTFS"
    else
        rm -rf "$WORK"
    fi
}
trap cleanup EXIT

printf '\n=== fresh Debian 12 root ===\n'
"$REPO/scripts/debian-root.sh" "$ROOTFS" ca-certificates git build-essential python3 procps iproute2
cp /etc/resolv.conf "$ROOTFS/etc/resolv.conf"
# A machine on this network trusts what this one trusts locally (a site CA,
# a TLS-inspecting proxy's CA): without it cargo cannot reach crates.io.
if ls /usr/local/share/ca-certificates/*.crt >/dev/null 2>&1; then
    cp /usr/local/share/ca-certificates/*.crt "$ROOTFS/usr/local/share/ca-certificates/"
    chroot "$ROOTFS" update-ca-certificates >/dev/null
    echo "local CAs copied in: $(cd /usr/local/share/ca-certificates && echo *.crt)"
fi
git clone -q --no-local "$REPO" "$ROOTFS/root/pop3server"
echo "cloned $(git -C "$REPO" rev-parse --short HEAD) into /root/pop3server"
mkdir -p "$ROOTFS/root/.rustup" "$ROOTFS/root/.cargo/bin"

# What runs inside: the two README commands, timed, with plain Debian
# settings (no cargo on PATH, as right after rustup's installer in a new
# shell without ~/.profile read: the scripts must find it themselves).
cat > "$ROOTFS/root/fresh-check.sh" <<'INNER'
#!/bin/bash
set -u
cd /root/pop3server
fail() { echo "FRESH-DEBIAN: FAILED: $*"; exit 1; }

echo "=== ./scripts/demo.sh ==="
start=$SECONDS
# Job control: the demo gets its own process group and, unlike a plain
# background job of a script, does not ignore SIGINT, so the interrupt below
# is the Ctrl-C a person would type.
set -m
./scripts/demo.sh > /root/demo.log 2>&1 < /dev/null &
demo=$!
set +m
# demo.sh installs curl with Dovecot: the lines it prints use it.
while [ $((SECONDS - start)) -lt "$DEMO_TIMEOUT" ] && ! command -v curl >/dev/null 2>&1; do
    kill -0 "$demo" 2>/dev/null || break
    sleep 2
done
command -v curl >/dev/null 2>&1 || { tail -n 25 /root/demo.log; fail "demo.sh did not install curl"; }
listing=""
while [ $((SECONDS - start)) -lt "$DEMO_TIMEOUT" ]; do
    kill -0 "$demo" 2>/dev/null || break
    if listing=$(curl -s -S --max-time 10 pop3://demo:demo@127.0.0.1:10110/ 2>/dev/null) \
            && [ -n "$listing" ]; then
        break
    fi
    sleep 2
done
demo_up=$((SECONDS - start))
message=$(curl -s -S --max-time 10 pop3://demo:demo@127.0.0.1:10110/1 2>&1 || true)
# The TLS lines demo.sh prints: STLS and POP3S, checked against its demo CA.
ca=$(sed -n 's/^demo CA: \([^;]*\);.*/\1/p' /root/demo.log)
stls=$(curl -s -S --max-time 10 --ssl-reqd --cacert "$ca" pop3://demo:demo@127.0.0.1:10110/1 2>&1 || true)
pop3s=$(curl -s -S --max-time 10 --cacert "$ca" pop3s://demo:demo@127.0.0.1:10995/2 2>&1 || true)
kill -INT -- "-$demo" 2>/dev/null
for _ in $(seq 1 30); do kill -0 "$demo" 2>/dev/null || break; sleep 1; done
kill -0 "$demo" 2>/dev/null && { kill -KILL -- "-$demo"; fail "demo.sh did not stop on SIGINT"; }
tail -n 25 /root/demo.log
[ -n "$listing" ] || fail "demo.sh: no LIST answer on 127.0.0.1:10110 within ${demo_up}s"
echo "LIST through the demo: $(echo "$listing" | tr '\r\n' '  ')"
echo "$message" | grep -q '^Subject:' || fail "demo.sh: RETR 1 gave no message: $message"
echo "$stls" | grep -q '^Subject:' || fail "demo.sh: RETR 1 after STLS (CA $ca) gave: $stls"
echo "$pop3s" | grep -q '^Subject:' || fail "demo.sh: RETR 2 over POP3S (CA $ca) gave: $pop3s"
grep -q "^login: ok as demo" /root/demo.log || fail "demo.sh: its --check did not log in"
grep -q "demo stopped." /root/demo.log || fail "demo.sh did not clean up after SIGINT"
echo "FRESH-DEBIAN: demo.sh served mail after ${demo_up}s"

echo "=== ./scripts/test.sh ==="
start=$SECONDS
timeout "$TEST_TIMEOUT" ./scripts/test.sh
rc=$?
echo "FRESH-DEBIAN: test.sh exited $rc after $((SECONDS - start))s"
[ "$rc" -eq 0 ] || fail "test.sh"
echo "FRESH-DEBIAN: both README commands passed"
INNER
chmod 755 "$ROOTFS/root/fresh-check.sh"

printf '\n=== both README commands inside the root ===\n'
# A private mount and PID namespace: every process started inside (Dovecot
# included) ends with it, and nothing is mounted on this machine.
unshare --mount --pid --fork --propagation private /bin/bash -euc '
    R=$1
    # The root a mount point of its own, as / is on a real machine: `ip netns
    # exec` (the tests with a non-loopback client) remounts / and needs that.
    mount --bind "$R" "$R"
    mount -t proc proc "$R/proc"
    mount -t sysfs sys "$R/sys"
    mount --rbind /dev "$R/dev"
    mount -t tmpfs -o mode=755 tmpfs "$R/run"
    mount -t tmpfs -o mode=1777 tmpfs "$R/tmp"
    mount --bind -o ro "$2" "$R/root/.rustup"
    mount --bind -o ro "$3" "$R/root/.cargo/bin"
    chroot "$R" /usr/bin/env -i HOME=/root TERM=dumb LANG=C.UTF-8 \
        PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
        DEMO_TIMEOUT="$4" TEST_TIMEOUT="$5" /root/fresh-check.sh
' fresh "$ROOTFS" "$RUSTUP_HOME" "$CARGO_BIN" "$DEMO_TIMEOUT" "$TEST_TIMEOUT"
