//! The command line. Every flag has a `HERALD_...` environment equivalent,
//! and its `///` doc is its `--help` text.

use crate::{
    auth::{IdentityConfig, MIN_SECRET_BYTES},
    cluster::broker::{BrokerConfig, BrokerKind, ClusterKey, NatsAuth},
    doors::http::HttpOptions,
    engine::limits::Limits,
    net::listener::{ConnectionLimits, default_max_connections},
    net::tls::TlsFiles,
    startup::start::StartError,
    startup::telemetry::LogFormat,
};
use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand};
use std::{
    fmt,
    path::{Path, PathBuf},
    str::FromStr,
    time::Duration,
};

/// The smallest default of `--max-connections-per-ip`: below it a node is
/// too small for a per-address share to mean much.
const MIN_DEFAULT_PER_IP: usize = 64;

/// The database used when neither `--database-url` nor `DATABASE_URL` is set.
pub const DEFAULT_DATABASE_URL: &str = "sqlite://herald.db";

/// herald: a real-time messaging gateway (gRPC, Server-Sent Events, REST).
#[derive(Parser, Debug)]
#[command(name = "herald", version)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the gateway.
    Serve(Box<ServeConfig>),
    /// Print a signed token for a user on stdout.
    Token(TokenArgs),
    /// Manage the service keys of the application's backend (the Admin
    /// service), in the configured database.
    Key(KeyArgs),
}

#[derive(Args, Debug, Clone)]
pub struct ServeConfig {
    /// A TOML file of settings, named like the flags (`http = "0.0.0.0:8080"`,
    /// `jwt-secret = "..."`); flags and environment variables win over it.
    #[arg(long, env = "HERALD_CONFIG", value_name = "FILE")]
    pub config: Option<std::path::PathBuf>,

    /// Address for REST, SSE, health and the chat page.
    #[arg(
        long,
        env = "HERALD_HTTP",
        value_name = "ADDR",
        default_value = "127.0.0.1:8080"
    )]
    pub http: String,

    /// Address of a listener that serves only `/metrics`, which then leaves
    /// the HTTP port: keep it on an internal address. [default: /metrics is
    /// on the HTTP port]
    #[arg(long, env = "HERALD_METRICS_ADDR", value_name = "ADDR")]
    pub metrics_addr: Option<String>,

    /// Address for the gRPC services.
    #[arg(
        long,
        env = "HERALD_GRPC",
        value_name = "ADDR",
        default_value = "127.0.0.1:50051"
    )]
    pub grpc: String,

    /// Database URL: sqlite://FILE (created on first start) or postgres://...
    /// Also read from DATABASE_URL. [default: sqlite://herald.db]
    #[arg(long, env = "HERALD_DATABASE_URL", value_name = "URL")]
    pub database_url: Option<String>,

    #[command(flatten)]
    pub secret: SecretArg,

    /// An identity provider's public key (PEM: RSA, EC P-256 or Ed25519) that
    /// verifies RS256, ES256 or EdDSA tokens.
    #[arg(long, env = "HERALD_JWT_PUBLIC_KEY", value_name = "FILE")]
    pub jwt_public_key: Option<std::path::PathBuf>,

    /// An identity provider's JWKS file; keys are chosen by `kid`, and the
    /// file is reloaded when it changes.
    #[arg(long, env = "HERALD_JWT_JWKS", value_name = "FILE")]
    pub jwt_jwks: Option<std::path::PathBuf>,

    /// The `iss` that identity-provider tokens must carry.
    #[arg(long, env = "HERALD_JWT_ISSUER", value_name = "ISSUER")]
    pub jwt_issuer: Option<String>,

    /// The `aud` that identity-provider tokens must carry.
    #[arg(long, env = "HERALD_JWT_AUDIENCE", value_name = "AUDIENCE")]
    pub jwt_audience: Option<String>,

    /// Accept identity-provider tokens from any issuer (instead of
    /// requiring --jwt-issuer).
    #[arg(long, env = "HERALD_JWT_ANY_ISSUER")]
    pub jwt_any_issuer: bool,

    /// Accept identity-provider tokens for any audience (instead of
    /// requiring --jwt-audience).
    #[arg(long, env = "HERALD_JWT_ANY_AUDIENCE")]
    pub jwt_any_audience: bool,

    /// TLS certificate chain (PEM) for both listeners; needs --tls-key.
    #[arg(long, env = "HERALD_TLS_CERT", value_name = "FILE")]
    pub tls_cert: Option<std::path::PathBuf>,

    /// TLS private key (PEM) for both listeners; needs --tls-cert.
    #[arg(long, env = "HERALD_TLS_KEY", value_name = "FILE")]
    pub tls_key: Option<std::path::PathBuf>,

    /// Most open connections on both ports together; a new one beyond it
    /// replaces the connection idle longest, or is closed when all are busy.
    /// [default: the open-file limit less a tenth (at least 128) for the
    /// database, the broker and files]
    #[arg(long, env = "HERALD_MAX_CONNECTIONS", value_name = "N")]
    pub max_connections: Option<usize>,

    /// Most open connections from one address (0: no limit); a new one
    /// beyond it is closed. Proxies named by --trusted-proxy are exempt.
    /// [default: a quarter of --max-connections, at least 64]
    #[arg(long, env = "HERALD_MAX_CONNECTIONS_PER_IP", value_name = "N")]
    pub max_connections_per_ip: Option<usize>,

    /// The address of a proxy in front of herald (repeat the flag, or
    /// separate with commas), whose connections are not counted against
    /// --max-connections-per-ip: every client behind it shares its address,
    /// so per-client connection limits belong in the proxy.
    #[arg(
        long,
        env = "HERALD_TRUSTED_PROXY",
        value_name = "IP",
        value_delimiter = ','
    )]
    pub trusted_proxy: Vec<std::net::IpAddr>,

    /// How long a request body may take to arrive once its head has; a
    /// request whose body is late fails (400, or a failed gRPC call).
    #[arg(long, env = "HERALD_BODY_TIMEOUT", value_name = "DURATION", default_value = "10s", value_parser = parse_duration)]
    pub body_timeout: Duration,

    /// How long a stream's client may leave what herald wrote unread before
    /// the stream is closed (it resumes with its last id, losing nothing).
    #[arg(long, env = "HERALD_WRITE_TIMEOUT", value_name = "DURATION", default_value = "30s", value_parser = parse_duration)]
    pub write_timeout: Duration,

    /// How long a client may take to send a request head (HTTP/1.1), open a
    /// first stream (HTTP/2) or finish a TLS handshake before the
    /// connection is closed.
    #[arg(long, env = "HERALD_HEADER_TIMEOUT", value_name = "DURATION", default_value = "30s", value_parser = parse_duration)]
    pub header_timeout: Duration,

    /// Streams one HTTP/2 connection may have open at once (advertised as
    /// SETTINGS_MAX_CONCURRENT_STREAMS on both ports).
    #[arg(
        long,
        env = "HERALD_HTTP2_MAX_STREAMS",
        value_name = "N",
        default_value_t = 256
    )]
    pub http2_max_streams: u32,

    /// A hook before commit: each message sent (and each edit) is first
    /// POSTed here as {"conversationId", "userId", "content"}, signed like a
    /// webhook, and the answer allows, denies or replaces it.
    #[arg(long, env = "HERALD_PUBLISH_HOOK", value_name = "URL")]
    pub publish_hook: Option<String>,

    /// The publish hook's signing secret (`whsec_` and base64), which the
    /// hook verifies as a webhook receiver does.
    #[arg(long, env = "HERALD_PUBLISH_HOOK_SECRET", value_name = "SECRET")]
    pub publish_hook_secret: Option<String>,

    /// How long a send waits for the publish hook.
    #[arg(long, env = "HERALD_PUBLISH_HOOK_TIMEOUT", value_name = "DURATION", default_value = "500ms", value_parser = parse_duration)]
    pub publish_hook_timeout: Duration,

    /// What a slow or failing publish hook means: `closed` refuses the send
    /// (UNAVAILABLE / 503), `open` lets it through.
    #[arg(
        long,
        env = "HERALD_PUBLISH_HOOK_FAILURE",
        value_name = "POLICY",
        value_enum,
        default_value = "closed"
    )]
    pub publish_hook_failure: HookFailure,

    /// Let webhooks post to loopback and private addresses (refused by
    /// default: a webhook must not reach what only this host can).
    #[arg(long, env = "HERALD_WEBHOOK_ALLOW_PRIVATE")]
    pub webhook_allow_private: bool,

    /// How long shutdown waits for in-flight requests (e.g. 5s, 500ms).
    #[arg(long, env = "HERALD_DRAIN_TIMEOUT", value_name = "DURATION", default_value = "5s", value_parser = parse_duration)]
    pub drain_timeout: Duration,

    /// Largest message content, in bytes.
    #[arg(long, env = "HERALD_MAX_CONTENT_BYTES", value_name = "BYTES", default_value_t = Limits::default().max_content_bytes)]
    pub max_content_bytes: usize,

    /// Most participants in one conversation.
    #[arg(long, env = "HERALD_MAX_PARTICIPANTS", value_name = "N", default_value_t = Limits::default().max_participants)]
    pub max_participants: usize,

    /// Most open streams (SSE and gRPC) per user.
    #[arg(long, env = "HERALD_MAX_SUBSCRIPTIONS_PER_USER", value_name = "N", default_value_t = Limits::default().max_subscriptions_per_user)]
    pub max_subscriptions_per_user: usize,

    /// Messages a stream may have queued before it is dropped as too slow.
    #[arg(long, env = "HERALD_SUBSCRIPTION_QUEUE", value_name = "N", default_value_t = Limits::default().subscription_queue)]
    pub subscription_queue: usize,

    /// Bytes of events a stream may have queued before it is dropped as too
    /// slow (whichever of this and --subscription-queue comes first).
    #[arg(long, env = "HERALD_SUBSCRIPTION_QUEUE_BYTES", value_name = "BYTES", default_value_t = Limits::default().subscription_queue_bytes)]
    pub subscription_queue_bytes: usize,

    /// Messages per second one user may send, sustained.
    #[arg(long, env = "HERALD_RATE_LIMIT", value_name = "PER_SECOND", default_value_t = Limits::default().messages_per_second)]
    pub rate_limit: f64,

    /// Messages one user may send in a burst.
    #[arg(long, env = "HERALD_RATE_BURST", value_name = "N", default_value_t = Limits::default().message_burst)]
    pub rate_burst: f64,

    /// Origin allowed to call the HTTP API from a browser page (CORS); repeat
    /// the flag or separate with commas; `*` allows any.
    #[arg(
        long,
        env = "HERALD_CORS_ORIGIN",
        value_name = "ORIGIN",
        value_delimiter = ','
    )]
    pub cors_origin: Vec<String>,

    /// Largest HTTP request body, in bytes (larger ones get 413).
    #[arg(long, env = "HERALD_MAX_BODY_BYTES", value_name = "BYTES", default_value_t = 128 * 1024)]
    pub max_body_bytes: usize,

    /// How long an idle SSE stream waits before sending a comment line.
    #[arg(long, env = "HERALD_SSE_HEARTBEAT", value_name = "DURATION", default_value = "15s", value_parser = parse_duration)]
    pub sse_heartbeat: Duration,

    /// How long a user stays online after their last stream closes, so a
    /// reconnect or a page reload does not flap.
    #[arg(long, env = "HERALD_PRESENCE_GRACE", value_name = "DURATION", default_value = "5s", value_parser = parse_duration)]
    pub presence_grace: Duration,

    /// How often each node tells the others which users it holds online;
    /// a node silent for 2.5 of these is taken for dead and its users go
    /// offline elsewhere.
    #[arg(long, env = "HERALD_PRESENCE_INTERVAL", value_name = "DURATION", default_value = "10s", value_parser = parse_duration)]
    pub presence_interval: Duration,

    /// How nodes sharing one database tell each other of new messages:
    /// local (one node), postgres (LISTEN/NOTIFY) or nats. [default: postgres
    /// with a PostgreSQL database, local with SQLite]
    #[arg(long, env = "HERALD_BROKER", value_name = "BROKER", value_enum)]
    pub broker: Option<BrokerKind>,

    /// NATS server for `--broker nats`, e.g. nats://127.0.0.1:4222.
    #[arg(long, env = "HERALD_NATS_URL", value_name = "URL")]
    pub nats_url: Option<String>,

    /// NATS subject for `--broker nats`; one per deployment (per database).
    #[arg(
        long,
        env = "HERALD_NATS_SUBJECT",
        value_name = "SUBJECT",
        default_value = "herald.messages"
    )]
    pub nats_subject: String,

    /// A file holding the key (at least 32 bytes) that authenticates what
    /// nodes publish on NATS; the same on every node. [default: derived
    /// from --jwt-secret]
    #[arg(long, env = "HERALD_CLUSTER_KEY_FILE", value_name = "FILE")]
    pub cluster_key_file: Option<std::path::PathBuf>,

    /// A NATS credentials file (JWT and NKey seed).
    #[arg(long, env = "HERALD_NATS_CREDS", value_name = "FILE")]
    pub nats_creds: Option<std::path::PathBuf>,

    /// NATS user name (with --nats-password).
    #[arg(long, env = "HERALD_NATS_USER", value_name = "USER")]
    pub nats_user: Option<String>,

    /// NATS password (with --nats-user).
    #[arg(
        long,
        env = "HERALD_NATS_PASSWORD",
        value_name = "PASSWORD",
        hide_env_values = true
    )]
    pub nats_password: Option<Secret>,

    /// NATS authentication token.
    #[arg(
        long,
        env = "HERALD_NATS_TOKEN",
        value_name = "TOKEN",
        hide_env_values = true
    )]
    pub nats_token: Option<Secret>,

    /// A CA certificate (PEM) to verify the NATS server with; implies TLS.
    #[arg(long, env = "HERALD_NATS_TLS_CA", value_name = "FILE")]
    pub nats_tls_ca: Option<std::path::PathBuf>,

    /// Refuse a NATS server that does not speak TLS.
    #[arg(long, env = "HERALD_NATS_TLS_REQUIRED")]
    pub nats_tls_required: bool,

    /// Log lines as readable text or as JSON objects (levels: RUST_LOG).
    #[arg(
        long,
        env = "HERALD_LOG_FORMAT",
        value_name = "FORMAT",
        value_enum,
        default_value = "text"
    )]
    pub log_format: LogFormat,

    /// Most missed messages replayed to a resuming stream (at least 10000).
    #[arg(long, env = "HERALD_REPLAY_LIMIT", value_name = "N", default_value_t = Limits::default().replay_limit)]
    pub replay_limit: usize,

    /// Expensive calls (creating conversations, listing, resuming, stream
    /// tickets) one user may make per second, sustained; a group of N
    /// members costs 1 + N/50.
    #[arg(long, env = "HERALD_CALL_RATE_LIMIT", value_name = "PER_SECOND", default_value_t = Limits::default().calls_per_second)]
    pub call_rate_limit: f64,

    /// Expensive calls one user may make in a burst.
    #[arg(long, env = "HERALD_CALL_RATE_BURST", value_name = "N", default_value_t = Limits::default().call_burst)]
    pub call_rate_burst: f64,

    /// Database calls one user may have in flight at once; more wait their
    /// turn.
    #[arg(long, env = "HERALD_USER_CONCURRENCY", value_name = "N", default_value_t = Limits::default().user_concurrency)]
    pub user_concurrency: usize,

    /// Resuming streams that read their replay from the database at once,
    /// across the node; the others wait their turn.
    #[arg(long, env = "HERALD_REPLAY_CONCURRENCY", value_name = "N", default_value_t = Limits::default().replay_concurrency)]
    pub replay_concurrency: usize,
}

impl ServeConfig {
    /// A configuration with every default, for tests and embedding.
    /// The environment is not read.
    pub fn new(http: &str, grpc: &str, database_url: &str) -> Self {
        let serve = Cli::command().mut_subcommand("serve", |serve| {
            serve.mut_args(|argument| argument.env(None))
        });
        let matches = serve.get_matches_from(["herald", "serve"]);
        let Ok(Cli {
            command: Command::Serve(mut serve),
        }) = Cli::from_arg_matches(&matches)
        else {
            unreachable!("parsed the serve command")
        };
        serve.http = http.into();
        serve.grpc = grpc.into();
        serve.database_url = Some(database_url.into());
        *serve
    }

    /// The database URL: the flag, else `DATABASE_URL`, else the default.
    pub fn database_url(&self) -> String {
        self.database_url
            .clone()
            .or_else(|| {
                std::env::var("DATABASE_URL")
                    .ok()
                    .filter(|url| !url.is_empty())
            })
            .unwrap_or_else(|| DEFAULT_DATABASE_URL.into())
    }

    pub fn http_options(&self) -> HttpOptions {
        HttpOptions {
            cors_origins: self.cors_origin.clone(),
            max_body_bytes: self.max_body_bytes,
            heartbeat: self.sse_heartbeat,
            hsts: self.tls_cert.is_some(),
            metrics_apart: self.metrics_addr.is_some(),
        }
    }

    /// The TLS files, when both are given.
    pub fn tls(&self) -> Result<Option<TlsFiles>, StartError> {
        match (&self.tls_cert, &self.tls_key) {
            (Some(cert), Some(key)) => Ok(Some(TlsFiles {
                cert: cert.clone(),
                key: key.clone(),
            })),
            (None, None) => Ok(None),
            _ => Err(StartError::config("--tls-cert and --tls-key go together")),
        }
    }

    pub fn identity(&self) -> IdentityConfig {
        IdentityConfig {
            public_key: self.jwt_public_key.clone(),
            jwks: self.jwt_jwks.clone(),
            issuer: self.jwt_issuer.clone(),
            audience: self.jwt_audience.clone(),
            any_issuer: self.jwt_any_issuer,
            any_audience: self.jwt_any_audience,
        }
    }

    /// The broker settings, with the cluster key read or derived.
    pub fn broker(&self) -> Result<BrokerConfig, StartError> {
        let cluster_key = match &self.cluster_key_file {
            Some(path) => {
                let key = std::fs::read(path).map_err(|error| StartError::read(path, error))?;
                let key = key.trim_ascii_end();
                if key.len() < MIN_SECRET_BYTES {
                    return Err(StartError::Unusable {
                        path: path.clone(),
                        expected: format!(
                            "a cluster key must be at least {MIN_SECRET_BYTES} bytes"
                        ),
                        source: None,
                    });
                }
                Some(ClusterKey::new(key))
            }
            None => self
                .secret
                .load()?
                .map(|secret| ClusterKey::derived_from(secret.expose().as_bytes())),
        };
        Ok(BrokerConfig {
            kind: self.broker,
            nats_url: self.nats_url.clone(),
            nats_subject: self.nats_subject.clone(),
            cluster_key,
            nats_auth: NatsAuth {
                creds: self.nats_creds.clone(),
                user: self.nats_user.clone(),
                password: self.nats_password.as_ref().map(|p| p.expose().to_owned()),
                token: self.nats_token.as_ref().map(|t| t.expose().to_owned()),
                tls_ca: self.nats_tls_ca.clone(),
                tls_required: self.nats_tls_required,
            },
        })
    }

    /// The hook before commit, if `--publish-hook` names one; it needs its
    /// secret.
    pub fn publish_hook(&self) -> Result<Option<crate::engine::hook::PublishHook>, StartError> {
        let Some(url) = &self.publish_hook else {
            return Ok(None);
        };
        let secret = self.publish_hook_secret.clone().ok_or_else(|| {
            StartError::config("--publish-hook needs --publish-hook-secret (whsec_ and base64)")
        })?;
        if crate::engine::webhooks::sign(&secret, "", 0, "").is_err() {
            return Err(StartError::config(
                "--publish-hook-secret must be whsec_ followed by base64",
            ));
        }
        if url.parse::<hyper::Uri>().map_or(true, |uri| {
            !matches!(uri.scheme_str(), Some("http" | "https"))
        }) {
            return Err(StartError::config(
                "--publish-hook must be an http or https URL",
            ));
        }
        Ok(Some(crate::engine::hook::PublishHook::new(
            url.clone(),
            secret,
            self.publish_hook_timeout,
            self.publish_hook_failure,
        )))
    }

    pub fn connection_limits(&self) -> ConnectionLimits {
        let max_connections = self.max_connections.unwrap_or_else(default_max_connections);
        ConnectionLimits {
            max_connections,
            max_per_ip: self
                .max_connections_per_ip
                .unwrap_or((max_connections / 4).max(MIN_DEFAULT_PER_IP)),
            trusted_proxies: self.trusted_proxy.clone().into(),
            header_timeout: self.header_timeout,
            body_timeout: self.body_timeout,
            write_timeout: self.write_timeout,
            max_streams: self.http2_max_streams.max(1),
        }
    }

    /// Refuses settings the server cannot run with, with a one-line reason:
    /// a zero duration or size where one makes no sense.
    pub fn validate(&self) -> Result<(), StartError> {
        let durations = [
            ("--header-timeout", self.header_timeout),
            ("--body-timeout", self.body_timeout),
            ("--write-timeout", self.write_timeout),
            ("--sse-heartbeat", self.sse_heartbeat),
            ("--presence-interval", self.presence_interval),
        ];
        for (flag, value) in durations {
            if value.is_zero() {
                return Err(StartError::config(format!("{flag} must be more than 0")));
            }
        }
        let sizes = [
            ("--max-content-bytes", self.max_content_bytes),
            ("--max-participants", self.max_participants),
            (
                "--max-subscriptions-per-user",
                self.max_subscriptions_per_user,
            ),
            ("--subscription-queue", self.subscription_queue),
            ("--subscription-queue-bytes", self.subscription_queue_bytes),
            ("--max-body-bytes", self.max_body_bytes),
            ("--replay-concurrency", self.replay_concurrency),
            ("--user-concurrency", self.user_concurrency),
        ];
        for (flag, value) in sizes {
            if value == 0 {
                return Err(StartError::config(format!("{flag} must be more than 0")));
            }
        }
        if self.max_connections == Some(0) {
            return Err(StartError::config("--max-connections must be more than 0"));
        }
        Ok(())
    }

    pub fn limits(&self) -> Limits {
        Limits {
            max_content_bytes: self.max_content_bytes,
            max_participants: self.max_participants,
            max_subscriptions_per_user: self.max_subscriptions_per_user,
            subscription_queue: self.subscription_queue,
            subscription_queue_bytes: self.subscription_queue_bytes,
            messages_per_second: self.rate_limit,
            message_burst: self.rate_burst,
            replay_limit: self.replay_limit,
            replay_concurrency: self.replay_concurrency,
            calls_per_second: self.call_rate_limit,
            call_burst: self.call_rate_burst,
            user_concurrency: self.user_concurrency,
            presence_grace: self.presence_grace,
            presence_interval: self.presence_interval,
        }
    }
}

#[derive(Args, Debug)]
pub struct TokenArgs {
    /// The user id (the token's `sub` claim).
    pub user: String,

    /// Seconds until the token expires.
    #[arg(
        long,
        env = "HERALD_TOKEN_TTL",
        value_name = "SECONDS",
        default_value_t = 3600
    )]
    pub ttl: u64,

    #[command(flatten)]
    pub secret: SecretArg,
}

#[derive(Args, Debug)]
pub struct KeyArgs {
    #[command(subcommand)]
    pub action: KeyAction,

    /// Database URL, as `herald serve` takes it. Also read from DATABASE_URL.
    /// [default: sqlite://herald.db]
    #[arg(long, env = "HERALD_DATABASE_URL", value_name = "URL", global = true)]
    pub database_url: Option<String>,
}

#[derive(Subcommand, Debug)]
pub enum KeyAction {
    /// Create a key and print it once on stdout (only its hash is kept).
    Create {
        /// The key's name, shown in logs and metrics: letters, digits, `_`,
        /// `-` and `.`, at most 64.
        name: String,
        /// What it may do, comma-separated: publish, manage, moderate, read,
        /// admin (everything).
        #[arg(long, value_name = "SCOPES", required = true)]
        scope: String,
    },
    /// List every key: name, scopes, created, revoked.
    List,
    /// Revoke a key: it stops working on every node within 2 s.
    Revoke {
        /// The key's name.
        name: String,
    },
}

impl KeyArgs {
    /// The database URL: the flag, else `DATABASE_URL`, else the default.
    pub fn database_url(&self) -> String {
        self.database_url
            .clone()
            .or_else(|| {
                std::env::var("DATABASE_URL")
                    .ok()
                    .filter(|url| !url.is_empty())
            })
            .unwrap_or_else(|| DEFAULT_DATABASE_URL.into())
    }
}

/// What a publish hook that times out or fails means.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum HookFailure {
    /// The send is refused (UNAVAILABLE / 503).
    #[default]
    Closed,
    /// The send goes through as it was.
    Open,
}

/// Parses the command line (`std::env::args`), layering `serve --config
/// FILE` under it: each setting of the file becomes its flag's default, so
/// clap's own precedence gives flags > environment > file > built-in
/// default. Help, version and usage errors exit as clap does.
pub fn parse() -> Result<Cli, StartError> {
    let command = Cli::command();
    let matches = command.clone().get_matches();
    let file = match matches.subcommand() {
        Some(("serve", serve)) => serve.get_one::<PathBuf>("config").cloned(),
        _ => None,
    };
    let matches = match file {
        Some(path) => {
            let serve = command
                .find_subcommand("serve")
                .expect("serve is a subcommand");
            let defaults = settings(&path)?
                .into_iter()
                .map(|(flag, values)| {
                    let argument = serve
                        .get_arguments()
                        .find(|argument| argument.get_long() == Some(&flag) && flag != "config")
                        .ok_or_else(|| {
                            StartError::config(format!(
                                "{}: unknown setting '{flag}'",
                                path.display()
                            ))
                        })?;
                    Ok((argument.get_id().clone(), values))
                })
                .collect::<Result<Vec<_>, StartError>>()?;
            command
                .mut_subcommand("serve", |mut serve| {
                    for (id, values) in defaults {
                        serve = serve.mut_arg(id, |argument| argument.default_values(values));
                    }
                    serve
                })
                .get_matches()
        }
        None => matches,
    };
    Cli::from_arg_matches(&matches).map_err(|error| error.exit())
}

/// The settings of a TOML file, as `(flag, values)`.
fn settings(path: &Path) -> Result<Vec<(String, Vec<String>)>, StartError> {
    let text = std::fs::read_to_string(path).map_err(|error| StartError::read(path, error))?;
    let table: toml::Table = text.parse().map_err(|error| StartError::Unusable {
        path: path.to_owned(),
        expected: "not valid TOML".into(),
        source: Some(Box::new(error)),
    })?;
    table
        .into_iter()
        .map(|(key, value)| {
            let values = match &value {
                toml::Value::Array(items) => items.iter().map(setting).collect(),
                single => setting(single).map(|value| vec![value]),
            };
            let values = values.ok_or_else(|| {
                StartError::config(format!(
                    "{}: '{key}' must be a string, number, boolean or list",
                    path.display()
                ))
            })?;
            Ok((key.replace('_', "-"), values))
        })
        .collect()
}

/// A TOML value as the text of a flag.
fn setting(value: &toml::Value) -> Option<String> {
    match value {
        toml::Value::String(text) => Some(text.clone()),
        toml::Value::Integer(number) => Some(number.to_string()),
        toml::Value::Float(number) => Some(number.to_string()),
        toml::Value::Boolean(flag) => Some(flag.to_string()),
        _ => None,
    }
}

/// The HS256 secret, shared by `serve` and `token`.
#[derive(Args, Debug, Clone)]
pub struct SecretArg {
    /// HS256 secret for tokens. `serve` without one makes an ephemeral
    /// secret and prints demo tokens at start; `token` needs the server's.
    #[arg(
        long,
        env = "HERALD_JWT_SECRET",
        value_name = "SECRET",
        hide_env_values = true
    )]
    pub jwt_secret: Option<Secret>,

    /// A file holding the HS256 secret (one line), so it stays out of the
    /// process list and the environment.
    #[arg(
        long,
        env = "HERALD_JWT_SECRET_FILE",
        value_name = "FILE",
        conflicts_with = "jwt_secret"
    )]
    pub jwt_secret_file: Option<std::path::PathBuf>,
}

impl SecretArg {
    /// The secret from the flag, the environment or the file, if any.
    pub fn load(&self) -> Result<Option<Secret>, StartError> {
        if let Some(secret) = &self.jwt_secret {
            return Ok(Some(secret.clone()));
        }
        let Some(path) = &self.jwt_secret_file else {
            return Ok(None);
        };
        let text = std::fs::read_to_string(path).map_err(|error| StartError::read(path, error))?;
        let secret = text.trim_end_matches(['\r', '\n']);
        secret
            .parse()
            .map(Some)
            .map_err(|error| StartError::Unusable {
                path: path.clone(),
                expected: error,
                source: None,
            })
    }
}

/// A secret that never prints itself.
#[derive(Clone)]
pub struct Secret(String);

impl Secret {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl FromStr for Secret {
    type Err = String;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        match value.len() < MIN_SECRET_BYTES {
            true => Err(format!(
                "the secret must be at least {MIN_SECRET_BYTES} bytes (RFC 7518); `openssl rand -hex 32` makes one"
            )),
            false => Ok(Self(value.into())),
        }
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(redacted)")
    }
}

/// Parses `5s`, `500ms`, `2m` or a bare number of seconds.
pub fn parse_duration(value: &str) -> Result<Duration, String> {
    let value = value.trim();
    let split = value
        .find(|c: char| c.is_ascii_alphabetic())
        .unwrap_or(value.len());
    let (number, unit) = value.split_at(split);
    let number: f64 = number
        .trim()
        .parse()
        .map_err(|_| format!("'{value}' is not a duration like 5s or 500ms"))?;
    let seconds = match unit {
        "" | "s" => number,
        "ms" => number / 1_000.0,
        "m" => number * 60.0,
        _ => return Err(format!("unknown unit '{unit}': use ms, s or m")),
    };
    Duration::try_from_secs_f64(seconds).map_err(|_| format!("'{value}' is out of range"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_take_the_usual_units() {
        assert_eq!(parse_duration("5s").unwrap(), Duration::from_secs(5));
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("2").unwrap(), Duration::from_secs(2));
        assert!(parse_duration("-1s").is_err());
        assert!(parse_duration("soon").is_err());
    }

    #[test]
    fn a_secret_never_shows_in_debug_output() {
        let secret: Secret = "hunter2-hunter2-hunter2-hunter2-hunter2".parse().unwrap();
        assert!(!format!("{secret:?}").contains("hunter2"));
    }

    #[test]
    fn a_secret_shorter_than_256_bits_is_refused() {
        assert!("x".repeat(31).parse::<Secret>().is_err());
        assert!("x".repeat(32).parse::<Secret>().is_ok());
    }
}
