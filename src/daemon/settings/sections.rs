//! `[daemon]`, `[runtime]` and `[models.<name>]`: the daemon's own settings and the model tables.

use super::*;
use crate::daemon::journal::Location;

/// `[daemon]` defaults (`incomplete_grace`'s is [`DEFAULT_INCOMPLETE_GRACE`]).
pub(crate) const DEFAULT_ROOT: &str = "var";
pub(crate) const DEFAULT_WORKERS: usize = 1;
pub(crate) const DEFAULT_MAX_ATTEMPTS: u32 = 5;
pub(crate) const DEFAULT_STABILITY_WINDOW: Duration = Duration::from_secs(2);
pub(crate) const DEFAULT_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(30);
pub(crate) const DEFAULT_JOB_TIMEOUT: Duration = Duration::from_secs(30 * 60);
pub(crate) const DEFAULT_RETRY_BACKOFF: Duration = Duration::from_secs(5);

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRuntime {
    pub(crate) onnxruntime: Option<PathBuf>,
    pub(crate) threads: Option<usize>,
    pub(crate) provider: Option<String>,
    pub(crate) cuda_conv_search: Option<String>,
    pub(crate) memory_budget_mib: Option<u64>,
    pub(crate) devices: Option<Vec<i64>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawModel {
    pub(crate) path: PathBuf,
    pub(crate) tile: Option<toml::Value>,
    pub(crate) context: Option<u32>,
    #[serde(default)]
    pub(crate) domains: Vec<String>,
    pub(crate) scale: Option<u32>,
    pub(crate) input_range: Option<String>,
    pub(crate) batch: Option<toml::Value>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawDaemon {
    pub(crate) root: Option<PathBuf>,
    pub(crate) state_dir: Option<PathBuf>,
    pub(crate) log_dir: Option<PathBuf>,
    pub(crate) log_level: Option<String>,
    pub(crate) workers: Option<usize>,
    pub(crate) stability_window: Option<toml::Value>,
    pub(crate) incomplete_grace: Option<toml::Value>,
    pub(crate) shutdown_timeout: Option<toml::Value>,
    pub(crate) max_attempts: Option<u32>,
    pub(crate) retry_backoff: Option<toml::Value>,
    pub(crate) job_timeout: Option<toml::Value>,
    pub(crate) limits: Option<RawLimits>,
    pub(crate) journal: Option<String>,
    pub(crate) host: Option<String>,
    pub(crate) lease_timeout: Option<toml::Value>,
    pub(crate) watch_mode: Option<String>,
    pub(crate) roles: Option<Vec<String>>,
    pub(crate) poll_interval: Option<toml::Value>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawLimits {
    pub(crate) max_megapixels: Option<u64>,
    pub(crate) max_file_mib: Option<u64>,
    pub(crate) max_alloc_mib: Option<u64>,
    pub(crate) max_side: Option<u32>,
}

/// How often a polling intake scans the watched folders by default.
pub const DEFAULT_POLL_INTERVAL: Duration = Duration::from_secs(2);

/// How long a host's leases outlive its last heartbeat by default.
pub const DEFAULT_LEASE_TIMEOUT: Duration = Duration::from_secs(15);

/// This machine's host name (`gethostname`), the default `[daemon] host`.
fn this_machine() -> String {
    let mut buffer = [0u8; 256];
    // SAFETY: the buffer is valid for its length; gethostname writes at most that much.
    let ok = unsafe { libc::gethostname(buffer.as_mut_ptr().cast(), buffer.len()) } == 0;
    let end = buffer.iter().position(|&b| b == 0).unwrap_or(buffer.len());
    match std::str::from_utf8(&buffer[..end]) {
        Ok(name) if ok && !name.is_empty() => name.to_string(),
        _ => "localhost".to_string(),
    }
}

pub(crate) fn resolve_daemon(
    table: Option<toml::Spanned<toml::Table>>,
    base: &Path,
    problems: &mut Problems,
) -> DaemonSettings {
    let (raw, line) = match table {
        None => (RawDaemon::default(), 1),
        Some(spanned) => {
            let line = problems.line_of(spanned.span().start);
            let raw: RawDaemon = read_table(spanned.into_inner(), "daemon", line, problems);
            (raw, line)
        }
    };
    let root = resolve_path(base, raw.root.as_deref().unwrap_or(Path::new(DEFAULT_ROOT)));
    let state_dir = raw
        .state_dir
        .map(|p| resolve_path(base, &p))
        .unwrap_or_else(|| root.join("state"));
    let log_dir = raw
        .log_dir
        .map(|p| resolve_path(base, &p))
        .unwrap_or_else(|| root.join("metadata").join("logs"));
    let log_level = raw.log_level.unwrap_or_else(|| "info".into());
    if tracing_subscriber::EnvFilter::try_new(&log_level).is_err() {
        problems.push(
            "daemon.log_level",
            Some(line),
            format!("'{log_level}' is not a log level: use error, warn, info, debug or trace"),
        );
    }
    let workers = raw.workers.unwrap_or(DEFAULT_WORKERS);
    if workers == 0 || workers > 64 {
        problems.push("daemon.workers", Some(line), "must be between 1 and 64");
    }
    let max_attempts = raw.max_attempts.unwrap_or(DEFAULT_MAX_ATTEMPTS);
    if max_attempts == 0 {
        problems.push("daemon.max_attempts", Some(line), "must be at least 1");
    }
    let stability_window = duration_or(
        raw.stability_window,
        DEFAULT_STABILITY_WINDOW,
        "daemon.stability_window".into(),
        line,
        problems,
    );
    let incomplete_grace = duration_or(
        raw.incomplete_grace,
        DEFAULT_INCOMPLETE_GRACE,
        "daemon.incomplete_grace".into(),
        line,
        problems,
    );
    if incomplete_grace <= stability_window {
        problems.push(
            "daemon.incomplete_grace",
            Some(line),
            format!(
                "must be longer than stability_window ({}): a file that reads as truncated is \
                 watched that long for a writer still appending to it",
                format_duration(stability_window)
            ),
        );
    }
    let shutdown_timeout = duration_or(
        raw.shutdown_timeout,
        DEFAULT_SHUTDOWN_TIMEOUT,
        "daemon.shutdown_timeout".into(),
        line,
        problems,
    );
    let job_timeout = duration_or(
        raw.job_timeout,
        DEFAULT_JOB_TIMEOUT,
        "daemon.job_timeout".into(),
        line,
        problems,
    );
    let retry_backoff = duration_or(
        raw.retry_backoff,
        DEFAULT_RETRY_BACKOFF,
        "daemon.retry_backoff".into(),
        line,
        problems,
    );
    let mut limits = DecodeLimits::default();
    if let Some(raw_limits) = raw.limits {
        if let Some(mp) = raw_limits.max_megapixels {
            limits.max_pixels = mp.saturating_mul(1_000_000);
        }
        if let Some(mib) = raw_limits.max_file_mib {
            limits.max_file_bytes = mib.saturating_mul(1 << 20);
        }
        if let Some(mib) = raw_limits.max_alloc_mib {
            limits.max_alloc_bytes = mib.saturating_mul(1 << 20);
        }
        if let Some(side) = raw_limits.max_side {
            limits.max_side = side;
        }
        if limits.max_pixels == 0 || limits.max_file_bytes == 0 || limits.max_alloc_bytes == 0 {
            problems.push("daemon.limits", Some(line), "limits must be above zero");
        }
    }
    let journal = match raw.journal.as_deref() {
        None => Location::Sqlite,
        Some(text) => Location::parse(text).unwrap_or_else(|message| {
            problems.push("daemon.journal", Some(line), message);
            Location::Sqlite
        }),
    };
    let host = raw.host.unwrap_or_else(this_machine);
    if host.is_empty()
        || host.len() > 64
        || host.chars().any(|c| c.is_whitespace() || c.is_control())
    {
        problems.push(
            "daemon.host",
            Some(line),
            format!("'{host}' is not a host name: 1 to 64 characters, no spaces"),
        );
    }
    let lease_timeout = duration_or(
        raw.lease_timeout,
        DEFAULT_LEASE_TIMEOUT,
        "daemon.lease_timeout".into(),
        line,
        problems,
    );
    if lease_timeout < Duration::from_secs(1) {
        problems.push(
            "daemon.lease_timeout",
            Some(line),
            "must be at least 1s: a host renews its leases three times per lease_timeout",
        );
    }
    let mut roles = Roles::default();
    if let Some(names) = &raw.roles {
        roles = Roles {
            intake: false,
            cpu: false,
            model: false,
        };
        for name in names {
            match name.as_str() {
                "intake" => roles.intake = true,
                "cpu" => roles.cpu = true,
                "model" => roles.model = true,
                other => problems.push(
                    "daemon.roles",
                    Some(line),
                    format!("'{other}' is not a role: use intake, cpu and model"),
                ),
            }
        }
        if !(roles.intake || roles.cpu || roles.model) {
            problems.push("daemon.roles", Some(line), "a host needs at least one role");
        }
        if roles != Roles::default() && journal == Location::Sqlite {
            problems.push(
                "daemon.roles",
                Some(line),
                "roles divide the work between hosts that share a journal: set journal to a \
                 postgresql:// URL, or remove roles (a single host does everything)",
            );
        }
    }
    let watch_mode = parsed_or_default(
        raw.watch_mode.as_deref(),
        "daemon.watch_mode",
        line,
        problems,
    );
    let poll_interval = duration_or(
        raw.poll_interval,
        DEFAULT_POLL_INTERVAL,
        "daemon.poll_interval".into(),
        line,
        problems,
    );
    if poll_interval < Duration::from_millis(100) {
        problems.push(
            "daemon.poll_interval",
            Some(line),
            "must be at least 100ms: each poll scans every watched folder",
        );
    }
    DaemonSettings {
        root,
        state_dir,
        watch_mode,
        poll_interval: poll_interval.max(Duration::from_millis(100)),
        journal,
        host,
        lease_timeout: lease_timeout.max(Duration::from_secs(1)),
        roles,
        log_dir,
        log_level,
        workers: workers.clamp(1, 64),
        stability_window,
        incomplete_grace,
        shutdown_timeout,
        max_attempts: max_attempts.max(1),
        retry_backoff,
        job_timeout,
        limits,
    }
}

pub(crate) fn resolve_runtime(
    table: Option<toml::Spanned<toml::Table>>,
    base: &Path,
    problems: &mut Problems,
) -> RuntimeSettings {
    let Some(spanned) = table else {
        return RuntimeSettings::default();
    };
    let line = problems.line_of(spanned.span().start);
    let raw: RawRuntime = read_table(spanned.into_inner(), "runtime", line, problems);
    let provider = parsed_or_default(raw.provider.as_deref(), "runtime.provider", line, problems);
    let cuda_conv_search = parsed_or_default(
        raw.cuda_conv_search.as_deref(),
        "runtime.cuda_conv_search",
        line,
        problems,
    );
    let mut devices = Vec::new();
    for device in raw.devices.unwrap_or_default() {
        match i32::try_from(device) {
            Ok(d) if (0..=255).contains(&d) && !devices.contains(&d) => devices.push(d),
            _ if devices.contains(&(device as i32)) => problems.push(
                "runtime.devices",
                Some(line),
                format!("device {device} is listed twice: one lane per device"),
            ),
            _ => problems.push(
                "runtime.devices",
                Some(line),
                format!(
                    "{device} is not a CUDA device index: use 0, 1, ... as nvidia-smi lists them"
                ),
            ),
        }
    }
    RuntimeSettings {
        onnxruntime: raw.onnxruntime.map(|p| resolve_path(base, &p)),
        threads: raw.threads.unwrap_or(0),
        provider,
        cuda_conv_search,
        memory_budget: raw.memory_budget_mib.map(|mib| mib.saturating_mul(1 << 20)),
        devices,
    }
}

/// A word of the config parsed, or `T`'s default when the key is absent; a word that does
/// not parse is reported under `key`, and the default stands in so that checking goes on.
fn parsed_or_default<T: std::str::FromStr<Err = String> + Default>(
    text: Option<&str>,
    key: impl Into<String>,
    line: usize,
    problems: &mut Problems,
) -> T {
    text.map_or(Ok(T::default()), str::parse)
        .unwrap_or_else(|e| {
            problems.push(key, Some(line), e);
            T::default()
        })
}

pub(crate) fn resolve_models(
    tables: std::collections::BTreeMap<String, toml::Spanned<toml::Table>>,
    base: &Path,
    problems: &mut Problems,
) -> std::collections::BTreeMap<String, ModelSpec> {
    let mut models = std::collections::BTreeMap::new();
    for (name, spanned) in tables {
        let line = problems.line_of(spanned.span().start);
        let label = format!("models.{name}");
        let table = spanned.into_inner();
        if !table.contains_key("path") {
            problems.push(
                format!("{label}.path"),
                Some(line),
                "missing: the model's .onnx file",
            );
        }
        let raw: RawModel = read_table(table, &label, line, problems);
        if raw.path.as_os_str().is_empty() {
            continue;
        }
        let path = resolve_path(base, &raw.path);
        if !path.is_file() {
            problems.push(
                format!("{label}.path"),
                Some(line),
                format!("{} is not a file", path.display()),
            );
        }
        let stem = crate::io::names::stem_of(&path);
        let tile = match &raw.tile {
            None => crate::core::tiling::TileSize::default(),
            Some(toml::Value::Integer(side)) if (0..=65_535).contains(side) => {
                crate::core::tiling::TileSize::Fixed(*side as u32)
            }
            Some(toml::Value::String(text)) if text.trim().eq_ignore_ascii_case("auto") => {
                crate::core::tiling::TileSize::Auto
            }
            Some(other) => {
                problems.push(
                    format!("{label}.tile"),
                    Some(line),
                    format!(
                        "{}: a side in pixels (0 = whole image) or \"auto\"",
                        as_written(other)
                    ),
                );
                crate::core::tiling::TileSize::default()
            }
        };
        let range: crate::io::onnx::ValueRange = parsed_or_default(
            raw.input_range.as_deref(),
            format!("{label}.input_range"),
            line,
            problems,
        );
        if raw.scale.is_some_and(|s| !(1..=16).contains(&s)) {
            problems.push(
                format!("{label}.scale"),
                Some(line),
                "must be 1 to 16 (or left out: the scale is then measured)".to_string(),
            );
        }
        let batch = match &raw.batch {
            None => crate::io::onnx::AUTO_BATCH,
            Some(toml::Value::String(text)) if text.trim().eq_ignore_ascii_case("auto") => {
                crate::io::onnx::AUTO_BATCH
            }
            Some(toml::Value::Integer(n))
                if (1..=crate::io::onnx::MAX_BATCH as i64).contains(n) =>
            {
                *n as usize
            }
            Some(other) => {
                problems.push(
                    format!("{label}.batch"),
                    Some(line),
                    format!(
                        "{}: 1 to {} tiles per run, or \"auto\" ({} on CUDA, 1 on the CPU)",
                        as_written(other),
                        crate::io::onnx::MAX_BATCH,
                        crate::io::onnx::CUDA_BATCH
                    ),
                );
                crate::io::onnx::AUTO_BATCH
            }
        };
        models.insert(
            name.clone(),
            ModelSpec {
                name,
                context: raw
                    .context
                    .unwrap_or_else(|| crate::ops::upscale::recommended_context(&stem)),
                path,
                tile,
                domains: raw.domains,
                scale: raw.scale,
                range,
                batch,
            },
        );
    }
    models
}

/// A TOML value the way a config file writes it (`0`, `"big"`), for a problem that quotes it;
/// a table or an array is named by its kind.
fn as_written(value: &toml::Value) -> String {
    match value {
        toml::Value::String(text) => format!("{text:?}"),
        toml::Value::Integer(n) => n.to_string(),
        toml::Value::Float(x) => x.to_string(),
        toml::Value::Boolean(b) => b.to_string(),
        toml::Value::Datetime(when) => when.to_string(),
        other => format!(
            "a{} {}",
            if other.is_array() { "n" } else { "" },
            other.type_str()
        ),
    }
}
