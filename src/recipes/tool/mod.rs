//! A rule's `tool`: the model tool darkroom drives itself, so that a proxy (or, with
//! `via = "full"`, the whole image) comes back processed without a person or glue script.
//!
//! - `tool = { comfyui = "http://127.0.0.1:8188", workflow = "workflows/grade.json" }` runs an
//!   exported ComfyUI workflow over its HTTP API (one server, or several to spread jobs over).
//! - `tool = "cmd(python3 my_model.py %i %o)"` runs any command on the image.
//!
//! This module owns the rule key, its checks and the choice of server and attempt; [`run`]
//! is what the tool thread does. A ComfyUI attempt is recorded in the journal before anything
//! is sent, and its prompt id is a function of the job and the attempt, so a restart looks the
//! prompt up instead of submitting it again.

use crate::daemon::journal::{Job, Store};
use crate::daemon::settings::{duration_or, resolve_path, Problems, RuleContext};
use crate::io::comfyui::{Server, Workflow};
use crate::io::external::{CommandTemplate, UpscaleMethod};
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub mod run;

/// How long a ComfyUI prompt may take from submission to its outputs, by default.
pub const DEFAULT_TOOL_TIMEOUT: Duration = Duration::from_secs(30 * 60);
/// Prompts darkroom keeps with each ComfyUI server at once: one running, one queued behind it,
/// so the GPU never waits on darkroom's upload.
pub const PROMPTS_PER_SERVER: usize = 2;
/// How long the config check waits for a server's `/object_info`.
const CHECK_TIMEOUT: Duration = Duration::from_secs(3);
/// The keys of a `tool = { ... }` table.
const COMFYUI_KEYS: &[&str] = &[
    "comfyui",
    "workflow",
    "input_node",
    "output_node",
    "inputs",
    "timeout",
];

/// A rule's tool.
#[derive(Debug, Clone)]
pub enum Tool {
    ComfyUi(Arc<ComfyTool>),
    /// A command run on the image; `%i` and `%o` are its input and output files.
    Command(CommandTemplate),
}

/// A ComfyUI workflow and the servers that run it.
#[derive(Debug)]
pub struct ComfyTool {
    pub servers: Vec<Server>,
    pub workflow: Workflow,
    pub workflow_path: PathBuf,
    pub timeout: Duration,
    board: Mutex<Board>,
}

/// What the daemon knows of its servers between jobs (in memory only; a restart starts
/// fresh and looks every recorded attempt up).
#[derive(Debug, Default)]
struct Board {
    servers: Vec<ServerState>,
    /// Jobs whose last prompt the server no longer has: their next start is a new attempt.
    renew: HashSet<i64>,
}

#[derive(Debug, Default, Clone)]
struct ServerState {
    /// Since when it has not answered (cleared by an answer).
    down_since: Option<Instant>,
    /// Its queue length when last asked.
    queue: usize,
    /// darkroom's jobs with it now.
    ours: usize,
}

/// What a tool stage's end says about its server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    Same,
    WentDown,
    CameBack,
}

/// One start of a job's tool stage, decided on the main thread.
#[derive(Debug, Clone)]
pub struct Attempt {
    pub number: u32,
    /// The ComfyUI server (`cmd` for a command).
    pub server: String,
    /// True when this attempt was just recorded and nothing has been sent for it yet; false
    /// when a run before this one may have submitted it (it is looked up first).
    pub fresh: bool,
}

impl Tool {
    /// How many jobs of one rule may be with the tool at once.
    pub fn capacity(&self) -> usize {
        match self {
            Tool::ComfyUi(c) => PROMPTS_PER_SERVER * c.servers.len(),
            Tool::Command(_) => 1,
        }
    }

    /// How the rule's provenance names the tool.
    pub fn describe(&self) -> serde_json::Value {
        match self {
            Tool::ComfyUi(c) => serde_json::json!({
                "comfyui": c.servers.iter().map(Server::base).collect::<Vec<_>>(),
                "workflow": c.workflow_path,
                "input_node": c.workflow.input_node,
                "output_node": c.workflow.output_node,
            }),
            Tool::Command(t) => serde_json::json!({
                "cmd": UpscaleMethod::Command(t.clone()).to_string(),
            }),
        }
    }

    /// Decides the attempt a job's tool stage makes now, and records a new one in the
    /// journal before anything is sent. A job resumes its recorded attempt (it is looked up
    /// first) unless its server no longer has it, or that server is down and another is up.
    pub fn begin(&self, job: &Job, journal: &dyn Store) -> anyhow::Result<Attempt> {
        let tool = match self {
            Tool::Command(_) => {
                let number = job.tool_attempt + 1;
                journal.set_tool_attempt(job.id, number, "cmd")?;
                return Ok(Attempt {
                    number,
                    server: "cmd".into(),
                    fresh: true,
                });
            }
            Tool::ComfyUi(tool) => tool,
        };
        let mut board = tool.board();
        let renew = board.renew.remove(&job.id);
        let recorded = job
            .tool_server
            .as_deref()
            .and_then(|s| tool.servers.iter().position(|x| x.base() == s));
        let best = tool.pick(&board);
        let keep = match recorded {
            Some(index) if job.tool_attempt > 0 && !renew => {
                let down = board.servers[index].down_since.is_some();
                !down || board.servers[best].down_since.is_some()
            }
            _ => false,
        };
        let attempt = if let (true, Some(index)) = (keep, recorded) {
            board.servers[index].ours += 1;
            Attempt {
                number: job.tool_attempt,
                server: tool.servers[index].base().to_string(),
                fresh: false,
            }
        } else {
            let number = job.tool_attempt + 1;
            let server = tool.servers[best].base().to_string();
            journal.set_tool_attempt(job.id, number, &server)?;
            board.servers[best].ours += 1;
            Attempt {
                number,
                server,
                fresh: true,
            }
        };
        Ok(attempt)
    }

    /// A tool stage came back: its server answered (or not), and whether the job's next
    /// start must be a new attempt. Says whether the server just went down or came back (the
    /// log says so once, not at every retry of every job).
    pub fn after(&self, job_id: i64, server: &str, reachable: bool, renew: bool) -> Change {
        let Tool::ComfyUi(tool) = self else {
            return Change::Same;
        };
        let mut board = tool.board();
        if renew {
            board.renew.insert(job_id);
        }
        let Some(index) = tool.servers.iter().position(|s| s.base() == server) else {
            return Change::Same;
        };
        let state = &mut board.servers[index];
        state.ours = state.ours.saturating_sub(1);
        match (reachable, state.down_since) {
            (true, Some(_)) => {
                state.down_since = None;
                Change::CameBack
            }
            (false, None) => {
                state.down_since = Some(Instant::now());
                Change::WentDown
            }
            _ => Change::Same,
        }
    }

    /// How long a job waits before trying an unreachable tool again: a second at first,
    /// growing with how long the server has been down, at most 30 s.
    pub fn backoff(&self, server: &str) -> Duration {
        let Tool::ComfyUi(tool) = self else {
            return Duration::from_secs(5);
        };
        let board = tool.board();
        let down_for = tool
            .servers
            .iter()
            .position(|s| s.base() == server)
            .and_then(|i| board.servers[i].down_since)
            .map_or(Duration::ZERO, |t| t.elapsed());
        (down_for / 2).clamp(Duration::from_secs(1), Duration::from_secs(30))
    }

    /// Notes a server's queue length (asked before each submission).
    pub fn note_queue(&self, server: &str, length: usize) {
        if let Tool::ComfyUi(tool) = self {
            let mut board = tool.board();
            if let Some(i) = tool.servers.iter().position(|s| s.base() == server) {
                board.servers[i].queue = length;
                board.servers[i].down_since = None;
            }
        }
    }
}

impl ComfyTool {
    fn board(&self) -> std::sync::MutexGuard<'_, Board> {
        let mut board = self.board.lock().unwrap_or_else(|p| p.into_inner());
        if board.servers.len() != self.servers.len() {
            board.servers = vec![ServerState::default(); self.servers.len()];
        }
        board
    }

    /// The server a new prompt goes to: among those not known to be down, the one with the
    /// shortest queue (its last known queue plus darkroom's prompts there since); when all
    /// are down, the one down the shortest time.
    fn pick(&self, board: &Board) -> usize {
        let load = |s: &ServerState| s.queue + s.ours;
        let up = board
            .servers
            .iter()
            .enumerate()
            .filter(|(_, s)| s.down_since.is_none())
            .min_by_key(|(i, s)| (load(s), *i))
            .map(|(i, _)| i);
        up.unwrap_or_else(|| {
            board
                .servers
                .iter()
                .enumerate()
                .max_by_key(|(_, s)| s.down_since)
                .map_or(0, |(i, _)| i)
        })
    }

    /// The server named `base`.
    pub fn server(&self, base: &str) -> Option<&Server> {
        self.servers.iter().find(|s| s.base() == base)
    }
}

/// Reads a rule's `tool` key. Problems go into `problems` under `label.tool`.
pub(crate) fn resolve(
    value: toml::Value,
    label: &str,
    line: usize,
    context: &RuleContext<'_>,
    problems: &mut Problems,
) -> Option<Tool> {
    let key = format!("{label}.tool");
    match value {
        toml::Value::String(text) => match text.parse::<UpscaleMethod>() {
            Ok(UpscaleMethod::Command(template)) => Some(Tool::Command(template)),
            Ok(_) => {
                problems.push(&key, Some(line), format!("'{text}' is not a tool: use \"cmd(program %i %o)\" or a table {{ comfyui = \"http://127.0.0.1:8188\", workflow = \"workflow.json\" }}"));
                None
            }
            Err(e) => {
                problems.push(&key, Some(line), e.to_string());
                None
            }
        },
        toml::Value::Table(mut table) => {
            crate::daemon::settings::reject_unknown_keys(
                &mut table,
                COMFYUI_KEYS,
                &key,
                line,
                problems,
            );
            resolve_comfyui(table, &key, line, context, problems)
        }
        other => {
            problems.push(
                &key,
                Some(line),
                format!("is {}: use \"cmd(program %i %o)\" or a table {{ comfyui = \"http://127.0.0.1:8188\", workflow = \"workflow.json\" }}", match other.type_str() {
                    t @ ("integer" | "array") => format!("an {t}"),
                    t => format!("a {t}"),
                }),
            );
            None
        }
    }
}

fn resolve_comfyui(
    mut table: toml::Table,
    key: &str,
    line: usize,
    context: &RuleContext<'_>,
    problems: &mut Problems,
) -> Option<Tool> {
    let base = context.base;
    let servers: Vec<String> = match table.remove("comfyui") {
        Some(toml::Value::String(s)) => vec![s],
        Some(toml::Value::Array(items)) => items
            .into_iter()
            .filter_map(|v| v.as_str().map(str::to_string))
            .collect(),
        _ => Vec::new(),
    };
    let mut ok = true;
    if servers.is_empty() {
        problems.push(
            format!("{key}.comfyui"),
            Some(line),
            "name the ComfyUI server(s): comfyui = \"http://127.0.0.1:8188\" or a list of them",
        );
        ok = false;
    }
    for server in &servers {
        if !server.starts_with("http://") || server.len() <= "http://".len() {
            problems.push(
                format!("{key}.comfyui"),
                Some(line),
                format!("'{server}' is not an http:// address (e.g. \"http://127.0.0.1:8188\")"),
            );
            ok = false;
        }
    }
    let text_of =
        |table: &mut toml::Table, name: &str, problems: &mut Problems| match table.remove(name) {
            None => None,
            Some(toml::Value::String(s)) => Some(s),
            Some(toml::Value::Integer(n)) => Some(n.to_string()),
            Some(_) => {
                problems.push(
                    format!("{key}.{name}"),
                    Some(line),
                    "must be a node id such as \"9\"",
                );
                None
            }
        };
    let input_node = text_of(&mut table, "input_node", problems);
    let output_node = text_of(&mut table, "output_node", problems);
    let mut overrides = Vec::new();
    match table.remove("inputs") {
        None => {}
        Some(toml::Value::Table(inputs)) => {
            for (name, value) in inputs {
                match serde_json::to_value(&value) {
                    Ok(json) => overrides.push((name, json)),
                    Err(e) => problems.push(format!("{key}.inputs"), Some(line), e.to_string()),
                }
            }
        }
        Some(_) => problems.push(
            format!("{key}.inputs"),
            Some(line),
            "must be a table such as { \"3.blend_factor\" = 0.3 }",
        ),
    }
    let timeout = duration_or(
        table.remove("timeout"),
        DEFAULT_TOOL_TIMEOUT,
        format!("{key}.timeout"),
        line,
        problems,
    );
    let workflow_path = match table.remove("workflow") {
        Some(toml::Value::String(p)) => resolve_path(base, Path::new(&p)),
        _ => {
            problems.push(
                format!("{key}.workflow"),
                Some(line),
                "name the workflow file, exported from ComfyUI with Workflow > Export (API): workflow = \"workflows/grade.json\"",
            );
            return None;
        }
    };
    let text = match std::fs::read_to_string(&workflow_path) {
        Ok(text) => text,
        Err(e) => {
            problems.push(
                format!("{key}.workflow"),
                Some(line),
                format!("cannot read {}: {e}", workflow_path.display()),
            );
            return None;
        }
    };
    let workflow = match Workflow::parse(
        &text,
        input_node.as_deref(),
        output_node.as_deref(),
        &overrides,
    ) {
        Ok(w) => w,
        Err(e) => {
            for message in e.0 {
                problems.push(
                    format!("{key}.workflow"),
                    Some(line),
                    format!("{}: {message}", workflow_path.display()),
                );
            }
            return None;
        }
    };
    if !ok {
        return None;
    }
    let servers: Vec<Server> = servers.iter().map(|s| Server::new(s)).collect();
    if context.ask_tool_servers {
        check_node_types(&servers, &workflow, &workflow_path, key, line, problems);
    }
    Some(Tool::ComfyUi(Arc::new(ComfyTool {
        servers,
        workflow,
        workflow_path,
        timeout,
        board: Mutex::new(Board::default()),
    })))
}

/// Asks each server whether it has every node type of the workflow. A missing type is a
/// config problem; a server that does not answer is only warned about (it may start later).
fn check_node_types(
    servers: &[Server],
    workflow: &Workflow,
    workflow_path: &Path,
    key: &str,
    line: usize,
    problems: &mut Problems,
) {
    for server in servers {
        let probe = Server::with_timeout(server.base(), CHECK_TIMEOUT);
        match probe.node_types() {
            Ok(known) => {
                let missing: Vec<String> = workflow
                    .node_types()
                    .into_iter()
                    .filter(|t| !known.contains(t))
                    .collect();
                if !missing.is_empty() {
                    problems.push(
                        format!("{key}.workflow"),
                        Some(line),
                        format!(
                            "{}: ComfyUI at {} has no node type {} (install the custom node, or change the workflow)",
                            workflow_path.display(),
                            server.base(),
                            missing.join(", ")
                        ),
                    );
                }
            }
            Err(e) => problems.warn(
                &format!("{key}.workflow"),
                format!(
                    "cannot check {} against ComfyUI's node types now ({e}); its jobs wait for the server",
                    workflow_path.display()
                ),
            ),
        }
    }
}
