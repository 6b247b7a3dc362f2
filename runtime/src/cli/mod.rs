//! The `certconn` command line. Library errors become one readable report here, with the
//! chain of causes; the exit status is 1 for errors and 2 for usage mistakes (clap's).

mod audit;
mod certs;
mod client_cmds;
mod fleet;
mod keys;
mod pfx;
mod plugins;
mod release;
mod serve;
mod systemd;
mod update;
mod upstream;

use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

/// certconn: a certificate connector with sandboxed WebAssembly CA backends.
#[derive(Debug, Parser)]
#[command(name = "certconn", version = certconn::version::version(), about, long_about = None)]
pub struct Cli {
    /// Log output format.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Human, env = "CERTCONN_LOG_FORMAT")]
    pub log_format: LogFormat,
    /// Log filter (tracing EnvFilter syntax), e.g. `info` or `certconn=debug`.
    #[arg(long, global = true, default_value = "info", env = "CERTCONN_LOG")]
    pub log: String,
    /// The config file (the daemon's, for client commands: they read its API address and
    /// token). Without it: `certconn.toml` in the current directory, else the package's
    /// `/etc/certconn/certconn.toml`.
    #[arg(long, short, global = true, env = "CERTCONN_CONFIG")]
    pub config: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum LogFormat {
    /// One line per event, for a person (colour only on a terminal, never with NO_COLOR).
    Human,
    /// One JSON object per event, for a log collector.
    Json,
    /// For journald (systemd's unit uses it): no timestamp of our own (the journal keeps
    /// one), and each line prefixed with its syslog priority (`<3>` error … `<7>` debug) so
    /// `journalctl -p warning` filters it.
    Journald,
}

/// Prefixes each event with its syslog priority, as journald reads a service's stderr.
struct SyslogPriority<F>(F);

impl<S, N, F> tracing_subscriber::fmt::FormatEvent<S, N> for SyslogPriority<F>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    N: for<'a> tracing_subscriber::fmt::FormatFields<'a> + 'static,
    F: tracing_subscriber::fmt::FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &tracing_subscriber::fmt::FmtContext<'_, S, N>,
        mut writer: tracing_subscriber::fmt::format::Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> std::fmt::Result {
        let level = *event.metadata().level();
        let priority = match level {
            tracing::Level::ERROR => 3,
            tracing::Level::WARN => 4,
            tracing::Level::INFO => 6,
            tracing::Level::DEBUG | tracing::Level::TRACE => 7,
        };
        write!(writer, "<{priority}>{level} ")?;
        self.0.format_event(ctx, writer, event)
    }
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
        /// Print the daemon's JSON answer (`GET /v1/health`).
        #[arg(long)]
        json: bool,
    },
    /// Reload `[backends]` and `[profiles]` from the config file without a restart (as SIGHUP
    /// does); prints what changed, or why nothing did.
    Reload,
    /// Plugins and backend instances: list, inspect, load, unload, reload, rollback, pack, test.
    #[command(visible_alias = "plugin")]
    Plugins {
        #[command(subcommand)]
        what: plugins::Plugins,
    },
    /// The instances sharing this instance's journal: versions, backends served, health.
    Fleet {
        #[command(subcommand)]
        what: Option<fleet::Fleet>,
    },
    /// The signed update feed: where each version stands, and what the updater did.
    Update {
        #[command(subcommand)]
        what: update::UpdateCmd,
    },
    /// Run `INSTALL/current/certconn ARGS` and keep it running through daemon updates: start
    /// the new version after a switch, and put the previous one back if the new one does not
    /// serve within its deadline. What systemd runs when the daemon updates itself.
    Launch {
        /// The install directory (INSTALL/versions/VERSION/certconn, INSTALL/current).
        install_dir: PathBuf,
        /// The arguments for the daemon, after `--` (e.g. `-- serve --config /etc/certconn/certconn.toml`).
        #[arg(last = true)]
        args: Vec<std::ffi::OsString>,
    },
    /// Publish the signed update feed (for a release engineer; offline).
    Release {
        #[command(subcommand)]
        what: release::ReleaseCmd,
    },
    /// The upstream service: register this connector (offline: the daemon must be stopped).
    Upstream {
        #[command(subcommand)]
        what: upstream::Upstream,
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
    /// The certificates certconn issued and revoked (the ledger), and audited reason changes.
    Certs {
        #[command(subcommand)]
        what: certs::Certs,
    },
    /// The signature trail: every signature a CA key made, chained by hash (verify, list).
    Audit {
        #[command(subcommand)]
        what: audit::Audit,
    },
    /// certconn's SCEP server: mint one-time challenge passwords.
    Scep {
        #[command(subcommand)]
        what: client_cmds::Scep,
    },
    /// Check a config as `serve` would before serving, without the network and without touching
    /// the data directory: the file, the secrets it names, the key-encryption key and token, and
    /// every plugin loaded and configured with its settings and grants.
    CheckConfig {
        /// Only parse and validate the file itself (syntax, ranges, references between sections):
        /// for a config meant for another machine, whose files and plugins are not here.
        #[arg(long)]
        syntax_only: bool,
    },
    /// Measure plugin overhead and pipeline throughput, and print the figures.
    Bench(crate::bench::BenchArgs),
    /// Print a shell completion script: `certconn completions bash > /etc/bash_completion.d/certconn`.
    Completions {
        /// bash, zsh, fish, elvish or powershell.
        shell: clap_complete::Shell,
    },
    /// Write the manual pages (certconn.1 and one per command) into a directory.
    Man {
        /// The directory to write them to (created if missing).
        #[arg(long, default_value = ".")]
        out: PathBuf,
    },
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
    // Colour only for a person at a terminal, and never when NO_COLOR asks (no-color.org).
    let colour = std::io::IsTerminal::is_terminal(&std::io::stderr())
        && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(colour)
        .with_writer(std::io::stderr);
    match cli.log_format {
        LogFormat::Json => builder.json().flatten_event(true).init(),
        LogFormat::Human => builder.init(),
        LogFormat::Journald => {
            let format = tracing_subscriber::fmt::format()
                .without_time()
                .with_level(false)
                .with_ansi(false);
            builder
                .with_ansi(false)
                .event_format(SyslogPriority(format))
                .init()
        }
    }
}

/// Entry point of the binary.
pub fn main() -> std::process::ExitCode {
    // Before any thread starts: each thread's arena is chosen at its first allocation.
    certconn::process::heap::bound_arenas();
    let cli = Cli::parse();
    if !matches!(cli.command, Command::Serve) {
        end_quietly_on_a_closed_pipe();
    }
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
        let config = cli.config.unwrap_or_else(default_config);
        match cli.command {
            Command::Serve => serve::serve(&config).await,
            Command::Submit { what } => client_cmds::submit(&config, what).await,
            Command::Jobs { what } => client_cmds::jobs(&config, what).await,
            Command::Status { json } => client_cmds::status(&config, json).await,
            Command::Reload => client_cmds::reload(&config).await,
            Command::Plugins { what } => plugins::run(&config, what).await,
            Command::Scep { what } => client_cmds::scep(&config, what).await,
            Command::Certs { what } => certs::certs(&config, what).await,
            Command::Keys { what } => keys::run(&config, what).await,
            Command::Upstream { what } => upstream::run(&config, what).await,
            Command::Fleet { what } => fleet::run(&config, what).await,
            Command::Update { what } => update::run(&config, what).await,
            Command::Release { what } => release::run(what).await,
            Command::Launch { install_dir, args } => {
                let code = certconn::update::daemon::launch(
                    certconn::update::daemon::Install::new(install_dir),
                    args,
                )
                .await?;
                std::process::exit(code)
            }
            Command::Audit { what } => audit::run(&config, what),
            Command::Pfx { what } => pfx::run(&config, what).await,
            Command::CheckConfig { syntax_only } => check_config(&config, syntax_only).await,
            Command::Bench(args) => crate::bench::run(args).await,
            Command::Completions { shell } => {
                let mut command = <Cli as clap::CommandFactory>::command();
                clap_complete::generate(shell, &mut command, "certconn", &mut std::io::stdout());
                Ok(())
            }
            Command::Man { out } => write_man_pages(&out),
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

/// Where the Debian package installs the config.
const PACKAGED_CONFIG: &str = "/etc/certconn/certconn.toml";

/// The config when neither `--config` nor `CERTCONN_CONFIG` names one: `certconn.toml` in the
/// current directory (a source tree, the quick start), else the package's — so that on an
/// installed machine `sudo -u certconn certconn status` needs no more. When neither exists,
/// `certconn.toml`, which the command then reports missing.
fn default_config() -> std::path::PathBuf {
    let here = std::path::PathBuf::from("certconn.toml");
    if !here.exists() && std::path::Path::new(PACKAGED_CONFIG).exists() {
        PACKAGED_CONFIG.into()
    } else {
        here
    }
}

/// `certconn man`: the manual pages, generated from the same definitions as `--help`.
fn write_man_pages(out: &std::path::Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(out)?;
    let command = <Cli as clap::CommandFactory>::command();
    clap_mangen::generate_to(command, out)?;
    let mut written: Vec<String> = std::fs::read_dir(out)?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("certconn") && n.ends_with(".1"))
        .collect();
    written.sort();
    println!(
        "{} manual page(s) in {}: {}",
        written.len(),
        out.display(),
        written.join(", ")
    );
    Ok(())
}

/// `certconn check-config`: the config parses and validates, and everything `serve` checks
/// before serving that needs no network passes (see `certconn::app::check`).
async fn check_config(path: &std::path::Path, syntax_only: bool) -> anyhow::Result<()> {
    let config = certconn_config(path)?;
    if syntax_only {
        println!("{}: ok (syntax and references only)", path.display());
        return Ok(());
    }
    let report = certconn::app::check::check(&config).await?;
    for w in &report.warnings {
        eprintln!("warning: {w}");
    }
    if !report.is_ok() {
        for p in &report.problems {
            eprintln!("error: {p}");
        }
        anyhow::bail!(
            "{}: {} problem(s) `certconn serve` would meet",
            path.display(),
            report.problems.len()
        );
    }
    let backends: Vec<String> = report
        .backends
        .iter()
        .map(|(name, version)| format!("{name} ({version})"))
        .collect();
    println!(
        "{}: ok; backends loaded and configured: {}",
        path.display(),
        if backends.is_empty() {
            "none".to_string()
        } else {
            backends.join(", ")
        }
    );
    Ok(())
}

/// A command whose output goes into a pipe that closes early (`certconn jobs list | head -4`)
/// ends the way every Unix tool does — by SIGPIPE, silently — instead of panicking on the write.
/// Rust ignores SIGPIPE by default for the sake of sockets; only the daemon needs that.
fn end_quietly_on_a_closed_pipe() {
    // SAFETY: restoring the default disposition of SIGPIPE before any thread is started
    // affects nothing but how this process reacts to writing into a closed pipe.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

/// Loads the config, as every command does.
pub(crate) fn certconn_config(path: &std::path::Path) -> anyhow::Result<certconn::app::Config> {
    Ok(certconn::app::Config::load(path)?)
}

/// Makes this process non-dumpable with a core limit of 0 before a command reads a key
/// (`custody::core_dumps`), unless the config's `custody` (where the command reads a config)
/// gives cores back.
pub(crate) fn keep_keys_out_of_cores(
    custody: Option<&certconn::custody::CustodyConfig>,
) -> anyhow::Result<()> {
    use anyhow::Context;
    use certconn::custody::core_dumps;
    match custody {
        Some(custody) => core_dumps::deny_unless_allowed(custody),
        None => core_dumps::deny(),
    }
    .context("keeping the keys in memory out of core files (custody.allow_core_dumps)")
}

/// Reads the API token and makes a client for the daemon the config names.
pub(crate) fn api_client(
    config: &certconn::app::Config,
) -> anyhow::Result<certconn::sources::api::client::ApiClient> {
    let token = certconn::sources::api::token::read(&config.token_file())?;
    Ok(config.api_client(token)?)
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    /// `--help` explains every command and every option: an option without a word of help is
    /// one an administrator has to guess at.
    #[test]
    fn every_command_and_option_says_what_it_is_for() {
        fn walk(cmd: &clap::Command, path: &str, missing: &mut Vec<String>) {
            for arg in cmd.get_arguments() {
                let id = arg.get_id().as_str();
                if matches!(id, "help" | "version") {
                    continue;
                }
                if arg.get_help().is_none() && arg.get_long_help().is_none() {
                    missing.push(format!("{path} <{id}>"));
                }
            }
            for sub in cmd.get_subcommands() {
                if sub.get_name() == "help" {
                    continue;
                }
                let here = format!("{path} {}", sub.get_name());
                if sub.get_about().is_none() && sub.get_long_about().is_none() {
                    missing.push(here.clone());
                }
                walk(sub, &here, missing);
            }
        }
        let mut missing = Vec::new();
        walk(&super::Cli::command(), "certconn", &mut missing);
        assert!(missing.is_empty(), "no help for: {missing:#?}");
    }

    /// A bench of zero jobs or calls would print figures divided by zero (NaN, inf); it is
    /// refused with the reason.
    #[test]
    fn a_bench_of_nothing_is_refused() {
        use clap::Parser;
        for option in ["--jobs", "--calls"] {
            let e = super::Cli::try_parse_from(["certconn", "bench", option, "0"])
                .expect_err("a bench of nothing was accepted");
            assert!(
                e.to_string()
                    .contains(&format!("invalid value '0' for '{option} <")),
                "{e}"
            );
            assert!(e.to_string().contains("must be at least 1"), "{e}");
        }
        assert!(
            super::Cli::try_parse_from(["certconn", "bench", "--jobs", "1", "--calls", "1"])
                .is_ok()
        );
    }

    /// Every `certconn …` command the documents show (the READMEs, `docs/`, the examples'
    /// comments) names commands and options this binary has: a renamed command or option must
    /// not leave the runbook telling an administrator to type one that is refused.
    #[test]
    fn the_documents_name_only_commands_and_options_that_exist() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .expect("the runtime crate sits in the repository");
        let mut files = vec![root.join("README.md"), root.join("sdk/README.md")];
        collect(&root.join("docs"), "md", &mut files);
        collect(&root.join("examples"), "toml", &mut files);
        let mut cli = super::Cli::command();
        cli.build();
        let (mut checked, mut wrong) = (0, Vec::new());
        for file in &files {
            let text = std::fs::read_to_string(file).unwrap();
            let toml = file.extension().is_some_and(|e| e == "toml");
            for (line, snippet, strict) in snippets(&text, toml) {
                for (command, first) in commands_in(&snippet) {
                    checked += 1;
                    if let Err(why) = check(&cli, &command, strict && first) {
                        wrong.push(format!("{}:{line}: {why}: {snippet}", file.display()));
                    }
                }
            }
        }
        assert!(wrong.is_empty(), "{}", wrong.join("\n"));
        assert!(
            checked > 100,
            "only {checked} commands found in the documents"
        );
    }

    fn collect(dir: &std::path::Path, ext: &str, files: &mut Vec<std::path::PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                collect(&path, ext, files);
            } else if path.extension().is_some_and(|e| e == ext) {
                files.push(path);
            }
        }
    }

    /// Where commands are written: lines of fenced blocks and inline code spans (`strict`:
    /// what follows `certconn` there must be a command), and in TOML, comment lines (prose as
    /// often as commands).
    fn snippets(text: &str, toml: bool) -> Vec<(usize, String, bool)> {
        let mut out = Vec::new();
        let mut fenced = false;
        for (i, line) in text.lines().enumerate() {
            if toml {
                if line.trim_start().starts_with('#') {
                    out.push((i + 1, line.to_owned(), false));
                }
            } else if line.trim_start().starts_with("```") {
                fenced = !fenced;
            } else if fenced {
                out.push((i + 1, line.to_owned(), true));
            } else {
                out.extend(
                    line.split('`')
                        .skip(1)
                        .step_by(2)
                        .map(|s| (i + 1, s.to_owned(), true)),
                );
            }
        }
        out
    }

    /// The words after each `certconn` that may begin a command, up to where the shell would
    /// end it, and whether it begins the snippet (then it must be a command: `strict`).
    fn commands_in(snippet: &str) -> Vec<(Vec<String>, bool)> {
        let text = snippet.trim_start().trim_start_matches("$ ");
        let mut out = Vec::new();
        let mut rest = text;
        let mut previous_word = "";
        while let Some(at) = rest.find("certconn ") {
            let before = &rest[..at];
            let begins = before
                .chars()
                .last()
                .is_none_or(|c| c.is_whitespace() || c == '/' || c == '(');
            // `sudo -u certconn`, `cargo build -p certconn`: an option's value, not a command.
            previous_word = before
                .split_whitespace()
                .last()
                .map_or(previous_word, |w| w);
            let value = previous_word.starts_with('-');
            let first = std::ptr::eq(rest, text) && at == 0;
            rest = &rest[at + "certconn ".len()..];
            if begins && !value {
                let words = rest
                    .split_whitespace()
                    // A word ending in ':' is a program's output ("certconn plugin
                    // conformance: …"), not a command.
                    .take_while(|w| {
                        !w.starts_with(['|', ';', '&', '>', '#', '<']) && !w.ends_with(':')
                    })
                    .map(str::to_owned)
                    .collect();
                out.push((words, first));
            }
            previous_word = "certconn";
        }
        out
    }

    /// The subcommand path must exist; after a command with subcommands, the next word must be
    /// one; every `--option` must be one of the command's (globals included). Not `strict`, a
    /// first word that is no command is prose ("certconn issues …").
    fn check(cli: &clap::Command, words: &[String], strict: bool) -> Result<(), String> {
        let mut cmd = cli;
        let mut words = words.iter().peekable();
        let mut path = 0;
        while let Some(sub) = words.peek().and_then(|w| cmd.find_subcommand(w.as_str())) {
            cmd = sub;
            words.next();
            path += 1;
        }
        if path == 0 && !strict {
            return Ok(());
        }
        if cmd.has_subcommands() {
            if let Some(w) = words.peek() {
                let placeholder = w.starts_with('-')
                    || w.chars().all(|c| !c.is_ascii_lowercase())
                    || w.contains('|');
                if !placeholder {
                    return Err(format!("`{}` has no subcommand {w:?}", cmd.get_name()));
                }
            }
        }
        for word in words {
            let Some(option) = word.trim_start_matches('[').strip_prefix("--") else {
                continue;
            };
            let long: String = option
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '-')
                .collect();
            let known = long == "help"
                || cmd
                    .get_arguments()
                    .any(|a| a.get_long() == Some(long.as_str()));
            if !long.is_empty() && !known {
                return Err(format!("`{}` has no option --{long}", cmd.get_name()));
            }
        }
        Ok(())
    }
}
