//! The `archive` recipe: files each input unchanged into `processed/<rule>/images/`, with a
//! provenance sidecar that records its hash. (A recipe added to check the steps in
//! docs/architecture.md.)

use super::{InputPlace, Recipe, RecipeTable, Registration, Rule, Service, Start};
use crate::daemon::journal::{Job, State};
use crate::daemon::model_lane::ModelLane;
use crate::daemon::settings::*;
use crate::daemon::trees::write_json_atomic;
use crate::io::{atomic, names};
use crate::ops::OpError;
use serde::Deserialize;
use std::path::PathBuf;
use std::sync::Arc;

pub const REGISTRATION: Registration = Registration {
    name: "archive",
    aliases: &[],
    keys: || fields_of::<RawArchive>().to_vec(),
    resolve,
};

/// The suffix archived copies get when a rule names none.
const DEFAULT_SUFFIX: &str = "_archived";

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawArchive {
    /// Added to the copy's file stem.
    suffix: Option<String>,
}

#[derive(Debug, Clone)]
struct Archive {
    suffix: String,
}

fn resolve(rule: RecipeTable<'_>, problems: &mut Problems) -> Option<Arc<dyn Recipe>> {
    let raw: RawArchive = read_known_keys(rule.table, rule.label, rule.line, problems);
    let suffix = raw.suffix.unwrap_or_else(|| DEFAULT_SUFFIX.into());
    if suffix.contains('/') {
        problems.push(
            format!("{}.suffix", rule.label),
            Some(rule.line),
            "must not contain '/'",
        );
    }
    Some(Arc::new(Archive { suffix }))
}

impl Recipe for Archive {
    fn name(&self) -> &'static str {
        "archive"
    }

    fn start(&self, rule: &Rule, job: &Job, service: &mut dyn Service) -> anyhow::Result<Start> {
        let ext = job
            .claimed_path
            .extension()
            .map(|e| e.to_string_lossy().into_owned())
            .unwrap_or_default();
        let stem = format!("{}{}", names::stem_of(&job.claimed_path), self.suffix);
        let output = service
            .trees()
            .images(&rule.name)
            .join(format!("{stem}.{ext}"));
        let metadata = service
            .trees()
            .metadata(&rule.name)
            .join(format!("{stem}.json"));
        let input = InputPlace::of(rule, job, service.trees());
        let mut provenance = super::provenance(rule, job);
        provenance["jobs"] = serde_json::json!({ "archive": job.id });
        Ok(Start::Run {
            state: State::Running,
            work: Box::new(move |_: &ModelLane| {
                let original = input.find()?;
                let bytes = std::fs::read(&original).map_err(|e| {
                    OpError::Usage(format!("cannot read {}: {e}", original.display()))
                })?;
                for dir in [atomic::parent_dir(&output), atomic::parent_dir(&metadata)] {
                    std::fs::create_dir_all(&dir).map_err(|e| OpError::write(&dir, e))?;
                }
                atomic::write_atomic(&output, &bytes).map_err(|e| OpError::write(&output, e))?;
                provenance["output"] = serde_json::json!({ "path": output });
                write_json_atomic(&metadata, &provenance)
                    .map_err(|e| OpError::write(&metadata, e))?;
                let original_now_at = input.file(original)?;
                Ok(Box::new(Archived {
                    output,
                    original_now_at,
                }) as Box<dyn super::Finish>)
            }),
        })
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

struct Archived {
    output: PathBuf,
    original_now_at: PathBuf,
}

impl super::Finish for Archived {
    fn finish(
        self: Box<Self>,
        job: &Job,
        _seconds: f64,
        service: &mut dyn Service,
    ) -> anyhow::Result<()> {
        service
            .journal()
            .job_done(job.id, &self.original_now_at, "{}")?;
        service.record(job, State::Done, Some(&self.output.display().to_string()));
        tracing::info!(job = job.id, output = %self.output.display(), "archived");
        service.last_done(format!("{} archived", names::stem_of(&job.claimed_path)));
        Ok(())
    }
}
