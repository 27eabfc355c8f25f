//! The daemon's TOML configuration file, checked into a [`Config`]. The settings outside the
//! rules, and the key-by-key reading every part shares, are `daemon::settings`'; each
//! recipe reads its own rule keys (`crate::recipes`). Every problem is collected and reported
//! at once, each with its key and the line of the key itself.
//!
//! Relative paths are resolved against the folder that holds the config file, so a config
//! works the same whatever directory the daemon is started from.

use serde::Deserialize;
use std::path::{Path, PathBuf};

mod checks;
mod rules;
#[cfg(test)]
mod tests;

use crate::daemon::settings::*;
use checks::*;
use rules::*;

pub use crate::daemon::settings::{
    format_duration, parse_duration, parse_size, ConfigError, ConfigErrors, DaemonSettings,
    HttpSettings, ModelSpec, NotifyEvent, NotifyTarget, OriginalsPolicy, RuntimeSettings,
    DEFAULT_INCOMPLETE_GRACE, DEFAULT_PATTERNS,
};
pub use crate::recipes::Rule;

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
    /// `[http]`: the listener for the API, dashboard and metrics.
    pub http: HttpSettings,
    /// `[[notify]]`: webhooks told of jobs' ends.
    pub notify: Vec<NotifyTarget>,
    /// Things to tell the user that do not stop the config: `check-config` prints them, the
    /// daemon logs them.
    pub warnings: Vec<String>,
}

/// The top-level tables (unknown ones are reported by [`Config::parse`], not by serde).
#[derive(Deserialize)]
struct RawDocument {
    daemon: Option<toml::Spanned<toml::Table>>,
    runtime: Option<toml::Spanned<toml::Table>>,
    #[serde(default)]
    models: std::collections::BTreeMap<String, toml::Spanned<toml::Table>>,
    #[serde(default)]
    rule: Vec<toml::Spanned<toml::Table>>,
    http: Option<toml::Spanned<toml::Table>>,
    #[serde(default)]
    notify: Vec<toml::Spanned<toml::Table>>,
}

impl Config {
    /// Reads and checks a config file, asking each ComfyUI server of a rule's tool whether it
    /// has the workflow's node types.
    pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
        Config::load_with(path, true)
    }

    /// Reads and checks a config file without asking any tool server (`darkroom status`,
    /// which only reads the journal, never waits on the network).
    pub fn load_offline(path: &Path) -> Result<Config, ConfigErrors> {
        Config::load_with(path, false)
    }

    fn load_with(path: &Path, ask_tool_servers: bool) -> Result<Config, ConfigErrors> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigErrors {
            path: path.to_path_buf(),
            errors: vec![ConfigError {
                key: "(file)".into(),
                line: None,
                message: format!("cannot read: {e}"),
            }],
        })?;
        Config::parse_with(
            &text,
            &std::path::absolute(path).unwrap_or(path.to_path_buf()),
            ask_tool_servers,
        )
    }

    /// Checks config text; `path` names it in errors and anchors relative paths.
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigErrors> {
        Config::parse_with(text, path, true)
    }

    /// Checks config text without asking any tool server (the config fuzz target).
    pub fn parse_offline(text: &str, path: &Path) -> Result<Config, ConfigErrors> {
        Config::parse_with(text, path, false)
    }

    fn parse_with(text: &str, path: &Path, ask_tool_servers: bool) -> Result<Config, ConfigErrors> {
        let base = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let base = std::path::absolute(&base).unwrap_or(base);
        let mut problems = Problems::new(text);
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
        let http = resolve_http(document.http, &base, &mut problems);
        let notify = resolve_notify(document.notify, &base, &mut problems);
        let mut rules = Vec::new();
        for (index, table) in document.rule.into_iter().enumerate() {
            let context = RuleContext {
                root: &daemon.root,
                base: &base,
                models: &models,
                ask_tool_servers,
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
                http,
                notify,
                warnings: problems.warnings,
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
            dirs.extend(
                rule.recipe
                    .output_folders()
                    .iter()
                    .map(|f| f.path.to_path_buf()),
            );
            dirs.extend(rule.recipe.return_folder().map(|f| f.path.to_path_buf()));
        }
        dirs
    }

    pub fn rule(&self, name: &str) -> Option<&Rule> {
        self.rules.iter().find(|r| r.name == name)
    }
}
