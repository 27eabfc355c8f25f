//! `[[rule]]` tables: the keys every rule has; each recipe reads the rest.

use super::*;
use serde::Deserialize;

/// The keys every rule has.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRuleCommon {
    pub(super) name: String,
    /// Read first, from the table, to pick the recipe that reads the rest.
    #[serde(rename = "recipe")]
    pub(super) _recipe: String,
    pub(super) watch: Option<PathBuf>,
    pub(super) patterns: Option<Vec<String>>,
    pub(super) originals: Option<OriginalsPolicy>,
}

/// Reads one `[[rule]]`: the keys every rule has here, the recipe's own by its recipe.
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
    let recipes = crate::recipes::names();
    let registration = match recipe_name.as_deref().map(|n| (n, crate::recipes::find(n))) {
        Some((_, Some(registration))) => registration,
        Some((other, None)) => {
            let hint = closest(other, &recipes)
                .map(|k| format!(" (did you mean `{k}`?)"))
                .unwrap_or_default();
            problems.push(
                format!("{label}.recipe"),
                Some(line),
                format!(
                    "unknown recipe '{other}'{hint}; recipes: {}",
                    recipes.join(", ")
                ),
            );
            return None;
        }
        None => {
            problems.push(
                format!("{label}.recipe"),
                Some(line),
                format!("missing; one of: {}", recipes.join(", ")),
            );
            return None;
        }
    };
    let recipe_keys = (registration.keys)();
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
    let recipe = (registration.resolve)(
        crate::recipes::RecipeTable {
            table,
            label: &label,
            line,
            rule: &common.name,
            context,
        },
        problems,
    )?;
    Some(Rule {
        name: common.name,
        watch,
        patterns,
        originals: common.originals.unwrap_or(OriginalsPolicy::Move),
        recipe,
    })
}
