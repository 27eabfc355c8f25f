//! A split-to-proxy rule with a `tool`: darkroom sends each proxy to the tool itself, and what
//! the tool returns is queued as the proxy's returns, already paired with it (no guessing),
//! one variant per output image. With `via = "full"` the whole image goes to the tool and its
//! outputs are the results.
//!
//! The tool stage runs on a thread of its own. It never writes the journal: the main thread
//! records the attempt before it starts and what it brought back after.

use super::{returns, SplitToProxy};
use crate::daemon::journal::{FileIdentity, Job, State, ToolReturn};
use crate::daemon::model_lane::ModelLane;
use crate::daemon::pairing;
use crate::daemon::trees::write_json_atomic;
use crate::io::{clock, names};
use crate::ops::OpError;
use crate::recipes::tool::run::{self, ToolOutcome, ToolRun};
use crate::recipes::tool::{Change, Tool};
use crate::recipes::{Finish, InputPlace, Rule, Service, Start};
use serde_json::json;
use std::path::{Path, PathBuf};

impl SplitToProxy {
    /// True when the job's proxy is written and still there: it goes to the tool (a job that
    /// lost its proxy is split again first).
    pub(super) fn proxy_ready(&self, job: &Job) -> bool {
        job.proxy_path.as_deref().is_some_and(Path::is_file)
    }

    fn tool(&self) -> &Tool {
        self.tool.as_ref().expect("called for rules with a tool")
    }

    /// The stage for `job`, or `None` while the rule's tool is as busy as it may be.
    fn stage(
        &self,
        job: &Job,
        send: PathBuf,
        exact_size: Option<(u32, u32)>,
        stem: String,
        out_dir: PathBuf,
        service: &mut dyn Service,
    ) -> anyhow::Result<Option<ToolRun>> {
        let tool = self.tool();
        if service.tool_jobs(&job.rule) >= tool.capacity() {
            return Ok(None);
        }
        let attempt = tool.begin(job, service.journal())?;
        Ok(Some(ToolRun {
            tool: tool.clone(),
            job_id: job.id,
            job_key: format!(
                "darkroom job {} of {} claimed at {:.6}",
                job.id, job.sha256, job.created_at
            ),
            attempt,
            send,
            exact_size,
            out_dir,
            stem,
            command_timeout: self.command_timeout,
            limits: service.limits(),
        }))
    }

    /// Sends a split job's proxy to the tool.
    pub(super) fn start_tool(
        &self,
        rule: &Rule,
        job: &Job,
        service: &mut dyn Service,
    ) -> anyhow::Result<Start> {
        let proxy = job.proxy_path.clone().expect("proxy_ready");
        let size = job.proxy_width.zip(job.proxy_height);
        let out_dir = service.trees().returns(&rule.name);
        let return_timeout = self.return_timeout;
        let Some(stage) = self.stage(
            job,
            proxy.clone(),
            size,
            names::stem_of(&proxy),
            out_dir,
            service,
        )?
        else {
            return Ok(Start::Wait);
        };
        Ok(Start::Tool {
            work: Box::new(move |_: &ModelLane| {
                let outcome = run::run(&stage).and_then(|o| identify(o, &stage));
                Ok(Box::new(ToolStage {
                    stage,
                    outcome,
                    return_timeout,
                }) as Box<dyn Finish>)
            }),
        })
    }

    /// `via = "full"`: the whole image goes to the tool, and its outputs are filed as the
    /// results (the first as `photo.png`, more as `photo_v2.png`, ...), with a provenance
    /// sidecar that gives their size against the original's.
    pub(super) fn start_full(
        &self,
        rule: &Rule,
        job: &Job,
        service: &mut dyn Service,
    ) -> anyhow::Result<Start> {
        let images = service.trees().images(&rule.name);
        let output = match &job.output_path {
            Some(path) => path.clone(),
            None => {
                let stem = names::stem_of(&job.claimed_path);
                let mut path = images.join(format!("{stem}.png"));
                if service.journal().output_taken(&path, -1)? || path.exists() {
                    path = images.join(format!("{stem}_{}.png", pairing::job_token(job.id)));
                }
                service.journal().set_output(job.id, &path)?;
                path
            }
        };
        let input = InputPlace::of(rule, job, service.trees());
        let send = match input.find() {
            Ok(path) => path,
            Err(error) => {
                return Ok(Start::Run {
                    state: State::Running,
                    work: Box::new(move |_: &ModelLane| Err(error)),
                })
            }
        };
        let Some(stage) = self.stage(
            job,
            send,
            None,
            names::stem_of(&output),
            service.trees().returns(&rule.name),
            service,
        )?
        else {
            return Ok(Start::Wait);
        };
        let metadata_path = service
            .trees()
            .metadata(&rule.name)
            .join(format!("{}.json", names::stem_of(&output)));
        let mut provenance = crate::recipes::provenance(rule, job);
        provenance["options"] = json!({
            "via": "full",
            "tool": self.tool().describe(),
        });
        provenance["jobs"] = json!({ "tool": job.id });
        let limits = service.limits();
        Ok(Start::Tool {
            work: Box::new(move |_: &ModelLane| {
                let outcome = run::run(&stage).and_then(|outcome| match outcome {
                    ToolOutcome::Returned { files, notes } => file_results(
                        &files,
                        notes,
                        &output,
                        &metadata_path,
                        provenance,
                        &input,
                        &limits,
                    ),
                    other => Ok(Staged::Outcome(other)),
                });
                Ok(Box::new(FullStage {
                    stage,
                    outcome,
                    output_first: output,
                }) as Box<dyn Finish>)
            }),
        })
    }
}

/// A tool stage's outcome, with what the main thread records of each returned file.
enum Staged {
    Outcome(ToolOutcome),
    Returned {
        files: Vec<FileIdentity>,
        notes: serde_json::Value,
    },
    /// `via = "full"`: the results are filed and the original with them.
    Filed {
        outputs: Vec<PathBuf>,
        original_now_at: PathBuf,
        provenance: serde_json::Value,
    },
}

/// Hashes each returned file on the tool thread (the journal keeps files by identity).
fn identify(outcome: ToolOutcome, stage: &ToolRun) -> Result<Staged, OpError> {
    let ToolOutcome::Returned { files, notes } = outcome else {
        return Ok(Staged::Outcome(outcome));
    };
    let mut identities = Vec::with_capacity(files.len());
    for path in files {
        identities.push(identity_of(&path).map_err(|e| OpError::write(&stage.out_dir, e))?);
    }
    Ok(Staged::Returned {
        files: identities,
        notes,
    })
}

fn identity_of(path: &Path) -> std::io::Result<FileIdentity> {
    let stat = crate::daemon::intake::FileStat::of(&std::fs::metadata(path)?);
    Ok(FileIdentity {
        path: path.to_path_buf(),
        size: stat.size,
        mtime_ns: stat.mtime_ns,
        inode: stat.inode,
        sha256: crate::io::hash::sha256_file(path)?,
    })
}

/// `via = "full"`: moves the tool's outputs to their result names, writes the provenance,
/// then files the original. Each step is durable before the next.
fn file_results(
    files: &[PathBuf],
    notes: serde_json::Value,
    first: &Path,
    metadata_path: &Path,
    mut provenance: serde_json::Value,
    input: &InputPlace,
    limits: &crate::io::decode::DecodeLimits,
) -> Result<Staged, OpError> {
    let original = input.find()?;
    // Upright, as the tool saw it.
    let original_size = crate::io::decode::load(&original, limits)
        .ok()
        .map(|l| (l.image.width(), l.image.height()));
    let mut outputs = Vec::with_capacity(files.len());
    let mut described = Vec::new();
    for (index, file) in files.iter().enumerate() {
        let target = if index == 0 {
            first.to_path_buf()
        } else {
            first.with_file_name(format!("{}_v{}.png", names::stem_of(first), index + 1))
        };
        crate::daemon::trees::move_into_place(file, &target)
            .map_err(|e| OpError::write(&target, e))?;
        let size = image::image_dimensions(&target).ok();
        let ratio = match (size, original_size) {
            (Some((w, h)), Some((ow, oh))) => {
                json!([f64::from(w) / f64::from(ow), f64::from(h) / f64::from(oh)])
            }
            _ => serde_json::Value::Null,
        };
        described.push(json!({
            "path": target,
            "width": size.map(|s| s.0),
            "height": size.map(|s| s.1),
            "size_ratio": ratio,
        }));
        outputs.push(target);
    }
    provenance["tool"] = notes;
    provenance["outputs"] = json!(described);
    provenance["source"]["width"] = json!(original_size.map(|s| s.0));
    provenance["source"]["height"] = json!(original_size.map(|s| s.1));
    std::fs::create_dir_all(crate::io::atomic::parent_dir(metadata_path))
        .map_err(|e| OpError::write(metadata_path, e))?;
    write_json_atomic(metadata_path, &provenance).map_err(|e| OpError::write(metadata_path, e))?;
    let original_now_at = input.file(original)?;
    Ok(Staged::Filed {
        outputs,
        original_now_at,
        provenance,
    })
}

/// What a tool stage of a proxy brought back.
struct ToolStage {
    stage: ToolRun,
    outcome: Result<Staged, OpError>,
    /// Further returns of the proxy (by hand) are taken this long after the tool's.
    return_timeout: std::time::Duration,
}

/// What a `via = "full"` tool stage did.
struct FullStage {
    stage: ToolRun,
    outcome: Result<Staged, OpError>,
    output_first: PathBuf,
}

/// Records what every tool stage shares: the server's state, and a wait for an unreachable
/// tool or a prompt to renew. `Some` is the outcome still to record.
fn settle(
    stage: &ToolRun,
    outcome: Result<Staged, OpError>,
    job: &Job,
    service: &mut dyn Service,
) -> anyhow::Result<Option<Staged>> {
    let server = &stage.attempt.server;
    let came_back = |change: Change| {
        if change == Change::CameBack {
            tracing::info!(server, "the tool answers again");
        }
    };
    match outcome {
        Err(error) => {
            // A retry (if the error allows one) makes a new attempt.
            came_back(stage.tool.after(job.id, server, true, true));
            service.fail(job, &error);
            Ok(None)
        }
        Ok(Staged::Outcome(ToolOutcome::Unreachable(why))) => {
            let change = stage.tool.after(job.id, server, false, false);
            let wait = stage.tool.backoff(server);
            let reason = format!("{why}; trying again in {}s", wait.as_secs());
            // Said once when the server goes down; each job's retries are debug lines, and
            // `darkroom status` lists the waiting jobs.
            if change == Change::WentDown {
                tracing::warn!(job = job.id, file = %job.claimed_path.display(), "waiting for tool: {reason}; its jobs wait until it answers");
            } else {
                tracing::debug!(job = job.id, file = %job.claimed_path.display(), "waiting for tool: {reason}");
            }
            service
                .journal()
                .wait_for_tool(job.id, clock::now() + wait.as_secs_f64(), &reason)?;
            service.record(job, State::WaitingForTool, Some(&reason));
            Ok(None)
        }
        Ok(Staged::Outcome(ToolOutcome::Renew(why))) => {
            came_back(stage.tool.after(job.id, server, true, true));
            tracing::warn!(job = job.id, file = %job.claimed_path.display(), "{why}; submitting it again as a new attempt");
            service
                .journal()
                .wait_for_tool(job.id, clock::now(), &why)?;
            service.record(job, State::WaitingForTool, Some(&why));
            Ok(None)
        }
        Ok(Staged::Outcome(ToolOutcome::Returned { .. })) => {
            unreachable!("returned outcomes are identified on the tool thread")
        }
        Ok(staged) => {
            came_back(stage.tool.after(job.id, server, true, false));
            Ok(Some(staged))
        }
    }
}

impl Finish for ToolStage {
    fn finish(
        self: Box<Self>,
        job: &Job,
        _seconds: f64,
        service: &mut dyn Service,
    ) -> anyhow::Result<()> {
        let Some(Staged::Returned { files, notes }) =
            settle(&self.stage, self.outcome, job, service)?
        else {
            return Ok(());
        };
        let first_variant = service
            .journal()
            .variants_of(job.id)?
            .iter()
            .filter_map(|j| j.variant)
            .max()
            .unwrap_or(0)
            + 1;
        let mut returns = Vec::with_capacity(files.len());
        for (index, identity) in files.into_iter().enumerate() {
            let variant = first_variant + index as u32;
            returns.push(ToolReturn {
                output_path: returns::output_for(service, job, variant)?,
                identity,
                variant,
            });
        }
        let ids = service.journal().tool_returned(
            &job.rule,
            job.id,
            &returns,
            clock::now() + self.return_timeout.as_secs_f64(),
            &with_tool_notes(job, notes),
        )?;
        service.record(
            job,
            State::AwaitingReturn,
            Some("the tool returned its outputs"),
        );
        tracing::info!(
            job = job.id,
            file = %job.claimed_path.display(),
            outputs = returns.len(),
            merge_jobs = %ids.iter().map(i64::to_string).collect::<Vec<_>>().join(", "),
            "the tool returned its output(s); merging them back at full resolution"
        );
        Ok(())
    }
}

/// The split job's details (the proxy's) with what the tool did added under `tool`.
fn with_tool_notes(job: &Job, notes: serde_json::Value) -> String {
    let mut details: serde_json::Value = job
        .details
        .as_deref()
        .and_then(|d| serde_json::from_str(d).ok())
        .unwrap_or_else(|| json!({}));
    details["tool"] = notes;
    details.to_string()
}

impl Finish for FullStage {
    fn finish(
        self: Box<Self>,
        job: &Job,
        _seconds: f64,
        service: &mut dyn Service,
    ) -> anyhow::Result<()> {
        let Some(Staged::Filed {
            outputs,
            original_now_at,
            provenance,
        }) = settle(&self.stage, self.outcome, job, service)?
        else {
            return Ok(());
        };
        service
            .journal()
            .job_done(job.id, &original_now_at, &provenance.to_string())?;
        service.record(
            job,
            State::Done,
            Some(&self.output_first.display().to_string()),
        );
        tracing::info!(
            job = job.id,
            file = %job.claimed_path.display(),
            outputs = %outputs.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", "),
            "the tool's outputs are filed as the results"
        );
        service.last_done(format!(
            "{} done by the tool",
            names::stem_of(&job.claimed_path)
        ));
        Ok(())
    }
}
