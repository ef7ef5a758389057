//! One connection: dial, handshake, then the two directions of the data
//! path, each ending on its own so that half-close works.
//!
//! An `encrypt` pipe accepted plaintext: it dials the target first and runs
//! the client handshake over the new socket. A `decrypt` pipe accepted an
//! encrypted connection: it runs the server handshake and, by default, dials
//! only once the client proved the key, so that scanners never reach the
//! backend.

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use tracing::Instrument;

use crate::config::{DialTiming, Mode};
use crate::net::Stream;
use crate::pipe::{PipeSettings, PipeStats};
use crate::protocol::{
    HandshakeError, SessionKeys, client_handshake_start, server_handshake_start,
};
use crate::relay::{Limits, Relay, RelayError};

/// Why a connection ended, recorded on its span and counted per pipe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// Both directions reached a clean end of stream.
    Finished,
    /// The target could not be dialled.
    DialFailed,
    /// Dialling plus handshake took longer than the pipe's `timeout`.
    Timeout,
    /// The handshake failed; the peer is to blame.
    Handshake(HandshakeFailure),
    /// A packet failed its MAC or length check.
    BadPacket,
    /// The encrypted stream ended in the middle of a packet.
    Truncated,
    /// A socket error (reset, broken pipe) after the handshake.
    Reset,
    /// No byte moved either way for `idle_timeout`.
    Idle,
    /// One direction had ended and the other was quiet for
    /// `half_close_timeout`.
    HalfClosed,
    /// The pipe was removed or the daemon stopped, and the drain timeout
    /// ran out.
    Drained,
}

/// The handshake failures an operator needs to tell apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HandshakeFailure {
    /// The MAC on the peer's DH value was wrong: wrong key or not spiped.
    BadMac,
    /// The peer's DH value was out of range.
    BadValue,
    /// Forward secrecy was required and the peer had it off.
    ForwardSecrecyRefused,
    /// The peer closed or reset the connection mid-handshake.
    PeerClosed,
}

impl CloseReason {
    /// A short lowercase word for logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            CloseReason::Finished => "finished",
            CloseReason::DialFailed => "dial failed",
            CloseReason::Timeout => "timeout",
            CloseReason::Handshake(h) => h.as_str(),
            CloseReason::BadPacket => "bad packet",
            CloseReason::Truncated => "truncated",
            CloseReason::Reset => "reset",
            CloseReason::Idle => "idle timeout",
            CloseReason::HalfClosed => "half-close timeout",
            CloseReason::Drained => "drain timeout",
        }
    }
}

impl HandshakeFailure {
    /// Every failure, in [`HandshakeFailure::index`] order.
    pub const ALL: [HandshakeFailure; 4] = [
        HandshakeFailure::BadMac,
        HandshakeFailure::BadValue,
        HandshakeFailure::ForwardSecrecyRefused,
        HandshakeFailure::PeerClosed,
    ];

    /// The failure's position in [`HandshakeFailure::ALL`], for arrays of
    /// counters.
    pub fn index(self) -> usize {
        self as usize
    }

    /// A snake_case label for metrics.
    pub fn label(self) -> &'static str {
        match self {
            HandshakeFailure::BadMac => "bad_mac",
            HandshakeFailure::BadValue => "bad_value",
            HandshakeFailure::ForwardSecrecyRefused => {
                "forward_secrecy_refused"
            }
            HandshakeFailure::PeerClosed => "peer_closed",
        }
    }

    /// A short lowercase word for logs.
    pub fn as_str(self) -> &'static str {
        match self {
            HandshakeFailure::BadMac => "bad mac",
            HandshakeFailure::BadValue => "bad dh value",
            HandshakeFailure::ForwardSecrecyRefused => {
                "forward secrecy refused"
            }
            HandshakeFailure::PeerClosed => "peer closed during handshake",
        }
    }

    fn of(e: &HandshakeError) -> HandshakeFailure {
        match e {
            HandshakeError::BadMac => HandshakeFailure::BadMac,
            HandshakeError::BadValue => HandshakeFailure::BadValue,
            HandshakeError::ForwardSecrecyRefused => {
                HandshakeFailure::ForwardSecrecyRefused
            }
            HandshakeError::Io(_) | HandshakeError::Eof => {
                HandshakeFailure::PeerClosed
            }
        }
    }
}

/// What went wrong before the data path started.
enum SetupError {
    Dial(io::Error),
    Handshake(HandshakeError),
    Timeout,
}

/// The byte counts of one connection, plaintext, for the close event.
#[derive(Default)]
struct Counts {
    /// From the source side towards the target side.
    up: AtomicU64,
    /// From the target side back to the source side.
    down: AtomicU64,
}

/// Serves one accepted connection to its end, under a span that carries
/// the pipe, the connection id and the peer. The span is at info level so
/// that its fields reach the warnings logged inside it; it logs nothing by
/// itself.
///
/// Cancel-safe in the sense that matters: dropping the future closes both
/// sockets, which is how a drain timeout cuts a connection.
pub async fn serve(
    accepted: Stream,
    peer: String,
    id: u64,
    settings: Arc<PipeSettings>,
    stats: Arc<PipeStats>,
) -> CloseReason {
    let span = tracing::info_span!(
        "connection",
        pipe = %settings.config.name,
        id,
        peer = %peer,
    );
    serve_inner(accepted, settings, stats)
        .instrument(span)
        .await
}

async fn serve_inner(
    accepted: Stream,
    settings: Arc<PipeSettings>,
    stats: Arc<PipeStats>,
) -> CloseReason {
    let started = Instant::now();
    tracing::debug!("accepted");

    let counts = Counts::default();
    let reason = run(accepted, &settings, &stats, &counts).await;

    // Count and log the outcome; what needs an operator is warned, with a
    // rate limit since a scanner or a dead backend can cause many.
    stats.record_close(reason);
    let up = counts.up.load(Ordering::Relaxed);
    let down = counts.down.load(Ordering::Relaxed);
    tracing::debug!(
        reason = reason.as_str(),
        bytes_up = up,
        bytes_down = down,
        ms = started.elapsed().as_millis() as u64,
        "closed"
    );
    reason
}

/// Sets the connection up, then relays until both directions end.
async fn run(
    mut accepted: Stream,
    settings: &PipeSettings,
    stats: &PipeStats,
    counts: &Counts,
) -> CloseReason {
    let config = &settings.config;
    if let Err(e) = accepted.configure(config.keepalive) {
        tracing::debug!(error = %e, "setting socket options failed");
        return CloseReason::Reset;
    }

    // Dial plus handshake, bounded by the pipe's timeout. Boxed, and
    // matched without a local, so that the handshake's state is freed
    // once it is done instead of staying in this connection's future for
    // as long as the connection lives.
    let (target, keys) = {
        let setup = match config.mode {
            Mode::Encrypt => Box::pin(setup_encrypt(settings)).await,
            Mode::Decrypt => {
                Box::pin(setup_decrypt(&mut accepted, settings, stats)).await
            }
        };
        match setup {
            Ok(v) => v,
            Err(e) => return settings.setup_failed(e, stats),
        }
    };

    // A PROXY header names the accepted client, so only encrypt pipes
    // (whose accepted side is the plaintext client) write one.
    let preamble = match (config.mode, config.proxy_protocol) {
        (Mode::Encrypt, Some(kind)) => {
            crate::proxy::header(kind, accepted.addresses())
        }
        _ => Vec::new(),
    };

    // The encrypted side is the target for encrypt pipes and the accepted
    // socket for decrypt pipes; the plaintext side is the other one.
    let (plain, wire) = match config.mode {
        Mode::Encrypt => (accepted, target),
        Mode::Decrypt => (target, accepted),
    };
    // Seal what the plaintext side sends; which way that is depends on
    // the role.
    let (sealed, opened) = match config.mode {
        Mode::Encrypt => (
            [&counts.up, &stats.bytes_up],
            [&counts.down, &stats.bytes_down],
        ),
        Mode::Decrypt => (
            [&counts.down, &stats.bytes_down],
            [&counts.up, &stats.bytes_up],
        ),
    };
    let limits = Limits {
        idle: config.idle_timeout,
        half_close: config.half_close_timeout,
    };
    let relay = Relay {
        plain,
        wire,
        keys,
        preamble,
    };
    match relay.run(sealed, opened, limits).await {
        Ok(()) => CloseReason::Finished,
        Err(RelayError::Io(e)) => {
            tracing::debug!(error = %e, "connection reset");
            CloseReason::Reset
        }
        Err(RelayError::Packet(e)) => {
            tracing::debug!(error = %e, "bad packet");
            CloseReason::BadPacket
        }
        Err(RelayError::Truncated) => CloseReason::Truncated,
        Err(RelayError::Idle) => CloseReason::Idle,
        Err(RelayError::HalfClosed) => CloseReason::HalfClosed,
    }
}

/// Client role: dial the target, then handshake over it.
async fn setup_encrypt(
    settings: &PipeSettings,
) -> Result<(Stream, SessionKeys), SetupError> {
    let config = &settings.config;
    let work = async {
        let mut target = settings.dial().await.map_err(SetupError::Dial)?;
        let key = &settings.keys[0];
        let fs = config.forward_secrecy;
        let proven = client_handshake_start(&mut target, key, fs)
            .await
            .map_err(SetupError::Handshake)?;

        // The permit covers the exponentiation only, not network waits.
        let _permit = settings.handshake_permit().await;
        Ok((target, proven.finish()))
    };
    tokio::time::timeout(config.timeout, work)
        .await
        .unwrap_or(Err(SetupError::Timeout))
}

/// Server role: handshake on the accepted socket and dial the target,
/// after the client's proof or, with `dial = "early"`, alongside it.
async fn setup_decrypt(
    accepted: &mut Stream,
    settings: &PipeSettings,
    stats: &PipeStats,
) -> Result<(Stream, SessionKeys), SetupError> {
    let config = &settings.config;
    let fs = config.forward_secrecy;
    let work = async {
        let keys = &settings.keys;
        let (target, (session, index)) = match config.dial {
            DialTiming::AfterProof => {
                let proven = server_handshake_start(accepted, keys, fs)
                    .await
                    .map_err(SetupError::Handshake)?;
                let index = proven.key_index();

                // The dial's connect goes out first, then the shared
                // value is computed while the target answers.
                let dial =
                    async { settings.dial().await.map_err(SetupError::Dial) };
                let finish = async {
                    let _permit = settings.handshake_permit().await;
                    proven.finish(accepted).await.map_err(SetupError::Handshake)
                };
                let (target, session) = tokio::try_join!(dial, finish)?;
                (target, (session, index))
            }
            DialTiming::Early => {
                let handshake = async {
                    let proven = server_handshake_start(accepted, keys, fs)
                        .await
                        .map_err(SetupError::Handshake)?;
                    let index = proven.key_index();
                    let _permit = settings.handshake_permit().await;
                    let session = proven
                        .finish(accepted)
                        .await
                        .map_err(SetupError::Handshake)?;
                    Ok((session, index))
                };
                let dial =
                    async { settings.dial().await.map_err(SetupError::Dial) };
                tokio::try_join!(dial, handshake)?
            }
        };
        stats.count_key_use(&config.keys[index].path);
        Ok((target, session))
    };
    tokio::time::timeout(config.timeout, work)
        .await
        .unwrap_or(Err(SetupError::Timeout))
}

impl PipeSettings {
    /// Dials this pipe's target with its socket options.
    async fn dial(&self) -> io::Result<Stream> {
        let config = &self.config;
        self.target.dial(config.bind, config.keepalive).await
    }

    /// Logs and classifies a failed setup.
    fn setup_failed(&self, e: SetupError, stats: &PipeStats) -> CloseReason {
        match e {
            SetupError::Dial(e) => {
                let target = &self.config.target;
                stats.set_last_error(format!("dial {target}: {e}"));
                stats.warn_limited("dial", || {
                    tracing::warn!(
                        pipe = %self.config.name,
                        target = %self.config.target,
                        error = %e,
                        "cannot reach the target"
                    )
                });
                CloseReason::DialFailed
            }
            SetupError::Handshake(e) => {
                let failure = HandshakeFailure::of(&e);
                if failure != HandshakeFailure::PeerClosed {
                    stats.set_last_error(format!("handshake: {e}"));
                    stats.warn_limited(failure.as_str(), || {
                        tracing::warn!(
                            pipe = %self.config.name,
                            error = %e,
                            "handshake failed"
                        )
                    });
                }
                tracing::debug!(error = %e, "handshake failed");
                CloseReason::Handshake(failure)
            }
            SetupError::Timeout => {
                stats.set_last_error("dial plus handshake timed out".into());
                stats.warn_limited("timeout", || {
                    tracing::warn!(
                        pipe = %self.config.name,
                        timeout_s = self.config.timeout.as_secs_f64(),
                        "dial plus handshake timed out"
                    )
                });
                CloseReason::Timeout
            }
        }
    }
}
