#!/usr/bin/env bash
# Full check of pop3server on a bare Debian 12 machine (run as root):
# system packages, Rust lint + unit tests, release build, then the Python
# integration tests against a private Dovecot (started and stopped by the
# test fixtures). Exits non-zero on the first failure.
#
# Environment:
# What it does to the machine: installs the Debian packages below with
# apt-get and creates the system users dovecot, dovenull and pop3test (the
# testbed's mail user); Dovecot, inetd and the servers under test run from
# temp dirs on loopback ports and are stopped at the end. Nothing in /etc is
# changed and no service of the machine is started.
#
# The package tests change more, so they run only when CI=true or
# POP3SERVER_PACKAGE_TESTS=1: they install cargo-deb and cargo-generate-rpm
# (cargo install, a few minutes once), build the .deb and .rpm, install the
# .deb on this machine (dpkg -i, user pop3server) and purge it, and boot a
# cached fresh Debian root under systemd-nspawn to test the package under a
# real systemd (debootstrap the first time, about a minute).
#
# Environment:
#   SKIP_APT=1          do not apt-get install (packages already present)
#   POP3SERVER_PACKAGE_TESTS=1|0
#                       run / do not run the package tests (default: on when
#                       CI=true, off otherwise)
#   PYTEST_ARGS="..."   extra arguments for pytest (e.g. "-k retr -x")
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$(pwd)

step() { printf '\n=== %s ===\n' "$*"; }
# shellcheck source=scripts/lib.sh
. "$ROOT/scripts/lib.sh"

need_pkgs=()
command -v dovecot >/dev/null 2>&1 || [ -x /usr/sbin/dovecot ] || need_pkgs+=(dovecot-imapd)
command -v curl >/dev/null 2>&1 || need_pkgs+=(curl)
command -v fetchmail >/dev/null 2>&1 || need_pkgs+=(fetchmail)
[ -x /usr/sbin/inetd ] || need_pkgs+=(openbsd-inetd)
command -v lintian >/dev/null 2>&1 || need_pkgs+=(lintian)
command -v rpm >/dev/null 2>&1 || need_pkgs+=(rpm)
command -v openssl >/dev/null 2>&1 || need_pkgs+=(openssl)
# fail2ban-regex checks the shipped filter (packaging/fail2ban); the install
# starts no fail2ban daemon (lib.sh's policy-rc.d).
command -v fail2ban-regex >/dev/null 2>&1 || need_pkgs+=(fail2ban)
command -v ip >/dev/null 2>&1 || need_pkgs+=(iproute2)
# The cluster lock's tests start a private redis-server on loopback (the
# package's own service stays off: lib.sh's policy-rc.d).
command -v redis-server >/dev/null 2>&1 || need_pkgs+=(redis-server)
command -v groff >/dev/null 2>&1 || need_pkgs+=(groff-base)
command -v man >/dev/null 2>&1 || need_pkgs+=(man-db)
command -v systemd-analyze >/dev/null 2>&1 || need_pkgs+=(systemd)
# A real HAProxy in front of pop3server (tests/integration/test_proxy_protocol.py,
# and ending TLS 1.0 for tests/integration/test_old_tls.py);
# only run in the foreground by the tests, the package's service is not started.
command -v haproxy >/dev/null 2>&1 || [ -x /usr/sbin/haproxy ] || need_pkgs+=(haproxy)
# Prometheus scrapes the statistics aggregator, and promtool checks its page
# and the example alert rules (tests/integration/test_stats_aggregator.py);
# run in the foreground on loopback only, the package's service is not
# started (lib.sh's policy-rc.d).
{ command -v promtool >/dev/null 2>&1 && command -v prometheus >/dev/null 2>&1; } || need_pkgs+=(prometheus)
# Debian's python3 comes without pip and, by PEP 668, without system-wide
# installs from PyPI: pytest comes from Debian (python3-pytest, for
# /usr/bin/python3). A python3 on PATH that already has pytest is used as
# it is.
PYTHON=python3
if ! python3 -c 'import pytest' >/dev/null 2>&1; then
    PYTHON=/usr/bin/python3
    "$PYTHON" -c 'import pytest' >/dev/null 2>&1 || need_pkgs+=(python3-pytest)
fi

if [ -z "${POP3SERVER_PACKAGE_TESTS:-}" ]; then
    if [ "${CI:-}" = true ]; then POP3SERVER_PACKAGE_TESTS=1; else POP3SERVER_PACKAGE_TESTS=0; fi
fi
export POP3SERVER_PACKAGE_TESTS
# The package test under systemd boots a container. It runs with the other
# package tests; POP3SERVER_SYSTEMD_TESTS=0 leaves it out where containers
# cannot nest (inside the root of scripts/fresh-debian.sh, say). No
# auto-detection: systemd-detect-virt calls some machines that can run
# systemd-nspawn fine "docker".
POP3SERVER_SYSTEMD_TESTS=${POP3SERVER_SYSTEMD_TESTS:-$POP3SERVER_PACKAGE_TESTS}
export POP3SERVER_SYSTEMD_TESTS
if [ "$POP3SERVER_SYSTEMD_TESTS" = 1 ]; then
    command -v systemd-nspawn >/dev/null 2>&1 || need_pkgs+=(systemd-container)
    command -v debootstrap >/dev/null 2>&1 || need_pkgs+=(debootstrap)
fi

if [ "${#need_pkgs[@]}" -gt 0 ] && [ -z "${SKIP_APT:-}" ]; then
    step "apt-get install ${need_pkgs[*]}"
    install_debs "${need_pkgs[@]}"
fi

ensure_session_user

"$PYTHON" -c 'import pytest' >/dev/null 2>&1 || {
    echo "$PYTHON has no pytest: apt-get install python3-pytest" >&2
    exit 1
}

step "rust toolchain"
ensure_cargo
cargo --version

step "cargo fmt --check"
cargo fmt --all -- --check

step "layering (scripts/check-layers.py)"
"$PYTHON" scripts/check-layers.py --self-test
"$PYTHON" scripts/check-layers.py
"$PYTHON" scripts/check-troubleshooting.py

step "cargo clippy"
cargo clippy --all-targets -- -D warnings

step "cargo test (unit tests)"
cargo test --all-targets

step "cargo build --release --target $RELEASE_TARGET (static, as shipped)"
build_release

if [ "$POP3SERVER_PACKAGE_TESTS" = 1 ]; then
    step "packages (.deb, .rpm)"
    ./scripts/package.sh
    export POP3SERVER_PACKAGE_REUSE=1
    # Everything the tests need is installed now: a skipped test is a failure.
    export POP3SERVER_REQUIRE_ALL="${POP3SERVER_REQUIRE_ALL:-1}"
    [ "$POP3SERVER_SYSTEMD_TESTS" = 1 ] || echo "package test under systemd-nspawn left out: POP3SERVER_SYSTEMD_TESTS=0 (containers do not nest here)"
else
    echo "package tests (.deb/.rpm install, systemd-nspawn) left out: they change the machine; CI=true or POP3SERVER_PACKAGE_TESTS=1 runs them"
fi

step "integration tests"
export POP3SERVER_BIN="${POP3SERVER_BIN:-$ROOT/$RELEASE_BIN}"
ignore=()
[ "$POP3SERVER_SYSTEMD_TESTS" = 1 ] || ignore=(--ignore=tests/integration/test_systemd_package.py)
# shellcheck disable=SC2086
"$PYTHON" -m pytest "${ignore[@]}" -q -p no:cacheprovider tests/integration ${PYTEST_ARGS:-}

step "fuzzing (${POP3SERVER_FUZZ_SECONDS:-30} s a target)"
./scripts/fuzz.sh "${POP3SERVER_FUZZ_SECONDS:-30}"

step "all checks passed"
