//! split-to-proxy's rule keys, their defaults and checks.

use super::{SplitToProxy, Via};
use crate::core::delta::DeltaDepth;
use crate::core::geometry::Target;
use crate::daemon::settings::*;
use crate::io::external::UpscaleMethod;
use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// split-to-proxy defaults (the merge method is guided, or additive with a `cmd(...)` delta
/// upscaler).
pub const DEFAULT_PROXY_SIZE: &str = "1024x1024";
pub const DEFAULT_PROXY_TARGET: Target = Target::pixels(1024, 1024);
pub const DEFAULT_DELTA_DEPTH: u8 = 8;
pub const DEFAULT_MATCH_THRESHOLD: f64 = 0.90;
pub const DEFAULT_MATCH_MARGIN: f64 = 0.02;
pub const DEFAULT_RETURN_TIMEOUT: Duration = Duration::from_secs(24 * 3600);
pub const DEFAULT_RETURN_GRACE: Duration = Duration::from_secs(3600);
pub const DEFAULT_REFINE: bool = true;
pub const DEFAULT_COMMAND_TIMEOUT: Duration = Duration::from_secs(600);

/// split-to-proxy's keys (besides the ones every rule has).
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSplitToProxy {
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
    tool: Option<toml::Value>,
    via: Option<String>,
}

/// Reads a split-to-proxy rule's own keys.
pub(super) fn resolve(
    rule: super::super::RecipeTable<'_>,
    problems: &mut Problems,
) -> Option<std::sync::Arc<dyn super::super::Recipe>> {
    let mut raw: RawSplitToProxy = read_known_keys(rule.table, rule.label, rule.line, problems);
    let tool = raw.tool.take().and_then(|value| {
        crate::recipes::tool::resolve(value, rule.label, rule.line, rule.context, problems)
    });
    let via = match raw.via.take().as_deref() {
        None | Some("proxy") => Via::Proxy,
        Some("full") => Via::Full,
        Some(other) => {
            problems.push(
                format!("{}.via", rule.label),
                Some(rule.line),
                format!("'{other}': use \"proxy\" (the tool gets the proxy, its change is merged back) or \"full\" (the tool gets the whole image, its outputs are the results)"),
            );
            Via::Proxy
        }
    };
    if via == Via::Full && tool.is_none() && !problems_name(problems, rule.label) {
        problems.push(
            format!("{}.via", rule.label),
            Some(rule.line),
            "via = \"full\" sends the whole image to the rule's tool: set tool as well",
        );
    }
    let options = resolve_options(
        raw,
        rule.rule,
        rule.label,
        rule.line,
        rule.context.root,
        rule.context.base,
        problems,
    );
    let content_model = match &options.upscale_method {
        UpscaleMethod::Model(name) => crate::daemon::settings::model_named(
            name,
            rule.context.models,
            &format!("{}.upscale_method", rule.label),
            rule.line,
            problems,
        ),
        _ => None,
    };
    Some(std::sync::Arc::new(SplitToProxy {
        content_model,
        tool,
        via,
        ..options
    }))
}

fn resolve_options(
    raw: RawSplitToProxy,
    name: &str,
    label: &str,
    line: usize,
    root: &Path,
    base: &Path,
    problems: &mut Problems,
) -> SplitToProxy {
    let size =
        parse_size(raw.size.as_deref().unwrap_or(DEFAULT_PROXY_SIZE)).unwrap_or_else(|message| {
            problems.push(format!("{label}.size"), Some(line), message);
            DEFAULT_PROXY_TARGET
        });
    let delta_depth = match raw.delta_depth.unwrap_or(DEFAULT_DELTA_DEPTH) {
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
    let match_threshold = raw.match_threshold.unwrap_or(DEFAULT_MATCH_THRESHOLD);
    if !(0.0..=1.0).contains(&match_threshold) {
        problems.push(
            format!("{label}.match_threshold"),
            Some(line),
            "must be between 0 and 1 (a correlation)",
        );
    }
    let match_margin = raw.match_margin.unwrap_or(DEFAULT_MATCH_MARGIN);
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
        UpscaleMethod::Basic | UpscaleMethod::Model(_) => "guided",
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
    if merge_method == crate::ops::merge::MergeMethod::Additive
        && matches!(upscale_method, UpscaleMethod::Model(_))
    {
        problems.push(
            format!("{label}.merge_method"),
            Some(line),
            "a model (upscale_method = \"model:<name>\") enlarges the guided merge's new content; it needs merge_method = \"guided\"",
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
            DEFAULT_RETURN_TIMEOUT,
            format!("{label}.return_timeout"),
            line,
            problems,
        ),
        return_grace: duration_or(
            raw.return_grace,
            DEFAULT_RETURN_GRACE,
            format!("{label}.return_grace"),
            line,
            problems,
        ),
        refine: raw.refine.unwrap_or(DEFAULT_REFINE),
        delta_depth,
        upscale_method,
        command_timeout: duration_or(
            raw.command_timeout,
            DEFAULT_COMMAND_TIMEOUT,
            format!("{label}.command_timeout"),
            line,
            problems,
        ),
        match_threshold,
        match_margin,
        merge_method,
        content_model: None,
        tool: None,
        via: Via::Proxy,
    }
}

/// Whether a problem was already recorded for the rule's `tool` key.
fn problems_name(problems: &Problems, label: &str) -> bool {
    let key = format!("{label}.tool");
    problems.errors.iter().any(|e| e.key.starts_with(&key))
}
