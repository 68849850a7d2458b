//! The `probe` command: parse arguments, set up logging, run.

use std::{io, process::ExitCode};

use probe_user::{
    app,
    cli::{self, ParseResult},
};

fn main() -> ExitCode {
    let config = match cli::parse() {
        Ok(ParseResult::Run(config)) => config,
        Ok(ParseResult::Special(special)) => {
            return match special.write(&mut io::stdout()) {
                Ok(()) => ExitCode::SUCCESS,
                Err(error) => fail(&anyhow::Error::new(error).context("cannot write to stdout")),
            };
        }
        Err(error) => error.exit(),
    };
    let level = if config.verbose { "debug" } else { "warn" };
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(level))
        .format_timestamp(None)
        .format_target(false)
        .init();
    match app::run(&config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => fail(&error),
    }
}

/// Prints an error once, with its causes, and exits 1; a reader that went away (a broken pipe)
/// is no failure of probe's.
fn fail(error: &anyhow::Error) -> ExitCode {
    let broken_pipe = error.chain().any(|cause| {
        cause
            .downcast_ref::<io::Error>()
            .is_some_and(|io| io.kind() == io::ErrorKind::BrokenPipe)
    });
    if broken_pipe {
        return ExitCode::SUCCESS;
    }
    probe_user::say!("probe: error: {error:#}");
    ExitCode::FAILURE
}
