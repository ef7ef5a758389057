//! A pipe at run time: its listener, its accept loop, its connection limit
//! and its counters.
//!
//! The settings sit behind a `watch` channel so that a reload can swap them
//! while the listener keeps accepting: each connection takes the settings
//! current when it was accepted and keeps them to its end.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::PipeConfig;
use crate::connection::{self, CloseReason, HandshakeFailure};
use crate::net::{Listener, Target};
use crate::protocol::Key;

/// The least time between two warnings of one kind from one pipe, so that
/// a scanner or a dead backend cannot flood the log.
const WARN_INTERVAL: Duration = Duration::from_secs(10);

/// Accept errors such as EMFILE back off from this, doubling...
const ACCEPT_BACKOFF_MIN: Duration = Duration::from_millis(10);
/// ...up to this.
const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(1);

/// Ids for connections, unique across all pipes of the process.
static NEXT_CONNECTION_ID: AtomicU64 = AtomicU64::new(1);

/// What a connection needs from its pipe's config, built once per
/// (re)load rather than per connection.
#[derive(Debug)]
pub struct PipeSettings {
    /// The validated config.
    pub config: PipeConfig,
    /// The target with its resolver cache.
    pub target: Target,
    /// The keys, in the order the handshake tries them.
    pub keys: Vec<Arc<Key>>,
    /// Permits for the Diffie-Hellman work of a handshake, so that a
    /// flood of handshakes cannot starve established connections of CPU;
    /// `None` when `max_handshakes = 0`. A reload makes a new semaphore,
    /// so right after one, old and new handshakes may briefly overlap.
    pub handshakes: Option<Arc<Semaphore>>,
}

impl PipeSettings {
    /// Builds the run-time settings of a pipe.
    pub fn new(config: PipeConfig) -> PipeSettings {
        let target =
            Target::new(config.target.clone(), config.resolve_interval);
        let keys = config.keys.iter().map(|k| k.key.clone()).collect();
        let handshakes =
            config.max_handshakes.map(|n| Arc::new(Semaphore::new(n)));
        PipeSettings {
            config,
            target,
            keys,
            handshakes,
        }
    }

    /// Waits for a handshake permit; `None` when there is no cap. A
    /// connection takes it only after the peer proved the key (either
    /// role), for the exponentiation (on a decrypt pipe also the
    /// server's key pair and its 288-byte write, which does not wait on
    /// the peer), so a peer that sends nothing or stalls mid-handshake
    /// never holds one.
    ///
    /// Cancel-safe.
    pub async fn handshake_permit(&self) -> Option<OwnedSemaphorePermit> {
        let semaphore = self.handshakes.clone()?;
        semaphore.acquire_owned().await.ok()
    }
}

/// Counters of one listener, kept across reloads that change its
/// settings. Atomics, since every connection task updates them.
#[derive(Debug, Default)]
pub struct PipeStats {
    /// Connections open now.
    pub active: AtomicUsize,
    /// Connections accepted since the listener was bound.
    pub total: AtomicU64,
    /// Plaintext bytes from sources to the target.
    pub bytes_up: AtomicU64,
    /// Plaintext bytes from the target back to sources.
    pub bytes_down: AtomicU64,
    /// Handshakes that failed because of the peer, by
    /// [`HandshakeFailure::index`].
    pub handshake_failures: [AtomicU64; HandshakeFailure::ALL.len()],
    /// Dial plus handshake that ran out of time.
    pub timeouts: AtomicU64,
    /// Targets that could not be dialled.
    pub dial_failures: AtomicU64,
    /// Times the pipe reached `max_connections` and stopped accepting.
    pub limit_hits: AtomicU64,
    /// Successful handshakes per key file, so an operator can see when an
    /// old key is no longer used during a rotation.
    key_uses: Mutex<HashMap<PathBuf, u64>>,
    /// The last failure that needed an operator, for `spipes status`.
    last_error: Mutex<Option<String>>,
    /// When each kind of warning was last logged.
    warned: Mutex<HashMap<&'static str, Instant>>,
    /// Woken when a connection closes, for an accept loop at its limit.
    closed: Notify,
}

impl PipeStats {
    /// Counts a connection's end and wakes an accept loop at its limit.
    pub fn record_close(&self, reason: CloseReason) {
        let counter = match reason {
            CloseReason::Handshake(h) => {
                Some(&self.handshake_failures[h.index()])
            }
            CloseReason::Timeout => Some(&self.timeouts),
            CloseReason::DialFailed => Some(&self.dial_failures),
            _ => None,
        };
        if let Some(c) = counter {
            c.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Counts one successful handshake with the key from `path`.
    pub fn count_key_use(&self, path: &Path) {
        let mut uses = lock(&self.key_uses);
        *uses.entry(path.to_path_buf()).or_default() += 1;
    }

    /// Successful handshakes per key file so far.
    pub fn key_uses(&self) -> HashMap<PathBuf, u64> {
        lock(&self.key_uses).clone()
    }

    /// Remembers `error` as the pipe's last error.
    pub fn set_last_error(&self, error: String) {
        *lock(&self.last_error) = Some(error);
    }

    /// The last failure that needed an operator, if any.
    pub fn last_error(&self) -> Option<String> {
        lock(&self.last_error).clone()
    }

    /// Runs `log` unless a warning of this kind was logged within the
    /// last `WARN_INTERVAL` (10 s).
    pub fn warn_limited(&self, kind: &'static str, log: impl FnOnce()) {
        let now = Instant::now();
        let mut warned = lock(&self.warned);
        let due = warned
            .get(kind)
            .is_none_or(|at| now.duration_since(*at) >= WARN_INTERVAL);
        if due {
            warned.insert(kind, now);
            drop(warned);
            log();
        }
    }
}

/// Locks a mutex whose data stays valid even if a holder panicked.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A running pipe, owned by the supervisor.
///
/// Dropping it does not stop anything; call [`PipeHandle::drain`].
pub struct PipeHandle {
    /// The settings new connections take; replaced by reloads.
    settings: watch::Sender<Arc<PipeSettings>>,
    /// Counters, shared with the accept loop and every connection.
    stats: Arc<PipeStats>,
    /// Cancelled to stop accepting; the loop then drops the listener.
    stop_accepting: CancellationToken,
    /// Cancelled when the drain time is up, to cut what still runs.
    cut: CancellationToken,
    /// Every connection task, to wait for when draining.
    connections: TaskTracker,
    /// The accept loop, which owns the listener.
    accept_loop: JoinHandle<()>,
}

impl PipeHandle {
    /// Starts accepting on `listener` with `settings`.
    pub fn spawn(listener: Listener, settings: PipeSettings) -> PipeHandle {
        let (tx, rx) = watch::channel(Arc::new(settings));
        let stats = Arc::new(PipeStats::default());
        let stop_accepting = CancellationToken::new();
        let cut = CancellationToken::new();
        let connections = TaskTracker::new();

        let accept = AcceptLoop {
            listener,
            settings: rx,
            stats: stats.clone(),
            stop: stop_accepting.clone(),
            cut: cut.clone(),
            connections: connections.clone(),
        };
        PipeHandle {
            settings: tx,
            stats,
            stop_accepting,
            cut,
            connections,
            accept_loop: tokio::spawn(accept.run()),
        }
    }

    /// The settings new connections get now.
    pub fn settings(&self) -> Arc<PipeSettings> {
        self.settings.borrow().clone()
    }

    /// The pipe's counters.
    pub fn stats(&self) -> &Arc<PipeStats> {
        &self.stats
    }

    /// Gives connections accepted from now on new settings; connections
    /// already open keep theirs. The listener is not touched.
    pub fn update(&self, settings: PipeSettings) {
        self.settings.send_replace(Arc::new(settings));
    }

    /// Stops accepting at once (the listener closes, so new clients are
    /// refused rather than left waiting), lets connections run for up to
    /// `grace` (`None`: no limit), then cuts the rest.
    ///
    /// Cancel-safe: if the returned future is dropped, accepting has
    /// stopped and the connections run on unbounded.
    pub async fn drain(self, grace: Option<Duration>) {
        let name = self.settings.borrow().config.name.clone();
        self.stop_accepting.cancel();
        if let Err(e) = self.accept_loop.await {
            tracing::error!(pipe = %name, error = %e, "accept loop panicked");
        }

        self.connections.close();
        let active = self.connections.len();
        if active == 0 {
            return;
        }
        tracing::info!(pipe = %name, active, "draining connections");

        // Wait for the connections, or cut them when the grace runs out.
        let wait = self.connections.wait();
        match grace {
            None => wait.await,
            Some(grace) => {
                if tokio::time::timeout(grace, wait).await.is_err() {
                    let left = self.connections.len();
                    tracing::warn!(
                        pipe = %name, left, grace_s = grace.as_secs_f64(),
                        "drain timeout reached; closing the remaining \
                         connections"
                    );
                    self.cut.cancel();
                    self.connections.wait().await;
                }
            }
        }
    }
}

/// The accept loop of one pipe and what it shares with its connections.
struct AcceptLoop {
    /// Owned here so that it closes as soon as the loop ends.
    listener: Listener,
    settings: watch::Receiver<Arc<PipeSettings>>,
    stats: Arc<PipeStats>,
    stop: CancellationToken,
    cut: CancellationToken,
    connections: TaskTracker,
}

impl AcceptLoop {
    /// Accepts until told to stop. Accept errors never end the loop.
    async fn run(mut self) {
        let mut backoff = ACCEPT_BACKOFF_MIN;
        loop {
            // At the connection limit, leave clients in the backlog.
            if !self.wait_for_room().await {
                break;
            }

            let accepted = tokio::select! {
                _ = self.stop.cancelled() => break,
                r = self.listener.accept() => r,
            };
            match accepted {
                Ok((stream, peer)) => {
                    backoff = ACCEPT_BACKOFF_MIN;
                    self.spawn_connection(stream, peer);
                }
                Err(e) => {
                    if !self.back_off(e, &mut backoff).await {
                        break;
                    }
                }
            }
        }

        // A Unix socket file goes with its listener.
        if let Some(path) = self.listener.unix_path() {
            let _ = std::fs::remove_file(path);
        }
    }

    /// Starts the task for one accepted connection.
    fn spawn_connection(&self, stream: crate::net::Stream, peer: String) {
        let settings = self.settings.borrow().clone();
        let stats = self.stats.clone();
        let cut = self.cut.clone();
        let id = NEXT_CONNECTION_ID.fetch_add(1, Ordering::Relaxed);

        stats.active.fetch_add(1, Ordering::Relaxed);
        stats.total.fetch_add(1, Ordering::Relaxed);
        self.connections.spawn(async move {
            let serve =
                connection::serve(stream, peer, id, settings, stats.clone());
            tokio::select! {
                _ = serve => {}
                _ = cut.cancelled() => {
                    stats.record_close(CloseReason::Drained);
                }
            }
            stats.active.fetch_sub(1, Ordering::Relaxed);
            stats.closed.notify_waiters();
        });
    }

    /// Returns once the pipe is below its limit, or `false` if told to
    /// stop meanwhile. Warns once per burst of hitting the limit.
    async fn wait_for_room(&mut self) -> bool {
        let mut warned = false;
        loop {
            // Register for the wake-up before checking, so that a close
            // between the check and the wait is not missed.
            let closed = self.stats.closed.notified();
            tokio::pin!(closed);
            closed.as_mut().enable();

            let limit = self.settings.borrow().config.max_connections;
            let active = self.stats.active.load(Ordering::Relaxed);
            if limit.is_none_or(|max| active < max) {
                return true;
            }
            if !warned {
                warned = true;
                self.stats.limit_hits.fetch_add(1, Ordering::Relaxed);
                self.warn_at_limit(active);
            }

            tokio::select! {
                _ = self.stop.cancelled() => return false,
                _ = closed => {}
                // A reload may raise the limit.
                _ = self.settings.changed() => {}
            }
        }
    }

    fn warn_at_limit(&self, active: usize) {
        let name = self.settings.borrow().config.name.clone();
        self.stats.warn_limited("limit", || {
            tracing::warn!(
                pipe = %name, active,
                "connection limit reached; new clients wait in the backlog"
            )
        });
    }

    /// Waits out an accept error. Running out of descriptors or memory
    /// backs off, doubling; anything else (a client that reset before
    /// accept) retries at once. `false` if told to stop meanwhile.
    async fn back_off(
        &self,
        e: std::io::Error,
        backoff: &mut Duration,
    ) -> bool {
        let resource = matches!(
            e.raw_os_error(),
            Some(libc_errno::EMFILE)
                | Some(libc_errno::ENFILE)
                | Some(libc_errno::ENOBUFS)
                | Some(libc_errno::ENOMEM)
        );
        if !resource {
            tracing::debug!(error = %e, "accept failed");
            return true;
        }

        let name = self.settings.borrow().config.name.clone();
        self.stats.set_last_error(format!("accept: {e}"));
        self.stats.warn_limited("accept", || {
            tracing::warn!(
                pipe = %name, error = %e,
                "accept failed; backing off"
            )
        });
        let wait = *backoff;
        *backoff = (*backoff * 2).min(ACCEPT_BACKOFF_MAX);
        tokio::select! {
            _ = self.stop.cancelled() => false,
            _ = tokio::time::sleep(wait) => true,
        }
    }
}

/// The errno values accept can fail with for lack of resources, on Linux.
mod libc_errno {
    pub const ENOMEM: i32 = 12;
    pub const ENFILE: i32 = 23;
    pub const EMFILE: i32 = 24;
    pub const ENOBUFS: i32 = 105;
}
