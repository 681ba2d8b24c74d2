//! What `herald serve` and `herald token` do, past parsing (the command line
//! itself is `config`).

use crate::{
    auth::Auth,
    domain::{UserId, hex},
    startup::config::{Command, KeyAction, KeyArgs, ServeConfig, TokenArgs},
    startup::server::{Server, shutdown_signal},
    startup::start::StartError,
    startup::telemetry::LogFormat,
};
use std::{process::ExitCode, time::Duration};

/// The whole program: parses the command line, installs logging, runs the
/// command; a failure is one line on stderr and a non-zero exit.
pub async fn run() -> ExitCode {
    let cli = match crate::startup::config::parse() {
        Ok(cli) => cli,
        Err(error) => return failed(&error),
    };
    let log_format = match &cli.command {
        Command::Serve(config) => config.log_format,
        Command::Token(_) | Command::Key(_) => LogFormat::Text,
    };
    crate::startup::telemetry::init(log_format);
    let result = match cli.command {
        Command::Serve(config) => serve(*config).await,
        Command::Token(args) => token(&args),
        Command::Key(args) => key(&args).await,
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => failed(&error),
    }
}

fn failed(error: &StartError) -> ExitCode {
    eprintln!("herald: {}", error.chain());
    ExitCode::FAILURE
}

/// How long the demo tokens printed on a first run stay valid.
const DEMO_TOKEN_TTL: Duration = Duration::from_secs(24 * 3600);

/// Runs the gateway until SIGINT or SIGTERM.
async fn serve(config: ServeConfig) -> Result<(), StartError> {
    crate::startup::memory::tune();
    let identity = config.identity();
    // Without a secret, an ephemeral one still signs stream tickets; demo
    // tokens are printed only when no identity provider is configured.
    let (secret, ephemeral) = match &config.secret.load()? {
        Some(secret) => (secret.expose().to_owned(), false),
        None => (ephemeral_secret(), !identity.is_configured()),
    };
    let auth = Auth::new(secret.as_bytes(), &identity)?;
    let server = Server::bind(&config, auth.clone()).await?;
    // Owned like the core's tasks: stopped once the server has shut down.
    let trim = tokio::spawn(crate::startup::memory::give_back());
    // Before saying it serves: from then on a signal shuts down in order.
    let signal = shutdown_signal();
    if let Some(metrics) = server.metrics_addr() {
        tracing::info!(%metrics, "/metrics is served apart; keep this address internal");
    }
    tracing::info!(http = %server.http_addr(), grpc = %server.grpc_addr(), "herald is serving");
    if ephemeral {
        print_demo(&auth, &server);
    }
    let served = server.run(signal).await;
    trim.abort();
    let _ = trim.await;
    served
}

/// Prints one token for `args.user` on stdout.
fn token(args: &TokenArgs) -> Result<(), StartError> {
    let secret = args.secret.load()?.ok_or_else(|| {
        StartError::config(
            "herald token needs --jwt-secret, HERALD_JWT_SECRET or --jwt-secret-file (the server's secret)",
        )
    })?;
    let user = UserId::parse("user id", &args.user)
        .map_err(|error| StartError::config(error.to_string()))?;
    let token = Auth::hs256(secret.expose().as_bytes()).mint(&user, Duration::from_secs(args.ttl));
    println!("{token}");
    Ok(())
}

/// `herald key create|list|revoke`, against the configured database.
async fn key(args: &KeyArgs) -> Result<(), StartError> {
    use crate::{auth::service, domain::moderation::Scopes};
    let store = crate::store::Store::connect(&args.database_url())
        .await
        .map_err(StartError::Database)?;
    let now = crate::domain::now_micros() / 1_000_000;
    let result = match &args.action {
        KeyAction::Create { name, scope } => {
            let valid = !name.is_empty()
                && name.len() <= 64
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
            if !valid {
                return Err(StartError::config(
                    "a key name is 1 to 64 letters, digits, '_', '-' or '.'",
                ));
            }
            let scopes = Scopes::parse(scope).map_err(StartError::config)?;
            let key = service::generate();
            match store
                .create_key(name, &service::hash_hex(&key), &scopes.to_list(), now)
                .await
            {
                Ok(true) => {
                    println!("{key}");
                    eprintln!(
                        "herald: key {name} ({}) created; it is shown only now and works on every node within 2 s",
                        scopes.to_list()
                    );
                    Ok(())
                }
                Ok(false) => Err(StartError::config(format!(
                    "a key named {name} exists (names are never reused, even revoked)"
                ))),
                Err(error) => Err(StartError::Database(error)),
            }
        }
        KeyAction::List => match store.list_keys().await {
            Ok(keys) => {
                println!("NAME\tSCOPES\tCREATED\tREVOKED");
                for key in keys {
                    let date = |at: i64| {
                        let time = std::time::UNIX_EPOCH
                            + Duration::from_secs(u64::try_from(at).unwrap_or(0));
                        httpdate::fmt_http_date(time)
                    };
                    let revoked = key.revoked_at.map_or_else(|| "-".into(), date);
                    println!(
                        "{}\t{}\t{}\t{revoked}",
                        key.name,
                        key.scopes,
                        date(key.created_at)
                    );
                }
                Ok(())
            }
            Err(error) => Err(StartError::Database(error)),
        },
        KeyAction::Revoke { name } => match store.revoke_key(name, now).await {
            Ok(true) => {
                eprintln!("herald: key {name} revoked; every node refuses it within 2 s");
                Ok(())
            }
            Ok(false) => Err(StartError::config(format!("no active key named {name}"))),
            Err(error) => Err(StartError::Database(error)),
        },
    };
    store.close().await;
    result
}

fn ephemeral_secret() -> String {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).expect("the operating system's random source failed");
    hex(&bytes)
}

/// A first run must just work: tokens for two demo users and links to the page.
fn print_demo(auth: &Auth, server: &Server) {
    let http = server.http_addr();
    println!("No --jwt-secret given: using an ephemeral secret; these tokens work until restart.");
    for name in ["alice", "bob"] {
        let user = UserId::parse("user", name).expect("a valid demo user id");
        let token = auth.mint(&user, DEMO_TOKEN_TTL);
        println!();
        println!("  {name}'s token: {token}");
        println!("  chat as {name}: http://{http}/#token={token}");
    }
    println!();
    println!(
        "  gRPC on {} (reflection on: try `grpcurl -plaintext {} list`)",
        server.grpc_addr(),
        server.grpc_addr()
    );
}
