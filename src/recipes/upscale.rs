//! The `upscale` recipe: super-resolution with one ONNX model, tiled without seams, one or
//! more passes or to an exact size. It runs as a [`ModelJob`] (shared with `enhance`); this
//! module owns its keys.

use super::model_job::{ModelJob, ModelRule, RawModelRule};
use super::{Recipe, RecipeTable, Registration};
use crate::daemon::settings::*;
use serde::Deserialize;
use std::sync::Arc;

pub const REGISTRATION: Registration = Registration {
    name: "upscale",
    aliases: &[],
    keys: || [fields_of::<RawModelRule>(), fields_of::<RawUpscale>()].concat(),
    resolve,
};

/// Model passes when a rule names neither `passes` nor `target`.
const DEFAULT_PASSES: u32 = 1;

/// The keys of an upscale rule beyond the model keys every model rule has.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawUpscale {
    /// Model passes, 1 to 4.
    passes: Option<u32>,
    /// An exact output size (`3840x2160`): enough passes, then Lanczos3.
    target: Option<String>,
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
    let raw: RawUpscale = read_known_keys(table, label, line, problems);
    let passes = raw.passes.unwrap_or(DEFAULT_PASSES);
    if !(1..=4).contains(&passes) {
        problems.push(format!("{label}.passes"), Some(line), "must be 1 to 4");
    }
    let target = raw.target.as_deref().and_then(|t| {
        crate::ops::upscale::parse_target(t)
            .map_err(|e| problems.push(format!("{label}.target"), Some(line), e))
            .ok()
    });
    Some(ModelJob::from_rule(
        shared?,
        passes.clamp(1, 4),
        target,
        None,
    ))
}
