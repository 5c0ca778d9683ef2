#!/usr/bin/env bash
# Full check of pop3server on a bare Debian 12 machine (run as root):
# system packages, Rust lint + unit tests, release build, then the Python
# integration tests against a private Dovecot (started and stopped by the
# test fixtures). Exits non-zero on the first failure.
#
# Environment:
#   SKIP_APT=1          do not apt-get install (packages already present)
#   POP3SERVER_PACKAGE_TESTS=0
#                       skip building/installing the .deb and .rpm (on by
#                       default when run as root; the first run installs
#                       cargo-deb and cargo-generate-rpm, a few minutes)
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
command -v ip >/dev/null 2>&1 || need_pkgs+=(iproute2)
command -v groff >/dev/null 2>&1 || need_pkgs+=(groff-base)
command -v man >/dev/null 2>&1 || need_pkgs+=(man-db)
command -v systemd-analyze >/dev/null 2>&1 || need_pkgs+=(systemd)

if [ "${#need_pkgs[@]}" -gt 0 ] && [ -z "${SKIP_APT:-}" ]; then
    step "apt-get install ${need_pkgs[*]}"
    install_debs "${need_pkgs[@]}"
fi

step "python test dependencies"
if ! python3 -c 'import pytest' >/dev/null 2>&1; then
    python3 -m pip install -q --disable-pip-version-check pytest
fi

step "rust toolchain"
ensure_cargo
cargo --version

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy"
cargo clippy --all-targets -- -D warnings

step "cargo test (unit tests)"
cargo test --all-targets

step "cargo build --release"
cargo build --release

export POP3SERVER_PACKAGE_TESTS="${POP3SERVER_PACKAGE_TESTS:-$([ "$(id -u)" -eq 0 ] && echo 1 || echo 0)}"
if [ "$POP3SERVER_PACKAGE_TESTS" = 1 ]; then
    step "packages (.deb, .rpm)"
    ./scripts/package.sh
    export POP3SERVER_PACKAGE_REUSE=1
    # Everything the tests need is installed now: a skipped test is a failure.
    export POP3SERVER_REQUIRE_ALL="${POP3SERVER_REQUIRE_ALL:-1}"
fi

step "integration tests"
export POP3SERVER_BIN="${POP3SERVER_BIN:-$ROOT/target/release/pop3server}"
# shellcheck disable=SC2086
python3 -m pytest -q -p no:cacheprovider tests/integration ${PYTEST_ARGS:-}

step "all checks passed"
