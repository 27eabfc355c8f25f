//! The `split-to-proxy` recipe and its merge-when-processed-appears step. An original from the
//! inbox becomes a proxy in `exchange_out` that fits a model; whatever processes it writes
//! the result into `exchange_in`, where it is paired with its original (by name, job id or
//! content) and its change is merged back at full resolution.
//!
//! Its jobs: an input ([`Kind::Input`]) is split and then awaits its return; a return
//! ([`Kind::Return`]) is paired and merged. Its deadlines: a proxy with no return within
//! `return_timeout` expires, its window closes after `return_grace`, and a held return is
//! set aside after both.

use super::{Folder, Recipe, Registration, Rule, Service, Start};
use crate::core::delta::DeltaDepth;
use crate::core::geometry::Target;
use crate::daemon::journal::{Job, Kind, State};
use crate::daemon::model_lane::ModelLane;
use crate::daemon::settings::{fields_of, format_duration, OriginalsPolicy};
use crate::io::clock;
use crate::io::external::UpscaleMethod;
use crate::io::names;
use crate::ops::OpError;
use serde_json::json;
use std::path::PathBuf;
use std::time::Duration;

mod config;
mod returns;
mod tool_stage;
pub mod worker;

pub use config::{DEFAULT_PROXY_SIZE, DEFAULT_PROXY_TARGET};
pub use worker::JOB_KEYWORD;

pub const REGISTRATION: Registration = Registration {
    name: "split-to-proxy",
    aliases: &[],
    keys: || fields_of::<config::RawSplitToProxy>().to_vec(),
    resolve: config::resolve,
};

/// Options of `split-to-proxy` and its merge-when-processed-appears step.
#[derive(Debug, Clone)]
pub struct SplitToProxy {
    pub size: Target,
    pub exchange_out: PathBuf,
    pub exchange_in: PathBuf,
    pub return_timeout: Duration,
    pub return_grace: Duration,
    pub refine: bool,
    pub delta_depth: DeltaDepth,
    pub upscale_method: UpscaleMethod,
    pub command_timeout: Duration,
    /// Lowest correlation of a content match (0..1).
    pub match_threshold: f64,
    /// The best content match must beat the second best by this much, or the return is held.
    pub match_margin: f64,
    /// How the returned proxy's change reaches the original: guided (default) or additive.
    pub merge_method: crate::ops::merge::MergeMethod,
    /// The model `upscale_method = "model:<name>"` names: it enlarges new content.
    pub content_model: Option<crate::daemon::settings::ModelSpec>,
    /// The tool darkroom drives itself with each proxy (or image), if the rule names one.
    pub tool: Option<crate::recipes::tool::Tool>,
    /// What the tool gets.
    pub via: Via,
}

/// What a rule's tool is given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    /// The proxy; the tool's change is merged back at full resolution.
    Proxy,
    /// The whole image; the tool's outputs are the results.
    Full,
}

impl SplitToProxy {
    /// The options as a provenance sidecar records them.
    fn describe(&self, originals: OriginalsPolicy) -> serde_json::Value {
        json!({
            "size": self.size.to_string(),
            "refine": self.refine,
            "delta_depth": match self.delta_depth { DeltaDepth::Eight => 8, DeltaDepth::Sixteen => 16 },
            "upscale_method": match &self.upscale_method {
                UpscaleMethod::Basic => "basic".to_string(),
                UpscaleMethod::Model(name) => format!("model:{name}"),
                UpscaleMethod::Command(c) => format!("cmd({})", c.words.join(" ")),
            },
            "originals": match originals { OriginalsPolicy::Move => "move", OriginalsPolicy::Keep => "keep" },
            "tool": self.tool.as_ref().map(crate::recipes::tool::Tool::describe),
        })
    }
}

impl Recipe for SplitToProxy {
    fn runs_models(&self) -> bool {
        self.tool.is_some() || self.content_model.is_some()
    }

    fn name(&self) -> &'static str {
        "split-to-proxy"
    }

    fn return_folder(&self) -> Option<Folder<'_>> {
        Some(Folder {
            key: "exchange_in",
            path: &self.exchange_in,
        })
    }

    fn output_folders(&self) -> Vec<Folder<'_>> {
        vec![Folder {
            key: "exchange_out",
            path: &self.exchange_out,
        }]
    }

    fn start(&self, rule: &Rule, job: &Job, service: &mut dyn Service) -> anyhow::Result<Start> {
        match job.kind {
            Kind::Input if self.tool.is_some() && self.via == Via::Full => {
                self.start_full(rule, job, service)
            }
            Kind::Input if self.tool.is_some() && self.proxy_ready(job) => {
                self.start_tool(rule, job, service)
            }
            Kind::Input => Ok(self.start_split(job, service)),
            Kind::Return => self.start_merge(rule, job, service),
        }
    }

    fn set_aside(&self, _rule: &Rule, job: &Job, _reason: &str, service: &mut dyn Service) {
        // A proxy nobody will return (its tool failed it) is not left in exchange_out.
        if self.tool.is_some() && job.kind == Kind::Input {
            if let Some(proxy) = &job.proxy_path {
                let _ = std::fs::remove_file(proxy);
                let _ = service.journal().close(job.id);
            }
        }
    }

    fn housekeeping(&self, rule: &Rule, now: f64, service: &mut dyn Service) {
        self.check_held(rule, now, service);
        self.close_windows(rule, now, service);
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

impl SplitToProxy {
    /// An input is split into its proxy in `exchange_out`, named after the job.
    fn start_split(&self, job: &Job, service: &mut dyn Service) -> Start {
        let (job_id, original, options) = (job.id, job.path.clone(), self.clone());
        let limits = service.limits();
        Start::Run {
            state: State::Running,
            work: Box::new(move |_: &ModelLane| {
                let written = worker::write_proxy(job_id, &original, &options, &limits)?;
                Ok(Box::new(Split {
                    written,
                    return_timeout: options.return_timeout,
                    to_tool: options.tool.is_some(),
                }) as Box<dyn super::Finish>)
            }),
        }
    }

    /// Held returns whose file is gone (renamed after its proxy, or removed) are withdrawn;
    /// those held past the return window are set aside with the reason.
    fn check_held(&self, rule: &Rule, now: f64, service: &mut dyn Service) {
        let Ok(held) = service.journal().in_state(State::Held, 10_000) else {
            return;
        };
        for job in held.into_iter().filter(|j| j.rule == rule.name) {
            if !job.path.exists() {
                service.withdraw(
                    &job,
                    "the held return left exchange_in (renamed after its proxy, or removed)",
                );
                continue;
            }
            let window = self.return_timeout + self.return_grace;
            if now - job.updated_at >= window.as_secs_f64() {
                let error = OpError::Usage(format!(
                    "held for {} (return_timeout plus return_grace) without being paired: its content matches several proxies about equally and it was not renamed after one of them",
                    format_duration(window)
                ));
                let mut job = job.clone();
                job.attempts = service.max_attempts();
                service.fail(&job, &error);
            }
        }
    }

    /// Windows past their grace close: the proxy is removed, and an original that never got
    /// its return is set aside (when the rule moves originals).
    fn close_windows(&self, rule: &Rule, now: f64, service: &mut dyn Service) {
        let grace = self.return_grace.as_secs_f64();
        let Ok(jobs) = service.journal().window_over(now, grace, &rule.name) else {
            return;
        };
        for job in jobs {
            if let Some(proxy) = &job.proxy_path {
                let _ = std::fs::remove_file(proxy);
            }
            let _ = service.journal().close(job.id);
            if job.state == State::Expired && rule.originals == OriginalsPolicy::Move {
                let error = OpError::Usage(format!(
                    "no processed image came back within return_timeout ({}s) plus return_grace ({}s)",
                    self.return_timeout.as_secs(),
                    self.return_grace.as_secs()
                ));
                let mut job = job.clone();
                job.attempts = service.max_attempts();
                service.fail(&job, &error);
            }
        }
    }
}

/// A split's result: the proxy, awaiting its return for `return_timeout`.
struct Split {
    written: worker::ProxyWritten,
    return_timeout: Duration,
    /// The rule's tool takes the proxy next.
    to_tool: bool,
}

impl super::Finish for Split {
    fn finish(
        self: Box<Self>,
        job: &Job,
        _seconds: f64,
        service: &mut dyn Service,
    ) -> anyhow::Result<()> {
        let written = self.written;
        let expires_at = clock::now() + self.return_timeout.as_secs_f64();
        let details = json!({
            "path": written.proxy_path,
            "geometry": written.metadata.geometry,
            "target": written.metadata.target.to_string(),
            "filter": written.metadata.filter,
            "sha256": written.sha256,
            "seconds": written.seconds,
            "timings_seconds": written.stages.iter().map(|(stage, s)| (stage.to_string(), json!(s))).collect::<serde_json::Map<_, _>>(),
        });
        service.journal().proxy_written(
            job.id,
            &written.proxy_path,
            (written.width, written.height),
            &written.signature.to_bytes(),
            expires_at,
            &details.to_string(),
        )?;
        if self.to_tool {
            service
                .journal()
                .set_state(job.id, State::WaitingForTool, None)?;
            service.record(job, State::WaitingForTool, None);
        } else {
            service.record(job, State::AwaitingReturn, None);
        }
        tracing::info!(
            job = job.id,
            file = %job.path.display(),
            proxy = %written.proxy_path.display(),
            size = %format!("{}x{}", written.width, written.height),
            seconds = format!("{:.3}", written.seconds),
            "{}",
            if self.to_tool {
                "proxy written; it goes to the rule's tool"
            } else {
                "proxy written; waiting for the processed image"
            }
        );
        service.last_done(format!("{} proxied", names::stem_of(&job.path)));
        Ok(())
    }
}
