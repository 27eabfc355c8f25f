//! The settings a config file holds outside its rules, and the reading of TOML tables that
//! every part of the config shares: `[daemon]`, `[runtime]` and `[models.<name>]` (in
//! [`sections`]), key-by-key reading (in [`keys`]), the problem list that collects every
//! problem at once, and the value parsers (durations, sizes, paths) that recipes use for
//! their own keys. It knows no recipe: each recipe reads its own keys with these helpers
//! (`crate::recipes`), and `daemon::config` puts the file together.

use crate::core::geometry::Target;
use crate::io::decode::DecodeLimits;
use serde::Deserialize;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

mod http;
mod keys;
mod sections;

pub(crate) use http::{resolve_http, resolve_notify};
pub use http::{HttpSettings, NotifyEvent, NotifyTarget};
pub(crate) use keys::*;
pub(crate) use sections::*;

/// File name patterns a rule takes when it names none: the image formats darkroom decodes.
pub const DEFAULT_PATTERNS: &[&str] = &[
    "*.png", "*.jpg", "*.jpeg", "*.tif", "*.tiff", "*.webp", "*.gif", "*.PNG", "*.JPG", "*.JPEG",
    "*.TIF", "*.TIFF", "*.WEBP", "*.GIF",
];

/// The `[runtime]` table: ONNX Runtime for the model recipes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RuntimeSettings {
    /// libonnxruntime to load; default: found automatically (see `io::onnx::locate`).
    pub onnxruntime: Option<PathBuf>,
    /// Intra-op threads; 0 = one per core.
    pub threads: usize,
    /// `auto` (CUDA when available), `cpu` or `cuda` (required).
    pub provider: crate::io::onnx::Provider,
    /// cuDNN's convolution algorithm choice on CUDA: `heuristic` or `exhaustive`.
    pub cuda_conv_search: crate::io::onnx::ConvSearch,
    /// Memory one model run may use, for models with `tile = "auto"`; default: see
    /// `io::onnx::default_memory_budget`.
    pub memory_budget: Option<u64>,
    /// CUDA devices, one model lane each; empty: one lane on the default device.
    pub devices: Vec<i32>,
}

/// One `[models.<name>]` table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelSpec {
    pub name: String,
    pub path: PathBuf,
    /// Tile size in input pixels (0: whole image), or `auto` (from the memory budget).
    pub tile: crate::core::tiling::TileSize,
    /// Context pixels around each tile.
    pub context: u32,
    /// Domains this model serves (`photo`, `anime`, `sd-anime`, `digital-art`, ...).
    pub domains: Vec<String>,
    /// The scale the model must have (checked when it loads); else probed at the first load.
    pub scale: Option<u32>,
    /// The value range of the model's tensors.
    pub range: crate::io::onnx::ValueRange,
    /// Tiles per run; `AUTO_BATCH` (the default): 4 on CUDA, 1 on the CPU.
    pub batch: usize,
}

/// How long a file that reads as empty or truncated is watched before it is set aside.
pub const DEFAULT_INCOMPLETE_GRACE: Duration = Duration::from_secs(60);

/// The `[daemon]` table, resolved.
#[derive(Debug, Clone)]
pub struct DaemonSettings {
    /// Root of the `processed/`, `metadata/` and `failed/` trees.
    pub root: PathBuf,
    /// This host's own state (and the journal, when it is SQLite).
    pub state_dir: PathBuf,
    /// inotify, polling, or inotify unless a watched folder is on a network filesystem.
    pub watch_mode: crate::daemon::intake::WatchMode,
    /// How often a polling intake scans every watched folder.
    pub poll_interval: Duration,
    /// `sqlite` (in `state_dir`), or the PostgreSQL database several hosts share.
    pub journal: crate::daemon::journal::Location,
    /// This daemon's name among the hosts that share a journal (default: the machine's).
    pub host: String,
    /// How long a running job's lease outlives its host's last heartbeat: past it, another
    /// host takes the job over.
    pub lease_timeout: Duration,
    /// What this host does among those that share the journal.
    pub roles: Roles,
    /// Rolling log files.
    pub log_dir: PathBuf,
    /// `error`, `warn`, `info`, `debug` or `trace` (or any `RUST_LOG` directive).
    pub log_level: String,
    /// Jobs run at once.
    pub workers: usize,
    /// How long size, mtime and inode must stay the same before a file is claimed.
    pub stability_window: Duration,
    /// How long a file that reads as empty or truncated stays in place, watched, before it
    /// is set aside: a writer that appends in rounds (FTP, SMB, sync tools) may still be
    /// adding to it. A change within the grace claims it again as it now is.
    pub incomplete_grace: Duration,
    /// How long SIGTERM waits for running jobs before leaving them to the next start.
    pub shutdown_timeout: Duration,
    /// Attempts of a job that keeps failing transiently before it is given up.
    pub max_attempts: u32,
    /// Wait before the first retry; doubled each further attempt.
    pub retry_backoff: Duration,
    /// Longest a job may run; past it, the job is set aside (its input in `failed/`) and a
    /// fresh worker takes its place.
    pub job_timeout: Duration,
    pub limits: DecodeLimits,
}

/// What a host does among the hosts that share a journal: `[daemon] roles`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Roles {
    /// May be elected to scan the folders (claims), watch the deadlines and send webhooks.
    pub intake: bool,
    /// Runs the jobs of rules without models (splits, merges, normalising).
    pub cpu: bool,
    /// Runs the jobs of rules with a model or a model tool (upscale, enhance, tools).
    pub model: bool,
}

impl Default for Roles {
    fn default() -> Self {
        Roles {
            intake: true,
            cpu: true,
            model: true,
        }
    }
}

impl fmt::Display for Roles {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = [
            (self.intake, "intake"),
            (self.cpu, "cpu"),
            (self.model, "model"),
        ]
        .iter()
        .filter(|(on, _)| *on)
        .map(|(_, name)| *name)
        .collect();
        f.write_str(&names.join(","))
    }
}

impl DaemonSettings {
    /// How this daemon opens its journal.
    pub fn journal_opening(&self) -> crate::daemon::journal::Opening {
        crate::daemon::journal::Opening {
            location: self.journal.clone(),
            state_dir: self.state_dir.clone(),
            host: self.host.clone(),
            lease: self.lease_timeout,
        }
    }

    /// Several hosts may share the journal.
    pub fn shares_journal(&self) -> bool {
        self.journal != crate::daemon::journal::Location::Sqlite
    }
}

/// What happens to an original once its outputs are durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OriginalsPolicy {
    /// Moved to `processed/<rule>/originals/`.
    Move,
    /// Left where it was dropped (the journal remembers it, so it is not processed twice).
    Keep,
}

/// One configuration problem.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// Dotted key, like `rule[1].size` or `daemon.workers`.
    pub key: String,
    pub line: Option<usize>,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(line) => write!(f, "line {line}: {}: {}", self.key, self.message),
            None => write!(f, "{}: {}", self.key, self.message),
        }
    }
}

/// Every problem found in a config file.
#[derive(Debug, Clone)]
pub struct ConfigErrors {
    pub path: PathBuf,
    pub errors: Vec<ConfigError>,
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "{}: {} problem{}:",
            self.path.display(),
            self.errors.len(),
            if self.errors.len() == 1 { "" } else { "s" }
        )?;
        for error in &self.errors {
            writeln!(f, "  {error}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// What a rule's own keys are resolved against.
pub(crate) struct RuleContext<'a> {
    /// `[daemon] root`: default folders of a rule live under it.
    pub(crate) root: &'a Path,
    /// The config file's folder: relative paths start there.
    pub(crate) base: &'a Path,
    pub(crate) models: &'a std::collections::BTreeMap<String, ModelSpec>,
    /// Whether a rule's ComfyUI servers are asked for their node types.
    pub(crate) ask_tool_servers: bool,
}

/// Collects problems while a config is resolved.
pub(crate) struct Problems {
    source: String,
    pub(crate) errors: Vec<ConfigError>,
    /// What is worth saying but does not stop the config (a tool server not answering yet).
    pub(crate) warnings: Vec<String>,
    key_lines: KeyLines,
}

impl Problems {
    /// An empty list for the config `text`.
    pub(crate) fn new(text: &str) -> Problems {
        Problems {
            source: text.to_string(),
            errors: Vec::new(),
            warnings: Vec::new(),
            key_lines: KeyLines::of(text),
        }
    }

    /// Records a problem at the line of the key it names, or else at `line` (its table's).
    pub(crate) fn push(
        &mut self,
        key: impl Into<String>,
        line: Option<usize>,
        message: impl Into<String>,
    ) {
        let key = key.into();
        let line = self.key_lines.line(&key).or(line);
        self.errors.push(ConfigError {
            key,
            line,
            message: message.into(),
        });
    }

    /// Records a warning about `key`.
    pub(crate) fn warn(&mut self, key: &str, message: impl std::fmt::Display) {
        self.warnings.push(format!("{key}: {message}"));
    }

    pub(crate) fn line_of(&self, offset: usize) -> usize {
        self.source[..offset.min(self.source.len())]
            .bytes()
            .filter(|&b| b == b'\n')
            .count()
            + 1
    }
}

pub(crate) fn resolve_path(base: &Path, path: &Path) -> PathBuf {
    let joined = if path.is_absolute() {
        path.to_path_buf()
    } else {
        base.join(path)
    };
    normalise_lexically(&joined)
}

/// Removes `.` and `..` components without touching the file system (folders may not exist yet).
fn normalise_lexically(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for component in path.components() {
        match component {
            std::path::Component::CurDir => {}
            std::path::Component::ParentDir => {
                out.pop();
            }
            other => out.push(other),
        }
    }
    out
}

/// Reports keys of `table` that are not in `known`, with a suggestion, and removes them so the
/// remaining keys can still be checked.
pub(crate) fn reject_unknown_keys(
    table: &mut toml::Table,
    known: &[&str],
    prefix: &str,
    line: usize,
    problems: &mut Problems,
) {
    let unknown: Vec<String> = table
        .keys()
        .filter(|k| !known.contains(&k.as_str()))
        .cloned()
        .collect();
    for key in unknown {
        table.remove(&key);
        let hint = closest(&key, known)
            .map(|k| format!(" (did you mean `{k}`?)"))
            .unwrap_or_default();
        let (path, what) = if prefix.is_empty() {
            (key.clone(), "unknown table")
        } else {
            (format!("{prefix}.{key}"), "unknown key")
        };
        let listed = if prefix.is_empty() { "tables" } else { "keys" };
        problems.push(
            path,
            Some(line),
            format!("{what}{hint}; known {listed}: {}", known.join(", ")),
        );
    }
}

pub(crate) fn closest<'a>(word: &str, candidates: &[&'a str]) -> Option<&'a str> {
    candidates
        .iter()
        .map(|c| (edit_distance(word, c), *c))
        .filter(|(d, c)| *d <= 2.max(c.len() / 3))
        .min()
        .map(|(_, c)| c)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut previous = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != *cb);
            let next = (row[j + 1] + 1).min(row[j] + 1).min(previous + cost);
            previous = row[j + 1];
            row[j + 1] = next;
        }
    }
    row[b.len()]
}

/// A duration as a person writes it: `90s`, `30m`, `2h`, `1.5s`.
pub fn format_duration(d: Duration) -> String {
    let secs = d.as_secs_f64();
    if secs >= 3600.0 && secs % 3600.0 == 0.0 {
        format!("{}h", secs / 3600.0)
    } else if secs >= 60.0 && secs % 60.0 == 0.0 {
        format!("{}m", secs / 60.0)
    } else {
        format!("{secs}s")
    }
}

/// Parses `"2s"`, `"500ms"`, `"10m"`, `"24h"`, `"1.5s"` or a bare number of seconds.
pub fn parse_duration(value: &toml::Value) -> Result<Duration, String> {
    let seconds = match value {
        toml::Value::Integer(n) => *n as f64,
        toml::Value::Float(x) => *x,
        toml::Value::String(text) => {
            let text = text.trim();
            let split = text
                .find(|c: char| !(c.is_ascii_digit() || c == '.'))
                .unwrap_or(text.len());
            let (number, unit) = text.split_at(split);
            let number: f64 = number.parse().map_err(|_| {
                format!(
                    "'{text}' is not a duration; write e.g. \"2s\", \"500ms\", \"10m\", \"24h\""
                )
            })?;
            let scale = match unit.trim() {
                "ms" => 0.001,
                "" | "s" | "sec" => 1.0,
                "m" | "min" => 60.0,
                "h" => 3600.0,
                "d" => 86400.0,
                other => {
                    return Err(format!(
                        "unknown unit '{other}' in '{text}': use ms, s, m, h or d"
                    ))
                }
            };
            number * scale
        }
        other => {
            return Err(format!(
                "expected a duration like \"2s\", found {}",
                other.type_str()
            ))
        }
    };
    if !seconds.is_finite() || seconds < 0.0 {
        return Err("a duration must be zero or more".into());
    }
    if seconds > LONGEST_DURATION_SECONDS {
        return Err(format!(
            "{seconds:e} seconds is longer than any timer can count; a duration is at most 1000 \
             years (\"365000d\")"
        ));
    }
    Ok(Duration::from_secs_f64(seconds))
}

/// The longest duration a config may give: far past any real wait, and far inside what
/// clocks plus durations can hold.
const LONGEST_DURATION_SECONDS: f64 = 365_000.0 * 86_400.0;

pub(crate) fn duration_or(
    value: Option<toml::Value>,
    default: Duration,
    key: String,
    line: usize,
    problems: &mut Problems,
) -> Duration {
    match value {
        None => default,
        Some(value) => parse_duration(&value).unwrap_or_else(|message| {
            problems.push(key, Some(line), message);
            default
        }),
    }
}

/// An optional text key parsed with its `FromStr`, the error recorded under `label.key`.
pub(crate) fn parse_key<T: std::str::FromStr<Err = String>>(
    text: Option<&str>,
    label: &str,
    key: &str,
    line: usize,
    problems: &mut Problems,
) -> Option<T> {
    text.and_then(|t| {
        t.parse()
            .map_err(|e| problems.push(format!("{label}.{key}"), Some(line), e))
            .ok()
    })
}

/// The output format of a model rule (default png), checked.
pub(crate) fn check_output_format(
    format: Option<String>,
    label: &str,
    line: usize,
    problems: &mut Problems,
) -> String {
    let format = format.unwrap_or_else(|| "png".into());
    if !["png", "tiff", "tif", "webp", "jpg", "jpeg"].contains(&format.as_str()) {
        problems.push(
            format!("{label}.output_format"),
            Some(line),
            format!("'{format}': use png, tiff, webp or jpg"),
        );
    }
    format
}

/// The `[models.<name>]` table a rule's `key` names, or a problem listing the models.
pub(crate) fn model_named(
    name: &str,
    models: &std::collections::BTreeMap<String, ModelSpec>,
    key: &str,
    line: usize,
    problems: &mut Problems,
) -> Option<ModelSpec> {
    let found = models.get(name).cloned();
    if found.is_none() {
        let names = models.keys().cloned().collect::<Vec<_>>().join(", ");
        problems.push(
            key.to_string(),
            Some(line),
            format!("no [models.{name}] table; models: {names}"),
        );
    }
    found
}

/// `"1024x1024"`, `"1024"` (square) or `"25%"`.
pub fn parse_size(text: &str) -> Result<Target, String> {
    text.parse::<Target>()
        .map_err(|e| format!("{e}; a proxy size is e.g. \"1024x1024\" or \"25%\""))
}

pub(crate) fn inside(path: &Path, dir: &Path) -> bool {
    path.starts_with(dir)
}
