//! The `certconn` command line. Library errors become one readable report here, with the
//! chain of causes; the exit status is 1 for errors and 2 for usage mistakes (clap's).

mod client_cmds;
mod keys;
mod pfx;
mod plugins;
mod serve;

use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

/// certconn: a certificate connector with sandboxed WebAssembly CA backends.
#[derive(Debug, Parser)]
#[command(name = "certconn", version, about, long_about = None)]
pub struct Cli {
    /// Log output format.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Human, env = "CERTCONN_LOG_FORMAT")]
    pub log_format: LogFormat,
    /// Log filter (tracing EnvFilter syntax), e.g. `info` or `certconn=debug`.
    #[arg(long, global = true, default_value = "info", env = "CERTCONN_LOG")]
    pub log: String,
    /// The config file (the daemon's, for client commands: they read its API address and token).
    #[arg(
        long,
        short,
        global = true,
        env = "CERTCONN_CONFIG",
        default_value = "certconn.toml"
    )]
    pub config: PathBuf,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum LogFormat {
    Human,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the daemon: request API, journal, scheduler and plugin engine.
    Serve,
    /// Submit work to a running daemon.
    Submit {
        #[command(subcommand)]
        what: client_cmds::Submit,
    },
    /// Inspect and retry jobs.
    Jobs {
        #[command(subcommand)]
        what: client_cmds::Jobs,
    },
    /// Show the daemon's health, job counts and FIPS state.
    Status {
        #[arg(long)]
        json: bool,
    },
    /// Plugins and backend instances: list, inspect, load, unload, reload, rollback, pack, test.
    #[command(visible_alias = "plugin")]
    Plugins {
        #[command(subcommand)]
        what: plugins::Plugins,
    },
    /// Administer custody keys (offline: the daemon must be stopped).
    Keys {
        #[command(subcommand)]
        what: keys::Keys,
    },
    /// Imported PFX files for S/MIME: encrypt a password to a connector key, submit files.
    Pfx {
        #[command(subcommand)]
        what: pfx::Pfx,
    },
    /// certconn's SCEP server: mint one-time challenge passwords.
    Scep {
        #[command(subcommand)]
        what: client_cmds::Scep,
    },
    /// Check a config file and report the first problem with its line.
    CheckConfig,
    /// Measure plugin overhead and pipeline throughput, and print the figures.
    Bench(crate::bench::BenchArgs),
}

fn init_logging(cli: &Cli) {
    // The benchmark measures the pipeline, not the terminal: per-job info lines are off unless asked for.
    let level = match (&cli.command, cli.log.as_str()) {
        (Command::Bench(_), "info") => "warn",
        // The conformance report is the output; the plugin's own log lines would bury it.
        (
            Command::Plugins {
                what: plugins::Plugins::Test(_),
            },
            "info",
        ) => "warn",
        (_, l) => l,
    };
    let filter = tracing_subscriber::EnvFilter::try_new(level)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match cli.log_format {
        LogFormat::Json => builder.json().flatten_event(true).init(),
        LogFormat::Human => builder.init(),
    }
}

/// Entry point of the binary.
pub fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    init_logging(&cli);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: starting the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        let config = cli.config;
        match cli.command {
            Command::Serve => serve::serve(&config).await,
            Command::Submit { what } => client_cmds::submit(&config, what).await,
            Command::Jobs { what } => client_cmds::jobs(&config, what).await,
            Command::Status { json } => client_cmds::status(&config, json).await,
            Command::Plugins { what } => plugins::run(&config, what).await,
            Command::Scep { what } => client_cmds::scep(&config, what).await,
            Command::Keys { what } => keys::run(&config, what),
            Command::Pfx { what } => pfx::run(&config, what).await,
            Command::CheckConfig => {
                certconn_config(&config)?;
                println!("{}: ok", config.display());
                Ok(())
            }
            Command::Bench(args) => crate::bench::run(args).await,
        }
    });
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            let mut source = e.source();
            while let Some(s) = source {
                eprintln!("  caused by: {s}");
                source = s.source();
            }
            std::process::ExitCode::FAILURE
        }
    }
}

/// Loads the config, as every command does.
pub(crate) fn certconn_config(path: &std::path::Path) -> anyhow::Result<certconn::app::Config> {
    Ok(certconn::app::Config::load(path)?)
}

/// Reads the API token and makes a client for the daemon the config names.
pub(crate) fn api_client(
    config: &certconn::app::Config,
) -> anyhow::Result<certconn::sources::api::client::ApiClient> {
    let token = certconn::sources::api::token::read(&config.token_file())?;
    Ok(certconn::sources::api::client::ApiClient::new(
        config.api_address(),
        token,
    ))
}
