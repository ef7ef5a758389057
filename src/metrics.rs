//! The Prometheus endpoint (`[daemon] metrics`): the board's snapshot in
//! the text exposition format, encoded by `prometheus-client`.
//!
//! The HTTP side is the least a scraper needs: one `GET /metrics` per
//! connection, answered and closed. Anything else gets a 404; a client
//! that sends nothing is dropped after a few seconds.

use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use crate::status::{Board, Snapshot, State};

/// The longest request head read before answering.
const MAX_REQUEST: usize = 8 * 1024;
/// How long a scraper may take to send its request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// Labels of per-pipe series.
type Labels = Vec<(&'static str, String)>;

/// Serves the endpoint on `listener` until the task is dropped.
///
/// Cancel-safe: dropping it closes the listener.
pub async fn serve(listener: TcpListener, board: Arc<Board>) {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(v) => v,
            Err(e) => {
                tracing::debug!(error = %e, "metrics accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let board = board.clone();
        tokio::spawn(async move {
            if let Err(e) = answer(stream, &board).await {
                tracing::debug!(%peer, error = %e, "metrics request failed");
            }
        });
    }
}

/// Reads one request and answers it.
async fn answer(
    mut stream: tokio::net::TcpStream,
    board: &Board,
) -> std::io::Result<()> {
    let head = read_head(&mut stream).await?;
    let wanted = head.starts_with(b"GET /metrics ")
        || head.starts_with(b"GET /metrics?")
        || head.starts_with(b"GET / ");

    let (status, body) = if wanted {
        ("200 OK", render(&board.snapshot()))
    } else {
        ("404 Not Found", "not found; try /metrics\n".to_string())
    };
    let response = format!(
        "HTTP/1.1 {status}\r\n\
         Content-Type: application/openmetrics-text; version=1.0.0; \
         charset=utf-8\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(response.as_bytes()).await?;
    stream.shutdown().await
}

/// Reads up to the blank line that ends an HTTP request head.
async fn read_head(
    stream: &mut tokio::net::TcpStream,
) -> std::io::Result<Vec<u8>> {
    let mut head = Vec::new();
    let read = async {
        let mut buf = [0u8; 1024];
        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = stream.read(&mut buf).await?;
            if n == 0 || head.len() + n > MAX_REQUEST {
                break;
            }
            head.extend_from_slice(&buf[..n]);
        }
        Ok::<_, std::io::Error>(())
    };
    match tokio::time::timeout(REQUEST_TIMEOUT, read).await {
        Ok(r) => r.map(|()| head),
        Err(_) => Err(std::io::ErrorKind::TimedOut.into()),
    }
}

/// Encodes a snapshot in the exposition format.
pub fn render(snapshot: &Snapshot) -> String {
    let mut registry = Registry::with_prefix("spipes");
    register_pipes(&mut registry, snapshot);
    register_process(&mut registry, snapshot);

    let mut out = String::new();
    // Writing into a String cannot fail.
    let _ = encode(&mut out, &registry);
    out
}

/// Per-pipe series, labelled by pipe name.
fn register_pipes(registry: &mut Registry, snapshot: &Snapshot) {
    let active = Family::<Labels, Gauge>::default();
    let total = Family::<Labels, Counter>::default();
    let bytes = Family::<Labels, Counter>::default();
    let failures = Family::<Labels, Counter>::default();
    let dials = Family::<Labels, Counter>::default();
    let limits = Family::<Labels, Counter>::default();
    let keys = Family::<Labels, Counter>::default();

    for pipe in &snapshot.pipes {
        let name = || vec![("pipe", pipe.name.clone())];
        let with = |k: &'static str, v: &str| {
            let mut l = name();
            l.push((k, v.to_string()));
            l
        };
        active.get_or_create(&name()).set(pipe.active as i64);
        total.get_or_create(&name()).inc_by(pipe.total);
        bytes
            .get_or_create(&with("direction", "up"))
            .inc_by(pipe.bytes_up);
        bytes
            .get_or_create(&with("direction", "down"))
            .inc_by(pipe.bytes_down);
        for (reason, n) in &pipe.handshake_failures {
            failures.get_or_create(&with("reason", reason)).inc_by(*n);
        }
        dials.get_or_create(&name()).inc_by(pipe.dial_failures);
        limits.get_or_create(&name()).inc_by(pipe.limit_hits);
        for (key, n) in &pipe.key_uses {
            keys.get_or_create(&with("key", key)).inc_by(*n);
        }
    }

    registry.register("active_connections", "Connections open now", active);
    registry.register("connections", "Connections accepted", total);
    registry.register("bytes", "Plaintext bytes moved", bytes);
    registry.register(
        "handshake_failures",
        "Failed handshakes by reason",
        failures,
    );
    registry.register("dial_failures", "Targets not reached", dials);
    registry.register("limit_hits", "Times max_connections was hit", limits);
    registry.register("key_handshakes", "Handshakes per key file", keys);
}

/// Process-wide series.
fn register_process(registry: &mut Registry, snapshot: &Snapshot) {
    let reloads = Family::<Labels, Counter>::default();
    reloads
        .get_or_create(&vec![("result", "ok".to_string())])
        .inc_by(snapshot.reloads_ok);
    reloads
        .get_or_create(&vec![("result", "rejected".to_string())])
        .inc_by(snapshot.reloads_failed);
    registry.register("reloads", "Config loads by result", reloads);

    let last = Gauge::<i64>::default();
    last.set(snapshot.last_reload_ok_unix as i64);
    registry.register(
        "last_reload_success_timestamp_seconds",
        "When the config was last loaded successfully",
        last,
    );

    let states = Family::<Labels, Gauge>::default();
    for state in [State::Running, State::Failed, State::Draining] {
        let n = snapshot.pipes.iter().filter(|p| p.state == state).count();
        states
            .get_or_create(&vec![("state", state.as_str().to_string())])
            .set(n as i64);
    }
    registry.register("pipes", "Pipes by state", states);
}
