//! spipes: one daemon for many spiped-compatible encrypted pipes.
//!
//! The crate is a library so that the binary, the integration tests, the
//! benchmarks and the fuzz targets all exercise the same code. The modules
//! follow spiped's own concepts, plus the supervisor that spiped lacks.

// Deny rather than forbid: four functions of `protocol::sha_ni` allow
// `unsafe`, for SIMD loads and stores and for the call into code built for
// the SHA extensions, and say there why each use is sound.
#![deny(unsafe_code)]
#![warn(clippy::undocumented_unsafe_blocks)]
#![warn(missing_docs)]

pub mod address;
pub mod cli;
pub mod client;
pub mod commands;
pub mod config;
pub mod connection;
pub mod control;
pub mod daemon;
pub mod import;
pub mod keygen;
pub mod logging;
pub mod metrics;
pub mod net;
pub mod pipe;
pub mod protocol;
pub mod proxy;
pub mod relay;
pub mod reload;
pub mod status;
pub mod supervisor;
pub mod systemd;
