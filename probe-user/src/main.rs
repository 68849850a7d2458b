//! The `probe` command: parse arguments, set up logging, run.

use std::process::ExitCode;

use clap::{CommandFactory, Parser, error::ErrorKind};
use probe_user::{app, cli::Cli};

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.write_generated(&mut std::io::stdout()) {
        Ok(true) => return ExitCode::SUCCESS,
        Ok(false) => {}
        Err(error) => {
            eprintln!("probe: error: cannot write to standard output: {error}");
            return ExitCode::FAILURE;
        }
    }
    if let Err(message) = cli.validate() {
        Cli::command()
            .error(ErrorKind::MissingRequiredArgument, message)
            .exit();
    }
    let level = if cli.verbose { "debug" } else { "warn" };
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(level))
        .format_timestamp(None)
        .format_target(false)
        .init();
    match app::run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("probe: error: {error:#}");
            ExitCode::FAILURE
        }
    }
}
