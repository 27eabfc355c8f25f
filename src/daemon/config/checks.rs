//! Checks across rules: folders that overlap each other or darkroom's own trees.

use super::*;

/// Checks what only makes sense across rules: unique names, folders that do not overlap.
pub(super) fn check_rules_together(
    rules: &[Rule],
    daemon: &DaemonSettings,
    problems: &mut Problems,
) {
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
        let returns = rule.recipe.return_folder();
        if let Some(returns) = returns {
            folders.push((returns.key, returns.path.to_path_buf()));
        }
        for output in rule.recipe.output_folders() {
            if let Some(returns) = returns.filter(|r| r.path == output.path) {
                problems.push(
                    format!("{label}.{}", output.key),
                    None,
                    format!(
                        "{} and {} must be different folders, or darkroom would take its own outputs back",
                        output.key, returns.key
                    ),
                );
            }
            if inside(output.path, &rule.watch) {
                problems.push(
                    format!("{label}.{}", output.key),
                    None,
                    "must not be inside the watched folder",
                );
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
