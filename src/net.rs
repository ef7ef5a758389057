//! Sockets: binding sources, dialling targets, and one stream type for TCP
//! and Unix sockets alike, so the rest of spipes never asks which it has.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Mutex;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpSocket, TcpStream, UnixListener, UnixStream};
use tokio::net::{tcp, unix};

use crate::address::Address;

/// Connections a listener queues before accept. spiped's 10 makes bursts
/// wait for SYN retries; the kernel caps this at `somaxconn` anyway.
const LISTEN_BACKLOG: i32 = 1024;

/// An accepted or dialled connection, TCP or Unix.
#[derive(Debug)]
pub enum Stream {
    /// A TCP connection.
    Tcp(TcpStream),
    /// A Unix stream socket connection.
    Unix(UnixStream),
}

/// The read half of a [`Stream`], owned so that each direction of a
/// connection can run on its own.
#[derive(Debug)]
pub enum ReadHalf {
    /// Of a TCP connection.
    Tcp(tcp::OwnedReadHalf),
    /// Of a Unix connection.
    Unix(unix::OwnedReadHalf),
}

impl ReadHalf {
    /// Waits until a read would not block. Cancel-safe.
    pub async fn readable(&self) -> io::Result<()> {
        match self {
            ReadHalf::Tcp(r) => r.readable().await,
            ReadHalf::Unix(r) => r.readable().await,
        }
    }

    /// Reads what is there without waiting; `WouldBlock` if nothing is.
    pub fn try_read(&self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            ReadHalf::Tcp(r) => r.try_read(buf),
            ReadHalf::Unix(r) => r.try_read(buf),
        }
    }
}

/// The write half of a [`Stream`]; `shutdown` sends FIN for TCP.
#[derive(Debug)]
pub enum WriteHalf {
    /// Of a TCP connection.
    Tcp(tcp::OwnedWriteHalf),
    /// Of a Unix connection.
    Unix(unix::OwnedWriteHalf),
}

impl Stream {
    /// Splits the stream into halves that can be moved apart.
    pub fn into_split(self) -> (ReadHalf, WriteHalf) {
        match self {
            Stream::Tcp(s) => {
                let (r, w) = s.into_split();
                (ReadHalf::Tcp(r), WriteHalf::Tcp(w))
            }
            Stream::Unix(s) => {
                let (r, w) = s.into_split();
                (ReadHalf::Unix(r), WriteHalf::Unix(w))
            }
        }
    }

    /// The peer's and the local address of a TCP connection, for a PROXY
    /// protocol header; `None` for Unix sockets.
    pub fn addresses(&self) -> Option<(SocketAddr, SocketAddr)> {
        match self {
            Stream::Tcp(s) => Some((s.peer_addr().ok()?, s.local_addr().ok()?)),
            Stream::Unix(_) => None,
        }
    }

    /// Sets the options spiped sets on every socket: TCP_NODELAY, since
    /// packets are already coalesced by the data path and Nagle would only
    /// add latency; SO_KEEPALIVE when configured, so that a peer that
    /// vanished is noticed. Unix sockets have neither.
    pub fn configure(&self, keepalive: bool) -> io::Result<()> {
        let Stream::Tcp(tcp) = self else {
            return Ok(());
        };
        tcp.set_nodelay(true)?;
        socket2::SockRef::from(tcp).set_keepalive(keepalive)
    }
}

/// Forwards to the inner stream; both variants are `Unpin`.
macro_rules! forward {
    ($self:ident, $s:ident => $e:expr) => {
        match $self.get_mut() {
            Self::Tcp($s) => $e,
            Self::Unix($s) => $e,
        }
    };
}

/// `AsyncRead` for an enum of TCP and Unix readers, by forwarding.
macro_rules! impl_async_read {
    ($t:ty) => {
        impl AsyncRead for $t {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        forward!(self, s => Pin::new(s).poll_read(cx, buf))
    }
}
    };
}

/// `AsyncWrite` for an enum of TCP and Unix writers, by forwarding.
macro_rules! impl_async_write {
    ($t:ty) => {
        impl AsyncWrite for $t {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        forward!(self, s => Pin::new(s).poll_write(cx, buf))
    }

    fn poll_flush(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<()>> {
        forward!(self, s => Pin::new(s).poll_flush(cx))
    }

    fn poll_shutdown(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<()>> {
        forward!(self, s => Pin::new(s).poll_shutdown(cx))
    }
}
    };
}

impl_async_read!(Stream);

impl_async_write!(Stream);

impl_async_read!(ReadHalf);

impl_async_write!(WriteHalf);

/// A bound source socket, TCP or Unix.
#[derive(Debug)]
pub enum Listener {
    /// A TCP listener.
    Tcp(TcpListener),
    /// A Unix listener.
    Unix {
        /// The listening socket.
        listener: UnixListener,
        /// The socket file spipes created and removes when the listener
        /// goes away; `None` for a socket systemd passed in, whose file
        /// systemd owns.
        path: Option<PathBuf>,
    },
}

impl Listener {
    /// Accepts one connection and names its peer for logs.
    ///
    /// Cancel-safe: a cancelled accept loses no connection.
    pub async fn accept(&self) -> io::Result<(Stream, String)> {
        match self {
            Listener::Tcp(l) => {
                let (s, peer) = l.accept().await?;
                Ok((Stream::Tcp(s), peer.to_string()))
            }
            Listener::Unix { listener, .. } => {
                let (s, _) = listener.accept().await?;
                Ok((Stream::Unix(s), "unix".to_string()))
            }
        }
    }

    /// The socket file to remove when this listener is dropped, if any.
    pub fn unix_path(&self) -> Option<&Path> {
        match self {
            Listener::Tcp(_) => None,
            Listener::Unix { path, .. } => path.as_deref(),
        }
    }
}

/// Who may connect to a Unix socket spipes creates.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SocketAccess {
    /// The file's permission bits; `None` keeps what the umask gives.
    pub mode: Option<u32>,
    /// The file's group; `None` keeps spipes' own.
    pub group: Option<u32>,
}

/// Binds a source address, resolving a host name once.
///
/// Must run inside a tokio runtime. A Unix socket file nobody answers on is
/// a leftover of an earlier run and is replaced; a live socket, or a path
/// that is not a socket, is an error and is left alone.
pub async fn bind(
    source: &Address,
    access: SocketAccess,
) -> io::Result<Listener> {
    match source {
        Address::Tcp { host, port } => {
            let addr = resolve(host, *port).await?[0];
            bind_tcp(addr)
        }
        Address::Unix(path) => bind_unix(path, access).await,
    }
}

/// Binds and listens on one TCP address, with a large backlog.
fn bind_tcp(addr: SocketAddr) -> io::Result<Listener> {
    let domain = socket2::Domain::for_address(addr);
    let socket = socket2::Socket::new(
        domain,
        socket2::Type::STREAM,
        Some(socket2::Protocol::TCP),
    )?;

    // SO_REUSEADDR lets a restarted daemon bind while old connections sit
    // in TIME_WAIT; it does not allow two live listeners on one port.
    socket.set_reuse_address(true)?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(LISTEN_BACKLOG)?;

    let listener = TcpListener::from_std(socket.into())?;
    Ok(Listener::Tcp(listener))
}

/// Binds a Unix socket, replacing a leftover socket file. With `access`
/// set, the socket is bound under a temporary name, given its mode and
/// group, and only then renamed into place, so that no client can reach
/// it at the real path while its permissions are still wider.
pub async fn bind_unix(
    path: &Path,
    access: SocketAccess,
) -> io::Result<Listener> {
    clear_leftover(path).await?;
    if access == SocketAccess::default() {
        let listener = UnixListener::bind(path)?;
        return Ok(Listener::Unix {
            listener,
            path: Some(path.to_path_buf()),
        });
    }

    let staging = staging_path(path);
    let _ = std::fs::remove_file(&staging);
    let listener = UnixListener::bind(&staging)?;
    let prepared = prepare(&staging, access)
        .and_then(|()| std::fs::rename(&staging, path));
    if let Err(e) = prepared {
        let _ = std::fs::remove_file(&staging);
        return Err(e);
    }
    Ok(Listener::Unix {
        listener,
        path: Some(path.to_path_buf()),
    })
}

/// Removes a socket file nobody answers on; refuses a live socket or a
/// path that is not a socket.
async fn clear_leftover(path: &Path) -> io::Result<()> {
    use std::os::unix::fs::FileTypeExt;

    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => {
            if UnixStream::connect(path).await.is_ok() {
                return Err(io::Error::new(
                    io::ErrorKind::AddrInUse,
                    "a live socket is already listening there",
                ));
            }
            std::fs::remove_file(path)
        }
        Ok(_) => Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            "the path exists and is not a socket",
        )),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// A name beside `path` for binding before the rename.
fn staging_path(path: &Path) -> PathBuf {
    let mut name = std::ffi::OsString::from(".");
    name.push(path.file_name().unwrap_or_default());
    name.push(format!(".{}.new", std::process::id()));
    path.with_file_name(name)
}

/// Sets the group, then the mode, of a freshly bound socket file.
fn prepare(path: &Path, access: SocketAccess) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt;

    if let Some(gid) = access.group {
        std::os::unix::fs::chown(path, None, Some(gid))?;
    }
    if let Some(mode) = access.mode {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
    }
    Ok(())
}

/// Resolves `host:port`; an IP literal needs no lookup. Never empty.
pub async fn resolve(host: &str, port: u16) -> io::Result<Vec<SocketAddr>> {
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(vec![SocketAddr::new(ip, port)]);
    }

    let addrs: Vec<SocketAddr> =
        tokio::net::lookup_host((host, port)).await?.collect();
    if addrs.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!("{host} has no addresses"),
        ));
    }
    Ok(addrs)
}

/// A pipe's target with its resolved addresses, re-resolved when they are
/// older than the pipe's `resolve_interval` (spiped re-resolves the same
/// way, and `-R` turns it off).
#[derive(Debug)]
pub struct Target {
    address: Address,
    interval: Option<Duration>,
    cache: Mutex<Option<(Instant, Vec<SocketAddr>)>>,
}

impl Target {
    /// A target that resolves on first use; `interval` of `None` means
    /// resolve once and keep the answer.
    pub fn new(address: Address, interval: Option<Duration>) -> Target {
        Target {
            address,
            interval,
            cache: Mutex::new(None),
        }
    }

    /// The configured address.
    pub fn address(&self) -> &Address {
        &self.address
    }

    /// Dials the target, trying each resolved address in turn, with the
    /// socket options set. `bind` is the local address for TCP.
    ///
    /// Cancel-safe: a cancelled dial leaves no state behind.
    pub async fn dial(
        &self,
        bind: Option<IpAddr>,
        keepalive: bool,
    ) -> io::Result<Stream> {
        let (host, port) = match &self.address {
            Address::Unix(path) => {
                return Ok(Stream::Unix(UnixStream::connect(path).await?));
            }
            Address::Tcp { host, port } => (host, *port),
        };

        // Try every address, keeping the last error to report.
        let mut last = None;
        for addr in self.addresses(host, port).await? {
            match dial_tcp(addr, bind).await {
                Ok(s) => {
                    let stream = Stream::Tcp(s);
                    stream.configure(keepalive)?;
                    return Ok(stream);
                }
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| io::ErrorKind::NotFound.into()))
    }

    /// The addresses to dial, from the cache while it is fresh. A failed
    /// re-resolution keeps the old answer rather than failing the dial.
    async fn addresses(
        &self,
        host: &str,
        port: u16,
    ) -> io::Result<Vec<SocketAddr>> {
        let cached = self.lock().clone();
        if let Some((at, addrs)) = &cached {
            let fresh = self.interval.is_none_or(|i| at.elapsed() < i);
            if fresh {
                return Ok(addrs.clone());
            }
        }

        match resolve(host, port).await {
            Ok(addrs) => {
                *self.lock() = Some((Instant::now(), addrs.clone()));
                Ok(addrs)
            }
            Err(e) => match cached {
                Some((_, addrs)) => {
                    tracing::warn!(
                        target = %self.address, error = %e,
                        "re-resolving the target failed; using the \
                         previous addresses"
                    );
                    Ok(addrs)
                }
                None => Err(e),
            },
        }
    }

    /// The cache, even if a thread panicked while holding it: the value
    /// is a plain list of addresses and stays valid.
    fn lock(
        &self,
    ) -> std::sync::MutexGuard<'_, Option<(Instant, Vec<SocketAddr>)>> {
        self.cache.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Connects to one TCP address, from `bind` if given.
async fn dial_tcp(
    addr: SocketAddr,
    bind: Option<IpAddr>,
) -> io::Result<TcpStream> {
    let socket = match addr {
        SocketAddr::V4(_) => TcpSocket::new_v4()?,
        SocketAddr::V6(_) => TcpSocket::new_v6()?,
    };
    if let Some(ip) = bind {
        socket.bind(SocketAddr::new(ip, 0))?;
    }
    socket.connect(addr).await
}
