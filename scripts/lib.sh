# Shell functions shared by the scripts in this folder (source it).

# install_debs PKG...: apt-get install the packages (root only) without
# letting their maintainer scripts start services (policy-rc.d says no).
install_debs() {
    [ "$#" -gt 0 ] || return 0
    if [ "$(id -u)" -ne 0 ]; then
        echo "need root to install: $*" >&2
        return 1
    fi
    export DEBIAN_FRONTEND=noninteractive
    local created="" rc=0
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
        chmod 755 /usr/sbin/policy-rc.d
        created=1
    fi
    echo "installing: $*"
    if ! { apt-get update -qq && apt-get install -y -qq --no-install-recommends "$@" >/dev/null; }; then
        rc=1
    fi
    [ -z "$created" ] || rm -f /usr/sbin/policy-rc.d
    return "$rc"
}

# ensure_cargo: cargo on PATH (rustup's ~/.cargo/bin is tried), or a clear error.
ensure_cargo() {
    command -v cargo >/dev/null 2>&1 && return 0
    if [ -x "$HOME/.cargo/bin/cargo" ]; then
        export PATH="$HOME/.cargo/bin:$PATH"
        return 0
    fi
    echo "cargo not found: install Rust 1.89 or newer with rustup (https://rustup.rs)" >&2
    return 1
}

# ensure_session_user: as root, the account sessions switch to (user =
# pop3server, see pop3server(8) PRIVILEGES) must exist, as the packages
# make it; create it as a system account if it does not.
ensure_session_user() {
    [ "$(id -u)" -eq 0 ] || return 0
    getent passwd pop3server >/dev/null && return 0
    echo "creating the system user pop3server (sessions started as root switch to it)"
    useradd --system --user-group --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin --comment "POP3 to IMAP proxy" pop3server
}

# The binary that ships (the packages, and what the demo, the benchmark and
# the integration tests run) is static, linked with musl: a session process
# starts in about half the time of a glibc-linked one (no dynamic loader,
# no symbol binding), see docs/install.md, "A static binary". Development builds
# (cargo build, cargo test) stay on the default target.
RELEASE_TARGET="$(uname -m)-unknown-linux-musl"
RELEASE_BIN="target/$RELEASE_TARGET/release/pop3server"

# build_release: builds $RELEASE_BIN. Adds the Rust standard library for
# $RELEASE_TARGET (rustup, a download of about 40 MB, once) and musl-gcc
# (Debian's musl-tools, for the C and assembly of ring) when missing.
build_release() {
    ensure_cargo || return 1
    if ! rustup target list --installed 2>/dev/null | grep -qx "$RELEASE_TARGET"; then
        command -v rustup >/dev/null 2>&1 || {
            echo "rustup not found: the static release build needs 'rustup target add $RELEASE_TARGET'" >&2
            return 1
        }
        rustup target add "$RELEASE_TARGET" || return 1
    fi
    if ! command -v musl-gcc >/dev/null 2>&1; then
        install_debs musl-tools || {
            echo "musl-gcc not found: apt-get install musl-tools" >&2
            return 1
        }
    fi
    cargo build --release --target "$RELEASE_TARGET"
}
