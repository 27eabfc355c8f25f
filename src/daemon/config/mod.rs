//! The daemon's TOML configuration: raw serde structs that refuse unknown keys, resolved into
//! a checked [`Config`]. Every problem is collected and reported at once, each with its key
//! and, where known, its line.
//!
//! Relative paths are resolved against the folder that holds the config file, so a config
//! works the same whatever directory the daemon is started from.

use crate::core::delta::DeltaDepth;
use crate::core::geometry::Target;
use crate::io::decode::DecodeLimits;
use crate::io::external::UpscaleMethod;
use serde::Deserialize;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

mod checks;
mod keys;
mod rules;
mod settings;
#[cfg(test)]
mod tests;

use checks::*;
use keys::*;
use rules::*;
use settings::*;

/// File name patterns a rule takes when it names none: the image formats darkroom decodes.
pub const DEFAULT_PATTERNS: &[&str] = &[
    "*.png", "*.jpg", "*.jpeg", "*.tif", "*.tiff", "*.webp", "*.gif", "*.PNG", "*.JPG", "*.JPEG",
    "*.TIF", "*.TIFF", "*.WEBP", "*.GIF",
];

/// A checked configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file it was read from.
    pub path: PathBuf,
    pub daemon: DaemonSettings,
    pub runtime: RuntimeSettings,
    /// `[models.<name>]`, by name.
    pub models: std::collections::BTreeMap<String, ModelSpec>,
    pub rules: Vec<Rule>,
}

/// The `[runtime]` table: ONNX Runtime for the model recipes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RuntimeSettings {
    /// libonnxruntime to load; default: found automatically (see `io::onnx::locate`).
    pub onnxruntime: Option<PathBuf>,
    /// Intra-op threads; 0 = one per core.
    pub threads: usize,
    /// `auto` (CUDA when available), `cpu` or `cuda` (required).
    pub provider: crate::io::onnx::Provider,
    /// Memory one model run may use, for models with `tile = "auto"`; default: see
    /// `io::onnx::default_memory_budget`.
    pub memory_budget: Option<u64>,
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
    /// Tiles per run.
    pub batch: usize,
}

/// How long a file that reads as empty or truncated is watched before it is set aside.
pub const DEFAULT_INCOMPLETE_GRACE: Duration = Duration::from_secs(60);

/// The `[daemon]` table, resolved.
#[derive(Debug, Clone)]
pub struct DaemonSettings {
    /// Root of the `processed/`, `metadata/` and `failed/` trees.
    pub root: PathBuf,
    /// Where the journal lives.
    pub state_dir: PathBuf,
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

/// One `[[rule]]`: a watched folder and what to do with what lands in it.
#[derive(Debug, Clone)]
pub struct Rule {
    pub name: String,
    pub watch: PathBuf,
    pub patterns: Vec<glob::Pattern>,
    pub originals: OriginalsPolicy,
    pub recipe: Recipe,
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

/// The recipes. Each carries its own checked options; the watcher and the journal only see
/// the rule name.
#[derive(Debug, Clone)]
pub enum Recipe {
    SplitToProxy(SplitToProxy),
    Upscale(Upscale),
    Normalise(Normalise),
}

/// Options of `normalise`: dataset preparation (see `ops::normalise`).
#[derive(Debug, Clone)]
pub struct Normalise {
    pub options: crate::ops::normalise::NormaliseOptions,
    /// Enlarges sources too small for the preset (else they are rejected).
    pub upscale_model: Option<ModelSpec>,
}

impl Recipe {
    pub fn name(&self) -> &'static str {
        match self {
            Recipe::SplitToProxy(_) => "split-to-proxy",
            Recipe::Upscale(u) if u.enhance.is_some() => "enhance",
            Recipe::Upscale(_) => "upscale",
            Recipe::Normalise(_) => "normalise",
        }
    }
}

/// Options of `upscale`: super-resolution with one model.
#[derive(Debug, Clone)]
pub struct Upscale {
    pub model: ModelSpec,
    /// Output file extension: png (default), tiff, webp or jpg.
    pub output_format: String,
    /// Model passes (default 1); ignored when `target` is set.
    pub passes: u32,
    /// Exact output size: enough passes, then Lanczos3.
    pub target: Option<(u32, u32)>,
    /// Unsharp mask after the model.
    pub sharpen: Option<crate::core::filters::Unsharp>,
    /// Set for the `enhance` recipe: the output keeps the input's size, and the model runs
    /// on the full image or on a proxy merged back.
    pub enhance: Option<crate::ops::enhance::Via>,
    /// Corrections before the model (run on the worker).
    pub pre: crate::core::corrections::PreFilters,
    /// A model run before the main one at the input's size (an ONNX denoiser; a model
    /// that enlarges is brought back to the input's size), after `pre`.
    pub denoise_model: Option<ModelSpec>,
    /// Smoothing after the model, before `sharpen` (run on the worker).
    pub smooth: Option<crate::core::corrections::Smoothing>,
}

/// Options of `split-to-proxy` and its merge-when-processed-appears step.
#[derive(Debug, Clone)]
pub struct SplitToProxy {
    pub size: Target,
    pub exchange_out: PathBuf,
    pub exchange_in: PathBuf,
    pub return_timeout: Duration,
    pub return_grace: Duration,
    pub refine: bool,
    pub delta_depth: DeltaDepth,
    pub upscale_method: UpscaleMethod,
    pub command_timeout: Duration,
    /// Lowest correlation of a content match (0..1).
    pub match_threshold: f64,
    /// The best content match must beat the second best by this much, or the return is held.
    pub match_margin: f64,
    /// How the returned proxy's change reaches the original: guided (default) or additive.
    pub merge_method: crate::ops::merge::MergeMethod,
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

/// The top-level tables (unknown ones are reported by [`Config::parse`], not by serde).
#[derive(Deserialize)]
struct RawDocument {
    daemon: Option<toml::Spanned<toml::Table>>,
    runtime: Option<toml::Spanned<toml::Table>>,
    #[serde(default)]
    models: std::collections::BTreeMap<String, toml::Spanned<toml::Table>>,
    #[serde(default)]
    rule: Vec<toml::Spanned<toml::Table>>,
}

const RECIPES: &[&str] = &["split-to-proxy", "upscale", "enhance", "normalise"];

/// Collects problems while a config is resolved.
struct Problems {
    source: String,
    errors: Vec<ConfigError>,
    key_lines: KeyLines,
}

impl Problems {
    /// Records a problem at the line of the key it names, or else at `line` (its table's).
    fn push(&mut self, key: impl Into<String>, line: Option<usize>, message: impl Into<String>) {
        let key = key.into();
        let line = self.key_lines.line(&key).or(line);
        self.errors.push(ConfigError {
            key,
            line,
            message: message.into(),
        });
    }

    fn line_of(&self, offset: usize) -> usize {
        self.source[..offset.min(self.source.len())]
            .bytes()
            .filter(|&b| b == b'\n')
            .count()
            + 1
    }
}

impl Config {
    /// Reads and checks a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigErrors {
            path: path.to_path_buf(),
            errors: vec![ConfigError {
                key: "(file)".into(),
                line: None,
                message: format!("cannot read: {e}"),
            }],
        })?;
        Config::parse(
            &text,
            &std::path::absolute(path).unwrap_or(path.to_path_buf()),
        )
    }

    /// Checks config text; `path` names it in errors and anchors relative paths.
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigErrors> {
        let base = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let base = std::path::absolute(&base).unwrap_or(base);
        let mut problems = Problems {
            source: text.to_string(),
            errors: Vec::new(),
            key_lines: KeyLines::of(text),
        };
        let fail = |mut problems: Problems| {
            // In the order of the file, as an editor shows it.
            problems
                .errors
                .sort_by_key(|e| e.line.unwrap_or(usize::MAX));
            ConfigErrors {
                path: path.to_path_buf(),
                errors: problems.errors,
            }
        };
        let document: RawDocument = match toml::from_str::<toml::Table>(text) {
            Err(error) => {
                let line = error.span().map(|s| problems.line_of(s.start));
                problems.push("(toml)", line, error.message().trim().to_string());
                return Err(fail(problems));
            }
            Ok(mut top) => {
                // Unknown tables are problems of their own; the known ones are still read.
                reject_unknown_keys(&mut top, fields_of::<RawDocument>(), "", 1, &mut problems);
                match toml::from_str(text) {
                    Ok(document) => document,
                    Err(error) => {
                        let line = error.span().map(|s| problems.line_of(s.start));
                        problems.push("(toml)", line, error.message().trim().to_string());
                        return Err(fail(problems));
                    }
                }
            }
        };

        let daemon = resolve_daemon(document.daemon, &base, &mut problems);
        let runtime = resolve_runtime(document.runtime, &base, &mut problems);
        let models = resolve_models(document.models, &base, &mut problems);
        let mut rules = Vec::new();
        for (index, table) in document.rule.into_iter().enumerate() {
            let context = RuleContext {
                root: &daemon.root,
                base: &base,
                models: &models,
            };
            if let Some(rule) = resolve_rule(index, table, &context, &mut problems) {
                rules.push(rule);
            }
        }
        if rules.is_empty() && problems.errors.is_empty() {
            problems.push(
                "rule",
                None,
                "no [[rule]] tables: add at least one, e.g. name = \"photos\", recipe = \"split-to-proxy\"",
            );
        }
        check_rules_together(&rules, &daemon, &mut problems);
        if problems.errors.is_empty() {
            Ok(Config {
                path: path.to_path_buf(),
                daemon,
                runtime,
                models,
                rules,
            })
        } else {
            Err(fail(problems))
        }
    }

    /// Every folder the daemon writes into (for `ReadWritePaths=` and for creating them).
    pub fn writable_dirs(&self) -> Vec<PathBuf> {
        let mut dirs = vec![
            self.daemon.root.clone(),
            self.daemon.state_dir.clone(),
            self.daemon.log_dir.clone(),
        ];
        for rule in &self.rules {
            dirs.push(rule.watch.clone());
            match &rule.recipe {
                Recipe::SplitToProxy(options) => {
                    dirs.push(options.exchange_out.clone());
                    dirs.push(options.exchange_in.clone());
                }
                Recipe::Upscale(_) | Recipe::Normalise(_) => {}
            }
        }
        dirs
    }

    pub fn rule(&self, name: &str) -> Option<&Rule> {
        self.rules.iter().find(|r| r.name == name)
    }
}

fn resolve_path(base: &Path, path: &Path) -> PathBuf {
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
fn reject_unknown_keys(
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

fn closest<'a>(word: &str, candidates: &[&'a str]) -> Option<&'a str> {
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

/// Parses `"2s"`, `"500ms"`, `"10m"`, `"24h"`, `"1.5s"` or a bare number of seconds.
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
    Ok(Duration::from_secs_f64(seconds))
}

fn duration_or(
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
