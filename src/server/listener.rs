//! Listeners: TCP or a Unix socket, what accepting yields, and the open-file
//! limit connections are sized by.

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;

use tokio::net::{TcpListener, UnixListener};

use crate::config::ListenAddr;

/// A bound listener: TCP, or a Unix socket (created 0660, for hosts where the
/// socket's group says who may use the proxy).
pub enum Listener {
    Tcp(TcpListener),
    Unix(UnixListener, PathBuf),
}

impl Listener {
    pub async fn bind(addr: &ListenAddr) -> std::io::Result<Listener> {
        match addr {
            ListenAddr::Tcp(a) => TcpListener::bind(a).await.map(Listener::Tcp),
            ListenAddr::Unix(path) => {
                // A socket left by a process that died; a live one is still refused
                // below because connecting to it succeeds.
                if std::os::unix::net::UnixStream::connect(path).is_err() {
                    let _ = std::fs::remove_file(path);
                }
                let listener = UnixListener::bind(path)?;
                std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))?;
                Ok(Listener::Unix(listener, path.clone()))
            }
        }
    }

    /// What to print and connect to.
    pub fn local(&self) -> std::io::Result<ListenAddr> {
        match self {
            Listener::Tcp(l) => l.local_addr().map(ListenAddr::Tcp),
            Listener::Unix(_, path) => Ok(ListenAddr::Unix(path.clone())),
        }
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        if let Listener::Unix(_, path) = self {
            let _ = std::fs::remove_file(path);
        }
    }
}

pub(super) enum Stream {
    Tcp(tokio::net::TcpStream),
    Unix(tokio::net::UnixStream),
}

pub(super) async fn accept(listener: &Listener) -> std::io::Result<Stream> {
    match listener {
        Listener::Tcp(l) => l.accept().await.map(|(s, _)| Stream::Tcp(s)),
        Listener::Unix(l, _) => l.accept().await.map(|(s, _)| Stream::Unix(s)),
    }
}

pub(super) fn is_out_of_fds(e: &std::io::Error) -> bool {
    // EMFILE (this process) and ENFILE (the whole system).
    matches!(e.raw_os_error(), Some(24) | Some(23))
}

/// Raises the soft limit of open files to the hard limit and returns the limit in
/// force, so that `max_connections` can be sized from it.
pub fn raise_fd_limit() -> u64 {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let mut limit = getrlimit(Resource::Nofile);
    let soft = limit.current.unwrap_or(u64::MAX);
    if limit.current != limit.maximum {
        let wanted = limit.maximum;
        limit.current = wanted;
        match setrlimit(Resource::Nofile, limit) {
            Ok(()) => return wanted.unwrap_or(u64::MAX),
            Err(e) => tracing::warn!(error = %e, soft, "cannot raise the open-file limit"),
        }
    }
    soft
}

/// The default `max_connections` for an open-file limit: each proxied request may
/// hold a client and an upstream connection, and some descriptors stay for the
/// listeners, the store, token requests and logs.
pub fn connections_for(fd_limit: u64) -> usize {
    const RESERVED: u64 = 64;
    let usable = fd_limit.saturating_sub(RESERVED) / 2;
    usable.clamp(16, 65_536) as usize
}
