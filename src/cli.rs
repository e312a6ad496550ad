//! The command line (section 9): `serve` (default), `token`, `migrate`,
//! `config check`, `django trigger-sql`, `healthcheck` (see [`crate::healthcheck`]) and `demo`
//! (see [`crate::demo`]).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};

use crate::auth::Token;
use crate::auth::sql::{Db, NativeStore};
use crate::config::{Config, StoreKind};
use crate::server::Server;

#[derive(Parser)]
#[command(
    name = "wsgate",
    version = concat!(env!("CARGO_PKG_VERSION"), " (", env!("WSGATE_COMMIT"), ")"),
    about = "WebSocket gateway: first-frame auth, groups, cluster fan-out"
)]
struct Cli {
    /// TOML configuration file (then WSGATE__SECTION__KEY variables override it).
    #[arg(long, global = true, env = "WSGATE_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run a node (the default).
    Serve,
    /// Manage tokens of the native store.
    #[command(subcommand)]
    Token(TokenCommand),
    /// Apply wsgate's own migrations.
    Migrate,
    /// Configuration tools.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Run an embedded node with a synthetic market feed and its demo page.
    Demo,
    /// Tools for the `django` store.
    #[command(subcommand)]
    Django(DjangoCommand),
    /// GET the node's /healthz on metrics.listen (from the configuration);
    /// exit 0 on a 2xx answer within 3 s, non-zero otherwise.
    Healthcheck {
        /// GET this URL instead (http:// only), e.g. http://127.0.0.1:9090/readyz.
        #[arg(long)]
        url: Option<String>,
    },
}

#[derive(Subcommand)]
enum TokenCommand {
    /// Print a new token once (only its digest is stored).
    Issue {
        #[arg(long)]
        user: String,
        /// Lifetime, e.g. 24h or 30m; none means no expiry.
        #[arg(long, value_parser = humantime::parse_duration)]
        ttl: Option<Duration>,
    },
    /// Refuse a token from now on.
    Revoke { token: String },
    /// List tokens (digest prefixes, never tokens).
    List {
        #[arg(long)]
        user: Option<String>,
    },
}

#[derive(Subcommand)]
enum DjangoCommand {
    /// Print the PostgreSQL live-revocation triggers for the configured user
    /// table (auth.django_user_table, auth.django_user_pk,
    /// auth.django_user_active).
    TriggerSql,
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Validate and print the effective configuration, secrets masked.
    Check,
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(Command::Healthcheck { url }) = &cli.command {
        return crate::healthcheck::main(cli.config.as_deref(), url.as_deref());
    }
    let config = match Config::load(cli.config.as_deref()) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("wsgate: {e}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("wsgate: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        match cli.command.unwrap_or(Command::Serve) {
            Command::Serve => serve(config).await,
            Command::Token(cmd) => token(config, cmd).await,
            Command::Migrate => migrate(config).await,
            Command::Demo => match crate::telemetry::check_otlp_protocol() {
                Ok(()) => crate::demo::run(config, shutdown_signal()).await,
                Err(e) => Err(e.into()),
            },
            Command::Django(DjangoCommand::TriggerSql) => config
                .auth
                .django_user()
                .map(|user| print!("{}", crate::auth::django::trigger_sql(&user)))
                .map_err(Into::into),
            Command::Config(ConfigCommand::Check) => {
                print!("{}", config.to_masked_toml());
                Ok(())
            }
            Command::Healthcheck { .. } => unreachable!("answered above"),
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("wsgate: {e}");
            ExitCode::FAILURE
        }
    }
}

type CliResult = Result<(), Box<dyn std::error::Error>>;

async fn serve(config: Config) -> CliResult {
    crate::telemetry::check_otlp_protocol()?;
    let telemetry = crate::telemetry::init(&config.log);
    let server = Server::build(config).await?;
    server.run(shutdown_signal()).await;
    // Flush spans before exiting; blocking, so off the async workers.
    let _ = tokio::task::spawn_blocking(move || telemetry.shutdown()).await;
    Ok(())
}

/// SIGTERM (Kubernetes) or Ctrl-C.
async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

/// Applies the migrations whatever `database.migrate` says: that key is
/// about start-up (off when a Job or this command runs them instead).
async fn migrate(config: Config) -> CliResult {
    let db = Db::connect(&config).await?;
    db.migrate().await?;
    println!("migrations applied");
    Ok(())
}

async fn token(config: Config, cmd: TokenCommand) -> CliResult {
    if config.auth.store != StoreKind::Native {
        return Err("token commands manage the native store; auth.store is not \"native\"".into());
    }
    let db = Db::connect(&config).await?;
    if config.database.migrate {
        db.migrate().await?;
    }
    let store = NativeStore::new(db);
    match cmd {
        TokenCommand::Issue { user, ttl } => {
            if user.is_empty() {
                return Err("--user must not be empty".into());
            }
            let token = store.issue(&user, ttl).await?;
            println!("{}", token.expose());
        }
        TokenCommand::Revoke { token } => {
            let digest = Token::new(token).digest();
            // The one revocation path the API takes too: store, shared
            // cache (tombstone), then every node closes the token's sockets.
            match crate::server::revoker(&config).await? {
                (auth, Some(nodes)) => {
                    let done = crate::revocation::revoke_everywhere(&auth, &nodes, &digest).await;
                    nodes.close().await;
                    done?;
                    println!("revoked; every node closed its sockets");
                }
                (auth, None) => {
                    auth.revoke(&digest).await?;
                    if config.database.url.is_some() {
                        println!("revoked; nodes listening on PostgreSQL close its sockets now");
                    } else {
                        println!(
                            "revoked (embedded mode: a running node refuses it within 5 s and \
                             closes its sockets at its next re-validation; POST /api/v1/revoke \
                             closes them now)"
                        );
                    }
                }
            }
        }
        TokenCommand::List { user } => {
            println!(
                "{:<14} {:<20} {:<25} {:<25} status",
                "digest", "user", "created", "expires"
            );
            for t in store.list(user.as_deref()).await? {
                let status = if t.revoked_at.is_some() {
                    "revoked"
                } else if t
                    .expires_at
                    .is_some_and(|e| e <= crate::clock::unix_ms() as i64)
                {
                    "expired"
                } else {
                    "live"
                };
                println!(
                    "{:<14} {:<20} {:<25} {:<25} {status}",
                    &t.digest[..12],
                    t.user_id,
                    fmt_ms(Some(t.created_at)),
                    fmt_ms(t.expires_at),
                );
            }
        }
    }
    Ok(())
}

fn fmt_ms(ms: Option<i64>) -> String {
    match ms {
        None => "never".into(),
        Some(ms) => {
            let t = std::time::UNIX_EPOCH + Duration::from_millis(ms.max(0) as u64);
            humantime::format_rfc3339_seconds(t).to_string()
        }
    }
}
