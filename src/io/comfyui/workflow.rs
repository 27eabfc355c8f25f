//! A ComfyUI workflow in its "Export (API)" format, as a rule uses it: which node loads the
//! image, which one gives the result, the rule's input overrides, and the prompt for one job
//! (its upload as the image, its own output file prefix). Pure: text in, JSON out.

use serde_json::{Map, Value};
use std::collections::BTreeSet;

/// Node types that load the image darkroom sends.
const LOADERS: &[&str] = &["LoadImage"];
/// Node types whose images darkroom takes back.
const SAVERS: &[&str] = &["SaveImage", "PreviewImage"];

/// A checked workflow.
#[derive(Debug, Clone, PartialEq)]
pub struct Workflow {
    nodes: Map<String, Value>,
    pub input_node: String,
    pub output_node: String,
}

/// What is wrong with a workflow (each problem a sentence).
#[derive(Debug, Clone, PartialEq)]
pub struct WorkflowError(pub Vec<String>);

impl Workflow {
    /// Reads an exported workflow, finds (or checks) its input and output nodes and applies
    /// `overrides` (`"3.blend_factor" = 0.3`: input `blend_factor` of node `3`).
    pub fn parse(
        text: &str,
        input_node: Option<&str>,
        output_node: Option<&str>,
        overrides: &[(String, Value)],
    ) -> Result<Workflow, WorkflowError> {
        let value: Value = serde_json::from_str(text)
            .map_err(|e| WorkflowError(vec![format!("is not JSON: {e}")]))?;
        let Value::Object(mut nodes) = value else {
            return Err(WorkflowError(vec![
                "is not a workflow in API format (a JSON object of nodes)".into(),
            ]));
        };
        if nodes.contains_key("nodes") && nodes.contains_key("links") {
            return Err(WorkflowError(vec![
                "is in ComfyUI's UI format; save it with Workflow > Export (API) instead".into(),
            ]));
        }
        let mut problems = Vec::new();
        for (id, node) in &nodes {
            if node.get("class_type").and_then(Value::as_str).is_none()
                || !node.get("inputs").is_some_and(Value::is_object)
            {
                problems.push(format!(
                    "node {id} has no class_type and inputs: is this an API-format export?"
                ));
            }
        }
        if !problems.is_empty() {
            return Err(WorkflowError(problems));
        }
        let input = pick_node(&nodes, input_node, LOADERS, "input_node", &mut problems);
        let output = pick_node(&nodes, output_node, SAVERS, "output_node", &mut problems);
        for (key, value) in overrides {
            let Some((id, input)) = key.split_once('.') else {
                problems.push(format!(
                    "inputs key '{key}' must be '<node id>.<input name>', e.g. \"3.blend_factor\""
                ));
                continue;
            };
            match nodes.get_mut(id).and_then(|n| n.get_mut("inputs")) {
                Some(Value::Object(inputs)) => {
                    inputs.insert(input.to_string(), value.clone());
                }
                _ => problems.push(format!(
                    "inputs key '{key}': the workflow has no node '{id}' (its nodes: {})",
                    nodes.keys().cloned().collect::<Vec<_>>().join(", ")
                )),
            }
        }
        match (input, output) {
            (Some(input_node), Some(output_node)) if problems.is_empty() => Ok(Workflow {
                nodes,
                input_node,
                output_node,
            }),
            _ => Err(WorkflowError(problems)),
        }
    }

    /// Every node type the workflow uses.
    pub fn node_types(&self) -> BTreeSet<String> {
        self.nodes
            .values()
            .filter_map(|n| n.get("class_type").and_then(Value::as_str))
            .map(str::to_string)
            .collect()
    }

    /// The class of a node.
    pub fn class_of(&self, id: &str) -> &str {
        self.nodes
            .get(id)
            .and_then(|n| n.get("class_type"))
            .and_then(Value::as_str)
            .unwrap_or("?")
    }

    /// The prompt for one job: the input node loads `image` (an uploaded name), and a
    /// SaveImage output node writes under `prefix`.
    pub fn prompt_for(&self, image: &str, prefix: &str) -> Value {
        let mut nodes = self.nodes.clone();
        if let Some(Value::Object(inputs)) = nodes
            .get_mut(&self.input_node)
            .and_then(|n| n.get_mut("inputs"))
        {
            inputs.insert("image".into(), Value::String(image.into()));
        }
        let output = nodes.get_mut(&self.output_node);
        if let Some(node) = output {
            if node.get("class_type").and_then(Value::as_str) == Some("SaveImage") {
                if let Some(Value::Object(inputs)) = node.get_mut("inputs") {
                    inputs.insert("filename_prefix".into(), Value::String(prefix.into()));
                }
            }
        }
        Value::Object(nodes)
    }
}

/// The node named by `chosen`, or the workflow's single node of one of `kinds`.
fn pick_node(
    nodes: &Map<String, Value>,
    chosen: Option<&str>,
    kinds: &[&str],
    key: &str,
    problems: &mut Vec<String>,
) -> Option<String> {
    if let Some(id) = chosen {
        if nodes.contains_key(id) {
            return Some(id.to_string());
        }
        problems.push(format!(
            "{key} '{id}' is not a node of the workflow (its nodes: {})",
            nodes.keys().cloned().collect::<Vec<_>>().join(", ")
        ));
        return None;
    }
    let mut found: Vec<&String> = nodes
        .iter()
        .filter(|(_, n)| {
            n.get("class_type")
                .and_then(Value::as_str)
                .is_some_and(|c| kinds.contains(&c))
        })
        .map(|(id, _)| id)
        .collect();
    found.sort_by_key(|id| (id.parse::<u64>().unwrap_or(u64::MAX), id.to_string()));
    match found.as_slice() {
        [one] => Some((*one).clone()),
        [] => {
            problems.push(format!(
                "has no {} node; add one, or name the node with {key}",
                kinds.join(" or ")
            ));
            None
        }
        many => {
            problems.push(format!(
                "has {} {} nodes ({}); name the one darkroom uses with {key}",
                many.len(),
                kinds.join("/"),
                many.iter()
                    .map(|id| id.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn grade() -> String {
        json!({
            "1": {"class_type": "LoadImage", "inputs": {"image": "x.png"}},
            "2": {"class_type": "EmptyImage", "inputs": {"width": 64, "height": 64, "batch_size": 1, "color": 16744448}},
            "3": {"class_type": "ImageBlend", "inputs": {"image1": ["1", 0], "image2": ["2", 0], "blend_factor": 0.3, "blend_mode": "soft_light"}},
            "4": {"class_type": "SaveImage", "inputs": {"images": ["3", 0], "filename_prefix": "ComfyUI"}}
        })
        .to_string()
    }

    #[test]
    fn finds_its_single_loader_and_saver_and_fills_them_in_per_job() {
        let w = Workflow::parse(
            &grade(),
            None,
            None,
            &[("3.blend_factor".into(), json!(0.5))],
        )
        .unwrap();
        assert_eq!((w.input_node.as_str(), w.output_node.as_str()), ("1", "4"));
        let prompt = w.prompt_for("darkroom/a.png", "darkroom/a");
        assert_eq!(prompt["1"]["inputs"]["image"], "darkroom/a.png");
        assert_eq!(prompt["4"]["inputs"]["filename_prefix"], "darkroom/a");
        assert_eq!(prompt["3"]["inputs"]["blend_factor"], 0.5);
        assert_eq!(
            w.node_types().into_iter().collect::<Vec<_>>(),
            ["EmptyImage", "ImageBlend", "LoadImage", "SaveImage"]
        );
    }

    #[test]
    fn two_savers_are_an_error_that_lists_their_ids() {
        let mut v: Value = serde_json::from_str(&grade()).unwrap();
        v["9"] = json!({"class_type": "PreviewImage", "inputs": {"images": ["3", 0]}});
        let e = Workflow::parse(&v.to_string(), None, None, &[]).unwrap_err();
        assert!(
            e.0[0].contains("4, 9") && e.0[0].contains("output_node"),
            "{e:?}"
        );
        assert!(Workflow::parse(&v.to_string(), None, Some("9"), &[]).is_ok());
    }

    #[test]
    fn the_ui_format_and_unknown_override_nodes_are_named() {
        let e = Workflow::parse(r#"{"nodes": [], "links": []}"#, None, None, &[]).unwrap_err();
        assert!(e.0[0].contains("Export (API)"), "{e:?}");
        let e =
            Workflow::parse(&grade(), Some("7"), None, &[("8.x".into(), json!(1))]).unwrap_err();
        assert_eq!(e.0.len(), 2, "{e:?}");
        assert!(
            e.0[0].contains("input_node '7'") && e.0[1].contains("no node '8'"),
            "{e:?}"
        );
    }
}
