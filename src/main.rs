//! The `tandem` command: parse the CLI, load and validate the config, bind, serve, and handle
//! signals (SIGTERM/SIGINT drain, SIGHUP reload, SIGUSR1 reopen the log files); or one of the
//! packaging subcommands (completions, man page, health probe).

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{CommandFactory, Parser, Subcommand};
use tokio::signal::unix::{signal, SignalKind};

use tandem::app::App;
use tandem::config::Config;
use tandem::logging::{self, LogFiles};
use tandem::runtime::Runtime;
use tandem::server::ListenerKind;
use tandem::session::clock::SystemClock;

/// Exit status for an invalid config file (sysexits' EX_CONFIG).
const EXIT_CONFIG: u8 = 78;

/// mimalloc instead of glibc's malloc: allocation and free were 4-5% of tandem's CPU per
/// request under load (perf), and mimalloc's thread-local free lists cut that.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// What `--help` and the man page say after the options.
const SIGNALS_AND_EXIT_STATUS: &str = "\
SIGTERM or SIGINT drains: tandem stops accepting, lets in-flight requests finish for up to \
listen.shutdown_timeout, and exits 0. SIGHUP reloads the config file; a broken file is refused \
and the running config stays.

Exit status: 0 after a drain or a valid --check; 78 for an invalid config; 1 when tandem \
cannot start.

Under systemd (Type=notify), tandem sends READY=1 once it serves as /readyz says, RELOADING=1 \
then READY=1 around a reload, and STOPPING=1 when a drain begins.";

/// HTTP reverse-proxy load balancer with sticky sessions and a replicated session store.
#[derive(Parser)]
#[command(
    version,
    about,
    after_long_help = SIGNALS_AND_EXIT_STATUS,
    args_conflicts_with_subcommands = true,
    disable_help_subcommand = true
)]
struct Cli {
    /// Config file (TOML); see config.example.toml for every key.
    #[arg(
        short,
        long,
        value_name = "FILE",
        default_value = "/etc/tandem/tandem.toml"
    )]
    config: PathBuf,
    /// Validate the config file, print every error found, and exit (0 when valid).
    #[arg(long)]
    check: bool,
    #[command(subcommand)]
    command: Option<Command>,
}

/// Helpers for packaging and operating tandem; without one, tandem serves.
#[derive(Subcommand)]
enum Command {
    /// Print a completion script for SHELL, e.g. `tandem completions bash >
    /// /usr/share/bash-completion/completions/tandem`.
    Completions {
        /// The shell to complete in.
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff), e.g. `tandem man | man -l -`; with --dir, write it and one
    /// page per subcommand there, e.g. `tandem man --dir /usr/share/man/man1`.
    Man {
        /// Write tandem.1 and tandem-SUBCOMMAND.1 into this directory instead.
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
    },
    /// GET URL (http:// only) and exit 0 if it answers 200, else 1: for container health checks
    /// in images without curl, e.g. `tandem healthcheck http://127.0.0.1:9090/healthz`.
    Healthcheck {
        /// The URL to probe: the admin listener's /healthz or /readyz.
        url: String,
        /// Give up after this long (humantime: 500ms, 5s).
        #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
        timeout: Duration,
    },
}

/// Runs a subcommand, which needs no config file.
fn run_command(command: Command) -> ExitCode {
    let mut stdout = std::io::stdout();
    let written = match command {
        Command::Completions { shell } => {
            clap_complete::generate(shell, &mut Cli::command(), "tandem", &mut stdout);
            Ok(())
        }
        Command::Man { dir: None } => clap_mangen::Man::new(Cli::command()).render(&mut stdout),
        Command::Man { dir: Some(dir) } => clap_mangen::generate_to(Cli::command(), &dir),
        Command::Healthcheck { url, timeout } => {
            return match tandem::healthcheck::probe(&url, timeout) {
                Ok(()) => ExitCode::SUCCESS,
                Err(reason) => {
                    eprintln!("tandem healthcheck: {reason}");
                    ExitCode::FAILURE
                }
            };
        }
    };
    match written {
        // A pager or `head` that quit early is no failure.
        Ok(()) => ExitCode::SUCCESS,
        Err(error) if error.kind() == std::io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("tandem: {error}");
            ExitCode::FAILURE
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(command) = cli.command {
        return run_command(command);
    }
    let config = match Config::load(&cli.config) {
        Ok(config) => config,
        Err(errors) => {
            eprintln!("{errors}");
            eprintln!(
                "tandem: {} error(s) in {}",
                errors.0.len(),
                cli.config.display()
            );
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    if cli.check {
        let backends: usize = config.pools.iter().map(|p| p.backends.len()).sum();
        println!(
            "{}: valid ({} pool(s), {} backend(s))",
            cli.config.display(),
            config.pools.len(),
            backends
        );
        return ExitCode::SUCCESS;
    }
    raise_open_file_limit();
    let log_guard = match logging::init(&config.log) {
        Ok(guard) => guard,
        Err(error) => {
            eprintln!("tandem: {error}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("tandem: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(run(config, log_guard.files()))
}

async fn run(config: Config, log_files: LogFiles) -> ExitCode {
    let app = match App::bind(config, Arc::new(SystemClock)).await {
        Ok(app) => app,
        Err(error) => {
            tracing::error!(%error, "cannot start");
            return ExitCode::FAILURE;
        }
    };
    let (mut terminate, mut interrupt, hangup, user1) = match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
        signal(SignalKind::hangup()),
        signal(SignalKind::user_defined1()),
    ) {
        (Ok(t), Ok(i), Ok(h), Ok(u)) => (t, i, h, u),
        _ => {
            tracing::error!("cannot install signal handlers");
            return ExitCode::FAILURE;
        }
    };
    for (address, kind) in app.public_addresses() {
        match kind {
            ListenerKind::Plain => tracing::info!(%address, "listening"),
            ListenerKind::Tls => tracing::info!(%address, "listening with TLS"),
            ListenerKind::RedirectToHttps(port) => {
                tracing::info!(%address, https_port = port, "listening, redirecting to HTTPS")
            }
        }
    }
    if let Some(address) = app.cluster_address() {
        tracing::info!(peer_address = %address, "peer listener ready");
    }
    if let Some(address) = app.admin_address() {
        tracing::info!(admin_address = %address, "admin listener ready");
    }
    tokio::spawn(reload_on_hangup(hangup, app.runtime()));
    tokio::spawn(reopen_logs_on_user1(user1, log_files, app.runtime()));
    let shutdown = async {
        tokio::select! {
            _ = terminate.recv() => tracing::info!("SIGTERM received"),
            _ = interrupt.recv() => tracing::info!("SIGINT received"),
        }
    };
    // A drain that ran out of time is logged by `serve`; either way the exit is clean, as an
    // orchestrator expects after SIGTERM.
    let drained = app.serve(shutdown).await;
    tracing::info!(all_connections_finished = drained, "stopped");
    ExitCode::SUCCESS
}

/// Raises the soft limit of open files to the hard limit, as nginx's `worker_rlimit_nofile`
/// does: every client and backend connection is a file, and distributions default the soft
/// limit to 1024.
fn raise_open_file_limit() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        if soft < hard {
            let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
        }
    }
}

/// Reloads the config on each SIGHUP; a broken file is logged and the running config stays.
async fn reload_on_hangup(mut hangup: tokio::signal::unix::Signal, runtime: Arc<Runtime>) {
    while hangup.recv().await.is_some() {
        let file = runtime.snapshot().config.path.display().to_string();
        match runtime.reload_file() {
            Ok(warnings) => {
                for warning in warnings {
                    tracing::warn!("{warning}");
                }
                tracing::info!(%file, "config reloaded");
            }
            Err(errors) => {
                for error in &errors.0 {
                    tracing::error!(%error, "config error");
                }
                tracing::error!(%file, "reload refused; the running config stays");
            }
        }
    }
}

/// Opens the log files anew at their paths on each SIGUSR1, as nginx does, so that logrotate
/// can move them away; a file that cannot be opened (its directory gone or not writable) is
/// logged and keeps being written where it was.
async fn reopen_logs_on_user1(
    mut user1: tokio::signal::unix::Signal,
    files: LogFiles,
    runtime: Arc<Runtime>,
) {
    let reopens = &runtime.metrics.log_reopens;
    while user1.recv().await.is_some() {
        if files.is_empty() {
            tracing::info!("SIGUSR1: no log file to reopen (the logs go to stdout or stderr)");
            continue;
        }
        match files.reopen() {
            Ok(()) => {
                reopens.with_label_values(&["ok"]).inc();
                tracing::info!("log files reopened");
            }
            Err(errors) => {
                reopens.with_label_values(&["failed"]).inc();
                for error in errors {
                    tracing::error!(%error, "cannot reopen a log file; writing on to the one it had");
                }
            }
        }
    }
}
