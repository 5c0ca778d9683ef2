#!/usr/bin/env bash
# Builds the .deb and the .rpm of pop3server into target/packages/.
#
# Installs the packagers with `cargo install --locked` if they are missing
# (cargo-deb and cargo-generate-rpm: about 4 minutes on 2 cores, once), then
# builds the release binary and both packages. Idempotent; takes seconds when
# the tools and the build are already there.
#
# Environment:
#   CARGO_DEB_VERSION, CARGO_GENERATE_RPM_VERSION   versions to install
#   PACKAGE_MAINTAINER   "Name <email>" for the .deb (overrides Cargo.toml)
#   PACKAGE_FAST=1       faster, lighter compression of the .deb
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$(pwd)
OUT="$ROOT/target/packages"
STAGING="$OUT/staging"

CARGO_DEB_VERSION="${CARGO_DEB_VERSION:-3.8.0}"
CARGO_GENERATE_RPM_VERSION="${CARGO_GENERATE_RPM_VERSION:-0.21.1}"

step() { printf '\n=== %s ===\n' "$*"; }

# shellcheck source=scripts/lib.sh
. "$ROOT/scripts/lib.sh"
ensure_cargo

# cargo-deb prints "cargo-deb 3.8.0"-like lines; any version of the right
# major release is accepted, otherwise the pinned one is installed.
install_tool() {  # crate version major-prefix
    local crate=$1 version=$2 major=$3 have=""
    if cargo "${crate#cargo-}" --version >/dev/null 2>&1; then
        have=$(cargo "${crate#cargo-}" --version 2>/dev/null | grep -oE '[0-9]+\.[0-9]+\.[0-9]+' | head -n1)
    fi
    if [ -n "$have" ] && [[ "$have" == "$major"* ]]; then
        echo "$crate $have already installed"
        return
    fi
    step "cargo install --locked $crate@$version (takes a few minutes, once)"
    local start=$SECONDS
    # Progress: cargo prints each crate it compiles.
    cargo install --locked "$crate@$version"
    echo "$crate installed in $((SECONDS - start)) s"
}

step "packaging tools"
install_tool cargo-deb "$CARGO_DEB_VERSION" "3."
install_tool cargo-generate-rpm "$CARGO_GENERATE_RPM_VERSION" "0.2"

step "cargo build --release --target $RELEASE_TARGET (static)"
build_release

mkdir -p "$OUT" "$STAGING"

# The man page, gzipped for the rpm (cargo-deb compresses it itself).
# -n: no name or time stamp, so the bytes depend on the text only.
gzip -9 -n -c packaging/pop3server.8 > "$STAGING/pop3server.8.gz.tmp"
mv "$STAGING/pop3server.8.gz.tmp" "$STAGING/pop3server.8.gz"

step "cargo deb"
deb_args=(--no-build --target "$RELEASE_TARGET" --output "$OUT/")
[ -n "${PACKAGE_MAINTAINER:-}" ] && deb_args+=(--maintainer "$PACKAGE_MAINTAINER")
[ -n "${PACKAGE_FAST:-}" ] && deb_args+=(--fast)
rm -f "$OUT"/pop3server_*.deb
cargo deb "${deb_args[@]}"

step "cargo generate-rpm"
rm -f "$OUT"/pop3server-*.rpm
cargo generate-rpm --target "$RELEASE_TARGET" --output "$OUT/"

step "packages"
ls -l "$OUT"/*.deb "$OUT"/*.rpm
