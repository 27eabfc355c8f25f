//! What a tool thread does with one job: sends the image, follows the run, and writes what
//! comes back into the returns tree (temp file, sync, rename) under names that are a
//! function of the job and attempt, so that doing it twice after a crash writes the same
//! files again and nothing more.

use super::{Attempt, Tool};
use crate::core::colour;
use crate::io::comfyui::{self, ComfyError, PromptStatus, Server, WatchEvent};
use crate::io::decode::{self, DecodeLimits};
use crate::io::png_encode::{self, PngOptions};
use crate::io::{atomic, external::ExternalError};
use crate::ops::OpError;
use image::DynamicImage;
use serde_json::json;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// The subfolder of ComfyUI's input and output folders that darkroom's files go in.
pub const COMFYUI_SUBFOLDER: &str = "darkroom";
/// How often a prompt is looked up while the websocket is quiet (or absent).
const POLL_INTERVAL: Duration = Duration::from_secs(1);
/// How often it is looked up once the websocket said it ended (or with no websocket, how
/// long the loop sleeps between reads).
const EAGER_POLL_INTERVAL: Duration = Duration::from_millis(40);

/// One tool stage, decided on the main thread.
#[derive(Debug, Clone)]
pub struct ToolRun {
    pub tool: Tool,
    pub job_id: i64,
    /// What makes the job unique beyond its id (its content hash and claim time): the prompt
    /// id is derived from it, so a fresh journal never finds an older one's prompts.
    pub job_key: String,
    pub attempt: Attempt,
    /// The image sent: the proxy, or the original with `via = "full"`.
    pub send: PathBuf,
    /// The size the output must have (a proxy's); `None` takes any size.
    pub exact_size: Option<(u32, u32)>,
    /// Where outputs are written, and their stem (`photo_dr000042_proxy`).
    pub out_dir: PathBuf,
    pub stem: String,
    pub command_timeout: Duration,
    pub limits: DecodeLimits,
}

/// How a tool stage ended, short of failing the job.
#[derive(Debug)]
pub enum ToolOutcome {
    /// The tool's outputs, durable in `out_dir`, in output order.
    Returned {
        files: Vec<PathBuf>,
        notes: serde_json::Value,
    },
    /// The tool cannot be reached: the job waits and tries again.
    Unreachable(String),
    /// The server no longer has the prompt (it restarted): the next start is a new attempt.
    Renew(String),
}

/// Runs the stage. An error fails the job (a workflow error quotes ComfyUI).
pub fn run(stage: &ToolRun) -> Result<ToolOutcome, OpError> {
    match &stage.tool {
        Tool::Command(template) => run_command(stage, template),
        Tool::ComfyUi(tool) => {
            let Some(server) = tool.server(&stage.attempt.server) else {
                return Ok(ToolOutcome::Renew(format!(
                    "{} is no longer one of the rule's servers",
                    stage.attempt.server
                )));
            };
            match run_comfyui(stage, tool, server) {
                Ok(outcome) => Ok(outcome),
                Err(ComfyError::Unreachable { server, why }) => Ok(ToolOutcome::Unreachable(
                    format!("ComfyUI at {server} is unreachable ({why})"),
                )),
                Err(ComfyError::Refused { message, .. } | ComfyError::Failed { message, .. }) => {
                    Err(OpError::Usage(format!(
                        "the workflow {} failed in ComfyUI: {message}",
                        tool.workflow_path.display()
                    )))
                }
                Err(e @ ComfyError::Protocol { .. }) => Err(OpError::External {
                    path: stage.send.display().to_string(),
                    reason: e.to_string(),
                }),
            }
        }
    }
}

/// The image as ComfyUI takes it: an sRGB PNG (its LoadImage ignores ICC profiles), and the
/// profile it was converted from.
fn image_for_comfyui(stage: &ToolRun) -> Result<(Vec<u8>, Option<Vec<u8>>), OpError> {
    let loaded =
        decode::load(&stage.send, &stage.limits).map_err(|e| OpError::decode(&stage.send, e))?;
    let icc = loaded.icc_profile.clone();
    let (image, _) = colour::to_srgb(loaded.image, icc.as_deref());
    let png = png_encode::encode(&image, None, &[], &PngOptions::default())
        .map_err(|e| OpError::Internal(format!("encoding the image for ComfyUI: {e}")))?;
    Ok((png, icc))
}

fn run_comfyui(
    stage: &ToolRun,
    tool: &super::ComfyTool,
    server: &Server,
) -> Result<ToolOutcome, ComfyError> {
    let started = Instant::now();
    let prompt_id = comfyui::prompt_id(&stage.job_key, stage.attempt.number);
    let client_id = format!("darkroom-{prompt_id}");
    let name = format!("{}_a{}", stage.stem, stage.attempt.number);
    let mut log = Vec::new();
    let status = if stage.attempt.fresh {
        PromptStatus::Unknown
    } else {
        server.status(&prompt_id)?
    };
    let mut watch = None;
    let mut icc = None;
    match status {
        PromptStatus::Unknown if !stage.attempt.fresh => {
            return Ok(ToolOutcome::Renew(format!(
                "ComfyUI at {} no longer has prompt {prompt_id} (attempt {}); it restarted since",
                server.base(),
                stage.attempt.number
            )));
        }
        PromptStatus::Unknown => {
            let queue = server.queue_length()?;
            stage.tool.note_queue(server.base(), queue);
            let (png, profile) = image_for_comfyui(stage).map_err(|e| ComfyError::Protocol {
                server: server.base().into(),
                what: e.to_string(),
            })?;
            icc = profile;
            let uploaded = server.upload(COMFYUI_SUBFOLDER, &format!("{name}.png"), &png)?;
            let prompt = tool
                .workflow
                .prompt_for(&uploaded, &format!("{COMFYUI_SUBFOLDER}/{name}"));
            watch = server.watch(&client_id);
            server.submit(&prompt, &prompt_id, &client_id)?;
            tracing::info!(
                job = stage.job_id,
                server = server.base(),
                prompt_id,
                attempt = stage.attempt.number,
                queue_ahead = queue,
                "submitted to ComfyUI"
            );
        }
        PromptStatus::Pending | PromptStatus::Running => {
            tracing::info!(
                job = stage.job_id,
                server = server.base(),
                prompt_id,
                "ComfyUI still has the prompt submitted before the restart; following it"
            );
            watch = server.watch(&client_id);
        }
        PromptStatus::Done(_) | PromptStatus::Failed(_) => {
            tracing::info!(
                job = stage.job_id,
                server = server.base(),
                prompt_id,
                "ComfyUI finished the prompt submitted before the restart; taking its outputs"
            );
        }
    }
    let submitted = Instant::now();
    let images = follow(stage, tool, server, &prompt_id, &mut watch, &mut log)?;
    let ran = submitted.elapsed().as_secs_f64();
    let ours: Vec<_> = images
        .into_iter()
        .filter(|(node, _)| *node == tool.workflow.output_node)
        .map(|(_, image)| image)
        .collect();
    if ours.is_empty() {
        return Err(ComfyError::Failed {
            server: server.base().into(),
            message: format!(
                "the output node {} ({}) produced no image",
                tool.workflow.output_node,
                tool.workflow.class_of(&tool.workflow.output_node)
            ),
        });
    }
    if icc.is_none() {
        // A resumed attempt: the profile is the sent file's.
        icc = decode::load(&stage.send, &stage.limits)
            .ok()
            .and_then(|l| l.icc_profile);
    }
    let fetch_started = Instant::now();
    let mut files = Vec::with_capacity(ours.len());
    for (index, image) in ours.iter().enumerate() {
        let bytes = server.fetch(image, stage.limits.max_file_bytes)?;
        let path = stage.out_dir.join(format!("{name}_{:02}.png", index + 1));
        write_output(&bytes, icc.as_deref(), &path, stage).map_err(|e| ComfyError::Failed {
            server: server.base().into(),
            message: e.to_string(),
        })?;
        files.push(path);
    }
    Ok(ToolOutcome::Returned {
        files,
        notes: json!({
            "tool": "comfyui",
            "server": server.base(),
            "workflow": tool.workflow_path,
            "prompt_id": prompt_id,
            "attempt": stage.attempt.number,
            "outputs": ours.iter().map(|i| &i.filename).collect::<Vec<_>>(),
            "progress": log,
            "seconds": {
                "total": started.elapsed().as_secs_f64(),
                "run": ran,
                "fetch": fetch_started.elapsed().as_secs_f64(),
            },
        }),
    })
}

/// Follows a prompt to its end: node progress from the websocket, the prompt's status from
/// `/history` and `/queue` (every second, and whenever the websocket says it ended).
fn follow(
    stage: &ToolRun,
    tool: &super::ComfyTool,
    server: &Server,
    prompt_id: &str,
    watch: &mut Option<comfyui::Watch>,
    log: &mut Vec<String>,
) -> Result<Vec<(String, comfyui::OutputImage)>, ComfyError> {
    let started = Instant::now();
    let mut last_poll = Instant::now();
    // None until the first progress line (an Instant 10 s back would not exist in a
    // machine's first 10 s of uptime, when a service may well start).
    let mut last_progress: Option<Instant> = None;
    // Once the websocket says the prompt ended, its history entry follows within moments:
    // it is looked up often until it is there.
    let mut ended_at: Option<Instant> = None;
    loop {
        let interval = match ended_at {
            Some(t) if t.elapsed() < Duration::from_secs(5) => EAGER_POLL_INTERVAL,
            _ => POLL_INTERVAL,
        };
        let mut look = last_poll.elapsed() >= interval;
        match watch.as_mut().map(|w| w.next(prompt_id)) {
            Some(WatchEvent::Executing(Some(node))) => {
                let line = format!("node {node} ({})", tool.workflow.class_of(&node));
                tracing::info!(job = stage.job_id, prompt_id, "ComfyUI runs {line}");
                log.push(line);
            }
            Some(WatchEvent::Progress { node, value, max }) => {
                if last_progress.is_none_or(|t| t.elapsed() >= Duration::from_secs(2))
                    || value == max
                {
                    tracing::info!(
                        job = stage.job_id,
                        prompt_id,
                        node,
                        "ComfyUI progress {value}/{max}"
                    );
                    last_progress = Some(Instant::now());
                }
            }
            Some(WatchEvent::Executing(None) | WatchEvent::Ended) => {
                ended_at.get_or_insert_with(Instant::now);
                look = true;
            }
            Some(WatchEvent::Closed) => *watch = None,
            Some(WatchEvent::Quiet) => {}
            None => std::thread::sleep(EAGER_POLL_INTERVAL),
        }
        if !look {
            continue;
        }
        last_poll = Instant::now();
        match server.status(prompt_id)? {
            PromptStatus::Done(images) => return Ok(images),
            PromptStatus::Failed(message) => {
                return Err(ComfyError::Failed {
                    server: server.base().into(),
                    message,
                })
            }
            PromptStatus::Pending | PromptStatus::Running => {}
            PromptStatus::Unknown => {
                // Gone from the queue without a history entry: the server restarted.
                return Err(ComfyError::Unreachable {
                    server: server.base().into(),
                    why: format!("prompt {prompt_id} vanished from its queue (a restart?)"),
                });
            }
        }
        if started.elapsed() > tool.timeout {
            server.cancel(prompt_id);
            return Err(ComfyError::Protocol {
                server: server.base().into(),
                what: format!(
                    "prompt {prompt_id} did not finish within the tool's timeout ({}); it was taken off the queue",
                    crate::daemon::settings::format_duration(tool.timeout)
                ),
            });
        }
    }
}

/// Writes a returned image durably as a PNG, back in the sent file's colour space, and checks
/// its size when the stage needs one.
fn write_output(
    bytes: &[u8],
    icc: Option<&[u8]>,
    path: &std::path::Path,
    stage: &ToolRun,
) -> Result<(), OpError> {
    let loaded =
        decode::decode_bytes(bytes, &stage.limits).map_err(|e| OpError::decode(path, e))?;
    check_size(&loaded.image, stage, "ComfyUI")?;
    let (image, profile) = match icc {
        Some(icc) => (colour::from_srgb(loaded.image, icc).0, Some(icc)),
        None => (loaded.image, None),
    };
    let png = png_encode::encode(&image, profile, &[], &PngOptions::default())
        .map_err(|e| OpError::Internal(format!("encoding a returned image: {e}")))?;
    std::fs::create_dir_all(&stage.out_dir).map_err(|e| OpError::write(&stage.out_dir, e))?;
    atomic::write_atomic(path, &png).map_err(|e| OpError::write(path, e))
}

/// The output must have the proxy's size when the stage says so.
fn check_size(image: &DynamicImage, stage: &ToolRun, tool: &str) -> Result<(), OpError> {
    match stage.exact_size {
        Some((w, h)) if (image.width(), image.height()) != (w, h) => Err(OpError::Mismatch {
            path: stage.send.display().to_string(),
            reason: format!(
                "{tool} returned {}x{}, but the proxy it was given is {w}x{h}; a tool of a split-to-proxy rule must keep the size (use via = \"full\" for a tool that resizes)",
                image.width(),
                image.height()
            ),
        }),
        _ => Ok(()),
    }
}

fn run_command(
    stage: &ToolRun,
    template: &crate::io::external::CommandTemplate,
) -> Result<ToolOutcome, OpError> {
    let started = Instant::now();
    let loaded =
        decode::load(&stage.send, &stage.limits).map_err(|e| OpError::decode(&stage.send, e))?;
    let icc = loaded.icc_profile.clone();
    let size = (loaded.image.width(), loaded.image.height());
    let image = template
        .run_any_size(&loaded.image, stage.command_timeout, &stage.limits)
        .map_err(|e: ExternalError| OpError::External {
            path: stage.send.display().to_string(),
            reason: e.to_string(),
        })?;
    check_size(&image, stage, "the command")?;
    let path = stage
        .out_dir
        .join(format!("{}_a{}_01.png", stage.stem, stage.attempt.number));
    let png = png_encode::encode(&image, icc.as_deref(), &[], &PngOptions::default())
        .map_err(|e| OpError::Internal(format!("encoding a returned image: {e}")))?;
    std::fs::create_dir_all(&stage.out_dir).map_err(|e| OpError::write(&stage.out_dir, e))?;
    atomic::write_atomic(&path, &png).map_err(|e| OpError::write(&path, e))?;
    Ok(ToolOutcome::Returned {
        files: vec![path],
        notes: json!({
            "tool": "cmd",
            "command": crate::io::external::UpscaleMethod::Command(template.clone()).to_string(),
            "attempt": stage.attempt.number,
            "input_size": [size.0, size.1],
            "seconds": { "total": started.elapsed().as_secs_f64() },
        }),
    })
}
