use clap::Parser;
use herald::config::{Cli, Command};
use std::process::ExitCode;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    herald::telemetry::init();
    let result = match cli.command {
        Command::Serve(config) => herald::cli::serve(*config).await,
        Command::Token(args) => herald::cli::token(&args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("herald: {error}");
            ExitCode::FAILURE
        }
    }
}
