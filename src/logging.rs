//! Logging: the application log on stderr with `tracing`, and the access log (one line per
//! request, [`access`] says in which format) on stdout, stderr or a file, written by
//! [`write_access`] through a writer thread. A log file
//! is opened anew at its path on SIGUSR1 ([`LogFiles::reopen`]), so that logrotate can move it
//! away, as with nginx.

use std::fs::{File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::SystemTime;

use tracing_appender::non_blocking::{NonBlocking, NonBlockingBuilder, WorkerGuard};
use tracing_subscriber::filter::EnvFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{Layer, Registry};

use crate::config::{AccessLogTarget, LogConfig, LogFormat};

pub mod access;

pub use access::{AccessEntry, AccessFormat};

/// The access log, once [`init`] opened it; never set while `access_log = "off"`.
static ACCESS_LOG: OnceLock<AccessLog> = OnceLock::new();

/// Where access-log lines go, and how they look.
struct AccessLog {
    format: AccessFormat,
    writer: NonBlocking,
}

/// Whether access-log lines are written: when not, the request path gathers nothing for them.
pub fn access_log_on() -> bool {
    ACCESS_LOG.get().is_some()
}

/// Writes one request's access-log line, if the access log is on.
pub fn write_access(entry: &AccessEntry<'_>) {
    let Some(log) = ACCESS_LOG.get() else { return };
    let mut line = Vec::with_capacity(512);
    log.format.write(entry, SystemTime::now(), &mut line);
    // The writer thread takes the line; it fails only once that thread is gone (at exit).
    let _ = io::Write::write_all(&mut log.writer.clone(), &line);
}

/// Keeps the access log's writer thread alive; dropping it flushes what is buffered.
pub struct LogGuard {
    _writer: Option<WorkerGuard>,
    files: LogFiles,
}

impl LogGuard {
    /// The log files being written, to reopen after a rotation.
    pub fn files(&self) -> LogFiles {
        self.files.clone()
    }
}

/// The log files tandem writes (the access log, when it goes to a file), each reopenable at
/// its path: after logrotate renamed a file, SIGUSR1 makes tandem write to a new one.
#[derive(Clone, Default)]
pub struct LogFiles(Vec<Arc<ReopenableFile>>);

impl LogFiles {
    /// Opens every log file anew at its path and writes there from now on (lines already
    /// queued may land in either file). A file that cannot be opened keeps the one it had;
    /// the errors are returned, each naming its file.
    pub fn reopen(&self) -> Result<(), Vec<io::Error>> {
        let errors: Vec<io::Error> = self
            .0
            .iter()
            .filter_map(|file| file.reopen().err())
            .collect();
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors)
        }
    }

    /// Whether there is no log file to reopen (every log goes to stdout or stderr).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// A log file and its path; the file behind a mutex, taken by the log's writer thread for each
/// write (uncontended but for a reopen) and by [`LogFiles::reopen`] to swap in a new file.
struct ReopenableFile {
    path: PathBuf,
    file: Mutex<File>,
}

impl ReopenableFile {
    fn open(path: &Path) -> io::Result<ReopenableFile> {
        Ok(ReopenableFile {
            path: path.to_path_buf(),
            file: Mutex::new(open_for_append(path)?),
        })
    }

    /// Opens the path anew and swaps the new file in; on error the old file stays.
    fn reopen(&self) -> io::Result<()> {
        // Opened before the lock is taken: the writer thread waits only for the swap.
        let fresh = open_for_append(&self.path)?;
        *self.current() = fresh;
        Ok(())
    }

    fn current(&self) -> MutexGuard<'_, File> {
        self.file
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// The writer of a log file's writer thread: whatever file is current.
struct CurrentFile(Arc<ReopenableFile>);

impl io::Write for CurrentFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.current().write(buf)
    }

    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        self.0.current().write_all(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.0.current().flush()
    }
}

/// Opens `path` to append to, creating it; the error names the file.
fn open_for_append(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| io::Error::new(e.kind(), format!("cannot open {}: {e}", path.display())))
}

/// Installs the global subscriber. `RUST_LOG`, when set, overrides `log.level`.
pub fn init(config: &LogConfig) -> io::Result<LogGuard> {
    let level = std::env::var("RUST_LOG").unwrap_or_else(|_| config.level.clone());
    let app_filter = EnvFilter::try_new(level).unwrap_or_else(|_| EnvFilter::new("info"));
    let app_layer = format_layer(config.format, io::stderr).with_filter(app_filter);

    let mut files = LogFiles::default();
    let guard = match &config.access_log {
        AccessLogTarget::Off => None,
        target => {
            let writer: Box<dyn io::Write + Send> = match target {
                AccessLogTarget::Stdout => Box::new(io::stdout()),
                AccessLogTarget::Stderr => Box::new(io::stderr()),
                AccessLogTarget::File(path) => {
                    let file = Arc::new(
                        ReopenableFile::open(path)
                            .map_err(|e| io::Error::new(e.kind(), format!("access log: {e}")))?,
                    );
                    files.0.push(Arc::clone(&file));
                    Box::new(CurrentFile(file))
                }
                AccessLogTarget::Off => unreachable!("handled above"),
            };
            // Lossless: under a flood the request path waits for the log rather than losing lines.
            let (writer, guard) = NonBlockingBuilder::default().lossy(false).finish(writer);
            let log = AccessLog {
                format: config.access_format.clone(),
                writer,
            };
            if ACCESS_LOG.set(log).is_err() {
                return Err(io::Error::other("the access log is already open"));
            }
            Some(guard)
        }
    };
    tracing_subscriber::registry()
        .with(app_layer)
        .try_init()
        .map_err(|e| io::Error::other(format!("cannot install the logger: {e}")))?;
    Ok(LogGuard {
        _writer: guard,
        files,
    })
}

/// The application log's text or JSON formatter, writing to `writer`.
fn format_layer<W>(format: LogFormat, writer: W) -> Box<dyn Layer<Registry> + Send + Sync>
where
    W: for<'w> tracing_subscriber::fmt::MakeWriter<'w> + Send + Sync + 'static,
{
    let layer = tracing_subscriber::fmt::layer()
        .with_writer(writer)
        .with_ansi(false);
    match format {
        LogFormat::Text => Box::new(layer),
        LogFormat::Json => Box::new(layer.json()),
    }
}
