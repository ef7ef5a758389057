//! The systemd notification protocol: readiness, reloads, shutdown and a
//! one-line status, sent only when `NOTIFY_SOCKET` is set.
//!
//! A failed notification is logged at debug and otherwise ignored: the
//! daemon's work does not depend on its supervisor listening. Messages are
//! sent without blocking, so a supervisor that stopped reading can never
//! stall the daemon (a full queue drops the message). Socket activation is
//! here too: sockets systemd bound for spipes' pipes.

use sd_notify::NotifyState;

use crate::address::Address;
use crate::net::Listener;

/// Every pipe is bound and accepting.
pub fn ready(status: &str) {
    send(&[NotifyState::Ready, NotifyState::Status(status)]);
}

/// A reload has started. `Type=notify-reload` needs the monotonic time
/// alongside, or systemd fails the reload.
pub fn reloading() {
    match NotifyState::monotonic_usec_now() {
        Ok(now) => send(&[NotifyState::Reloading, now]),
        Err(e) => tracing::debug!(error = %e, "cannot read monotonic time"),
    }
}

/// The daemon is shutting down.
pub fn stopping() {
    send(&[NotifyState::Stopping, NotifyState::Status("stopping")]);
}

/// Replaces the one-line status `systemctl status` shows.
pub fn status(status: &str) {
    send(&[NotifyState::Status(status)]);
}

/// Sends one datagram of `KEY=value` lines to `NOTIFY_SOCKET`, if set.
/// `sd-notify` formats the lines; the send is ours, since its `notify`
/// blocks when the queue is full.
fn send(states: &[NotifyState<'_>]) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let message: String = states.iter().map(|s| format!("{s}\n")).collect();
    if let Err(e) = send_to(&path, message.as_bytes()) {
        tracing::debug!(error = %e, "systemd notification failed");
    }
}

/// A non-blocking send to a path or, with a leading `@`, an abstract
/// socket name.
fn send_to(path: &std::ffi::OsStr, message: &[u8]) -> std::io::Result<()> {
    use std::os::linux::net::SocketAddrExt;
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::net::{SocketAddr, UnixDatagram};

    let bytes = path.as_bytes();
    let address = match bytes.strip_prefix(b"@") {
        Some(name) => SocketAddr::from_abstract_name(name)?,
        None => SocketAddr::from_pathname(path)?,
    };
    let socket = UnixDatagram::unbound()?;
    socket.set_nonblocking(true)?;
    socket.send_to_addr(message, &address)?;
    Ok(())
}

/// Listening sockets passed by systemd socket activation (`LISTEN_FDS`),
/// for pipes to use instead of binding their own.
pub struct Activated {
    sockets: Vec<(Option<String>, Listener)>,
}

impl Activated {
    /// Takes the passed sockets from the environment; none when spipes
    /// was not socket-activated. Sockets that are neither TCP nor Unix
    /// stream listeners are logged and closed.
    ///
    /// Must run inside a tokio runtime, once, before any thread reads the
    /// environment, since it removes the `LISTEN_*` variables.
    pub fn from_env() -> Activated {
        let names: Vec<String> = std::env::var("LISTEN_FDNAMES")
            .map(|v| v.split(':').map(str::to_string).collect())
            .unwrap_or_default();
        let mut fds = listenfd::ListenFd::from_env();

        let mut sockets = Vec::new();
        for index in 0..fds.len() {
            let name = names.get(index).cloned();
            match take(&mut fds, index) {
                Ok(Some(listener)) => sockets.push((name, listener)),
                Ok(None) => {}
                Err(e) => tracing::warn!(
                    index, name = ?name, error = %e,
                    "ignoring a passed socket that spipes cannot use"
                ),
            }
        }
        Activated { sockets }
    }

    /// The passed socket for a pipe: the one whose `FileDescriptorName=`
    /// is the pipe's name, else one bound to the pipe's source address.
    pub fn take(&mut self, pipe: &str, source: &Address) -> Option<Listener> {
        let by_name = self
            .sockets
            .iter()
            .position(|(name, _)| name.as_deref() == Some(pipe));
        let found = by_name.or_else(|| {
            self.sockets.iter().position(|(_, l)| listens_on(l, source))
        })?;
        Some(self.sockets.swap_remove(found).1)
    }

    /// Logs the passed sockets no pipe claimed; they are closed on drop.
    pub fn warn_unused(&self) {
        for (name, _) in &self.sockets {
            tracing::warn!(name = ?name, "no pipe uses this passed socket");
        }
    }
}

/// Takes one passed fd as a TCP or a Unix stream listener.
fn take(
    fds: &mut listenfd::ListenFd,
    index: usize,
) -> std::io::Result<Option<Listener>> {
    // listenfd checks the socket type, so a failed TCP take leaves the fd
    // in place for the Unix attempt.
    if let Ok(Some(std)) = fds.take_tcp_listener(index) {
        std.set_nonblocking(true)?;
        let listener = tokio::net::TcpListener::from_std(std)?;
        return Ok(Some(Listener::Tcp(listener)));
    }
    match fds.take_unix_listener(index)? {
        Some(std) => {
            std.set_nonblocking(true)?;
            let listener = tokio::net::UnixListener::from_std(std)?;
            Ok(Some(Listener::Unix {
                listener,
                path: None,
            }))
        }
        None => Ok(None),
    }
}

/// Whether `listener` is bound to `source`. Host names are not resolved
/// here: match a passed socket to a named host by `FileDescriptorName=`.
fn listens_on(listener: &Listener, source: &Address) -> bool {
    match (listener, source) {
        (Listener::Tcp(l), Address::Tcp { host, port }) => {
            let Ok(local) = l.local_addr() else {
                return false;
            };
            host.parse::<std::net::IpAddr>()
                .is_ok_and(|ip| local == std::net::SocketAddr::new(ip, *port))
        }
        (Listener::Unix { listener, .. }, Address::Unix(path)) => listener
            .local_addr()
            .ok()
            .and_then(|a| a.as_pathname().map(|p| p == path))
            .unwrap_or(false),
        _ => false,
    }
}
