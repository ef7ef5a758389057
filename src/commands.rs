//! The subcommands behind `main`: each returns an error for the binary to
//! print, and the binary maps it to exit code 1.

use std::path::Path;

use anyhow::Context;

use crate::config::{self, Mode};

/// `spipes run`: the daemon, on a multi-threaded runtime.
pub fn run(path: &Path) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Runtime::new()
        .context("cannot start the async runtime")?;
    runtime.block_on(crate::daemon::run(path))?;
    Ok(())
}

/// `spipes check`: load exactly as `run` does, print one line per pipe.
pub fn check(path: &Path) -> anyhow::Result<()> {
    let (config, warnings) = config::load(path)?;
    for w in &warnings {
        eprintln!("warning: {}", w.0);
    }

    let width = config.pipes.iter().map(|p| p.name.len()).max();
    for pipe in &config.pipes {
        let mode = match pipe.mode {
            Mode::Encrypt => "encrypt",
            Mode::Decrypt => "decrypt",
        };
        println!(
            "{:width$}  {mode}  {} -> {}",
            pipe.name,
            pipe.source,
            pipe.target,
            width = width.unwrap_or(0)
        );
    }
    Ok(())
}

/// `spipes status`: ask the daemon through its control socket. The
/// socket is `--socket`, else the config's `control_socket`, else the
/// default. A config that does not load (a reload may have been rejected,
/// or its key files may be readable only by the daemon) is still read
/// for `control_socket` alone, with a warning that it has errors.
pub fn status(config: &Path, socket: Option<&Path>) -> anyhow::Result<()> {
    let path = match socket {
        Some(path) => Some(path.to_path_buf()),
        None => socket_of(config),
    };
    let Some(path) = path else {
        anyhow::bail!("the control socket is off (control_socket = \"\")");
    };
    let snapshot = crate::control::fetch(&path)?;
    print!("{}", crate::control::table(&snapshot));
    Ok(())
}

/// The control socket the config at `path` names, as the daemon read it
/// or as it reads now, warning on standard error when the file does not
/// load as a whole.
fn socket_of(path: &Path) -> Option<std::path::PathBuf> {
    let error = match config::load(path) {
        Ok((config, _)) => return config.daemon.control_socket,
        Err(e) => e,
    };

    let socket = config::control_socket_only(path)
        .unwrap_or_else(|| Some(config::builtin::CONTROL_SOCKET.into()));
    let first = error.0.first().map(String::as_str).unwrap_or("errors");
    match &socket {
        Some(s) => eprintln!(
            "warning: the config does not load ({first}); asking the \
             control socket {}",
            s.display()
        ),
        None => eprintln!("warning: the config does not load ({first})"),
    }
    socket
}

/// `spipes keygen`: a new key file.
pub fn keygen(path: &Path, force: bool) -> anyhow::Result<()> {
    crate::keygen::write_key(path, force).with_context(|| {
        if !force && path.exists() {
            format!("{} exists; pass --force to replace it", path.display())
        } else {
            format!("cannot write {}", path.display())
        }
    })
}

/// `spipes connect`: standard input and output through a client
/// handshake to `target`.
pub fn connect(
    target: &str,
    key: &Path,
    fs: crate::protocol::ForwardSecrecy,
    timeout: f64,
) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(crate::client::connect(target, key, fs, timeout))
}

/// `spipes import`: spiped command lines to TOML pipes.
pub fn import(files: &[std::path::PathBuf]) -> anyhow::Result<()> {
    let toml = crate::import::from_files(files)?;
    print!("{toml}");
    Ok(())
}

/// `spipes completions`: a completion script for `shell` on stdout.
pub fn completions(shell: clap_complete::Shell) -> anyhow::Result<()> {
    use std::io::Write;

    // Generated into memory first: clap_complete panics on a write error
    // such as a closed pipe.
    let mut command = <crate::cli::Cli as clap::CommandFactory>::command();
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut command, "spipes", &mut script);
    std::io::stdout()
        .write_all(&script)
        .context("cannot write the completion script")
}

/// `spipes man`: the man page, from the same clap definitions.
pub fn man() -> anyhow::Result<()> {
    let command = <crate::cli::Cli as clap::CommandFactory>::command();
    clap_mangen::Man::new(command)
        .render(&mut std::io::stdout())
        .context("cannot write the man page")
}
