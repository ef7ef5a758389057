//! What the daemon can tell an operator: a board the supervisor keeps up
//! to date, and the snapshot of it that `spipes status` and the metrics
//! endpoint both read, so the two never disagree.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::config::{Mode, PipeConfig};
use crate::connection::HandshakeFailure;
use crate::pipe::PipeStats;

/// The state of a pipe as operators see it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    /// Bound and accepting.
    Running,
    /// Its bind failed on reload; retried with backoff.
    Failed,
    /// Removed from the config; its connections are finishing.
    Draining,
}

impl State {
    /// The lowercase word used in the table and in metrics labels.
    pub fn as_str(self) -> &'static str {
        match self {
            State::Running => "running",
            State::Failed => "failed",
            State::Draining => "draining",
        }
    }
}

/// One pipe on the board: what it is and the live counters, if it has a
/// listener.
#[derive(Clone, Debug)]
pub struct Entry {
    /// The pipe's config when it was last applied.
    pub config: PipeConfig,
    /// Running, failed or draining.
    pub state: State,
    /// Why it failed, for a failed pipe.
    pub error: Option<String>,
    /// The listener's counters; `None` for a pipe that never bound.
    pub stats: Option<Arc<PipeStats>>,
}

/// The supervisor's published state, shared with the control socket and
/// the metrics endpoint. Readers take a [`Snapshot`].
#[derive(Debug, Default)]
pub struct Board {
    /// Running and failed pipes, replaced whole by the supervisor after
    /// every change.
    entries: Mutex<Vec<Entry>>,
    /// Removed pipes still draining, by a drain id.
    draining: Mutex<Vec<(u64, Entry)>>,
    /// The next drain id.
    next_drain: AtomicU64,
    /// Reloads applied.
    reloads_ok: AtomicU64,
    /// Reloads rejected because the new file was bad.
    reloads_failed: AtomicU64,
    /// Seconds since the epoch of the last good load (start or reload).
    last_reload_ok: AtomicU64,
}

impl Board {
    /// Replaces the list of pipes.
    pub fn publish(&self, entries: Vec<Entry>) {
        *lock(&self.entries) = entries;
    }

    /// Shows a removed pipe as draining until [`Board::end_draining`].
    pub fn start_draining(&self, mut entry: Entry) -> u64 {
        entry.state = State::Draining;
        let id = self.next_drain.fetch_add(1, Relaxed);
        lock(&self.draining).push((id, entry));
        id
    }

    /// Forgets a pipe whose drain has finished.
    pub fn end_draining(&self, id: u64) {
        lock(&self.draining).retain(|(i, _)| *i != id);
    }

    /// Notes the time of the first load, at start-up; not a reload.
    pub fn started(&self) {
        self.last_reload_ok.store(unix_now(), Relaxed);
    }

    /// Counts a reload by its result.
    pub fn count_reload(&self, ok: bool) {
        if ok {
            self.reloads_ok.fetch_add(1, Relaxed);
            self.last_reload_ok.store(unix_now(), Relaxed);
        } else {
            self.reloads_failed.fetch_add(1, Relaxed);
        }
    }

    /// A consistent copy of everything, for one status or scrape.
    pub fn snapshot(&self) -> Snapshot {
        let mut entries = lock(&self.entries).clone();
        entries.extend(lock(&self.draining).iter().map(|(_, e)| e.clone()));
        Snapshot {
            pipes: entries.iter().map(PipeSnapshot::of).collect(),
            reloads_ok: self.reloads_ok.load(Relaxed),
            reloads_failed: self.reloads_failed.load(Relaxed),
            last_reload_ok_unix: self.last_reload_ok.load(Relaxed),
        }
    }
}

/// Locks a mutex whose data stays valid even if a holder panicked.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The daemon's state at one moment, as sent over the control socket.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    /// Every pipe: running, failed and draining.
    pub pipes: Vec<PipeSnapshot>,
    /// Reloads applied.
    pub reloads_ok: u64,
    /// Reloads rejected.
    pub reloads_failed: u64,
    /// When the config was last loaded successfully (at start or by a
    /// reload), in seconds since the epoch.
    pub last_reload_ok_unix: u64,
}

/// One pipe in a [`Snapshot`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PipeSnapshot {
    /// The pipe's name.
    pub name: String,
    /// `encrypt` or `decrypt`.
    pub mode: String,
    /// Where it listens.
    pub source: String,
    /// Where it dials.
    pub target: String,
    /// Running, failed or draining.
    pub state: State,
    /// Connections open now.
    pub active: u64,
    /// Connections accepted since the listener was bound.
    pub total: u64,
    /// Plaintext bytes from sources to the target.
    pub bytes_up: u64,
    /// Plaintext bytes from the target back to sources.
    pub bytes_down: u64,
    /// Failed handshakes by reason label, timeouts included.
    pub handshake_failures: Vec<(String, u64)>,
    /// Targets that could not be dialled.
    pub dial_failures: u64,
    /// Times the connection limit was reached.
    pub limit_hits: u64,
    /// Successful handshakes per key file.
    pub key_uses: Vec<(String, u64)>,
    /// The last failure that needed an operator, or the bind error of a
    /// failed pipe.
    pub last_error: Option<String>,
}

impl PipeSnapshot {
    fn of(entry: &Entry) -> PipeSnapshot {
        let config = &entry.config;
        let mut snap = PipeSnapshot {
            name: config.name.clone(),
            mode: match config.mode {
                Mode::Encrypt => "encrypt".into(),
                Mode::Decrypt => "decrypt".into(),
            },
            source: config.source.to_string(),
            target: config.target.to_string(),
            state: entry.state,
            active: 0,
            total: 0,
            bytes_up: 0,
            bytes_down: 0,
            handshake_failures: Vec::new(),
            dial_failures: 0,
            limit_hits: 0,
            key_uses: Vec::new(),
            last_error: entry.error.clone(),
        };
        if let Some(stats) = &entry.stats {
            snap.fill(stats);
        }
        snap
    }

    /// Copies the live counters.
    fn fill(&mut self, stats: &PipeStats) {
        self.active = stats.active.load(Relaxed) as u64;
        self.total = stats.total.load(Relaxed);
        self.bytes_up = stats.bytes_up.load(Relaxed);
        self.bytes_down = stats.bytes_down.load(Relaxed);
        self.dial_failures = stats.dial_failures.load(Relaxed);
        self.limit_hits = stats.limit_hits.load(Relaxed);

        let mut failures: Vec<(String, u64)> = HandshakeFailure::ALL
            .iter()
            .map(|h| {
                let n = stats.handshake_failures[h.index()].load(Relaxed);
                (h.label().to_string(), n)
            })
            .collect();
        failures.push(("timeout".into(), stats.timeouts.load(Relaxed)));
        self.handshake_failures = failures;

        let mut uses: Vec<(String, u64)> = stats
            .key_uses()
            .into_iter()
            .map(|(path, n)| (path.display().to_string(), n))
            .collect();
        uses.sort();
        self.key_uses = uses;
        if self.last_error.is_none() {
            self.last_error = stats.last_error();
        }
    }

    /// Failed handshakes of every reason together.
    pub fn failures(&self) -> u64 {
        self.handshake_failures.iter().map(|(_, n)| n).sum::<u64>()
            + self.dial_failures
    }
}
