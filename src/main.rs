//! Entry point: arguments and configuration, logging set-up, choice of mode
//! (one connection on stdin/stdout or fd 3, or the standalone listener), exit
//! codes. No protocol logic lives here.

use std::ffi::OsString;
use std::io::Write;
use std::net::TcpListener;
use std::process::ExitCode;

use pop3server::config::{Config, ConfigSetupError, Task};
use pop3server::driver::{self, End};
use pop3server::logging;
use pop3server::preload::Preloaded;
use pop3server::privilege;
use pop3server::transport::{self, ClientConn, Systemd, listener::Listener};

// The static (musl) build, as shipped: dlmalloc instead of musl's malloc,
// which maps and unmaps memory as a short process allocates and frees
// (see ARCHITECTURE.md, "Dependencies, and why").
#[cfg(target_env = "musl")]
#[global_allocator]
static ALLOCATOR: dlmalloc::GlobalDlmalloc = dlmalloc::GlobalDlmalloc;

enum Mode {
    /// One connection on stdin/stdout.
    Inetd,
    /// One connection on fd 3 from systemd.
    SystemdConnection(std::net::TcpStream),
    /// Accept connections ourselves.
    Listen(Vec<TcpListener>),
}

fn main() -> ExitCode {
    match run() {
        Ok(code) => code,
        Err(message) => {
            eprintln!("pop3server: {message}");
            ExitCode::from(2)
        }
    }
}

fn run() -> Result<ExitCode, String> {
    let args: Vec<OsString> = std::env::args_os().collect();
    let config = match Config::from_args(&args) {
        Ok(c) => c,
        Err(ConfigSetupError::Usage(e)) => {
            let _ = e.print();
            return Ok(if e.use_stderr() {
                ExitCode::from(2)
            } else {
                ExitCode::SUCCESS
            });
        }
        Err(ConfigSetupError::Invalid(e)) => return Err(config_error(&e.to_string())),
    };

    match &config.task {
        Some(Task::HashPassword) => {
            return pop3server::admin::hash_password(&mut std::io::stdout())
                .map(|_| ExitCode::SUCCESS);
        }
        Some(Task::OAuthStatus) => {
            logging::init(logging::resolve(config.log, false), config.debug);
            return pop3server::admin::oauth_status(&config, &mut std::io::stdout())
                .map(ExitCode::from);
        }
        Some(Task::OAuthConsent(name)) => {
            logging::init(logging::resolve(config.log, false), config.debug);
            return pop3server::admin::oauth_consent(&config, name, &mut std::io::stdout())
                .map(|_| ExitCode::SUCCESS);
        }
        Some(Task::Stats) => {
            logging::init(logging::resolve(config.log, false), config.debug);
            // Started as root (by hand, say): the socket is made the
            // session user's, whose processes send to it.
            let owner = if privilege::is_root() {
                let id = privilege::resolve(&config.user, config.group.as_deref())
                    .map_err(|e| e.to_string())?;
                Some((id.uid.as_raw(), id.gid.as_raw()))
            } else {
                None
            };
            return pop3server::stats::serve::run(&config.stats, owner)
                .map(|()| ExitCode::SUCCESS)
                .map_err(|e| e.to_string());
        }
        None => {}
    }

    if let Some(request) = &config.check {
        logging::init(logging::resolve(config.log, false), config.debug);
        return match pop3server::check::run(&config, request, &mut std::io::stdout()) {
            Ok(()) => Ok(ExitCode::SUCCESS),
            Err(diagnosis) => {
                eprintln!("pop3server: check failed: {diagnosis}");
                Ok(ExitCode::from(1))
            }
        };
    }

    let systemd = if config.inetd {
        None
    } else {
        transport::from_systemd().map_err(|e| format!("bad socket activation variables: {e}"))?
    };
    let mode = match systemd {
        Some(Systemd::Connection(stream)) => Mode::SystemdConnection(stream),
        Some(Systemd::Listener(listener)) => Mode::Listen(vec![listener]),
        None if config.inetd => Mode::Inetd,
        None if !config.listen.is_empty() => {
            let mut listeners = Vec::new();
            for addr in &config.listen {
                listeners.push(
                    TcpListener::bind(addr).map_err(|e| format!("cannot listen on {addr}: {e}"))?,
                );
            }
            Mode::Listen(listeners)
        }
        None if transport::stdin_is_socket() => Mode::Inetd,
        None => {
            return Err("no connection to serve: stdin is not a socket. Run from inetd or a systemd socket, \
                 or give --listen ADDRESS:PORT (see --help)"
                .into());
        }
    };

    let per_connection = !matches!(mode, Mode::Listen(_));
    let log_target = logging::resolve(config.log, per_connection);
    logging::init(log_target, config.debug);

    match mode {
        Mode::Inetd => {
            let client = transport::from_stdio(config.idle_timeout)
                .map_err(|e| format!("cannot use stdin/stdout: {e}"))?;
            Ok(serve_one(&config, client))
        }
        Mode::SystemdConnection(stream) => {
            let client = transport::from_socket(stream, config.idle_timeout)
                .map_err(|e| format!("cannot use fd 3: {e}"))?;
            Ok(serve_one(&config, client))
        }
        Mode::Listen(listeners) => {
            // Each child reads the files again; checking here catches a bad
            // pair before the first client does.
            if let Some(files) = &config.tls {
                pop3server::tls::server_config(files).map_err(|e| e.to_string())?;
            }
            // The listener itself stays as it was started: it parses no
            // client input, and as root its children can still read a
            // root-only key. Each child leaves root before its first read;
            // an account they could not switch to is reported here, once.
            if privilege::is_root() {
                let id = privilege::resolve(&config.user, config.group.as_deref())
                    .map_err(|e| e.to_string())?;
                log::info!("sessions run as user {} group {}", id.user, id.group);
            }
            for l in &listeners {
                if let Ok(addr) = l.local_addr() {
                    log::info!("listening on {addr}");
                }
            }
            // Each child is this program in inetd mode, with the same
            // settings and its log going where ours goes.
            let mut child_args: Vec<OsString> = args.iter().skip(1).cloned().collect();
            child_args.push("--inetd".into());
            child_args.push("--log".into());
            child_args.push(logging::name(log_target).into());
            // READY=1 for a Type=notify unit; without NOTIFY_SOCKET this does nothing.
            if let Err(e) = sd_notify::notify(&[sd_notify::NotifyState::Ready]) {
                log::warn!("cannot notify systemd of readiness: {e}");
            }
            Listener::new(config.max_children, child_args)
                .run(listeners)
                .map_err(|e| format!("listener failed: {e}"))?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// One connection: what may need root is read first, then root is left
/// (if this is root), then a balancer's PROXY header is read (if one is
/// due), then the session runs. A process that cannot leave
/// root serves nobody.
fn serve_one(config: &Config, mut client: ClientConn) -> ExitCode {
    let files = Preloaded::read(config.wanted_files(), privilege::is_root());
    if let Err(e) = privilege::leave_root(&config.account()) {
        log::error!("{e}");
        // An implicit-TLS client expects a handshake, not a plaintext line.
        if !config.implicit_tls {
            let _ = client
                .stream
                .write_all(b"-ERR [SYS/TEMP] Server configuration error, see the server log\r\n")
                .and_then(|()| client.stream.flush());
        }
        return ExitCode::from(2);
    }
    // The aggregator's socket, if it runs: this session's events go there.
    pop3server::stats::emit::to(&config.stats.socket);
    // Only now, as the session's user: the header is the first client byte.
    if let Err(e) = transport::proxy::accept(
        &mut client,
        &config.proxy_protocol_from,
        config.idle_timeout,
    ) {
        log::log!(e.level(), "{e}");
        return ExitCode::SUCCESS;
    }
    exit_code(driver::serve(config, &files, client))
}

/// Under inetd stderr and stdout are the client's socket: a configuration
/// error goes to syslog and the client gets a POP3 error, not a usage text.
fn config_error(message: &str) -> String {
    if transport::stdin_is_socket() && !logging::stderr_is_journal() {
        logging::init(logging::LogTarget::Syslog, false);
        log::error!("configuration error: {message}");
        let _ = std::io::stdout()
            .write_all(b"-ERR [SYS/TEMP] Server configuration error, see the server log\r\n");
        std::process::exit(2);
    }
    message.to_string()
}

fn exit_code(end: End) -> ExitCode {
    match end {
        End::BackendError => ExitCode::from(1),
        _ => ExitCode::SUCCESS,
    }
}
