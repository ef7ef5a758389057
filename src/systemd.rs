//! The systemd notification protocol: readiness, reloads, shutdown and a
//! one-line status, sent only when `NOTIFY_SOCKET` is set.
//!
//! A failed notification is logged at debug and otherwise ignored: the
//! daemon's work does not depend on its supervisor listening.

use sd_notify::NotifyState;

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

fn send(states: &[NotifyState<'_>]) {
    if let Err(e) = sd_notify::notify(states) {
        tracing::debug!(error = %e, "systemd notification failed");
    }
}
