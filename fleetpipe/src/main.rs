//! The `fleetpipe` command.
//!
//! ```text
//! fleetpipe run --config config/fleetpipe.toml
//! fleetpipe demo --vehicles 200
//! fleetpipe config check config/fleetpipe.toml
//! ```

// The binary only wires components: a function of its longer than
// clippy.toml's too-many-lines-threshold is wiring that belongs in a
// helper or in a component (issue 18).
#![warn(clippy::too_many_lines)]

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use fleetpipe::cluster::Role;
use fleetpipe::config::LogFormat;
use fleetpipe::demo::DemoOptions;
use fleetpipe::{Config, Pipeline};
use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;

// Records are many small allocations made on one worker and freed on
// another (a sink); mimalloc's per-thread free lists handle that better
// than glibc malloc (see BENCHMARKS.md, "Enrichment").
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// High-throughput vehicle telematics ingestion pipeline.
#[derive(Debug, Parser)]
#[command(name = "fleetpipe", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the pipeline.
    Run {
        /// Configuration file (TOML); keys can be overridden by FLEETPIPE_* variables.
        #[arg(long, short, default_value = "config/fleetpipe.toml")]
        config: PathBuf,
        /// What this process runs; wins over cluster.role (see [cluster] in
        /// the configuration and ARCHITECTURE.md, "Roles").
        #[arg(long, value_enum)]
        role: Option<Role>,
    },
    /// Run the pipeline with a simulated fleet driving through it: vans on
    /// delivery tours in a synthetic city publish over MQTT, and a summary
    /// of pings and events is printed every few seconds. Stop with Ctrl-C.
    Demo {
        /// Configuration file; the demo replaces geofence.file with the
        /// simulated city's fences and needs the embedded broker and
        /// ingest.auth.mode = "none" (the quick start's settings).
        #[arg(long, short, default_value = "config/fleetpipe.toml")]
        config: PathBuf,
        #[command(flatten)]
        options: DemoOptions,
    },
    /// Configuration tools.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// Database tools (the TimescaleDB/PostgreSQL sink).
    Db {
        #[command(subcommand)]
        command: DbCommand,
    },
}

#[derive(Debug, Subcommand)]
enum DbCommand {
    /// Apply the schema migrations of [sink.timescale] and create
    /// enrichment's vehicle_state table, then exit (fleetpipe also does
    /// both at start).
    Migrate {
        /// Configuration file.
        #[arg(long, short, default_value = "config/fleetpipe.toml")]
        config: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
enum ConfigCommand {
    /// Check a configuration file (and the environment overrides) without starting.
    Check {
        /// Configuration file.
        file: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Config {
            command: ConfigCommand::Check { file },
        } => match Config::load(&file) {
            Ok(_) => {
                println!("{}: ok", file.display());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::FAILURE
            }
        },
        Command::Db {
            command: DbCommand::Migrate { config },
        } => {
            let config = match Config::load(&config) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("error: {e}");
                    return ExitCode::FAILURE;
                }
            };
            init_logging(&config);
            let Some(timescale) = config.sink.timescale else {
                eprintln!("error: [sink.timescale] is not configured");
                return ExitCode::FAILURE;
            };
            let migrated = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| e.to_string())
                .and_then(|rt| rt.block_on(migrate_database(&timescale)));
            match migrated {
                Ok(mode) => {
                    println!("migrations applied ({mode:?})");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("error: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Run { config, role } => run_with(&config, role, |config| async move {
            // Prometheus only: a production process reads nothing back.
            fleetpipe::ops::install_for_serving();
            let shutdown = CancellationToken::new();
            let pipeline = Pipeline::start(&config, shutdown.clone()).await?;
            tokio::spawn(cancel_on_signal(shutdown));
            pipeline.wait().await?;
            Ok(())
        }),
        Command::Demo { config, options } => run_with(&config, None, |config| async move {
            let stop = CancellationToken::new();
            tokio::spawn(cancel_on_signal(stop.clone()));
            fleetpipe::demo::run(config, options, stop, std::io::stdout()).await?;
            Ok(())
        }),
    }
}

/// Loads the config, starts logging and a multi-threaded runtime, and runs
/// `body` on it; errors end as one line on stderr, whatever the log format,
/// since operators and supervisors read the last line of a failed start.
fn run_with<F, Fut>(config: &std::path::Path, role: Option<Role>, body: F) -> ExitCode
where
    F: FnOnce(Config) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    let config = match Config::load_as(config, role) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    init_logging(&config);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(body(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn cancel_on_signal(token: CancellationToken) {
    wait_for_signal().await;
    token.cancel();
}

async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot install signal handlers; stop fleetpipe with SIGKILL");
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        _ = int.recv() => tracing::info!("SIGINT received"),
    }
}

/// `fleetpipe db migrate`: the sink's migrations, then enrichment's
/// `vehicle_state` (each table created by the crate that owns it), so the
/// schema is complete before the first start.
async fn migrate_database(
    timescale: &fleetpipe_sink::TimescaleConfig,
) -> Result<fleetpipe_sink::timescale::StorageMode, String> {
    let mode = fleetpipe_sink::timescale::migrate(timescale)
        .await
        .map_err(|e| e.to_string())?;
    fleetpipe_enrich::StateStore::postgres(
        fleetpipe_sink::timescale::SECTION,
        &timescale.connection(),
        &timescale.schema,
    )
    .map_err(|e| e.to_string())?
    .prepare()
    .await
    .map_err(|e| e.to_string())?;
    Ok(mode)
}

fn init_logging(config: &Config) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&config.log.filter));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match config.log.format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}
