//! The `spipes` binary: parse the command line and hand off.

use std::process::ExitCode;

use clap::Parser;
use spipes::cli::{Cli, Command};

fn main() -> ExitCode {
    let cli = Cli::parse();
    if matches!(cli.command, Command::Run { .. }) {
        spipes::daemon::catch_early_signals();
    }
    if let Err(e) =
        spipes::logging::init(cli.log_level.as_deref(), cli.log_format)
    {
        eprintln!("spipes: {e}");
        return ExitCode::from(2);
    }

    let result = match cli.command {
        Command::Run { config } => spipes::commands::run(&config),
        Command::Check { config } => spipes::commands::check(&config),
        Command::Status { config, socket } => {
            spipes::commands::status(&config, socket.as_deref())
        }
        Command::Connect {
            target,
            key,
            forward_secrecy,
            timeout,
        } => spipes::commands::connect(
            &target,
            &key,
            forward_secrecy.into(),
            timeout,
        ),
        Command::Import { files } => spipes::commands::import(&files),
        Command::Completions { shell } => spipes::commands::completions(shell),
        Command::Man => spipes::commands::man(),
        Command::Keygen { path, force } => {
            spipes::commands::keygen(&path, force)
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("spipes: {e:#}");
            ExitCode::from(1)
        }
    }
}
