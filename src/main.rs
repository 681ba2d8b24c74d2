use clap::Parser;
use herald::{
    config::{Cli, Command, with_config_file},
    telemetry::LogFormat,
};
use std::process::ExitCode;

#[tokio::main]
async fn main() -> ExitCode {
    let args = match with_config_file(std::env::args().collect()) {
        Ok(args) => args,
        Err(reason) => {
            eprintln!("herald: {reason}");
            return ExitCode::FAILURE;
        }
    };
    let cli = Cli::parse_from(args);
    let log_format = match &cli.command {
        Command::Serve(config) => config.log_format,
        Command::Token(_) => LogFormat::Text,
    };
    herald::telemetry::init(log_format);
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
