//! The command line, as clap definitions, so that the binary, the man page
//! and the shell completions all come from one place.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// The default config file.
pub const DEFAULT_CONFIG: &str = "/etc/spipes.toml";

/// spipes: many spiped-compatible encrypted pipes from one TOML file.
#[derive(Debug, Parser)]
#[command(name = "spipes", version, about, long_about = None)]
pub struct Cli {
    /// Log filter (error, warn, info, debug, trace, or a tracing
    /// directive); overrides RUST_LOG.
    #[arg(long, global = true, value_name = "FILTER")]
    pub log_level: Option<String>,

    /// Shape of log lines: text (journal-friendly under systemd) or json.
    #[arg(long, global = true, value_enum, default_value_t)]
    pub log_format: crate::logging::LogFormat,

    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run every pipe in the foreground until SIGTERM or SIGINT.
    Run {
        /// The config file.
        #[arg(short, long, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
    },
    /// Validate the config and every key file it names, then list the
    /// pipes.
    Check {
        /// The config file.
        #[arg(short, long, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
    },
    /// Show every pipe of the running daemon: state, addresses,
    /// connections, bytes, failures.
    Status {
        /// The config file, to find the control socket.
        #[arg(short, long, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
        /// The control socket, overriding the config's.
        #[arg(long, value_name = "PATH")]
        socket: Option<PathBuf>,
    },
    /// Write a new key file of 32 random bytes, mode 0600.
    Keygen {
        /// Where to write the key.
        path: PathBuf,
        /// Overwrite an existing file.
        #[arg(long)]
        force: bool,
    },
}
