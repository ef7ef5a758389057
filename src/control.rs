//! The control socket: a Unix socket where the daemon hands out a JSON
//! [`Snapshot`] to whoever connects, and the `spipes status` client that
//! reads it and prints a table.
//!
//! Access is the socket file's: mode 0660, so only root, the daemon's user
//! and members of its group (primary or supplementary, as the kernel checks
//! them on connect) can ask. The snapshot holds names, addresses and
//! counters, never key material.

use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::io::AsyncWriteExt;
use tokio::net::UnixListener;

use crate::net::{self, Listener, SocketAccess};
use crate::status::{Board, PipeSnapshot, Snapshot};

/// The socket file's mode: the daemon's user and group.
const SOCKET_MODE: u32 = 0o660;

/// The control socket, bound and ready to serve.
pub struct ControlSocket {
    listener: UnixListener,
    path: PathBuf,
}

impl ControlSocket {
    /// Binds the socket at `path`, creating its folder (mode 0755) if
    /// needed; a leftover socket file is replaced.
    ///
    /// Must run inside a tokio runtime.
    pub async fn bind(path: &Path) -> io::Result<ControlSocket> {
        if let Some(folder) = path.parent() {
            std::fs::create_dir_all(folder)?;
        }
        let access = SocketAccess {
            mode: Some(SOCKET_MODE),
            group: None,
        };
        let Listener::Unix { listener, .. } =
            net::bind_unix(path, access).await?
        else {
            return Err(io::Error::other("bound a Unix path, got TCP"));
        };
        Ok(ControlSocket {
            listener,
            path: path.to_path_buf(),
        })
    }

    /// Answers every connection with a snapshot until dropped.
    ///
    /// Cancel-safe: dropping it closes the socket (the file is removed by
    /// the `Drop` of [`ControlSocket`]).
    pub async fn serve(self, board: Arc<Board>) {
        loop {
            let stream = match self.listener.accept().await {
                Ok((stream, _)) => stream,
                Err(e) => {
                    tracing::debug!(error = %e, "control accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(100))
                        .await;
                    continue;
                }
            };
            let json = serde_json::to_vec(&board.snapshot());
            tokio::spawn(async move {
                let mut stream = stream;
                if let Ok(json) = json {
                    let _ = stream.write_all(&json).await;
                }
                let _ = stream.shutdown().await;
            });
        }
    }
}

impl Drop for ControlSocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Why `spipes status` could not get an answer.
#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    /// Nothing answers at the socket: the daemon is not running.
    #[error("spipes is not running (no answer at {path}: {error})")]
    NotRunning {
        /// The socket tried.
        path: PathBuf,
        /// What connecting said.
        error: io::Error,
    },
    /// The daemon answered something that is not a snapshot.
    #[error("unexpected answer from {path}: {error}")]
    BadAnswer {
        /// The socket asked.
        path: PathBuf,
        /// Why it did not parse.
        error: String,
    },
}

/// Asks the daemon at `path` for a snapshot.
pub fn fetch(path: &Path) -> Result<Snapshot, StatusError> {
    let not_running = |error| StatusError::NotRunning {
        path: path.to_path_buf(),
        error,
    };
    let mut stream =
        std::os::unix::net::UnixStream::connect(path).map_err(not_running)?;
    let mut json = Vec::new();
    stream.read_to_end(&mut json).map_err(not_running)?;

    serde_json::from_slice(&json).map_err(|e| StatusError::BadAnswer {
        path: path.to_path_buf(),
        error: e.to_string(),
    })
}

/// Formats a snapshot as the table `spipes status` prints.
pub fn table(snapshot: &Snapshot) -> String {
    let header = [
        "PIPE",
        "STATE",
        "MODE",
        "SOURCE -> TARGET",
        "ACTIVE",
        "TOTAL",
        "BYTES UP",
        "BYTES DOWN",
        "FAILURES",
        "LAST ERROR",
    ];
    let rows: Vec<[String; 10]> = snapshot.pipes.iter().map(row).collect();

    // Each column as wide as its widest cell; the last is not padded.
    let mut widths = header.map(str::len);
    for r in &rows {
        for (w, cell) in widths.iter_mut().zip(r) {
            *w = (*w).max(cell.len());
        }
    }
    let mut out = String::new();
    let header = header.map(str::to_string);
    for r in std::iter::once(&header).chain(&rows) {
        let cells: Vec<String> = r
            .iter()
            .zip(widths)
            .map(|(cell, w)| format!("{cell:w$}"))
            .collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    out.push_str(&format!(
        "reloads: {} applied, {} rejected\n",
        snapshot.reloads_ok, snapshot.reloads_failed
    ));
    out
}

fn row(p: &PipeSnapshot) -> [String; 10] {
    [
        p.name.clone(),
        p.state.as_str().to_string(),
        p.mode.clone(),
        format!("{} -> {}", p.source, p.target),
        p.active.to_string(),
        p.total.to_string(),
        p.bytes_up.to_string(),
        p.bytes_down.to_string(),
        p.failures().to_string(),
        p.last_error.clone().unwrap_or_else(|| "-".to_string()),
    ]
}
