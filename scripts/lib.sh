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
