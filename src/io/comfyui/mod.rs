//! A client for ComfyUI's HTTP API: what darkroom needs to run an exported workflow on an
//! image and take its outputs back.
//!
//! - `GET /object_info`: which node types the server has (checked at config load).
//! - `POST /upload/image`: the image, under a name of the job's own.
//! - `POST /prompt` with a `prompt_id` chosen by darkroom: a restart can look the prompt up
//!   instead of submitting it again.
//! - `/ws?clientId=`: node progress, as it happens; `GET /history/{id}` and `GET /queue` say
//!   where a prompt is (and are polled when the websocket is not there).
//! - `GET /view`: each output image.
//!
//! Every call has a time limit. A server that cannot be reached, or that answers 5xx while it
//! restarts, is [`ComfyError::Unreachable`]: the caller waits and tries again, it never gives
//! a job up for it.

use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::io::ErrorKind;
use std::net::TcpStream;
use std::time::Duration;

pub mod workflow;

pub use workflow::{Workflow, WorkflowError};

/// How long one HTTP call may take (uploads and downloads of large images included).
const CALL_TIMEOUT: Duration = Duration::from_secs(60);
/// How long connecting may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// The largest JSON answer read (`/object_info` of a server with many custom nodes is a few
/// MB).
const JSON_LIMIT: u64 = 64 << 20;

/// Why a call to ComfyUI did not give what was asked.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ComfyError {
    /// Not reachable, or restarting: worth waiting for.
    #[error("ComfyUI at {server} is unreachable: {why}")]
    Unreachable { server: String, why: String },
    /// `/prompt` refused the workflow (ComfyUI's validation message, quoted).
    #[error("ComfyUI at {server} refused the workflow: {message}")]
    Refused { server: String, message: String },
    /// The workflow ran and failed (ComfyUI's `execution_error`, quoted).
    #[error("ComfyUI at {server} failed running the workflow: {message}")]
    Failed { server: String, message: String },
    /// An answer darkroom cannot use.
    #[error("ComfyUI at {server}: {what}")]
    Protocol { server: String, what: String },
}

/// Where a prompt is, as the server knows it.
#[derive(Debug, Clone, PartialEq)]
pub enum PromptStatus {
    /// Finished: its output images, by output node id.
    Done(Vec<(String, OutputImage)>),
    /// Finished with an error (ComfyUI's message).
    Failed(String),
    /// In the queue, not started.
    Pending,
    /// Running now.
    Running,
    /// Neither in the history nor in the queue: never submitted, or lost when the server
    /// restarted (its queue lives only in memory).
    Unknown,
}

/// An output image as `/history` lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutputImage {
    pub filename: String,
    pub subfolder: String,
    /// `output` (SaveImage) or `temp` (PreviewImage).
    pub kind: String,
}

/// One ComfyUI server.
#[derive(Clone)]
pub struct Server {
    base: String,
    agent: ureq::Agent,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Server({})", self.base)
    }
}

impl Server {
    /// A server at `base` (`http://127.0.0.1:8188`).
    pub fn new(base: &str) -> Server {
        Server::with_timeout(base, CALL_TIMEOUT)
    }

    /// A server whose calls give up after `timeout` (config checks use a short one).
    pub fn with_timeout(base: &str, timeout: Duration) -> Server {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_global(Some(timeout))
            .timeout_connect(Some(CONNECT_TIMEOUT.min(timeout)))
            .http_status_as_error(false)
            .build()
            .into();
        Server {
            base: base.trim_end_matches('/').to_string(),
            agent,
        }
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    fn unreachable(&self, why: impl std::fmt::Display) -> ComfyError {
        ComfyError::Unreachable {
            server: self.base.clone(),
            why: why.to_string(),
        }
    }

    fn protocol(&self, what: impl std::fmt::Display) -> ComfyError {
        ComfyError::Protocol {
            server: self.base.clone(),
            what: what.to_string(),
        }
    }

    /// Sorts a finished call: a transport error or a 5xx is "unreachable"; other statuses
    /// come back to the caller with the body.
    fn answer(
        &self,
        what: &str,
        result: Result<ureq::http::Response<ureq::Body>, ureq::Error>,
        limit: u64,
    ) -> Result<(u16, Vec<u8>), ComfyError> {
        let mut response = result.map_err(|e| self.unreachable(format!("{what}: {e}")))?;
        let status = response.status().as_u16();
        let body = response
            .body_mut()
            .with_config()
            .limit(limit)
            .read_to_vec()
            .map_err(|e| self.unreachable(format!("{what}: reading the answer: {e}")))?;
        if status >= 500 {
            return Err(self.unreachable(format!("{what} answered {status}: {}", snippet(&body))));
        }
        Ok((status, body))
    }

    fn get_json(&self, path: &str) -> Result<Value, ComfyError> {
        let url = format!("{}{path}", self.base);
        let (status, body) = self.answer(
            &format!("GET {path}"),
            self.agent.get(&url).call(),
            JSON_LIMIT,
        )?;
        if status != 200 {
            return Err(self.protocol(format!("GET {path} answered {status}: {}", snippet(&body))));
        }
        serde_json::from_slice(&body)
            .map_err(|e| self.protocol(format!("GET {path} is not JSON: {e}")))
    }

    fn post_json(&self, path: &str, value: &Value) -> Result<(u16, Value), ComfyError> {
        let url = format!("{}{path}", self.base);
        let bytes = serde_json::to_vec(value).expect("JSON values serialise");
        let (status, body) = self.answer(
            &format!("POST {path}"),
            self.agent
                .post(&url)
                .header("Content-Type", "application/json")
                .send(&bytes[..]),
            JSON_LIMIT,
        )?;
        let value = if body.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&body).unwrap_or_else(|_| Value::String(snippet(&body)))
        };
        Ok((status, value))
    }

    /// The node types the server has.
    pub fn node_types(&self) -> Result<BTreeSet<String>, ComfyError> {
        let info = self.get_json("/object_info")?;
        let nodes = info
            .as_object()
            .ok_or_else(|| self.protocol("/object_info is not an object"))?;
        Ok(nodes.keys().cloned().collect())
    }

    /// How many prompts the server has running or waiting.
    pub fn queue_length(&self) -> Result<usize, ComfyError> {
        let queue = self.get_json("/queue")?;
        let count = |key: &str| queue.get(key).and_then(Value::as_array).map_or(0, Vec::len);
        Ok(count("queue_running") + count("queue_pending"))
    }

    /// Uploads a PNG into the server's input folder as `subfolder/name` (replacing a file of
    /// that name) and returns the name a LoadImage node takes.
    pub fn upload(&self, subfolder: &str, name: &str, png: &[u8]) -> Result<String, ComfyError> {
        let boundary = format!("darkroom-{}", uuid_hex(png));
        let mut body = Vec::with_capacity(png.len() + 512);
        for (field, value) in [
            ("subfolder", subfolder),
            ("overwrite", "true"),
            ("type", "input"),
        ] {
            body.extend_from_slice(
                format!(
                    "--{boundary}\r\nContent-Disposition: form-data; name=\"{field}\"\r\n\r\n{value}\r\n"
                )
                .as_bytes(),
            );
        }
        body.extend_from_slice(
            format!(
                "--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"{name}\"\r\nContent-Type: image/png\r\n\r\n"
            )
            .as_bytes(),
        );
        body.extend_from_slice(png);
        body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
        let url = format!("{}/upload/image", self.base);
        let (status, answer) = self.answer(
            "POST /upload/image",
            self.agent
                .post(&url)
                .header(
                    "Content-Type",
                    format!("multipart/form-data; boundary={boundary}"),
                )
                .send(&body[..]),
            JSON_LIMIT,
        )?;
        if status != 200 {
            return Err(self.protocol(format!(
                "POST /upload/image answered {status}: {}",
                snippet(&answer)
            )));
        }
        let answer: Value = serde_json::from_slice(&answer)
            .map_err(|e| self.protocol(format!("POST /upload/image is not JSON: {e}")))?;
        let stored = answer.get("name").and_then(Value::as_str).unwrap_or(name);
        let folder = answer
            .get("subfolder")
            .and_then(Value::as_str)
            .unwrap_or(subfolder);
        Ok(if folder.is_empty() {
            stored.to_string()
        } else {
            format!("{folder}/{stored}")
        })
    }

    /// Submits `prompt` (a workflow in API format) as `prompt_id`. A refused workflow comes
    /// back as [`ComfyError::Refused`] with ComfyUI's own words.
    pub fn submit(
        &self,
        prompt: &Value,
        prompt_id: &str,
        client_id: &str,
    ) -> Result<(), ComfyError> {
        let (status, answer) = self.post_json(
            "/prompt",
            &json!({ "prompt": prompt, "prompt_id": prompt_id, "client_id": client_id }),
        )?;
        if status == 200 {
            return Ok(());
        }
        Err(ComfyError::Refused {
            server: self.base.clone(),
            message: refusal_message(&answer),
        })
    }

    /// Where `prompt_id` is: in the history (done or failed), in the queue, or nowhere.
    pub fn status(&self, prompt_id: &str) -> Result<PromptStatus, ComfyError> {
        let history = self.get_json(&format!("/history/{prompt_id}"))?;
        if let Some(entry) = history.get(prompt_id) {
            return Ok(history_status(entry));
        }
        let queue = self.get_json("/queue")?;
        let holds = |key: &str| {
            queue
                .get(key)
                .and_then(Value::as_array)
                .is_some_and(|items| {
                    items
                        .iter()
                        .any(|item| item.get(1).and_then(Value::as_str) == Some(prompt_id))
                })
        };
        Ok(if holds("queue_running") {
            PromptStatus::Running
        } else if holds("queue_pending") {
            PromptStatus::Pending
        } else {
            // It may have finished between the two calls.
            let history = self.get_json(&format!("/history/{prompt_id}"))?;
            history
                .get(prompt_id)
                .map_or(PromptStatus::Unknown, history_status)
        })
    }

    /// Takes a prompt off the queue and stops it if it runs (after a timeout).
    pub fn cancel(&self, prompt_id: &str) {
        let _ = self.post_json("/queue", &json!({ "delete": [prompt_id] }));
        if matches!(self.status(prompt_id), Ok(PromptStatus::Running)) {
            let _ = self.post_json("/interrupt", &json!({ "prompt_id": prompt_id }));
        }
    }

    /// Downloads an output image (at most `limit` bytes).
    pub fn fetch(&self, image: &OutputImage, limit: u64) -> Result<Vec<u8>, ComfyError> {
        let url = format!("{}/view", self.base);
        let (status, body) = self.answer(
            "GET /view",
            self.agent
                .get(&url)
                .query("filename", &image.filename)
                .query("subfolder", &image.subfolder)
                .query("type", &image.kind)
                .call(),
            limit,
        )?;
        if status != 200 {
            return Err(self.protocol(format!("GET /view of {} answered {status}", image.filename)));
        }
        Ok(body)
    }

    /// Opens the websocket that reports the progress of `client_id`'s prompts; `None` when it
    /// cannot be opened (the caller polls instead).
    pub fn watch(&self, client_id: &str) -> Option<Watch> {
        let rest = self
            .base
            .strip_prefix("http://")
            .or_else(|| self.base.strip_prefix("https://"))?;
        let authority = rest.split('/').next()?;
        let address = std::net::ToSocketAddrs::to_socket_addrs(authority)
            .ok()?
            .next()?;
        let stream = TcpStream::connect_timeout(&address, CONNECT_TIMEOUT).ok()?;
        stream.set_read_timeout(Some(CONNECT_TIMEOUT)).ok()?;
        let url = format!("ws://{rest}/ws?clientId={client_id}");
        let (socket, _) = tungstenite::client(url.as_str(), stream).ok()?;
        socket
            .get_ref()
            .set_read_timeout(Some(Duration::from_millis(40)))
            .ok()?;
        Some(Watch { socket })
    }
}

/// The websocket of one client: node progress of its prompts.
pub struct Watch {
    socket: tungstenite::WebSocket<TcpStream>,
}

/// What the websocket said about a prompt.
#[derive(Debug, Clone, PartialEq)]
pub enum WatchEvent {
    /// A node started (`None`: the prompt's last node finished).
    Executing(Option<String>),
    /// Progress within a node.
    Progress { node: String, value: u64, max: u64 },
    /// The prompt finished, or failed: look it up.
    Ended,
    /// Nothing within the wait.
    Quiet,
    /// The socket closed (the server went away); poll instead.
    Closed,
}

impl Watch {
    /// The next event about `prompt_id`, waiting up to about 40 ms.
    pub fn next(&mut self, prompt_id: &str) -> WatchEvent {
        loop {
            let message = match self.socket.read() {
                Ok(message) => message,
                Err(tungstenite::Error::Io(e))
                    if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) =>
                {
                    return WatchEvent::Quiet
                }
                Err(_) => return WatchEvent::Closed,
            };
            let tungstenite::Message::Text(text) = message else {
                continue; // previews (binary), pings
            };
            let Ok(value) = serde_json::from_str::<Value>(text.as_str()) else {
                continue;
            };
            let data = value.get("data").cloned().unwrap_or(Value::Null);
            if data.get("prompt_id").and_then(Value::as_str) != Some(prompt_id) {
                continue;
            }
            let node = || data.get("node").and_then(Value::as_str).map(str::to_string);
            match value.get("type").and_then(Value::as_str) {
                Some("executing") => return WatchEvent::Executing(node()),
                Some("progress") => {
                    return WatchEvent::Progress {
                        node: node().unwrap_or_default(),
                        value: data.get("value").and_then(Value::as_u64).unwrap_or(0),
                        max: data.get("max").and_then(Value::as_u64).unwrap_or(0),
                    }
                }
                Some("execution_success" | "execution_error" | "execution_interrupted") => {
                    return WatchEvent::Ended
                }
                _ => continue,
            }
        }
    }
}

/// A history entry's status and outputs.
fn history_status(entry: &Value) -> PromptStatus {
    let status = entry.get("status");
    let failed = status
        .and_then(|s| s.get("status_str"))
        .and_then(Value::as_str)
        == Some("error");
    if failed {
        let messages = status
            .and_then(|s| s.get("messages"))
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        let error = messages.iter().find_map(|m| {
            (m.get(0).and_then(Value::as_str) == Some("execution_error")).then(|| m.get(1).cloned())
        });
        let message = match error.flatten() {
            Some(e) => format!(
                "node {} ({}): {}",
                e.get("node_id").and_then(Value::as_str).unwrap_or("?"),
                e.get("node_type").and_then(Value::as_str).unwrap_or("?"),
                e.get("exception_message")
                    .and_then(Value::as_str)
                    .unwrap_or("no message")
                    .trim()
            ),
            None => "the prompt ended with an error and no message".to_string(),
        };
        return PromptStatus::Failed(message);
    }
    let mut images = Vec::new();
    if let Some(outputs) = entry.get("outputs").and_then(Value::as_object) {
        for (node, output) in outputs {
            for image in output
                .get("images")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                let field = |k: &str| {
                    image
                        .get(k)
                        .and_then(Value::as_str)
                        .unwrap_or("")
                        .to_string()
                };
                images.push((
                    node.clone(),
                    OutputImage {
                        filename: field("filename"),
                        subfolder: field("subfolder"),
                        kind: field("type"),
                    },
                ));
            }
        }
    }
    PromptStatus::Done(images)
}

/// ComfyUI's words for a refused prompt: the error, then each node's errors.
fn refusal_message(answer: &Value) -> String {
    let mut parts = Vec::new();
    match answer.get("error") {
        Some(Value::String(s)) => parts.push(s.clone()),
        Some(error) => {
            let message = error.get("message").and_then(Value::as_str).unwrap_or("");
            let details = error.get("details").and_then(Value::as_str).unwrap_or("");
            parts.push(
                [message, details]
                    .into_iter()
                    .filter(|s| !s.is_empty())
                    .collect::<Vec<_>>()
                    .join(": "),
            );
        }
        None => {}
    }
    if let Some(nodes) = answer.get("node_errors").and_then(Value::as_object) {
        for (id, node) in nodes {
            let class = node
                .get("class_type")
                .and_then(Value::as_str)
                .unwrap_or("?");
            for error in node
                .get("errors")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                let message = error.get("message").and_then(Value::as_str).unwrap_or("");
                let details = error.get("details").and_then(Value::as_str).unwrap_or("");
                parts.push(format!("node {id} ({class}): {message}: {details}"));
            }
        }
    }
    if parts.is_empty() {
        parts.push(answer.to_string());
    }
    parts.join("; ")
}

/// At most 300 characters of a body, for messages.
fn snippet(body: &[u8]) -> String {
    String::from_utf8_lossy(body)
        .trim()
        .chars()
        .take(300)
        .collect()
}

/// A boundary token from the content (any value absent from the body would do).
fn uuid_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(bytes);
    digest[..12].iter().map(|b| format!("{b:02x}")).collect()
}

/// The prompt id of attempt `attempt` of the job identified by `job_key`: the same on every
/// run, so a restart finds the prompt it submitted.
pub fn prompt_id(job_key: &str, attempt: u32) -> String {
    const NAMESPACE: uuid::Uuid = uuid::Uuid::from_u128(0x6461_726b_726f_6f6d_2d63_6f6d_6679_7569);
    uuid::Uuid::new_v5(
        &NAMESPACE,
        format!("{job_key} attempt {attempt}").as_bytes(),
    )
    .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prompt_ids_are_stable_uuids_that_differ_by_attempt() {
        let a = prompt_id("job 7 sha abc", 1);
        assert_eq!(a, prompt_id("job 7 sha abc", 1));
        assert_ne!(a, prompt_id("job 7 sha abc", 2));
        assert_ne!(a, prompt_id("job 8 sha abc", 1));
        assert_eq!(uuid::Uuid::parse_str(&a).unwrap().get_version_num(), 5);
    }

    #[test]
    fn a_failed_history_entry_quotes_comfyuis_message() {
        let entry = json!({"status": {"status_str": "error", "completed": false, "messages": [
            ["execution_start", {"prompt_id": "p"}],
            ["execution_error", {"node_id": "4", "node_type": "ImageBlend",
              "exception_message": "The size of tensor a (64) must match the size of tensor b (32)\n"}]
        ]}, "outputs": {}});
        assert_eq!(
            history_status(&entry),
            PromptStatus::Failed(
                "node 4 (ImageBlend): The size of tensor a (64) must match the size of tensor b (32)"
                    .into()
            )
        );
    }

    #[test]
    fn a_refusal_lists_the_node_errors() {
        let answer = json!({"error": {"type": "prompt_outputs_failed_validation",
            "message": "Prompt outputs failed validation", "details": ""},
            "node_errors": {"3": {"class_type": "ImageBlend", "errors": [
                {"message": "Value not in list", "details": "blend_mode: 'nope' not in [...]"}]}}});
        let message = refusal_message(&answer);
        assert!(
            message.starts_with("Prompt outputs failed validation"),
            "{message}"
        );
        assert!(
            message.contains("node 3 (ImageBlend): Value not in list"),
            "{message}"
        );
    }
}
