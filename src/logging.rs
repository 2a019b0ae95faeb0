//! Logging with `tracing`: the application log on stderr, and the access log (one line per
//! request, target `tandem::access`) on stdout, stderr or a file, as text or JSON.

use std::fs::OpenOptions;
use std::io;

use tracing::Level;
use tracing_appender::non_blocking::{NonBlockingBuilder, WorkerGuard};
use tracing_subscriber::filter::{EnvFilter, Targets};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{Layer, Registry};

use crate::config::{AccessLogTarget, LogConfig, LogFormat};

/// The target access-log lines are written under.
pub const ACCESS_TARGET: &str = "tandem::access";

/// Keeps the access log's writer thread alive; dropping it flushes what is buffered.
pub struct LogGuard {
    _writer: Option<WorkerGuard>,
}

/// Installs the global subscriber. `RUST_LOG`, when set, overrides `log.level`.
pub fn init(config: &LogConfig) -> io::Result<LogGuard> {
    let level = std::env::var("RUST_LOG").unwrap_or_else(|_| config.level.clone());
    let app_filter = EnvFilter::try_new(format!("{level},{ACCESS_TARGET}=off"))
        .unwrap_or_else(|_| EnvFilter::new(format!("info,{ACCESS_TARGET}=off")));
    let mut layers = vec![format_layer(config.format, io::stderr, true)
        .with_filter(app_filter)
        .boxed()];

    let guard = match &config.access_log {
        AccessLogTarget::Off => None,
        target => {
            let writer: Box<dyn io::Write + Send> = match target {
                AccessLogTarget::Stdout => Box::new(io::stdout()),
                AccessLogTarget::Stderr => Box::new(io::stderr()),
                AccessLogTarget::File(path) => Box::new(
                    OpenOptions::new()
                        .create(true)
                        .append(true)
                        .open(path)
                        .map_err(|e| {
                            io::Error::new(
                                e.kind(),
                                format!("cannot open access log {}: {e}", path.display()),
                            )
                        })?,
                ),
                AccessLogTarget::Off => unreachable!("handled above"),
            };
            // Lossless: under a flood the request path waits for the log rather than losing lines.
            let (writer, guard) = NonBlockingBuilder::default().lossy(false).finish(writer);
            let filter = Targets::new().with_target(ACCESS_TARGET, Level::INFO);
            layers.push(
                format_layer(config.format, writer, false)
                    .with_filter(filter)
                    .boxed(),
            );
            Some(guard)
        }
    };
    tracing_subscriber::registry()
        .with(layers)
        .try_init()
        .map_err(|e| io::Error::other(format!("cannot install the logger: {e}")))?;
    Ok(LogGuard { _writer: guard })
}

/// A text or JSON formatter writing to `writer`; access lines carry no level or target.
fn format_layer<W>(
    format: LogFormat,
    writer: W,
    with_level: bool,
) -> Box<dyn Layer<Registry> + Send + Sync>
where
    W: for<'w> tracing_subscriber::fmt::MakeWriter<'w> + Send + Sync + 'static,
{
    let layer = tracing_subscriber::fmt::layer()
        .with_writer(writer)
        .with_ansi(false);
    match format {
        LogFormat::Text => Box::new(layer.with_target(with_level).with_level(with_level)),
        LogFormat::Json => Box::new(layer.json().with_target(with_level).with_level(with_level)),
    }
}
