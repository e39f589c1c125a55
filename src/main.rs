//! The `rampart` command: run the server, check a configuration, print the version.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use rampart::observe::{Chain, logging};
use rampart::server::activation::PassedSockets;
use rampart::server::{shutdown, systemd};
use rampart::{Listeners, Server, config};
use tokio_util::sync::CancellationToken;

/// mimalloc: per-thread free lists suit a proxy's many short-lived, same-sized allocations
/// (request heads, buffers) better than glibc malloc.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Where packages install the configuration.
const DEFAULT_CONFIG: &str = "/etc/rampart/rampart.yaml";
/// EX_USAGE from sysexits.h: a restart will not fix it (systemd's RestartPreventExitStatus=64).
const EXIT_CONFIG: u8 = 64;

#[derive(Parser)]
#[command(
    name = "rampart",
    about = "Edge TLS terminator with automatic certificates",
    version
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the sites of a configuration until SIGTERM or SIGINT.
    Run {
        /// Configuration file.
        #[arg(short, long, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
    },
    /// Validate a configuration and print every problem as FILE:LINE:COL: key: reason.
    Check {
        /// Configuration file.
        #[arg(short, long, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
    },
    /// Print each site's certificate: names, issuer, serial, dates, renewal due and why, last
    /// attempt and error. Reads the storage, so it works while Rampart runs.
    Certs {
        /// Configuration file.
        #[arg(short, long, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Print the version.
    Version,
}

fn main() -> ExitCode {
    match Cli::parse().command {
        Command::Run { config } => run(&config),
        Command::Check { config } => check(&config),
        Command::Certs { config, json } => certs(&config, json),
        Command::Version => {
            println!("rampart {}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
    }
}

fn check(path: &Path) -> ExitCode {
    match config::load(path) {
        Ok(config) => {
            println!(
                "{}: valid ({} sites)",
                config.source.display(),
                config.sites.len()
            );
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("{}", Chain(&err));
            ExitCode::from(EXIT_CONFIG)
        }
    }
}

fn certs(path: &Path, json: bool) -> ExitCode {
    let config = match config::load(path) {
        Ok(config) => config,
        Err(err) => {
            eprintln!("{}", Chain(&err));
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let provider = rampart::pki::crypto_provider();
    let sites = match &config.cluster {
        None => rampart::acme::status(&config, &provider),
        Some(cluster) => cluster_status(&config, cluster, &provider).unwrap_or_else(|err| {
            eprintln!(
                "rampart: the cluster store does not answer ({}); showing this node's local copy",
                Chain(err.as_ref())
            );
            rampart::acme::status(&config, &provider)
        }),
    };
    if json {
        match serde_json::to_string_pretty(&sites) {
            Ok(text) => println!("{text}"),
            Err(err) => {
                eprintln!("rampart: cannot encode the report: {err}");
                return ExitCode::FAILURE;
            }
        }
    } else {
        for site in &sites {
            print!("{}", render(site));
        }
    }
    ExitCode::SUCCESS
}

/// Every site's status as the cluster store has it, with who holds each lock now.
fn cluster_status(
    config: &config::Config,
    cluster: &config::Cluster,
    provider: &rustls::crypto::CryptoProvider,
) -> Result<Vec<rampart::acme::SiteStatus>, Box<dyn std::error::Error>> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let (cluster, storage) = rampart::cluster::Cluster::new(cluster).await?;
        // Asked first: an unreachable store fails here, once, not per site.
        let holders = cluster.lock_holders().await?;
        let mut sites = rampart::acme::status_in(config, &storage, provider).await;
        for site in &mut sites {
            site.lock_holder = holders.get(&site.site).cloned();
        }
        Ok(sites)
    })
}

/// The text form of one site's status, one fact per line.
fn render(site: &rampart::acme::SiteStatus) -> String {
    use std::fmt::Write;
    let time = |t: Option<std::time::SystemTime>| {
        t.map_or_else(
            || "-".to_owned(),
            |t| humantime::format_rfc3339_seconds(t).to_string(),
        )
    };
    let mut out = format!(
        "{} ({})\n  names:        {}\n",
        site.site,
        site.source,
        site.names.join(", ")
    );
    if let Some(cert) = &site.certificate {
        let _ = write!(
            out,
            "  issuer:       {}\n  serial:       {}\n  not before:   {}\n  not after:    {}\n",
            cert.issuer,
            cert.serial,
            time(Some(cert.not_before)),
            time(Some(cert.not_after)),
        );
    }
    if let Some(missing) = &site.missing {
        let _ = writeln!(out, "  certificate:  none ({missing})");
    }
    if site.source == "acme" {
        let reason = site
            .renewal_reason
            .map_or(String::new(), |r| format!(" ({})", r.as_str()));
        let _ = write!(
            out,
            "  renewal due:  {}{reason}\n  last attempt: {}\n  next attempt: {}\n",
            time(site.renewal_due),
            time(site.last_attempt),
            time(site.next_attempt),
        );
        if let Some(ca) = &site.ca {
            let _ = writeln!(out, "  CA:           {ca}");
        }
        if let Some(ca) = &site.trying_ca {
            let _ = writeln!(out, "  trying CA:    {ca}");
        }
        if let Some(node) = &site.issued_by {
            let _ = writeln!(out, "  issued by:    {node}");
        }
        if let Some(node) = &site.lock_holder {
            let _ = writeln!(out, "  lock held by: {node}");
        }
        if let Some(error) = &site.last_error {
            let problem = error
                .problem_type
                .as_deref()
                .map_or(String::new(), |p| format!(" [{p}]"));
            let _ = writeln!(
                out,
                "  last error:   {}{problem}: {}",
                time(Some(error.at)),
                error.message
            );
        }
    }
    out
}

fn run(path: &Path) -> ExitCode {
    let config = match config::load(path) {
        Ok(config) => config,
        Err(err) => {
            eprintln!("{}", Chain(&err));
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    logging::init(&config.log);
    // Before the runtime starts threads: taking systemd's sockets edits the environment.
    let passed = match PassedSockets::take(&config.listen) {
        Ok(passed) => passed,
        Err(err) => return fatal(&err),
    };
    // On one core (or pinned to one) a work-stealing pool only adds cross-thread handoffs.
    let cores = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
    let mut builder = if cores > 1 {
        tokio::runtime::Builder::new_multi_thread()
    } else {
        tokio::runtime::Builder::new_current_thread()
    };
    // Reloads run on a blocking thread, and the allocator (mimalloc) returns the pages of the
    // configuration a reload replaced when that thread exits: 1 s idle rather than tokio's 10 s
    // (with 10,000 sites, some 80 MB sooner). The only blocking work is a reload or an admin
    // /certs report, each far longer than starting a thread.
    builder.thread_keep_alive(std::time::Duration::from_secs(1));
    let runtime = match builder.enable_all().build() {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("rampart: cannot start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        let listeners = match passed {
            Some(passed) => {
                tracing::info!(https = ?passed.https_addr(), http = ?passed.http_addr(), "serving on sockets passed by systemd");
                // systemd passes the public sockets; the loopback admin listener is ours to bind.
                Listeners::from_systemd(passed)
                    .map_err(|err| fatal(&err))
                    .and_then(|l| l.with_admin(config.listen.admin).map_err(|err| fatal(&err)))
            }
            None => Listeners::bind(&config.listen).map_err(|err| fatal(&err)),
        };
        let listeners = match listeners {
            Ok(listeners) => listeners,
            Err(code) => return code,
        };
        let server = match Server::start(config, listeners).await {
            Ok(server) => server,
            Err(err) => return fatal(&err),
        };
        let http = server
            .http_addr()
            .map_or_else(|| "off".to_owned(), |addr| addr.to_string());
        systemd::ready(&format!(
            "serving https on {}, http on {http}",
            server.https_addr(),
        ));
        // The watchdog pings while serving and stops when shutdown begins.
        let pings = CancellationToken::new();
        let (signal, ()) = tokio::join!(
            async {
                let signal = shutdown::signal_received().await;
                pings.cancel();
                signal
            },
            systemd::watchdog(pings.clone()),
        );
        match signal {
            Ok(signal) => tracing::info!(signal, "shutting down"),
            Err(err) => {
                tracing::error!(error = %Chain(&err), "cannot wait for signals; shutting down")
            }
        }
        systemd::stopping();
        server.shutdown().await;
        ExitCode::SUCCESS
    })
}

/// One clear line on stderr for a start-up failure. Only that: the log goes to stderr too, and
/// a second, structured copy of the same failure there only buried it.
fn fatal(err: &(dyn std::error::Error + 'static)) -> ExitCode {
    eprintln!("rampart: {}", Chain(err));
    ExitCode::FAILURE
}
