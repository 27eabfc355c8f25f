//! `[[rule]]` tables: the keys every rule has, and each recipe's own keys and checks.

use super::*;

/// split-to-proxy defaults (the merge method is guided, or additive with a `cmd(...)` delta
/// upscaler).
pub(super) const DEFAULT_PROXY_SIZE: &str = "1024x1024";
pub(super) const DEFAULT_PROXY_TARGET: Target = Target::pixels(1024, 1024);
pub(super) const DEFAULT_DELTA_DEPTH: u8 = 8;
pub(super) const DEFAULT_MATCH_THRESHOLD: f64 = 0.90;
pub(super) const DEFAULT_MATCH_MARGIN: f64 = 0.02;
pub(super) const DEFAULT_RETURN_TIMEOUT: Duration = Duration::from_secs(24 * 3600);
pub(super) const DEFAULT_RETURN_GRACE: Duration = Duration::from_secs(3600);
pub(super) const DEFAULT_REFINE: bool = true;
pub(super) const DEFAULT_COMMAND_TIMEOUT: Duration = Duration::from_secs(600);

/// upscale defaults; enhance's `via = "proxy"` uses [`DEFAULT_PROXY_SIZE`] too.
pub(super) const DEFAULT_PASSES: u32 = 1;

/// The keys every model rule (upscale, enhance) shares: the model, the output, and the
/// corrections around the model.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawModelRule {
    pub(super) model: Option<String>,
    pub(super) domain: Option<String>,
    pub(super) output_format: Option<String>,
    pub(super) sharpen: Option<String>,
    pub(super) white_balance: Option<String>,
    pub(super) exposure: Option<String>,
    pub(super) deblock: Option<bool>,
    pub(super) denoise: Option<String>,
    pub(super) denoise_model: Option<String>,
    pub(super) smooth: Option<String>,
}

/// A model rule's shared keys, resolved.
pub(super) struct ModelRule {
    pub(super) model: ModelSpec,
    pub(super) output_format: String,
    pub(super) sharpen: Option<crate::core::filters::Unsharp>,
    pub(super) pre: crate::core::corrections::PreFilters,
    pub(super) denoise_model: Option<ModelSpec>,
    pub(super) smooth: Option<crate::core::corrections::Smoothing>,
}

impl ModelRule {
    /// Takes the shared keys out of a rule's `table` (leaving the recipe's own) and resolves
    /// them; `None` when the model cannot be resolved (the problem is recorded).
    pub(super) fn take(
        table: &mut toml::value::Table,
        models: &std::collections::BTreeMap<String, ModelSpec>,
        label: &str,
        line: usize,
        problems: &mut Problems,
    ) -> Option<ModelRule> {
        let mut shared = toml::value::Table::new();
        for key in fields_of::<RawModelRule>() {
            if let Some(value) = table.remove(*key) {
                shared.insert(key.to_string(), value);
            }
        }
        let raw: RawModelRule = read_known_keys(shared, label, line, problems);
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

/// The keys of an upscale rule beyond [`RawModelRule`].
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawUpscale {
    pub(super) passes: Option<u32>,
    pub(super) target: Option<String>,
}

/// The keys of an enhance rule beyond [`RawModelRule`].
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawEnhance {
    pub(super) via: Option<String>,
    pub(super) size: Option<String>,
    pub(super) merge_method: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRuleCommon {
    pub(super) name: String,
    pub(super) recipe: String,
    pub(super) watch: Option<PathBuf>,
    pub(super) patterns: Option<Vec<String>>,
    pub(super) originals: Option<OriginalsPolicy>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSplitToProxy {
    pub(super) size: Option<String>,
    pub(super) exchange_out: Option<PathBuf>,
    pub(super) exchange_in: Option<PathBuf>,
    pub(super) return_timeout: Option<toml::Value>,
    pub(super) return_grace: Option<toml::Value>,
    pub(super) refine: Option<bool>,
    pub(super) delta_depth: Option<u8>,
    pub(super) upscale_method: Option<String>,
    pub(super) command_timeout: Option<toml::Value>,
    pub(super) match_threshold: Option<f64>,
    pub(super) match_margin: Option<f64>,
    pub(super) merge_method: Option<String>,
}

/// What a rule is resolved against.
pub(super) struct RuleContext<'a> {
    pub(super) root: &'a Path,
    pub(super) base: &'a Path,
    pub(super) models: &'a std::collections::BTreeMap<String, ModelSpec>,
}

pub(super) fn resolve_rule(
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
        Some("split-to-proxy") => fields_of::<RawSplitToProxy>().to_vec(),
        Some("upscale") => [fields_of::<RawModelRule>(), fields_of::<RawUpscale>()].concat(),
        Some("enhance") => [fields_of::<RawModelRule>(), fields_of::<RawEnhance>()].concat(),
        Some("normalise") | Some("normalize") => {
            let settings = fields_of::<crate::ops::normalise::NormaliseSettings>();
            [settings, &["upscale_model"]].concat()
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
    let common_keys = fields_of::<RawRuleCommon>();
    let known: Vec<&str> = common_keys.iter().chain(&recipe_keys).copied().collect();
    reject_unknown_keys(&mut table, &known, &label, line, problems);

    let mut common_table = toml::Table::new();
    for key in common_keys {
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
            let raw: RawSplitToProxy = read_known_keys(table, &label, line, problems);
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
            let raw: RawUpscale = read_known_keys(table, &label, line, problems);
            let passes = raw.passes.unwrap_or(DEFAULT_PASSES);
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
            let raw: RawEnhance = read_known_keys(table, &label, line, problems);
            let size = parse_size(raw.size.as_deref().unwrap_or(DEFAULT_PROXY_SIZE))
                .unwrap_or_else(|message| {
                    problems.push(format!("{label}.size"), Some(line), message);
                    DEFAULT_PROXY_TARGET
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
                read_known_keys(table, &label, line, problems);
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

pub(super) fn resolve_split_to_proxy(
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
    }
}

/// An optional text key parsed with its `FromStr`, the error recorded under `label.key`.
pub(super) fn parse_key<T: std::str::FromStr<Err = String>>(
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
pub(super) fn check_output_format(
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
pub(super) fn model_named(
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
pub(super) fn resolve_upscale_model(
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
        .map_err(|e| format!("{e}; a proxy size is e.g. \"1024x1024\" or \"25%\""))
}

pub(super) fn inside(path: &Path, dir: &Path) -> bool {
    path.starts_with(dir)
}
