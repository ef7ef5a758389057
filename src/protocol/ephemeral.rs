//! A small stock of fresh Diffie-Hellman key pairs, made ahead of need on
//! a blocking thread, so that a handshake's critical path does one
//! exponentiation (the shared value) instead of two.
//!
//! Each pair is taken out of the stock and used for exactly one
//! handshake, so forward secrecy is as without the stock; the private
//! values wait in memory only until then, and are wiped when dropped like
//! any [`PrivateValue`].

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use super::dh::{PrivateValue, Y_LEN};

/// Pairs kept ready: enough for a burst of handshakes on two cores.
const STOCK_SIZE: usize = 8;

/// The pairs ready for use.
static STOCK: Mutex<Vec<KeyPair>> = Mutex::new(Vec::new());

/// Set while a refill runs, so that only one does.
static REFILLING: AtomicBool = AtomicBool::new(false);

/// A private value and its public `y = 2^x mod p`.
pub struct KeyPair {
    /// The secret exponent's random part.
    pub private: PrivateValue,
    /// What the handshake sends.
    pub y: [u8; Y_LEN],
}

impl KeyPair {
    /// Draws a private value and computes its public value, now.
    pub fn generate() -> Result<KeyPair, getrandom::Error> {
        let private = PrivateValue::generate()?;
        let y = private.public_value();
        Ok(KeyPair { private, y })
    }
}

/// A key pair for one handshake: from the stock when it has one, else
/// made now. Either way a refill starts in the background when a tokio
/// runtime is running.
pub fn take() -> Result<KeyPair, getrandom::Error> {
    let ready = lock().pop();
    refill_in_background();
    match ready {
        Some(pair) => Ok(pair),
        None => KeyPair::generate(),
    }
}

/// Fills the stock in the background, e.g. at start-up so the first
/// handshakes find it full. Does nothing outside a tokio runtime.
pub fn refill_in_background() {
    if REFILLING.swap(true, Ordering::AcqRel) {
        return;
    }
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        REFILLING.store(false, Ordering::Release);
        return;
    };
    runtime.spawn_blocking(|| {
        while lock().len() < STOCK_SIZE {
            // A failing random source is reported by the handshake that
            // next draws inline; the stock just stops growing.
            let Ok(pair) = KeyPair::generate() else {
                break;
            };
            lock().push(pair);
        }
        REFILLING.store(false, Ordering::Release);
    });
}

/// The stock, even if a thread panicked while holding it: it holds whole
/// pairs only.
fn lock() -> std::sync::MutexGuard<'static, Vec<KeyPair>> {
    STOCK.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn pairs_are_never_handed_out_twice() {
        let mut seen = std::collections::HashSet::new();
        for _ in 0..3 * STOCK_SIZE {
            let pair = take().expect("random source");
            assert_eq!(pair.y, pair.private.public_value());
            assert!(seen.insert(pair.y.to_vec()), "a pair came back");
        }
    }
}
