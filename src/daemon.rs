//! `spipes run`: start every pipe, follow signals, reload, and drain on
//! the way out.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, LazyLock};

use tokio::signal::unix::{Signal, SignalKind, signal};

use crate::config::{self, Config};
use crate::reload::{FileWatcher, Fingerprint};
use crate::supervisor::Supervisor;
use crate::systemd;

/// Why the daemon could not start; printed, then the process exits 1.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The config file or a key file is wrong.
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    /// A pipe could not bind its source.
    #[error(transparent)]
    Bind(#[from] crate::supervisor::BindError),
    /// A signal handler could not be installed.
    #[error("cannot install signal handlers: {0}")]
    Signals(std::io::Error),
    /// The metrics endpoint could not bind its address.
    #[error("metrics: bind {address}: {error}")]
    Metrics {
        /// The configured address.
        address: crate::address::Address,
        /// What the kernel said.
        error: std::io::Error,
    },
    /// The file watcher could not start.
    #[error("cannot watch the config file: {0}")]
    Watch(notify::Error),
}

/// The signals the daemon follows, installed before anything else so that
/// a SIGHUP or SIGTERM during start-up is never fatal by default action.
struct Signals {
    term: Signal,
    int: Signal,
    hup: Signal,
}

impl Signals {
    fn install() -> std::io::Result<Signals> {
        Ok(Signals {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
            hup: signal(SignalKind::hangup())?,
        })
    }

    /// Waits for SIGTERM or SIGINT. Cancel-safe.
    async fn stop(&mut self) {
        tokio::select! {
            _ = self.term.recv() => {}
            _ = self.int.recv() => {}
        }
    }
}

/// Set by a SIGTERM or SIGINT that arrives before the daemon's own
/// handlers exist, so that it still means "stop".
static EARLY_STOP: LazyLock<Arc<AtomicBool>> =
    LazyLock::new(|| Arc::new(AtomicBool::new(false)));

/// Catches SIGTERM, SIGINT and SIGHUP from the start of `spipes run`,
/// before the runtime and its handlers exist, so that none of them kills
/// the process by its default action: a stop request is remembered and
/// honoured once the daemon runs, and a reload request needs nothing,
/// since the config is read after this. SIGHUP goes last, so that a
/// process that catches SIGHUP (as `/proc/PID/status` shows) catches all
/// three.
pub fn catch_early_signals() {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};

    for signal in [SIGTERM, SIGINT] {
        let _ = signal_hook::flag::register(signal, EARLY_STOP.clone());
    }
    let ignored = Arc::new(AtomicBool::new(false));
    let _ = signal_hook::flag::register(SIGHUP, ignored);
}

/// Runs the daemon until SIGTERM or SIGINT, then drains and returns.
///
/// Must run inside a tokio runtime. Not meant to be cancelled: it owns the
/// process's pipes.
pub async fn run(path: &Path) -> Result<(), StartError> {
    let mut signals = Signals::install().map_err(StartError::Signals)?;
    if EARLY_STOP.load(Ordering::Relaxed) {
        tracing::info!("stop requested during start-up");
        return Ok(());
    }
    let mut files = Files::new(path).map_err(StartError::Watch)?;
    let config = load(path)?;
    files.follow(&config);
    let services = Services::from(&config.daemon);
    let mut supervisor = Supervisor::start(config).await?;
    let _services = services.start(supervisor.board()).await?;

    crate::protocol::ephemeral::refill_in_background();
    let status = status_line(&supervisor);
    tracing::info!("ready: {status}");
    systemd::ready(&status);

    // Serve until told to stop; SIGHUP or a changed file reloads.
    loop {
        let retry = supervisor.next_retry();
        tokio::select! {
            _ = signals.term.recv() => break,
            _ = signals.int.recv() => break,
            _ = signals.hup.recv() => {
                tracing::info!("SIGHUP: reloading");
                reload(&mut supervisor, &mut files).await;
            }
            _ = files.watcher.changed() => {
                if files.changed() {
                    tracing::info!("config or key file changed: reloading");
                    reload(&mut supervisor, &mut files).await;
                }
            }
            _ = sleep_until(retry), if retry.is_some() => {
                supervisor.retry_failed().await;
            }
        }
    }

    // Listeners close at once; connections get the drain timeout. A
    // second signal cuts the drain short.
    tracing::info!("stopping: listeners closed, draining connections");
    systemd::stopping();
    tokio::select! {
        _ = supervisor.shutdown() => tracing::info!("stopped"),
        _ = signals.stop() => tracing::warn!("second signal; exiting now"),
    }
    Ok(())
}

/// The files a reload depends on: the config and the key files of the
/// running config, with the fingerprint of what was last loaded.
struct Files {
    config: PathBuf,
    keys: Vec<PathBuf>,
    loaded: Fingerprint,
    watcher: FileWatcher,
}

impl Files {
    fn new(config: &Path) -> notify::Result<Files> {
        Ok(Files {
            config: config.to_path_buf(),
            keys: Vec::new(),
            loaded: Fingerprint::of([config]),
            watcher: FileWatcher::new()?,
        })
    }

    /// Watches the key files of `config` from now on.
    fn follow(&mut self, config: &Config) {
        self.keys = config
            .pipes
            .iter()
            .flat_map(|p| p.keys.iter().map(|k| k.path.clone()))
            .collect();
        self.keys.sort();
        self.keys.dedup();
        let paths: Vec<PathBuf> = self.paths().map(Path::to_path_buf).collect();
        self.watcher.watch(paths.iter().map(PathBuf::as_path));
        self.loaded = self.fingerprint();
    }

    /// Whether the files differ from what was last loaded or tried.
    fn changed(&mut self) -> bool {
        let now = self.fingerprint();
        let changed = now != self.loaded;
        self.loaded = now;
        changed
    }

    fn fingerprint(&self) -> Fingerprint {
        Fingerprint::of(self.paths())
    }

    fn paths(&self) -> impl Iterator<Item = &Path> {
        std::iter::once(self.config.as_path())
            .chain(self.keys.iter().map(PathBuf::as_path))
    }
}

/// The daemon's own listeners beside the pipes: the control socket and
/// the metrics endpoint. They are set up at start; a reload that changes
/// their addresses is logged and takes effect at the next restart.
struct Services {
    metrics: Option<crate::address::Address>,
    control_socket: Option<PathBuf>,
}

/// The running services; dropping it stops them.
struct RunningServices {
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for RunningServices {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

impl Services {
    fn from(daemon: &config::DaemonConfig) -> Services {
        Services {
            metrics: daemon.metrics.clone(),
            control_socket: daemon.control_socket.clone(),
        }
    }

    /// Binds and starts them. A metrics address that cannot be bound
    /// fails the start, since it was asked for; a control socket that
    /// cannot be bound (no /run/spipes when run by hand) is only a warning.
    async fn start(
        self,
        board: &std::sync::Arc<crate::status::Board>,
    ) -> Result<RunningServices, StartError> {
        let mut tasks = Vec::new();
        if let Some(address) = self.metrics {
            let listener = bind_metrics(&address)
                .await
                .map_err(|error| StartError::Metrics { address, error })?;
            tasks.push(tokio::spawn(crate::metrics::serve(
                listener,
                board.clone(),
            )));
        }

        if let Some(path) = self.control_socket {
            match crate::control::ControlSocket::bind(&path).await {
                Ok(socket) => {
                    tasks.push(tokio::spawn(socket.serve(board.clone())))
                }
                Err(e) => tracing::warn!(
                    path = %path.display(), error = %e,
                    "cannot bind the control socket; spipes status will not \
                     reach this daemon"
                ),
            }
        }
        Ok(RunningServices { tasks })
    }
}

/// Binds the metrics address.
async fn bind_metrics(
    address: &crate::address::Address,
) -> std::io::Result<tokio::net::TcpListener> {
    let crate::address::Address::Tcp { host, port } = address else {
        return Err(std::io::Error::other("metrics needs a TCP address"));
    };
    let addrs = crate::net::resolve(host, *port).await?;
    tokio::net::TcpListener::bind(&addrs[..]).await
}

/// Reads and validates the config, logging its warnings.
fn load(path: &Path) -> Result<Config, config::ConfigError> {
    let (config, warnings) = config::load(path)?;
    for w in warnings {
        tracing::warn!("{}", w.0);
    }
    Ok(config)
}

/// Loads the file again and applies it; a bad file changes nothing.
async fn reload(supervisor: &mut Supervisor, files: &mut Files) {
    systemd::reloading();

    // Whatever triggered this reload, the files as they are now count as
    // seen, so the watcher does not load the same content a second time.
    files.loaded = files.fingerprint();
    let rejected = match load(&files.config) {
        Ok(config) => {
            files.follow(&config);
            if supervisor.daemon_services_differ(&config.daemon) {
                tracing::warn!(
                    "metrics and control_socket changes take effect at the \
                     next restart"
                );
            }
            let summary = supervisor.apply(config).await;
            tracing::info!("reloaded: {summary}");
            false
        }
        Err(e) => {
            supervisor.board().count_reload(false);
            tracing::error!("reload rejected, the running config is kept: {e}");
            true
        }
    };

    // `systemctl reload` cannot fail a rejected reload, so the status
    // line (`systemctl status`) says so until the next good one.
    let mut status = status_line(supervisor);
    if rejected {
        status.push_str("; last reload rejected, see the log");
    }
    systemd::ready(&status);
}

/// The one-line summary for systemd's status.
fn status_line(supervisor: &Supervisor) -> String {
    use crate::status::State;

    let snapshot = supervisor.board().snapshot();
    let count =
        |state| snapshot.pipes.iter().filter(|p| p.state == state).count();
    let active: u64 = snapshot.pipes.iter().map(|p| p.active).sum();
    format!(
        "{} pipes running, {} failed, {} draining, {active} connections",
        count(State::Running),
        count(State::Failed),
        count(State::Draining),
    )
}

/// Sleeps until `at`; never returns for `None`.
async fn sleep_until(at: Option<std::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}
