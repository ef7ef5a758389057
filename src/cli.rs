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
    /// Connect standard input and output to an encrypted target, as
    /// spiped's `spipe` does (for `ssh -o ProxyCommand`).
    Connect {
        /// The decrypting end to dial: host:port, [v6]:port or a path.
        #[allow(rustdoc::broken_intra_doc_links)] // "[v6]" is --help text
        #[arg(short, long)]
        target: String,
        /// The key file.
        #[arg(short, long)]
        key: PathBuf,
        /// Forward secrecy: on, off (spiped -f) or required (spiped -g).
        #[arg(long, value_enum, default_value_t = FsArg::On)]
        forward_secrecy: FsArg,
        /// Seconds allowed for dialling plus handshake.
        #[arg(long, default_value_t = 5.0)]
        timeout: f64,
    },
    /// Print TOML pipes for spiped command lines (one per line, or the
    /// ExecStart= lines of unit files) read from files or standard input.
    Import {
        /// Files to read; standard input when none.
        files: Vec<PathBuf>,
    },
    /// Print a shell completion script.
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff).
    #[command(hide = true)]
    Man,
    /// Write a new key file of 32 random bytes, mode 0600.
    Keygen {
        /// Where to write the key.
        path: PathBuf,
        /// Overwrite an existing file.
        #[arg(long)]
        force: bool,
    },
}

/// `--forward-secrecy` values, as in the config file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum FsArg {
    /// The full exchange (spiped's default).
    On,
    /// No exchange (spiped -f).
    Off,
    /// Refuse a peer with it off (spiped -g).
    Required,
}

impl From<FsArg> for crate::protocol::ForwardSecrecy {
    fn from(arg: FsArg) -> crate::protocol::ForwardSecrecy {
        use crate::protocol::ForwardSecrecy;
        match arg {
            FsArg::On => ForwardSecrecy::On,
            FsArg::Off => ForwardSecrecy::Off,
            FsArg::Required => ForwardSecrecy::Required,
        }
    }
}
