//! The `enhance` recipe: a model that keeps the image's size (restoration, denoising), run on
//! the whole image, tiled, or on a proxy whose change is merged back at full resolution. It
//! runs as a [`ModelJob`] (shared with `upscale`); this module owns its keys.

use super::model_job::{ModelJob, ModelRule, RawModelRule};
use super::split_to_proxy::{DEFAULT_PROXY_SIZE, DEFAULT_PROXY_TARGET};
use super::{Recipe, RecipeTable, Registration};
use crate::daemon::settings::*;
use crate::ops::enhance::Via;
use crate::ops::merge::MergeMethod;
use serde::Deserialize;
use std::sync::Arc;

pub const REGISTRATION: Registration = Registration {
    name: "enhance",
    aliases: &[],
    keys: || [fields_of::<RawModelRule>(), fields_of::<RawEnhance>()].concat(),
    resolve,
};

/// The keys of an enhance rule beyond the model keys every model rule has.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawEnhance {
    /// `full` (the whole image, tiled; the default) or `proxy`.
    via: Option<String>,
    /// The proxy's size with `via = "proxy"` (split-to-proxy's default).
    size: Option<String>,
    /// How the proxy's change comes back with `via = "proxy"`: guided (default) or additive.
    merge_method: Option<String>,
}

fn resolve(rule: RecipeTable<'_>, problems: &mut Problems) -> Option<Arc<dyn Recipe>> {
    let RecipeTable {
        mut table,
        label,
        line,
        context,
        ..
    } = rule;
    let shared = ModelRule::take(&mut table, context.models, label, line, problems);
    let raw: RawEnhance = read_known_keys(table, label, line, problems);
    let size =
        parse_size(raw.size.as_deref().unwrap_or(DEFAULT_PROXY_SIZE)).unwrap_or_else(|message| {
            problems.push(format!("{label}.size"), Some(line), message);
            DEFAULT_PROXY_TARGET
        });
    let method = raw
        .merge_method
        .as_deref()
        .unwrap_or("guided")
        .parse::<MergeMethod>()
        .unwrap_or_else(|message| {
            problems.push(format!("{label}.merge_method"), Some(line), message);
            MergeMethod::Additive
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
            Via::Full
        }
        "proxy" => Via::Proxy { size, method },
        other => {
            problems.push(
                format!("{label}.via"),
                Some(line),
                format!("'{other}': use \"full\" (the whole image, tiled) or \"proxy\""),
            );
            Via::Full
        }
    };
    Some(ModelJob::from_rule(shared?, 1, None, Some(via)))
}
