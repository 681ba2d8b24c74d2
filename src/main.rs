use herald::{config::Command, telemetry::LogFormat};
use std::process::ExitCode;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = match herald::config::parse() {
        Ok(cli) => cli,
        Err(error) => {
            eprintln!("herald: {}", error.chain());
            return ExitCode::FAILURE;
        }
    };
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
            eprintln!("herald: {}", error.chain());
            ExitCode::FAILURE
        }
    }
}
