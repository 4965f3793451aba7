//! The `casd` binary: command-line parsing, logging set-up and the process's lifetime. The only place that uses
//! `anyhow`.

use std::io::{BufRead, IsTerminal, Write};
use std::path::PathBuf;

use anyhow::Context;
use base64::Engine;
use casd::{Config, Node};
use clap::{Parser, Subcommand};

/// mimalloc, measured against glibc malloc and jemalloc on the validate path (see Cargo.toml).
#[cfg(feature = "mimalloc")]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(name = "casd", version, about = "A clustered CAS single sign-on server")]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run a node (the default). Without --config, runs the embedded single-node demo configuration.
    Serve {
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Validate a configuration file and exit; errors name the file, key and value. Then reaches every
    /// authentication source (a directory's service bind, a database's query) unless --no-connect.
    CheckConfig {
        file: PathBuf,
        #[arg(long)]
        no_connect: bool,
    },
    /// Log USER in against the configured sources (password from standard input) without starting a server:
    /// which source answered, what it returned, and the attributes a service would be released.
    TestLogin {
        user: String,
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Show what this service URL would be released (otherwise every attribute the sources returned).
        #[arg(long)]
        service: Option<String>,
    },
    /// Print a new random 32-byte cluster key, base64-encoded.
    Keygen,
    /// Read a password from standard input and print its argon2id hash for a users file.
    HashPassword,
    /// Look after a node's data directory (`[storage]`); never prints a ticket id.
    Storage {
        #[command(subcommand)]
        action: StorageAction,
    },
}

#[derive(Subcommand)]
enum StorageAction {
    /// Counts per map, oldest and newest entry, size. Reads without locking: works beside a running node.
    Inspect {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Write the directory's state (live entries and the tombstones still needed) to FILE, sealed under the same
    /// key: for a move to new hardware. FILE must not exist.
    Export {
        #[arg(long, short)]
        config: PathBuf,
        file: PathBuf,
    },
    /// Join an exported FILE into the data directory; the node must be stopped. Importing twice changes nothing.
    Import {
        #[arg(long, short)]
        config: PathBuf,
        file: PathBuf,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command.unwrap_or(Command::Serve { config: None }) {
        Command::Serve { config } => serve(config),
        Command::CheckConfig { file, no_connect } => {
            let resolved = Config::load(&file)?.resolve()?;
            println!("{}: ok ({} services)", file.display(), resolved.services.len());
            if no_connect {
                return Ok(());
            }
            let chain = chain_of(&resolved)?;
            let probes = tokio::runtime::Runtime::new()?.block_on(chain.probe());
            let mut failed = 0;
            for (name, verdict) in probes {
                match verdict {
                    Ok(()) => println!("auth source {name}: reachable"),
                    Err(e) => {
                        failed += 1;
                        println!("auth source {name}: {e}");
                    }
                }
            }
            anyhow::ensure!(failed == 0, "{}: {failed} authentication source(s) cannot be used", file.display());
            Ok(())
        }
        Command::TestLogin { user, config, service } => test_login(&user, config, service.as_deref()),
        Command::Storage { action } => storage(action),
        Command::Keygen => {
            let mut key = [0u8; 32];
            rand::fill(&mut key);
            println!("{}", base64::engine::general_purpose::STANDARD.encode(key));
            Ok(())
        }
        Command::HashPassword => {
            let stdin = std::io::stdin();
            if stdin.is_terminal() {
                eprint!("password: ");
                std::io::stderr().flush()?;
            }
            let mut line = String::new();
            stdin.lock().read_line(&mut line)?;
            let password = line.trim_end_matches(['\r', '\n']);
            anyhow::ensure!(!password.is_empty(), "empty password");
            let hash = casd::auth::hash_password(password).map_err(|e| anyhow::anyhow!("hashing failed: {e}"))?;
            println!("{hash}");
            Ok(())
        }
    }
}

/// The configured chain of authentication sources, built as a node builds it.
fn chain_of(resolved: &casd::config::Resolved) -> anyhow::Result<casd::auth::Chain> {
    let argon2 = casd::auth::Argon2Pool::per_core(resolved.config.auth.max_waiting_checks);
    casd::auth::Chain::build(&resolved.config.auth.sources, resolved.users.clone(), argon2, Default::default())
        .map_err(|e| anyhow::anyhow!(e))
}

fn test_login(user: &str, config: Option<PathBuf>, service: Option<&str>) -> anyhow::Result<()> {
    let config = match &config {
        Some(p) => Config::load(p)?,
        None => Config::embedded(),
    };
    let resolved = config.resolve()?;
    let stdin = std::io::stdin();
    if stdin.is_terminal() {
        eprint!("password for {user} (not echoed to the log): ");
        std::io::stderr().flush()?;
    }
    let mut line = zeroize::Zeroizing::new(String::new());
    stdin.lock().read_line(&mut line)?;
    let password = line.trim_end_matches(['\r', '\n']);
    let chain = chain_of(&resolved)?;
    let (attempts, verdict) = tokio::runtime::Runtime::new()?.block_on(chain.explain(user, password));
    println!("user {user:?}, password <hidden, {} characters>", password.chars().count());
    for a in &attempts {
        match &a.result {
            Ok(p) => println!("  source {}: accepted, principal {:?}", a.source, p.id),
            Err(e) => println!("  source {}: {e}", a.source),
        }
    }
    let principal = match verdict {
        Ok(p) => p,
        Err(e) => anyhow::bail!("login refused: {e}"),
    };
    let registered = match service {
        Some(url) => Some(resolved.services.find(url).with_context(|| format!("{url} is not a registered service"))?),
        None => None,
    };
    match registered {
        Some(s) => println!("attributes released to {} ({}):", service.unwrap_or_default(), s.name),
        None => println!("attributes (before any service's release policy):"),
    }
    for (name, values) in principal.attributes.iter() {
        if registered.is_none_or(|s| s.releases(name)) {
            println!("  {name} = {values:?}");
        }
    }
    Ok(())
}

fn storage(action: StorageAction) -> anyhow::Result<()> {
    use casd::store::tools;
    let config = match &action {
        StorageAction::Inspect { config }
        | StorageAction::Export { config, .. }
        | StorageAction::Import { config, .. } => config,
    };
    let plan = Config::load(config)?.resolve()?.storage.with_context(|| {
        format!("{}: storage.durability is \"off\": this node keeps no data directory", config.display())
    })?;
    match action {
        StorageAction::Inspect { .. } => {
            let s = tools::inspect(&plan.dir, &plan.key)?;
            println!("{}: {} bytes, {} records", plan.dir.join("journal").display(), s.bytes, s.records);
            if s.tail_bytes > 0 {
                println!("  {} bytes after the last good record (a torn tail, or a write in progress)", s.tail_bytes);
            }
            for (name, m) in [("TGT", &s.tgt), ("PGT", &s.pgt)] {
                let at = |t: Option<u64>| {
                    t.map(|ms| {
                        humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms))
                            .to_string()
                    })
                    .unwrap_or_else(|| "-".into())
                };
                println!(
                    "  {name}: {} live, {} tombstones, oldest {}, newest {}",
                    m.live,
                    m.tombstones,
                    at(m.oldest),
                    at(m.newest)
                );
            }
        }
        StorageAction::Export { file, .. } => {
            let n = tools::export(&plan.dir, &plan.key, &file)?;
            println!("{}: {n} entries exported", file.display());
        }
        StorageAction::Import { file, .. } => {
            let n = tools::import(&plan.dir, &plan.key, &file)?;
            println!("{}: {n} entries joined into {}", file.display(), plan.dir.display());
        }
    }
    Ok(())
}

fn serve(path: Option<PathBuf>) -> anyhow::Result<()> {
    let config = match &path {
        Some(p) => Config::load(p)?,
        None => Config::embedded(),
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info,casd=info".into());
    let logs = tracing_subscriber::fmt().with_env_filter(filter);
    match config.log.format {
        casd::config::LogFormat::Human => logs.init(),
        casd::config::LogFormat::Json => logs.json().flatten_event(true).init(),
    }
    if config.is_demo {
        tracing::warn!(
            "RUNNING THE EMBEDDED DEMO CONFIGURATION: plain http, demo user casuser/Mellon, any localhost service. \
             Not for production; pass --config FILE."
        );
    }
    let runtime = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    runtime.block_on(async {
        // Listen for SIGHUP before anything can say the node is up: its default action would end the process.
        let mut hangup = reload_signal()?;
        let node = Node::start(config).await?;
        tracing::info!(url = %node.base_url(), "serving");
        let shutdown = shutdown_signal();
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                _ = &mut shutdown => {
                    tracing::info!("shutting down");
                    node.shutdown().await;
                    return Ok(());
                }
                _ = hangup.recv() => {
                    if let Err(e) = node.reload_tls() {
                        tracing::error!(error = %e, "tls reload failed; keeping the current certificate");
                    }
                    // Logged by the node either way; a bad file keeps the registry (or the themes) in force.
                    let _ = node.reload_services();
                    let _ = node.reload_pages();
                }
                _ = node.wait() => anyhow::bail!("the http server stopped"),
            }
        }
    })
}

/// SIGHUP, which reloads the TLS certificate, the service definition files and the themes.
#[cfg(unix)]
fn reload_signal() -> anyhow::Result<tokio::signal::unix::Signal> {
    Ok(tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?)
}

/// Elsewhere than Unix there is no SIGHUP: a receiver that never yields.
#[cfg(not(unix))]
fn reload_signal() -> anyhow::Result<tokio::sync::mpsc::Receiver<()>> {
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    std::mem::forget(tx);
    Ok(rx)
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(s) => s,
            Err(_) => return ctrl_c.await.unwrap_or(()),
        };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
