//! `herald serve` and `herald token`: everything is in the library.

#[tokio::main]
async fn main() -> std::process::ExitCode {
    herald::commands::run().await
}
