//! Logging for `darkroom serve`: human-readable lines on stderr (without timestamps or
//! colours when journald captures them, since the journal adds its own) and the same lines
//! in daily rolling files under the log folder.

use crate::daemon::config::DaemonSettings;
use tracing_subscriber::fmt::writer::MakeWriterExt;
use tracing_subscriber::EnvFilter;

/// Keeps the file writer flushing; hold it for the life of the daemon.
pub struct LogGuard {
    _guard: tracing_appender::non_blocking::WorkerGuard,
}

/// The config's level, with the file watcher's own chatter (it logs, at info, each watch it
/// cannot remove because its folder is already gone) kept to warnings unless the level
/// names the watcher itself.
fn default_directives(log_level: &str) -> String {
    if log_level.contains("notify") {
        log_level.to_string()
    } else {
        format!("{log_level},notify=warn")
    }
}

/// Installs the global subscriber. `RUST_LOG`, when set, overrides the config's level.
pub fn init(settings: &DaemonSettings) -> std::io::Result<LogGuard> {
    std::fs::create_dir_all(&settings.log_dir)?;
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new(default_directives(&settings.log_level)));
    let appender = tracing_appender::rolling::Builder::new()
        .rotation(tracing_appender::rolling::Rotation::DAILY)
        .filename_prefix("darkroom")
        .filename_suffix("log")
        .max_log_files(14)
        .build(&settings.log_dir)
        .map_err(std::io::Error::other)?;
    let (file_writer, guard) = tracing_appender::non_blocking(appender);
    let under_journald = std::env::var_os("JOURNAL_STREAM").is_some();
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let stderr_layer = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr.with_max_level(tracing::Level::TRACE))
        .with_target(false)
        .with_ansi(!under_journald && std::io::IsTerminal::is_terminal(&std::io::stderr()));
    let file_layer = tracing_subscriber::fmt::layer()
        .with_writer(file_writer)
        .with_target(false)
        .with_ansi(false);
    let registry = tracing_subscriber::registry().with(filter).with(file_layer);
    if under_journald {
        registry.with(stderr_layer.without_time()).init();
    } else {
        registry.with(stderr_layer).init();
    }
    Ok(LogGuard { _guard: guard })
}
