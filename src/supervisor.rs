//! The supervisor: the set of running pipes, keyed by source address, and
//! the difference a new config makes to it.
//!
//! Listeners are owned by address, not by name, so a reload that renames a
//! pipe or changes its target, key or limits swaps its settings while the
//! listener keeps accepting: no client is refused during a reload.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::task::TaskTracker;

use crate::address::Address;
use crate::config::{Config, DaemonConfig, PipeConfig};
use crate::net;
use crate::pipe::{PipeHandle, PipeSettings};
use crate::status::{Board, Entry, State};
use crate::systemd;

/// The first wait before binding a pipe that failed to bind on reload...
const RETRY_MIN: Duration = Duration::from_secs(1);
/// ...doubling up to this.
const RETRY_MAX: Duration = Duration::from_secs(30);

/// A pipe that could not bind its source at start-up; start-up is then
/// abandoned, since a daemon missing a pipe is not what was asked for.
#[derive(Debug, thiserror::Error)]
#[error("pipe {pipe}: bind {source_addr}: {error}")]
pub struct BindError {
    /// The pipe's name.
    pub pipe: String,
    /// The address it tried.
    pub source_addr: Address,
    /// What the kernel said.
    pub error: std::io::Error,
}

/// What a reload changed, for the one summary line it logs.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ReloadSummary {
    /// Pipes whose source is new.
    pub added: usize,
    /// Pipes whose source is gone; they drain.
    pub removed: usize,
    /// Pipes whose source stayed but whose settings changed.
    pub changed: usize,
    /// Pipes exactly as before.
    pub unchanged: usize,
    /// Added pipes that could not bind and will be retried.
    pub failed: usize,
}

impl fmt::Display for ReloadSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} added, {} removed, {} changed, {} unchanged, {} failed",
            self.added, self.removed, self.changed, self.unchanged, self.failed
        )
    }
}

/// A pipe with its listener.
struct RunningPipe {
    config: PipeConfig,
    handle: PipeHandle,
}

/// A pipe whose bind failed on reload, waiting for its next attempt.
struct FailedPipe {
    config: PipeConfig,
    error: String,
    wait: Duration,
    next_attempt: Instant,
}

/// Owns every pipe of the process and applies configs to them.
pub struct Supervisor {
    daemon: DaemonConfig,
    running: BTreeMap<Address, RunningPipe>,
    failed: BTreeMap<Address, FailedPipe>,
    /// Removed pipes still draining their connections.
    draining: TaskTracker,
    /// What operators see; republished after every change.
    board: Arc<Board>,
}

impl Supervisor {
    /// Binds every pipe of `config` and starts accepting. Any bind failure
    /// fails the whole start, naming the pipe and address.
    ///
    /// Cancel-safe: a cancelled start closes what it had bound.
    pub async fn start(config: Config) -> Result<Supervisor, BindError> {
        // Bind everything before accepting anything, using sockets that
        // systemd passed in where they match.
        let mut activated = systemd::Activated::from_env();
        let mut bound = Vec::new();
        for pipe in config.pipes {
            let listener = match activated.take(&pipe.name, &pipe.source) {
                Some(listener) => Ok(listener),
                None => net::bind(&pipe.source, access(&pipe)).await,
            };
            match listener {
                Ok(listener) => bound.push((pipe, listener)),
                Err(error) => {
                    remove_unix_files(&bound);
                    return Err(BindError {
                        pipe: pipe.name,
                        source_addr: pipe.source,
                        error,
                    });
                }
            }
        }

        activated.warn_unused();
        let mut running = BTreeMap::new();
        for (pipe, listener) in bound {
            log_pipe("started", &pipe);
            let handle =
                PipeHandle::spawn(listener, PipeSettings::new(pipe.clone()));
            running.insert(
                pipe.source.clone(),
                RunningPipe {
                    config: pipe,
                    handle,
                },
            );
        }
        let supervisor = Supervisor {
            daemon: config.daemon,
            running,
            failed: BTreeMap::new(),
            draining: TaskTracker::new(),
            board: Arc::new(Board::default()),
        };
        supervisor.board.started();
        supervisor.publish();
        Ok(supervisor)
    }

    /// Applies a new, already validated config: removed pipes drain,
    /// changed pipes get new settings on their open listener, added pipes
    /// bind. A pipe that cannot bind is retried later; the rest applies.
    ///
    /// Cancel-safe only between pipes: a cancelled apply leaves a mix of
    /// old and new, so callers run it to completion.
    pub async fn apply(&mut self, config: Config) -> ReloadSummary {
        let mut summary = ReloadSummary::default();
        self.daemon = config.daemon;
        let mut wanted: BTreeMap<Address, PipeConfig> = config
            .pipes
            .into_iter()
            .map(|p| (p.source.clone(), p))
            .collect();

        // Removals first, so a pipe moving onto a freed address can bind.
        let gone: Vec<Address> = self
            .running
            .keys()
            .filter(|a| !wanted.contains_key(*a))
            .cloned()
            .collect();
        for source in gone {
            if let Some(pipe) = self.running.remove(&source) {
                log_pipe("removed", &pipe.config);
                self.drain_in_background(pipe);
                summary.removed += 1;
            }
        }
        self.failed.retain(|a, _| wanted.contains_key(a));

        // Then every pipe of the new file, in address order.
        for (source, pipe) in std::mem::take(&mut wanted) {
            self.apply_one(source, pipe, &mut summary).await;
        }
        self.board.count_reload(true);
        self.publish();
        summary
    }

    /// Applies one pipe of a new config.
    async fn apply_one(
        &mut self,
        source: Address,
        pipe: PipeConfig,
        summary: &mut ReloadSummary,
    ) {
        if let Some(running) = self.running.get_mut(&source) {
            if running.config == pipe {
                summary.unchanged += 1;
            } else {
                log_pipe("changed", &pipe);
                running.handle.update(PipeSettings::new(pipe.clone()));
                running.config = pipe;
                summary.changed += 1;
            }
            return;
        }

        // A pipe still waiting to bind keeps its backoff.
        if let Some(failed) = self.failed.get_mut(&source) {
            failed.config = pipe;
            summary.failed += 1;
            return;
        }
        match self.bind_and_run(pipe.clone()).await {
            Ok(()) => summary.added += 1,
            Err(error) => {
                summary.failed += 1;
                self.failed.insert(
                    source,
                    FailedPipe {
                        config: pipe,
                        error,
                        wait: RETRY_MIN,
                        next_attempt: Instant::now() + RETRY_MIN,
                    },
                );
            }
        }
    }

    /// Binds a pipe and starts it; the error (logged) if the bind failed.
    async fn bind_and_run(&mut self, pipe: PipeConfig) -> Result<(), String> {
        match net::bind(&pipe.source, access(&pipe)).await {
            Ok(listener) => {
                log_pipe("started", &pipe);
                let settings = PipeSettings::new(pipe.clone());
                let handle = PipeHandle::spawn(listener, settings);
                self.failed.remove(&pipe.source);
                self.running.insert(
                    pipe.source.clone(),
                    RunningPipe {
                        config: pipe,
                        handle,
                    },
                );
                Ok(())
            }
            Err(e) => {
                tracing::warn!(
                    pipe = %pipe.name, source = %pipe.source, error = %e,
                    "bind failed; will retry"
                );
                Err(e.to_string())
            }
        }
    }

    /// When the next failed pipe is due for another bind attempt.
    pub fn next_retry(&self) -> Option<Instant> {
        self.failed.values().map(|f| f.next_attempt).min()
    }

    /// Tries again to bind every failed pipe that is due.
    ///
    /// Cancel-safe only between pipes, as [`Supervisor::apply`].
    pub async fn retry_failed(&mut self) {
        let now = Instant::now();
        let due: Vec<Address> = self
            .failed
            .iter()
            .filter(|(_, f)| f.next_attempt <= now)
            .map(|(a, _)| a.clone())
            .collect();
        for source in due {
            let Some(pipe) = self.failed.get(&source).map(|f| f.config.clone())
            else {
                continue;
            };
            if let Err(error) = self.bind_and_run(pipe).await
                && let Some(f) = self.failed.get_mut(&source)
            {
                f.error = error;
                f.wait = (f.wait * 2).min(RETRY_MAX);
                f.next_attempt = Instant::now() + f.wait;
            }
        }
        self.publish();
    }

    /// The board operators read, shared with the control socket and the
    /// metrics endpoint.
    pub fn board(&self) -> &Arc<Board> {
        &self.board
    }

    /// Puts the current running and failed pipes on the board.
    fn publish(&self) {
        let running = self.running.values().map(|p| Entry {
            config: p.config.clone(),
            state: State::Running,
            error: None,
            stats: Some(p.handle.stats().clone()),
        });
        let failed = self.failed.values().map(|f| Entry {
            config: f.config.clone(),
            state: State::Failed,
            error: Some(f.error.clone()),
            stats: None,
        });
        self.board.publish(running.chain(failed).collect());
    }

    /// Whether `daemon` moves the metrics endpoint or the control socket,
    /// which only a restart applies.
    pub fn daemon_services_differ(&self, daemon: &DaemonConfig) -> bool {
        self.daemon.metrics != daemon.metrics
            || self.daemon.control_socket != daemon.control_socket
    }

    /// The running pipe listening on `source`, if any.
    pub fn pipe(&self, source: &Address) -> Option<&PipeHandle> {
        self.running.get(source).map(|p| &p.handle)
    }

    /// Stops every listener at once, then lets connections finish within
    /// the drain timeout.
    ///
    /// Cancel-safe: dropping it mid-drain leaves listeners closed.
    pub async fn shutdown(self) {
        let grace = self.daemon.drain_timeout;
        let all = TaskTracker::new();
        for (_, pipe) in self.running {
            all.spawn(pipe.handle.drain(grace));
        }
        all.close();
        self.draining.close();
        tokio::join!(all.wait(), self.draining.wait());
    }

    /// Lets a removed pipe drain without holding up the reload; it shows
    /// as draining until its connections are done.
    fn drain_in_background(&self, pipe: RunningPipe) {
        let grace = self.daemon.drain_timeout;
        let board = self.board.clone();
        let id = board.start_draining(Entry {
            config: pipe.config,
            state: State::Draining,
            error: None,
            stats: Some(pipe.handle.stats().clone()),
        });
        self.draining.spawn(async move {
            pipe.handle.drain(grace).await;
            board.end_draining(id);
        });
    }
}

/// Who may connect to a pipe's Unix socket source.
fn access(pipe: &PipeConfig) -> net::SocketAccess {
    net::SocketAccess {
        mode: pipe.source_mode,
        group: pipe.source_group,
    }
}

/// Removes the socket files of listeners bound before a failed start.
fn remove_unix_files(bound: &[(PipeConfig, net::Listener)]) {
    for (_, listener) in bound {
        if let Some(path) = listener.unix_path() {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// The info line for a pipe that started, changed or went.
fn log_pipe(what: &str, pipe: &PipeConfig) {
    tracing::info!(
        pipe = %pipe.name,
        mode = %pipe.mode,
        source = %pipe.source,
        target = %pipe.target,
        "pipe {what}"
    );
}
