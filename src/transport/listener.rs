//! The standalone listener: accepts connections and runs each in a child
//! process of this same program in inetd mode (the socket as its
//! stdin/stdout), at most `max_children` at once, reaping them as they end.

use std::ffi::OsString;
use std::io::{self, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::OwnedFd;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread;

use crate::limits::{ACCEPT_RETRY_DELAY, REAP_INTERVAL};

pub struct Listener {
    children: Arc<Mutex<Vec<Child>>>,
    max_children: usize,
    child_args: Vec<OsString>,
}

impl Listener {
    /// `child_args` are the arguments each child gets (it is run in inetd mode).
    pub fn new(max_children: usize, child_args: Vec<OsString>) -> Self {
        Listener {
            children: Arc::new(Mutex::new(Vec::new())),
            max_children,
            child_args,
        }
    }

    /// Serves the sockets until accepting fails on all of them.
    pub fn run(self, listeners: Vec<TcpListener>) -> io::Result<()> {
        // Resolved once, at start: after a package upgrade the children run
        // the new binary at this path.
        let exe = std::env::current_exe()?;
        let this = Arc::new(self);
        {
            let children = Arc::clone(&this.children);
            thread::spawn(move || {
                loop {
                    thread::sleep(REAP_INTERVAL);
                    reap(&children);
                }
            });
        }
        let mut threads = Vec::new();
        for listener in listeners {
            let this = Arc::clone(&this);
            let exe = exe.clone();
            threads.push(thread::spawn(move || -> io::Result<()> {
                loop {
                    let (stream, peer) = match listener.accept() {
                        Ok(c) => c,
                        Err(e)
                            if e.kind() == io::ErrorKind::Interrupted
                                || e.kind() == io::ErrorKind::ConnectionAborted =>
                        {
                            continue;
                        }
                        // Out of file descriptors or memory: wait for
                        // sessions to end instead of giving up listening.
                        Err(e) if is_resource_shortage(&e) => {
                            log::error!("cannot accept a connection: {e}; retrying");
                            thread::sleep(ACCEPT_RETRY_DELAY);
                            continue;
                        }
                        Err(e) => return Err(e),
                    };
                    if let Err(e) = this.start_child(&exe, stream, peer) {
                        log::error!(
                            "cannot start a session process for {}: {e}",
                            super::canonical_peer(peer)
                        );
                    }
                }
            }));
        }
        let mut last = Ok(());
        for t in threads {
            match t.join() {
                Ok(Err(e)) => last = Err(e),
                Err(_) => last = Err(io::Error::other("listener thread panicked")),
                Ok(Ok(())) => {}
            }
        }
        last
    }

    fn start_child(
        &self,
        exe: &std::path::Path,
        mut stream: TcpStream,
        peer: SocketAddr,
    ) -> io::Result<()> {
        let mut children = self
            .children
            .lock()
            .map_err(|_| io::Error::other("children list poisoned"))?;
        children.retain_mut(|c| !matches!(c.try_wait(), Ok(Some(_))));
        if children.len() >= self.max_children {
            log::warn!(
                "refusing a connection: {} sessions running (max_children)",
                children.len()
            );
            let _ = stream.write_all(b"-ERR [SYS/TEMP] Too many connections, try again later\r\n");
            return Ok(());
        }
        let output = stream.try_clone()?;
        let child = Command::new(exe)
            .args(&self.child_args)
            .stdin(Stdio::from(OwnedFd::from(stream)))
            .stdout(Stdio::from(OwnedFd::from(output)))
            .stderr(Stdio::inherit())
            // Readiness is the listener's to report, not a session's.
            .env_remove("NOTIFY_SOCKET")
            // The client's address as systemd's Accept=yes passes it: the
            // child's getpeername fails once the peer has reset the
            // connection (HAProxy's TCP checks do, right after their PROXY
            // header), and a trusted balancer would then look unknown.
            .env("REMOTE_ADDR", peer.ip().to_string())
            .env("REMOTE_PORT", peer.port().to_string())
            .spawn()?;
        children.push(child);
        Ok(())
    }
}

/// EMFILE, ENFILE, ENOBUFS, ENOMEM: accept(2) errors that pass.
fn is_resource_shortage(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(23 | 24 | 105 | 12))
}

fn reap(children: &Mutex<Vec<Child>>) {
    if let Ok(mut children) = children.lock() {
        children.retain_mut(|c| !matches!(c.try_wait(), Ok(Some(_))));
    }
}
