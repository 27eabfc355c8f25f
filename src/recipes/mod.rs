//! The recipes: what darkroom does with a file a rule claims. Each recipe is one module that
//! owns its rule keys (a serde struct, its defaults and checks), the steps the service calls
//! (start on the main thread, run on a worker, finish back on the main thread) and its
//! provenance sidecar. The service knows recipes only through the [`Recipe`] trait, and the
//! config finds them only through [`ALL`].
//!
//! Adding a recipe is one new module here and one line in [`ALL`]; docs/architecture.md
//! walks through it.

use crate::daemon::journal::{Job, Kind, State, Store};
use crate::daemon::model_lane::{ModelLane, ScaleKnown};
use crate::daemon::settings::{ModelSpec, OriginalsPolicy, Problems, RuleContext, RuntimeSettings};
use crate::daemon::trees::{file_source, ClaimedVersion, Trees};
use crate::io::decode::DecodeLimits;
use crate::io::{clock, names};
use crate::ops::OpError;
use serde_json::json;
use std::path::{Path, PathBuf};
use std::sync::Arc;

mod enhance;
pub mod model_job;
mod normalise;
pub mod split_to_proxy;
pub mod tool;
mod upscale;

/// Every recipe a config can name, in the order `--help` and errors list them. A new recipe
/// adds its line here.
pub const ALL: &[Registration] = &[
    split_to_proxy::REGISTRATION,
    upscale::REGISTRATION,
    enhance::REGISTRATION,
    normalise::REGISTRATION,
];

/// How the config finds a recipe and reads its keys.
pub struct Registration {
    /// The name a rule's `recipe` key gives.
    pub name: &'static str,
    /// Other spellings accepted for it.
    pub aliases: &'static [&'static str],
    /// The rule keys the recipe reads beyond the ones every rule has.
    pub(crate) keys: fn() -> Vec<&'static str>,
    /// Reads the recipe's keys from what is left of the rule's table (only its own keys are
    /// left); every problem goes into `problems`. `None` when it cannot be used.
    pub(crate) resolve: fn(RecipeTable<'_>, &mut Problems) -> Option<Arc<dyn Recipe>>,
}

/// A rule's table as its recipe reads it.
pub(crate) struct RecipeTable<'a> {
    /// The recipe's own keys (the common ones are taken out).
    pub(crate) table: toml::Table,
    /// `rule[2] 'photos'`: the prefix of every problem's key.
    pub(crate) label: &'a str,
    /// The line of the rule's header, for problems with no key of their own.
    pub(crate) line: usize,
    /// The rule's name (it names default folders).
    pub(crate) rule: &'a str,
    pub(crate) context: &'a RuleContext<'a>,
}

/// Finds the registration of a recipe by name or alias.
pub fn find(name: &str) -> Option<&'static Registration> {
    ALL.iter()
        .find(|r| r.name == name || r.aliases.contains(&name))
}

/// The names of every recipe.
pub fn names() -> Vec<&'static str> {
    ALL.iter().map(|r| r.name).collect()
}

/// One `[[rule]]`: a watched folder and what to do with what lands in it.
#[derive(Debug, Clone)]
pub struct Rule {
    pub name: String,
    pub watch: PathBuf,
    pub patterns: Vec<glob::Pattern>,
    pub originals: OriginalsPolicy,
    pub recipe: Arc<dyn Recipe>,
}

/// A recipe with its checked options. The service calls these steps; everything
/// recipe-specific happens behind them.
pub trait Recipe: std::fmt::Debug + Send + Sync {
    /// The recipe's name, as rules and provenance sidecars give it.
    fn name(&self) -> &'static str;

    /// A folder besides the inbox that the rule watches for files coming back (claimed as
    /// [`Kind::Return`] jobs).
    fn return_folder(&self) -> Option<Folder<'_>> {
        None
    }

    /// Folders outside the output trees that the recipe writes into (its temp files there
    /// are cleaned up after a crash).
    fn output_folders(&self) -> Vec<Folder<'_>> {
        Vec::new()
    }

    /// Files the rule reads beside its images (normalise's captions): not strays.
    fn sidecar_patterns(&self) -> Vec<glob::Pattern> {
        Vec::new()
    }

    /// Starts a queued job of this recipe's rule: decides its outputs (recording them in the
    /// journal, so a re-run after a crash writes the same ones) and returns the work for a
    /// worker, or [`Start::Wait`].
    fn start(&self, rule: &Rule, job: &Job, service: &mut dyn Service) -> anyhow::Result<Start>;

    /// A job of this rule was set aside (`reason`) without a result of the recipe's own.
    fn set_aside(&self, _rule: &Rule, _job: &Job, _reason: &str, _service: &mut dyn Service) {}

    /// Its jobs run a model (on the model lane) or drive a model tool: on hosts that share
    /// a journal, only hosts with the `model` role take them; the others need `cpu`.
    fn runs_models(&self) -> bool {
        false
    }

    /// Deadlines the recipe keeps (checked about once a second).
    fn housekeeping(&self, _rule: &Rule, _now: f64, _service: &mut dyn Service) {}

    /// For tests and tools that need the concrete options.
    fn as_any(&self) -> &dyn std::any::Any;
}

/// A folder of a recipe's own, with the rule key that names it (for config problems).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Folder<'a> {
    pub key: &'static str,
    pub path: &'a Path,
}

/// What starting a job comes to.
pub enum Start {
    /// The job waits (for a model's scale, for its pair); it is offered again later.
    Wait,
    /// The job runs: the journal moves it to `state` and a worker runs `work`.
    Run { state: State, work: Work },
    /// The job goes to its tool (`at-tool`): `work` runs on a thread of its own, since it
    /// mostly waits on the tool, outside the workers and `job_timeout` (the tool's own
    /// timeout bounds it). A shutdown does not wait for it; the next start resumes it.
    Tool { work: Work },
}

/// A job's work, run on a worker thread (the model lane is there for model steps). What it
/// returns is finished on the main thread.
pub type Work = Box<dyn FnOnce(&ModelLane) -> Result<Box<dyn Finish>, OpError> + Send>;

/// A worker's result, recorded on the main thread.
pub trait Finish: Send {
    /// Records the result in the journal and the log; `seconds` is how long the job ran.
    fn finish(
        self: Box<Self>,
        job: &Job,
        seconds: f64,
        service: &mut dyn Service,
    ) -> anyhow::Result<()>;
}

/// What the service offers recipes on its main thread.
pub trait Service {
    fn journal(&self) -> &dyn Store;
    fn trees(&self) -> &Trees;
    fn limits(&self) -> DecodeLimits;
    fn runtime(&self) -> &RuntimeSettings;
    /// Attempts a job gets before it is given up.
    fn max_attempts(&self) -> u32;
    /// Logs a state change of `job` in the processing log.
    fn record(&mut self, job: &Job, to: State, detail: Option<&str>);
    /// Fails `job`: retried if the error is transient and attempts are left, else set aside.
    fn fail(&mut self, job: &Job, error: &OpError);
    /// Ends a job whose file left its folder before it was processed.
    fn withdraw(&mut self, job: &Job, why: &str);
    /// The last thing done, for the systemd status line (`photo.jpg merged`).
    fn last_done(&mut self, text: String);
    /// A file of a job left its folder; an emptied subfolder may be tidied.
    fn note_left_folder(&mut self, file: &Path);
    /// The scale of a model, measured by the lane on first use.
    fn model_scale(&mut self, spec: &ModelSpec) -> ScaleKnown;
    /// How many jobs of `rule` are with their tool now.
    fn tool_jobs(&self, rule: &str) -> usize;
}

/// The darkroom version every provenance sidecar names.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The start of every provenance sidecar: who wrote it, the rule and recipe, and where the
/// input came from.
pub fn provenance(rule: &Rule, source: &Job) -> serde_json::Value {
    json!({
        "darkroom_version": VERSION,
        "rule": rule.name,
        "recipe": rule.recipe.name(),
        "source": {
            "path": source.claimed_path,
            "sha256": source.sha256,
            "bytes": source.size,
            "claimed_at": clock::rfc3339(source.created_at),
        },
    })
}

/// Adds what of the input was used to a provenance sidecar's `source` block (an animated
/// GIF's later frames are dropped). Run on the worker: it reads the file.
pub fn note_source_use(provenance: &mut serde_json::Value, input: &Path) {
    let notes = crate::io::gif::source_notes(input);
    if !notes.is_empty() {
        provenance["source"]["notes"] = json!(notes);
    }
}

/// Where a handled input goes in `dir`: where it is if it is already there, else its
/// claimed name (tagged with the job id when another file has that name).
pub fn destination(dir: &Path, job: &Job) -> PathBuf {
    if job.path.starts_with(dir) {
        return job.path.clone();
    }
    let name = job
        .claimed_path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    names::free_name(dir, &name, &crate::daemon::pairing::job_token(job.id))
}

/// Where an input of `rule` is and goes: its candidates (where the journal last saw it, then
/// where the rule's policy moves it) and that destination.
#[derive(Debug, Clone)]
pub struct InputPlace {
    pub candidates: Vec<PathBuf>,
    pub version: ClaimedVersion,
    pub move_to: Option<PathBuf>,
}

impl InputPlace {
    pub fn of(rule: &Rule, job: &Job, trees: &Trees) -> InputPlace {
        let move_to = (rule.originals == OriginalsPolicy::Move)
            .then(|| destination(&trees.originals(&rule.name), job));
        let mut candidates = vec![job.path.clone()];
        candidates.extend(move_to.clone());
        InputPlace {
            candidates,
            version: ClaimedVersion::of(job),
            move_to,
        }
    }

    /// The input, where it is now.
    pub fn find(&self) -> Result<PathBuf, OpError> {
        first_existing(&self.candidates, "original")
    }

    /// Files the input once its outputs are durable: moves it (durably) when the rule moves
    /// originals and it is still the version that was claimed; returns where it now is.
    pub fn file(&self, input: PathBuf) -> Result<PathBuf, OpError> {
        match &self.move_to {
            Some(target) => {
                file_source(&input, target, self.version).map_err(|e| OpError::write(target, e))
            }
            None => Ok(input),
        }
    }
}

/// The first of `candidates` that is a file, or why none is.
pub fn first_existing(candidates: &[PathBuf], what: &str) -> Result<PathBuf, OpError> {
    candidates
        .iter()
        .find(|p| p.is_file())
        .cloned()
        .ok_or_else(|| {
            OpError::Usage(format!(
                "the {what} is gone (looked at {})",
                candidates
                    .iter()
                    .map(|p| p.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
        })
}

/// Whether a job came from the rule's inbox (not from its return folder).
pub fn is_input(job: &Job) -> bool {
    job.kind == Kind::Input
}
