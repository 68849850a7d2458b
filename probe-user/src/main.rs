//! The `probe` command: parse arguments, set up logging, run.

use std::process::ExitCode;

use clap::{CommandFactory, Parser, error::ErrorKind};
use probe_user::{app, cli::Cli};

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(shell) = cli.generate_completions {
        clap_complete::generate(shell, &mut Cli::command(), "probe", &mut std::io::stdout());
        return ExitCode::SUCCESS;
    }
    if cli.generate_man {
        return match clap_mangen::Man::new(Cli::command()).render(&mut std::io::stdout()) {
            Ok(()) => ExitCode::SUCCESS,
            Err(error) => {
                eprintln!("probe: error: cannot write the man page: {error}");
                ExitCode::FAILURE
            }
        };
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
