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

/// File name patterns a rule takes when it names none: the image formats darkroom decodes.
pub const DEFAULT_PATTERNS: &[&str] = &[
    "*.png", "*.jpg", "*.jpeg", "*.tif", "*.tiff", "*.webp", "*.PNG", "*.JPG", "*.JPEG", "*.TIF",
    "*.TIFF", "*.WEBP",
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

/// The keys every model rule (upscale, enhance) shares: the model, the output, and the
/// corrections around the model.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawModelRule {
    model: Option<String>,
    domain: Option<String>,
    output_format: Option<String>,
    sharpen: Option<String>,
    white_balance: Option<String>,
    exposure: Option<String>,
    deblock: Option<bool>,
    denoise: Option<String>,
    denoise_model: Option<String>,
    smooth: Option<String>,
}

const MODEL_RULE_KEYS: &[&str] = &[
    "model",
    "domain",
    "output_format",
    "sharpen",
    "white_balance",
    "exposure",
    "deblock",
    "denoise",
    "denoise_model",
    "smooth",
];

/// A model rule's shared keys, resolved.
struct ModelRule {
    model: ModelSpec,
    output_format: String,
    sharpen: Option<crate::core::filters::Unsharp>,
    pre: crate::core::corrections::PreFilters,
    denoise_model: Option<ModelSpec>,
    smooth: Option<crate::core::corrections::Smoothing>,
}

impl ModelRule {
    /// Takes the shared keys out of a rule's `table` (leaving the recipe's own) and resolves
    /// them; `None` when the model cannot be resolved (the problem is recorded).
    fn take(
        table: &mut toml::value::Table,
        models: &std::collections::BTreeMap<String, ModelSpec>,
        label: &str,
        line: usize,
        problems: &mut Problems,
    ) -> Option<ModelRule> {
        let mut shared = toml::value::Table::new();
        for key in MODEL_RULE_KEYS {
            if let Some(value) = table.remove(*key) {
                shared.insert(key.to_string(), value);
            }
        }
        let raw: RawModelRule = table_or_default(shared, label, line, problems);
        let white_balance = match raw.white_balance.as_deref() {
            None | Some("off") | Some("none") => false,
            Some("gray-world") | Some("grey-world") => true,
            Some(other) => {
                problems.push(
                    format!("{label}.white_balance"),
                    Some(line),
                    format!("'{other}': use \"gray-world\" or \"off\""),
                );
                false
            }
        };
        let exposure = parse_key(raw.exposure.as_deref(), label, "exposure", line, problems);
        let denoise = parse_key(raw.denoise.as_deref(), label, "denoise", line, problems);
        let smooth = parse_key(raw.smooth.as_deref(), label, "smooth", line, problems);
        let sharpen = parse_key(raw.sharpen.as_deref(), label, "sharpen", line, problems);
        let output_format = check_output_format(raw.output_format, label, line, problems);
        let denoise_model = raw.denoise_model.as_ref().and_then(|name| {
            model_named(
                name,
                models,
                &format!("{label}.denoise_model"),
                line,
                problems,
            )
        });
        let model =
            resolve_upscale_model((&raw.model, &raw.domain), models, label, line, problems)?;
        Some(ModelRule {
            model,
            denoise_model,
            output_format,
            sharpen,
            pre: crate::core::corrections::PreFilters {
                white_balance,
                exposure,
                deblock: raw.deblock.unwrap_or(false),
                denoise,
            },
            smooth,
        })
    }
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

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDocument {
    daemon: Option<toml::Spanned<toml::Table>>,
    runtime: Option<toml::Spanned<toml::Table>>,
    #[serde(default)]
    models: std::collections::BTreeMap<String, toml::Spanned<toml::Table>>,
    #[serde(default)]
    rule: Vec<toml::Spanned<toml::Table>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawRuntime {
    onnxruntime: Option<PathBuf>,
    threads: Option<usize>,
    provider: Option<String>,
    memory_budget_mib: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawModel {
    path: PathBuf,
    tile: Option<toml::Value>,
    context: Option<u32>,
    #[serde(default)]
    domains: Vec<String>,
    scale: Option<u32>,
    input_range: Option<String>,
    batch: Option<usize>,
}

/// The keys of an upscale rule beyond [`MODEL_RULE_KEYS`].
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawUpscale {
    passes: Option<u32>,
    target: Option<String>,
}

const UPSCALE_KEYS: &[&str] = &["passes", "target"];

/// The keys of an enhance rule beyond [`MODEL_RULE_KEYS`].
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawEnhance {
    via: Option<String>,
    size: Option<String>,
    merge_method: Option<String>,
}

const ENHANCE_KEYS: &[&str] = &["via", "size", "merge_method"];

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawDaemon {
    root: Option<PathBuf>,
    state_dir: Option<PathBuf>,
    log_dir: Option<PathBuf>,
    log_level: Option<String>,
    workers: Option<usize>,
    stability_window: Option<toml::Value>,
    incomplete_grace: Option<toml::Value>,
    shutdown_timeout: Option<toml::Value>,
    max_attempts: Option<u32>,
    retry_backoff: Option<toml::Value>,
    job_timeout: Option<toml::Value>,
    limits: Option<RawLimits>,
}

const DAEMON_KEYS: &[&str] = &[
    "root",
    "state_dir",
    "log_dir",
    "log_level",
    "workers",
    "stability_window",
    "incomplete_grace",
    "shutdown_timeout",
    "max_attempts",
    "retry_backoff",
    "job_timeout",
    "limits",
];

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawLimits {
    max_megapixels: Option<u64>,
    max_file_mib: Option<u64>,
    max_alloc_mib: Option<u64>,
    max_side: Option<u32>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRuleCommon {
    name: String,
    recipe: String,
    watch: Option<PathBuf>,
    patterns: Option<Vec<String>>,
    originals: Option<OriginalsPolicy>,
}

const COMMON_KEYS: &[&str] = &["name", "recipe", "watch", "patterns", "originals"];

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawSplitToProxy {
    size: Option<String>,
    exchange_out: Option<PathBuf>,
    exchange_in: Option<PathBuf>,
    return_timeout: Option<toml::Value>,
    return_grace: Option<toml::Value>,
    refine: Option<bool>,
    delta_depth: Option<u8>,
    upscale_method: Option<String>,
    command_timeout: Option<toml::Value>,
    match_threshold: Option<f64>,
    match_margin: Option<f64>,
    merge_method: Option<String>,
}

const SPLIT_TO_PROXY_KEYS: &[&str] = &[
    "size",
    "exchange_out",
    "exchange_in",
    "return_timeout",
    "return_grace",
    "refine",
    "delta_depth",
    "upscale_method",
    "command_timeout",
    "match_threshold",
    "match_margin",
    "merge_method",
];

const RECIPES: &[&str] = &["split-to-proxy", "upscale", "enhance", "normalise"];

/// Collects problems while a config is resolved.
struct Problems {
    source: String,
    errors: Vec<ConfigError>,
}

impl Problems {
    fn push(&mut self, key: impl Into<String>, line: Option<usize>, message: impl Into<String>) {
        self.errors.push(ConfigError {
            key: key.into(),
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
        };
        let fail = |problems: Problems| ConfigErrors {
            path: path.to_path_buf(),
            errors: problems.errors,
        };
        let document: RawDocument = match toml::from_str(text) {
            Ok(document) => document,
            Err(error) => {
                let line = error.span().map(|s| problems.line_of(s.start));
                problems.push("(toml)", line, error.message().trim().to_string());
                return Err(fail(problems));
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
        problems.push(
            format!("{prefix}.{key}"),
            Some(line),
            format!("unknown key{hint}; known keys: {}", known.join(", ")),
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

fn resolve_daemon(
    table: Option<toml::Spanned<toml::Table>>,
    base: &Path,
    problems: &mut Problems,
) -> DaemonSettings {
    let (raw, line) = match table {
        None => (RawDaemon::default(), 1),
        Some(spanned) => {
            let line = problems.line_of(spanned.span().start);
            let mut table = spanned.into_inner();
            reject_unknown_keys(&mut table, DAEMON_KEYS, "daemon", line, problems);
            match toml::Value::Table(table).try_into::<RawDaemon>() {
                Ok(raw) => (raw, line),
                Err(e) => {
                    problems.push("daemon", Some(line), e.message().trim().to_string());
                    (RawDaemon::default(), line)
                }
            }
        }
    };
    let root = resolve_path(base, raw.root.as_deref().unwrap_or(Path::new("var")));
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
    let workers = raw.workers.unwrap_or(1);
    if workers == 0 || workers > 64 {
        problems.push("daemon.workers", Some(line), "must be between 1 and 64");
    }
    let max_attempts = raw.max_attempts.unwrap_or(5);
    if max_attempts == 0 {
        problems.push("daemon.max_attempts", Some(line), "must be at least 1");
    }
    let stability_window = duration_or(
        raw.stability_window,
        Duration::from_secs(2),
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
        Duration::from_secs(30),
        "daemon.shutdown_timeout".into(),
        line,
        problems,
    );
    let job_timeout = duration_or(
        raw.job_timeout,
        Duration::from_secs(30 * 60),
        "daemon.job_timeout".into(),
        line,
        problems,
    );
    let retry_backoff = duration_or(
        raw.retry_backoff,
        Duration::from_secs(5),
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
    DaemonSettings {
        root,
        state_dir,
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

fn resolve_runtime(
    table: Option<toml::Spanned<toml::Table>>,
    base: &Path,
    problems: &mut Problems,
) -> RuntimeSettings {
    let Some(spanned) = table else {
        return RuntimeSettings::default();
    };
    let line = problems.line_of(spanned.span().start);
    let mut table = spanned.into_inner();
    reject_unknown_keys(
        &mut table,
        &["onnxruntime", "threads", "provider", "memory_budget_mib"],
        "runtime",
        line,
        problems,
    );
    let raw: RawRuntime = toml::Value::Table(table).try_into().unwrap_or_else(|e| {
        problems.push("runtime", Some(line), e.message().trim().to_string());
        RawRuntime::default()
    });
    let provider = raw
        .provider
        .as_deref()
        .unwrap_or("auto")
        .parse()
        .unwrap_or_else(|e: String| {
            problems.push("runtime.provider", Some(line), e);
            crate::io::onnx::Provider::Auto
        });
    RuntimeSettings {
        onnxruntime: raw.onnxruntime.map(|p| resolve_path(base, &p)),
        threads: raw.threads.unwrap_or(0),
        provider,
        memory_budget: raw.memory_budget_mib.map(|mib| mib.saturating_mul(1 << 20)),
    }
}

fn resolve_models(
    tables: std::collections::BTreeMap<String, toml::Spanned<toml::Table>>,
    base: &Path,
    problems: &mut Problems,
) -> std::collections::BTreeMap<String, ModelSpec> {
    let mut models = std::collections::BTreeMap::new();
    for (name, spanned) in tables {
        let line = problems.line_of(spanned.span().start);
        let label = format!("models.{name}");
        let mut table = spanned.into_inner();
        reject_unknown_keys(
            &mut table,
            &[
                "path",
                "tile",
                "context",
                "domains",
                "scale",
                "input_range",
                "batch",
            ],
            &label,
            line,
            problems,
        );
        let raw: RawModel = match toml::Value::Table(table).try_into() {
            Ok(raw) => raw,
            Err(e) => {
                problems.push(label, Some(line), e.message().trim().to_string());
                continue;
            }
        };
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
                    format!("{other:?}: a side in pixels (0 = whole image) or \"auto\""),
                );
                crate::core::tiling::TileSize::default()
            }
        };
        let range = match raw.input_range.as_deref().map(str::parse) {
            None => crate::io::onnx::ValueRange::Unit,
            Some(Ok(range)) => range,
            Some(Err(e)) => {
                problems.push(format!("{label}.input_range"), Some(line), e);
                crate::io::onnx::ValueRange::Unit
            }
        };
        if raw.scale.is_some_and(|s| !(1..=16).contains(&s)) {
            problems.push(
                format!("{label}.scale"),
                Some(line),
                "must be 1 to 16 (or left out: the scale is then measured)".to_string(),
            );
        }
        if raw.batch.is_some_and(|b| !(1..=64).contains(&b)) {
            problems.push(
                format!("{label}.batch"),
                Some(line),
                "must be 1 to 64 tiles per run".to_string(),
            );
        }
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
                batch: raw.batch.unwrap_or(1),
            },
        );
    }
    models
}

/// What a rule is resolved against.
struct RuleContext<'a> {
    root: &'a Path,
    base: &'a Path,
    models: &'a std::collections::BTreeMap<String, ModelSpec>,
}

fn resolve_rule(
    index: usize,
    spanned: toml::Spanned<toml::Table>,
    context: &RuleContext<'_>,
    problems: &mut Problems,
) -> Option<Rule> {
    let (root, base) = (context.root, context.base);
    let line = problems.line_of(spanned.span().start);
    let mut table = spanned.into_inner();
    let label = match table.get("name").and_then(|v| v.as_str()) {
        Some(name) => format!("rule[{index}] '{name}'"),
        None => format!("rule[{index}]"),
    };
    let recipe_name = table
        .get("recipe")
        .and_then(|v| v.as_str())
        .map(str::to_string);
    let recipe_keys: Vec<&str> = match recipe_name.as_deref() {
        Some("split-to-proxy") => SPLIT_TO_PROXY_KEYS.to_vec(),
        Some("upscale") => [MODEL_RULE_KEYS, UPSCALE_KEYS].concat(),
        Some("enhance") => [MODEL_RULE_KEYS, ENHANCE_KEYS].concat(),
        Some("normalise") | Some("normalize") => {
            [crate::ops::normalise::NORMALISE_KEYS, &["upscale_model"]].concat()
        }
        Some(other) => {
            let hint = closest(other, RECIPES)
                .map(|k| format!(" (did you mean `{k}`?)"))
                .unwrap_or_default();
            problems.push(
                format!("{label}.recipe"),
                Some(line),
                format!(
                    "unknown recipe '{other}'{hint}; recipes: {}",
                    RECIPES.join(", ")
                ),
            );
            return None;
        }
        None => {
            problems.push(
                format!("{label}.recipe"),
                Some(line),
                format!("missing; one of: {}", RECIPES.join(", ")),
            );
            return None;
        }
    };
    let known: Vec<&str> = COMMON_KEYS.iter().chain(&recipe_keys).copied().collect();
    reject_unknown_keys(&mut table, &known, &label, line, problems);

    let mut common_table = toml::Table::new();
    for key in COMMON_KEYS {
        if let Some(value) = table.remove(*key) {
            common_table.insert(key.to_string(), value);
        }
    }
    let common: RawRuleCommon = match toml::Value::Table(common_table).try_into() {
        Ok(common) => common,
        Err(e) => {
            problems.push(label, Some(line), e.message().trim().to_string());
            return None;
        }
    };
    if common.name.is_empty()
        || !common
            .name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        problems.push(
            format!("{label}.name"),
            Some(line),
            "must be non-empty and use only letters, digits, '-' and '_' (it names folders)",
        );
    }
    let watch = common
        .watch
        .map(|p| resolve_path(base, &p))
        .unwrap_or_else(|| root.join("inbox").join(&common.name));
    let mut patterns = Vec::new();
    let texts: Vec<String> = common
        .patterns
        .unwrap_or_else(|| DEFAULT_PATTERNS.iter().map(|s| s.to_string()).collect());
    for text in texts {
        match glob::Pattern::new(&text) {
            Ok(p) => patterns.push(p),
            Err(e) => problems.push(
                format!("{label}.patterns"),
                Some(line),
                format!("'{text}' is not a glob pattern: {e}"),
            ),
        }
    }
    let recipe = match common.recipe.as_str() {
        "split-to-proxy" => {
            let raw: RawSplitToProxy = table_or_default(table, &label, line, problems);
            Recipe::SplitToProxy(resolve_split_to_proxy(
                raw,
                &common.name,
                &label,
                line,
                root,
                base,
                problems,
            ))
        }
        "upscale" => {
            let mut table = table;
            let shared = ModelRule::take(&mut table, context.models, &label, line, problems);
            let raw: RawUpscale = table_or_default(table, &label, line, problems);
            let passes = raw.passes.unwrap_or(1);
            if !(1..=4).contains(&passes) {
                problems.push(format!("{label}.passes"), Some(line), "must be 1 to 4");
            }
            let target = raw.target.as_deref().and_then(|t| {
                crate::ops::upscale::parse_target(t)
                    .map_err(|e| problems.push(format!("{label}.target"), Some(line), e))
                    .ok()
            });
            let shared = shared?;
            Recipe::Upscale(Upscale {
                model: shared.model,
                output_format: shared.output_format,
                passes: passes.clamp(1, 4),
                target,
                sharpen: shared.sharpen,
                enhance: None,
                pre: shared.pre,
                denoise_model: shared.denoise_model,
                smooth: shared.smooth,
            })
        }
        "enhance" => {
            let mut table = table;
            let shared = ModelRule::take(&mut table, context.models, &label, line, problems);
            let raw: RawEnhance = table_or_default(table, &label, line, problems);
            let size =
                parse_size(raw.size.as_deref().unwrap_or("1024x1024")).unwrap_or_else(|message| {
                    problems.push(format!("{label}.size"), Some(line), message);
                    Target::pixels(1024, 1024)
                });
            let method = raw
                .merge_method
                .as_deref()
                .unwrap_or("guided")
                .parse::<crate::ops::merge::MergeMethod>()
                .unwrap_or_else(|message| {
                    problems.push(format!("{label}.merge_method"), Some(line), message);
                    crate::ops::merge::MergeMethod::Additive
                });
            let via = match raw.via.as_deref().unwrap_or("full") {
                "full" => {
                    for (key, set) in [
                        ("size", raw.size.is_some()),
                        ("merge_method", raw.merge_method.is_some()),
                    ] {
                        if set {
                            problems.push(
                                format!("{label}.{key}"),
                                Some(line),
                                "only means something with via = \"proxy\"",
                            );
                        }
                    }
                    crate::ops::enhance::Via::Full
                }
                "proxy" => crate::ops::enhance::Via::Proxy { size, method },
                other => {
                    problems.push(
                        format!("{label}.via"),
                        Some(line),
                        format!("'{other}': use \"full\" (the whole image, tiled) or \"proxy\""),
                    );
                    crate::ops::enhance::Via::Full
                }
            };
            let shared = shared?;
            Recipe::Upscale(Upscale {
                model: shared.model,
                output_format: shared.output_format,
                passes: 1,
                target: None,
                sharpen: shared.sharpen,
                enhance: Some(via),
                pre: shared.pre,
                denoise_model: shared.denoise_model,
                smooth: shared.smooth,
            })
        }
        "normalise" | "normalize" => {
            let mut table = table;
            let key = format!("{label}.upscale_model");
            let upscale_model = match table.remove("upscale_model") {
                None => None,
                Some(toml::Value::String(name)) => {
                    model_named(&name, context.models, &key, line, problems)
                }
                Some(other) => {
                    problems.push(
                        key,
                        Some(line),
                        format!("{other:?}: the name of a [models.<name>] table"),
                    );
                    None
                }
            };
            let settings: crate::ops::normalise::NormaliseSettings =
                table_or_default(table, &label, line, problems);
            let options = match settings.resolve() {
                Ok(options) => options,
                Err(found) => {
                    for (key, message) in found {
                        problems.push(format!("{label}.{key}"), Some(line), message);
                    }
                    return None;
                }
            };
            Recipe::Normalise(Normalise {
                options,
                upscale_model,
            })
        }
        _ => unreachable!("recipe names are checked above"),
    };
    Some(Rule {
        name: common.name,
        watch,
        patterns,
        originals: common.originals.unwrap_or(OriginalsPolicy::Move),
        recipe,
    })
}

fn resolve_split_to_proxy(
    raw: RawSplitToProxy,
    name: &str,
    label: &str,
    line: usize,
    root: &Path,
    base: &Path,
    problems: &mut Problems,
) -> SplitToProxy {
    let size_text = raw.size.unwrap_or_else(|| "1024x1024".into());
    let size = parse_size(&size_text).unwrap_or_else(|message| {
        problems.push(format!("{label}.size"), Some(line), message);
        Target::pixels(1024, 1024)
    });
    let delta_depth = match raw.delta_depth.unwrap_or(8) {
        8 => DeltaDepth::Eight,
        16 => DeltaDepth::Sixteen,
        other => {
            problems.push(
                format!("{label}.delta_depth"),
                Some(line),
                format!("{other} bits: use 8 (imgproxyproc-compatible) or 16"),
            );
            DeltaDepth::Eight
        }
    };
    let upscale_method = match raw
        .upscale_method
        .as_deref()
        .unwrap_or("basic")
        .parse::<UpscaleMethod>()
    {
        Ok(method) => method,
        Err(e) => {
            problems.push(format!("{label}.upscale_method"), Some(line), e.to_string());
            UpscaleMethod::Basic
        }
    };
    let match_threshold = raw.match_threshold.unwrap_or(0.90);
    if !(0.0..=1.0).contains(&match_threshold) {
        problems.push(
            format!("{label}.match_threshold"),
            Some(line),
            "must be between 0 and 1 (a correlation)",
        );
    }
    let match_margin = raw.match_margin.unwrap_or(0.02);
    if !(0.0..=1.0).contains(&match_margin) {
        problems.push(
            format!("{label}.match_margin"),
            Some(line),
            "must be between 0 and 1",
        );
    }
    // Guided by default; additive when the rule upscales deltas with an external tool.
    let default_method = match upscale_method {
        UpscaleMethod::Command(_) => "additive",
        UpscaleMethod::Basic => "guided",
    };
    let merge_method = raw
        .merge_method
        .as_deref()
        .unwrap_or(default_method)
        .parse::<crate::ops::merge::MergeMethod>()
        .unwrap_or_else(|message| {
            problems.push(format!("{label}.merge_method"), Some(line), message);
            crate::ops::merge::MergeMethod::Additive
        });
    if merge_method != crate::ops::merge::MergeMethod::Additive
        && matches!(upscale_method, UpscaleMethod::Command(_))
    {
        problems.push(
            format!("{label}.merge_method"),
            Some(line),
            "an external delta upscaler (upscale_method = \"cmd(...)\") needs merge_method = \"additive\"",
        );
    }
    let exchange = root.join("exchange");
    SplitToProxy {
        size,
        exchange_out: raw
            .exchange_out
            .map(|p| resolve_path(base, &p))
            .unwrap_or_else(|| exchange.join("out").join(name)),
        exchange_in: raw
            .exchange_in
            .map(|p| resolve_path(base, &p))
            .unwrap_or_else(|| exchange.join("in").join(name)),
        return_timeout: duration_or(
            raw.return_timeout,
            Duration::from_secs(24 * 3600),
            format!("{label}.return_timeout"),
            line,
            problems,
        ),
        return_grace: duration_or(
            raw.return_grace,
            Duration::from_secs(3600),
            format!("{label}.return_grace"),
            line,
            problems,
        ),
        refine: raw.refine.unwrap_or(true),
        delta_depth,
        upscale_method,
        command_timeout: duration_or(
            raw.command_timeout,
            Duration::from_secs(600),
            format!("{label}.command_timeout"),
            line,
            problems,
        ),
        match_threshold,
        match_margin,
        merge_method,
    }
}

/// A rule's table deserialised, or (with the problem recorded) the defaults, so that the
/// rest of the rule is still checked.
fn table_or_default<T: serde::de::DeserializeOwned + Default>(
    table: toml::value::Table,
    label: &str,
    line: usize,
    problems: &mut Problems,
) -> T {
    toml::Value::Table(table)
        .try_into()
        .unwrap_or_else(|e: toml::de::Error| {
            problems.push(
                label.to_string(),
                Some(line),
                e.message().trim().to_string(),
            );
            T::default()
        })
}

/// An optional text key parsed with its `FromStr`, the error recorded under `label.key`.
fn parse_key<T: std::str::FromStr<Err = String>>(
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
fn check_output_format(
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
fn model_named(
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

/// The model of an upscale or enhance rule: by `model` name, or the first model serving
/// `domain`.
fn resolve_upscale_model(
    (model, domain): (&Option<String>, &Option<String>),
    models: &std::collections::BTreeMap<String, ModelSpec>,
    label: &str,
    line: usize,
    problems: &mut Problems,
) -> Option<ModelSpec> {
    let names = || models.keys().cloned().collect::<Vec<_>>().join(", ");
    match (model, domain) {
        (Some(name), None) => model_named(name, models, &format!("{label}.model"), line, problems),
        (None, Some(domain)) => match models.values().find(|m| m.domains.contains(domain)) {
            Some(spec) => Some(spec.clone()),
            None => {
                problems.push(
                    format!("{label}.domain"),
                    Some(line),
                    format!(
                        "no model lists domain '{domain}' in its domains; models: {}",
                        names()
                    ),
                );
                None
            }
        },
        _ => {
            problems.push(
                label.to_string(),
                Some(line),
                "an upscale or enhance rule names exactly one of `model` (a [models.<name>] table) or `domain`",
            );
            None
        }
    }
}

/// `"1024x1024"`, `"1024"` (square) or `"25%"`.
pub fn parse_size(text: &str) -> Result<Target, String> {
    text.parse::<Target>()
        .map_err(|e| format!("'{text}': {e}; write e.g. \"1024x1024\" or \"25%\""))
}

fn inside(path: &Path, dir: &Path) -> bool {
    path.starts_with(dir)
}

/// Checks what only makes sense across rules: unique names, folders that do not overlap.
fn check_rules_together(rules: &[Rule], daemon: &DaemonSettings, problems: &mut Problems) {
    let managed = [
        daemon.root.join("processed"),
        daemon.root.join("metadata"),
        daemon.root.join("failed"),
        daemon.state_dir.clone(),
    ];
    let mut watched: Vec<(String, PathBuf)> = Vec::new();
    for (index, rule) in rules.iter().enumerate() {
        let label = format!("rule[{index}] '{}'", rule.name);
        if rules[..index].iter().any(|r| r.name == rule.name) {
            problems.push(format!("{label}.name"), None, "two rules share this name");
        }
        let mut folders = vec![("watch", rule.watch.clone())];
        if let Recipe::SplitToProxy(options) = &rule.recipe {
            {
                folders.push(("exchange_in", options.exchange_in.clone()));
                if options.exchange_out == options.exchange_in {
                    problems.push(
                        format!("{label}.exchange_out"),
                        None,
                        "exchange_out and exchange_in must be different folders, or darkroom would pair its own proxies",
                    );
                }
                if inside(&options.exchange_out, &rule.watch) {
                    problems.push(
                        format!("{label}.exchange_out"),
                        None,
                        "must not be inside the watched folder",
                    );
                }
            }
        }
        for (key, folder) in folders {
            for m in &managed {
                if inside(&folder, m) || inside(m, &folder) {
                    problems.push(
                        format!("{label}.{key}"),
                        None,
                        format!(
                            "{} overlaps darkroom's own tree {}; watch a folder outside it",
                            folder.display(),
                            m.display()
                        ),
                    );
                }
            }
            for (other_label, other) in &watched {
                if inside(&folder, other) || inside(other, &folder) {
                    problems.push(
                        format!("{label}.{key}"),
                        None,
                        format!(
                            "{} overlaps {} of {other_label}; each watched folder belongs to one rule",
                            folder.display(),
                            other.display()
                        ),
                    );
                }
            }
            watched.push((format!("{label}.{key}"), folder));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigErrors> {
        Config::parse(text, Path::new("/etc/darkroom/darkroom.toml"))
    }

    #[test]
    fn merge_method_is_checked_and_an_external_delta_upscaler_means_additive() {
        let rule =
            |extra: &str| format!("[[rule]]\nname = \"p\"\nrecipe = \"split-to-proxy\"\n{extra}\n");
        let method = |config: &Config| match &config.rules[0].recipe {
            Recipe::SplitToProxy(o) => o.merge_method.name(),
            _ => unreachable!(),
        };
        let config = parse(&rule("upscale_method = \"cmd(tool -i %i -o %o)\"")).unwrap();
        assert_eq!(method(&config), "additive");
        let config = parse(&rule("merge_method = \"additive\"")).unwrap();
        assert_eq!(method(&config), "additive");
        let errors = parse(&rule(
            "merge_method = \"guided\"\nupscale_method = \"cmd(tool -i %i -o %o)\"",
        ))
        .unwrap_err();
        assert!(
            errors.to_string().contains("rule[0] 'p'.merge_method"),
            "{errors}"
        );
        let errors = parse(&rule("merge_method = \"bilateral\"")).unwrap_err();
        assert!(errors.to_string().contains("use additive"), "{errors}");
    }

    #[test]
    fn enhance_rules_check_via_and_its_proxy_keys() {
        let models = format!(
            "[models.photo]\npath = \"{}/../shared/models/waifu2x-upconv7-photo-x2.onnx\"\n\n",
            env!("CARGO_MANIFEST_DIR")
        );
        let rule = |extra: &str| {
            format!("{models}[[rule]]\nname = \"e\"\nrecipe = \"enhance\"\nmodel = \"photo\"\n{extra}\n")
        };
        let config = parse(&rule("via = \"proxy\"\nsize = \"50%\"")).unwrap();
        assert_eq!(config.rules[0].recipe.name(), "enhance");
        let Recipe::Upscale(u) = &config.rules[0].recipe else {
            unreachable!()
        };
        assert_eq!(u.enhance.map(|v| v.name()), Some("proxy"));
        let errors = parse(&rule("via = \"sideways\"\nsize = \"50%\"\npasses = 2")).unwrap_err();
        let text = errors.to_string();
        assert!(text.contains("rule[0] 'e'.via"), "{text}");
        assert!(
            text.contains("passes"),
            "passes is not an enhance key: {text}"
        );
        let errors = parse(&rule("size = \"50%\"")).unwrap_err();
        assert!(
            errors.to_string().contains("rule[0] 'e'.size"),
            "size without via proxy: {errors}"
        );
    }

    #[test]
    fn correction_keys_parse_for_model_rules_and_report_bad_values() {
        let models = format!(
            "[models.photo]\npath = \"{}/../shared/models/waifu2x-upconv7-photo-x2.onnx\"\n\n",
            env!("CARGO_MANIFEST_DIR")
        );
        let rule = |recipe: &str, extra: &str| {
            format!("{models}[[rule]]\nname = \"m\"\nrecipe = \"{recipe}\"\nmodel = \"photo\"\n{extra}\n")
        };
        let good = "white_balance = \"gray-world\"\nexposure = \"auto\"\ndeblock = true\ndenoise = \"bilateral:2,20\"\nsmooth = \"median:1\"";
        for recipe in ["upscale", "enhance"] {
            let config = parse(&rule(recipe, good)).unwrap();
            let Recipe::Upscale(u) = &config.rules[0].recipe else {
                unreachable!()
            };
            assert!(u.pre.white_balance && u.pre.deblock, "{recipe}");
            assert_eq!(
                u.pre.exposure,
                Some(crate::core::corrections::Exposure::Auto)
            );
            assert!(u.pre.denoise.is_some() && u.smooth.is_some(), "{recipe}");
        }
        let errors = parse(&rule(
            "upscale",
            "white_balance = \"daylight\"\nexposure = \"bright\"\ndenoise = \"nlm\"\nsmooth = \"median:9\"",
        ))
        .unwrap_err()
        .to_string();
        for key in ["white_balance", "exposure", "denoise", "smooth"] {
            assert!(
                errors.contains(&format!("rule[0] 'm'.{key}")),
                "{key}: {errors}"
            );
        }
    }

    #[test]
    fn model_tables_take_auto_tiles_batches_ranges_and_a_scale() {
        let path = format!(
            "{}/../shared/models/waifu2x-upconv7-photo-x2.onnx",
            env!("CARGO_MANIFEST_DIR")
        );
        let config = parse(&format!(
            "[runtime]\nmemory_budget_mib = 2048\n\n[models.photo]\npath = \"{path}\"\ntile = \"auto\"\nbatch = 4\ninput_range = \"-1..1\"\nscale = 2\n\n[[rule]]\nname = \"p\"\nrecipe = \"split-to-proxy\"\n"
        ))
        .unwrap();
        let spec = &config.models["photo"];
        assert_eq!(spec.tile, crate::core::tiling::TileSize::Auto);
        assert_eq!((spec.batch, spec.scale), (4, Some(2)));
        assert_eq!(spec.range, crate::io::onnx::ValueRange::Signed);
        assert_eq!(config.runtime.memory_budget, Some(2 << 30));
        let errors = parse(&format!(
            "[models.photo]\npath = \"{path}\"\ntile = \"big\"\nbatch = 0\ninput_range = \"0..2\"\nscale = 0\n"
        ))
        .unwrap_err()
        .to_string();
        for key in ["tile", "batch", "input_range", "scale"] {
            assert!(
                errors.contains(&format!("models.photo.{key}")),
                "{key}: {errors}"
            );
        }
        // Every key that names a model table says which names exist.
        let errors = parse(&format!(
            "[models.photo]\npath = \"{path}\"\n\n[[rule]]\nname = \"u\"\nrecipe = \"upscale\"\nmodel = \"phot\"\ndenoise_model = \"clean\"\n\n[[rule]]\nname = \"n\"\nrecipe = \"normalise\"\nupscale_model = \"big\"\n"
        ))
        .unwrap_err()
        .to_string();
        for (key, name) in [
            ("'u'.model", "phot"),
            ("'u'.denoise_model", "clean"),
            ("'n'.upscale_model", "big"),
        ] {
            assert!(
                errors.contains(key)
                    && errors.contains(&format!("no [models.{name}] table; models: photo")),
                "{key}: {errors}"
            );
        }
    }

    #[test]
    fn a_minimal_rule_gets_the_documented_defaults() {
        let config = parse("[[rule]]\nname = \"photos\"\nrecipe = \"split-to-proxy\"\n").unwrap();
        assert_eq!(config.daemon.root, Path::new("/etc/darkroom/var"));
        assert_eq!(config.daemon.stability_window, Duration::from_secs(2));
        let rule = &config.rules[0];
        assert_eq!(rule.watch, Path::new("/etc/darkroom/var/inbox/photos"));
        assert_eq!(rule.originals, OriginalsPolicy::Move);
        let Recipe::SplitToProxy(options) = &rule.recipe else {
            panic!("split-to-proxy expected");
        };
        assert_eq!(options.size, Target::pixels(1024, 1024));
        assert_eq!(
            options.exchange_in,
            Path::new("/etc/darkroom/var/exchange/in/photos")
        );
        assert_eq!(options.merge_method.name(), "guided");
    }

    #[test]
    fn every_error_is_reported_at_once_with_keys_and_lines() {
        let text = "[daemon]\nworkers = 0\nstability_window = \"2 parsecs\"\n\n[[rule]]\nname = \"a\"\nrecipe = \"split-to-proxy\"\nsise = \"1024x1024\"\ndelta_depth = 12\n\n[[rule]]\nname = \"b\"\nrecipe = \"split-to-prxy\"\n";
        let errors = parse(text).unwrap_err().errors;
        let rendered: Vec<String> = errors.iter().map(|e| e.to_string()).collect();
        assert_eq!(errors.len(), 5, "{rendered:#?}");
        assert!(
            rendered[0].starts_with("line 1: daemon.workers"),
            "{rendered:#?}"
        );
        assert!(rendered[1].contains("daemon.stability_window") && rendered[1].contains("parsecs"));
        assert!(
            rendered[2].contains("line 5: rule[0] 'a'.sise")
                && rendered[2].contains("did you mean `size`")
        );
        assert!(rendered[3].contains("rule[0] 'a'.delta_depth"));
        assert!(
            rendered[4].contains("line 11: rule[1] 'b'.recipe")
                && rendered[4].contains("did you mean `split-to-proxy`")
        );
    }

    #[test]
    fn toml_syntax_errors_carry_their_line() {
        let errors = parse("[daemon]\nworkers = \n").unwrap_err().errors;
        assert_eq!(errors.len(), 1);
        assert_eq!(errors[0].line, Some(2), "{}", errors[0]);
    }

    #[test]
    fn overlapping_folders_are_refused() {
        let text = "[[rule]]\nname = \"a\"\nrecipe = \"split-to-proxy\"\nwatch = \"in\"\n[[rule]]\nname = \"a\"\nrecipe = \"split-to-proxy\"\nwatch = \"in/sub\"\n";
        let errors = parse(text).unwrap_err().errors;
        let rendered: Vec<String> = errors.iter().map(|e| e.to_string()).collect();
        assert!(
            rendered.iter().any(|e| e.contains("two rules share")),
            "{rendered:#?}"
        );
        assert!(
            rendered.iter().any(|e| e.contains("overlaps")),
            "{rendered:#?}"
        );
    }

    #[test]
    fn durations_accept_units_and_bare_seconds() {
        let d = |v: toml::Value| parse_duration(&v).unwrap();
        assert_eq!(d("500ms".into()), Duration::from_millis(500));
        assert_eq!(d("1.5s".into()), Duration::from_millis(1500));
        assert_eq!(d("10m".into()), Duration::from_secs(600));
        assert_eq!(d("24h".into()), Duration::from_secs(86400));
        assert_eq!(d(toml::Value::Integer(3)), Duration::from_secs(3));
        assert!(parse_duration(&"-1s".into()).is_err());
    }

    #[test]
    fn sizes_in_pixels_square_or_percent() {
        assert_eq!(parse_size("1024x768").unwrap(), Target::pixels(1024, 768));
        assert_eq!(parse_size("512").unwrap(), Target::pixels(512, 512));
        assert!(parse_size("25%").is_ok());
        assert!(parse_size("big").is_err());
    }
}
