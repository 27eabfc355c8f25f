//! Returns: a processed proxy that comes back is paired with its original (by the proxy's
//! name, a job id, or its content), given its variant and output name, and merged.

use super::worker::{self, MergeWork, WrittenProxy};
use super::SplitToProxy;
use crate::core::signature::Signature;
use crate::daemon::journal::{Job, State};
use crate::daemon::model_lane::ModelLane;
use crate::daemon::pairing::{self, Pairing, PendingProxy};
use crate::daemon::trees::ClaimedVersion;
use crate::io::{clock, decode, names};
use crate::ops::OpError;
use crate::recipes::{destination, Finish, InputPlace, Rule, Service, Start};
use anyhow::Context;
use serde_json::json;
use std::path::PathBuf;

/// How many candidate proxies a held return's message names (the rest are counted).
const HELD_CANDIDATES_NAMED: usize = 5;

impl SplitToProxy {
    /// Pairs a returned image with its proxy (if not yet paired) and starts its merge.
    pub(super) fn start_merge(
        &self,
        rule: &Rule,
        job: &Job,
        service: &mut dyn Service,
    ) -> anyhow::Result<Start> {
        let options = self;
        let (parent_id, variant, output) = match (job.parent, job.variant, &job.output_path) {
            (Some(p), Some(v), Some(o)) => (p, v, o.clone()),
            _ => match self.pair(job, service)? {
                Some(paired) => paired,
                None => return Ok(Start::Wait),
            },
        };
        let Some(parent) = service.journal().get(parent_id)? else {
            anyhow::bail!("split job {parent_id} is missing from the journal");
        };
        let job = service
            .journal()
            .get(job.id)?
            .unwrap_or_else(|| job.clone());
        let output_stem = names::stem_of(&output);
        let original = InputPlace::of(rule, &parent, service.trees());
        let move_returned_to = destination(&service.trees().returns(&rule.name), &job);
        let returned_candidates = vec![job.path.clone(), move_returned_to.clone()];
        let proxy_details: serde_json::Value = parent
            .details
            .as_deref()
            .and_then(|d| serde_json::from_str(d).ok())
            .unwrap_or(serde_json::Value::Null);
        let proxy = written_proxy(&proxy_details);
        let mut provenance = super::super::provenance(rule, &parent);
        provenance["options"] = options.describe(rule.originals);
        provenance["proxy"] = proxy_details;
        provenance["return"] = json!({
            "path": job.claimed_path,
            "sha256": job.sha256,
            "pairing": job.pairing,
            "variant": variant,
            "claimed_at": clock::rfc3339(job.created_at),
            "wait_seconds": job.created_at - parent.updated_at.min(job.created_at),
        });
        provenance["jobs"] = json!({ "split": parent.id, "merge": job.id });
        let work = MergeWork {
            options: options.clone(),
            runtime: service.runtime().clone(),
            limits: service.limits(),
            original,
            original_sha256: parent.sha256.clone(),
            proxy,
            returned_candidates,
            returned_version: ClaimedVersion::of(&job),
            output,
            metadata_path: service
                .trees()
                .metadata(&rule.name)
                .join(format!("{output_stem}.json")),
            move_returned_to,
            provenance,
        };
        Ok(Start::Run {
            state: State::Merging,
            work: Box::new(move |lane: &ModelLane| {
                worker::merge_return(&work, lane).map(|merged| Box::new(merged) as Box<dyn Finish>)
            }),
        })
    }

    /// Pairs a returned image; records the pairing, variant and output path. `None` when it
    /// was held or failed instead.
    fn pair(
        &self,
        job: &Job,
        service: &mut dyn Service,
    ) -> anyhow::Result<Option<(i64, u32, PathBuf)>> {
        let options = self;
        let pending: Vec<PendingProxy> = service
            .journal()
            .pending_proxies(&job.rule)?
            .into_iter()
            .map(|p| PendingProxy {
                job_id: p.id,
                stem: p
                    .proxy_path
                    .as_deref()
                    .map(names::stem_of)
                    .unwrap_or_default(),
                width: p.proxy_width.unwrap_or(0),
                height: p.proxy_height.unwrap_or(0),
                signature: p.signature.as_deref().and_then(Signature::from_bytes),
            })
            .collect();
        let stem = names::stem_of(&job.path);
        let known = |id: i64| pending.iter().any(|p| p.job_id == id);
        let mut pairing = pairing::by_name(&stem, &pending).map(Pairing::Name);
        if pairing.is_none() {
            pairing = pairing::job_id_in_name(&stem)
                .filter(|id| known(*id))
                .map(Pairing::JobId);
        }
        if pairing.is_none() {
            let bytes = match decode::read_bounded(&job.path, service.limits().max_file_bytes) {
                Ok(bytes) => bytes,
                Err(e) => {
                    service.fail(job, &OpError::decode(&job.path, e));
                    return Ok(None);
                }
            };
            pairing = worker::job_id_in_png(&bytes)
                .filter(|id| known(*id))
                .map(Pairing::JobId);
            if pairing.is_none() {
                let loaded = match decode::decode_bytes(&bytes, &service.limits()) {
                    Ok(loaded) => loaded,
                    Err(e) => {
                        service.fail(job, &OpError::decode(&job.path, e));
                        return Ok(None);
                    }
                };
                let size = (loaded.image.width(), loaded.image.height());
                pairing = Some(pairing::by_content(
                    &Signature::of(&loaded.image),
                    size,
                    &pending,
                    options.match_threshold,
                    options.match_margin,
                ));
            }
        }
        let pairing = pairing.unwrap_or(Pairing::NoMatch(None));
        let Some(parent_id) = pairing.job_id() else {
            match &pairing {
                Pairing::Ambiguous(candidates) => {
                    let mut list = candidates
                        .iter()
                        .take(HELD_CANDIDATES_NAMED)
                        .map(|(id, c)| format!("job {id} ({c:.3})"))
                        .collect::<Vec<_>>()
                        .join(", ");
                    if candidates.len() > HELD_CANDIDATES_NAMED {
                        list.push_str(&format!(
                            " and {} more; {} in all",
                            candidates.len() - HELD_CANDIDATES_NAMED,
                            candidates.len()
                        ));
                    }
                    let message = format!(
                        "held: its content matches several pending proxies about equally ({list}); \
                         rename it after one of the proxies (e.g. keep the proxy's name as a prefix) to pair it"
                    );
                    tracing::warn!(job = job.id, file = %job.path.display(), "{message}");
                    service
                        .journal()
                        .set_state(job.id, State::Held, Some(&message))?;
                    service.record(job, State::Held, Some(&message));
                }
                Pairing::NoMatch(best) => {
                    let why = match best {
                        Some((id, c)) => format!(
                            "no pending proxy matches it: its name carries no proxy name or job id, \
                             and the closest content match (job {id}, correlation {c:.3}) is below {:.2}",
                            options.match_threshold
                        ),
                        None => "no pending proxy matches it: its name carries no proxy name or job id, \
                                 and no pending proxy has its size"
                            .to_string(),
                    };
                    service.fail(job, &OpError::Usage(why));
                }
                _ => {}
            }
            return Ok(None);
        };
        let parent = service
            .journal()
            .get(parent_id)?
            .context("paired split job vanished")?;
        let variant = service
            .journal()
            .variants_of(parent_id)?
            .iter()
            .filter_map(|j| j.variant)
            .max()
            .unwrap_or(0)
            + 1;
        let output = output_for(service, &parent, variant)?;
        service
            .journal()
            .pair(job.id, parent_id, variant, pairing.method(), &output)?;
        tracing::info!(
            job = job.id,
            split_job = parent_id,
            file = %job.path.display(),
            pairing = pairing.method(),
            variant,
            "paired returned image with its proxy"
        );
        Ok(Some((parent_id, variant, output)))
    }
}

/// The merged output of variant `variant` (1, 2, ...) of split job `parent`: `photo.png`,
/// `photo_v2.png`, ..., tagged with the job id when another job has that name.
pub(super) fn output_for(
    service: &dyn Service,
    parent: &Job,
    variant: u32,
) -> anyhow::Result<PathBuf> {
    let base = names::stem_of(&parent.claimed_path);
    let images = service.trees().images(&parent.rule);
    let name = if variant == 1 {
        format!("{base}.png")
    } else {
        format!("{base}_v{variant}.png")
    };
    let mut output = images.join(&name);
    if service.journal().output_taken(&output, parent.id)? || (variant == 1 && output.exists()) {
        output = images.join(format!(
            "{}_{}.png",
            names::stem_of(&output),
            pairing::job_token(parent.id)
        ));
    }
    Ok(output)
}

/// The proxy a split recorded in its job's details (path, hash, geometry), when it did.
fn written_proxy(details: &serde_json::Value) -> Option<WrittenProxy> {
    Some(WrittenProxy {
        path: PathBuf::from(details.get("path")?.as_str()?),
        sha256: details.get("sha256")?.as_str()?.to_string(),
        geometry: serde_json::from_value(details.get("geometry")?.clone()).ok()?,
    })
}

impl Finish for worker::Merged {
    fn finish(
        self: Box<Self>,
        job: &Job,
        seconds: f64,
        service: &mut dyn Service,
    ) -> anyhow::Result<()> {
        let parent = job.parent.context("merge job without its split job")?;
        service.journal().merge_done(
            job.id,
            parent,
            &self.returned_now_at,
            &self.original_now_at,
            &self.provenance.to_string(),
        )?;
        service.record(job, State::Done, Some(&self.output.display().to_string()));
        if let Ok(Some(split)) = service.journal().get(parent) {
            service.note_left_folder(&split.claimed_path);
        }
        tracing::info!(
            job = job.id,
            split_job = parent,
            output = %self.output.display(),
            original = %self.original_now_at.display(),
            pairing = job.pairing.as_deref().unwrap_or("?"),
            seconds = format!("{seconds:.3}"),
            "merged into the full-resolution original"
        );
        service.last_done(format!("{} merged", names::stem_of(&self.output)));
        Ok(())
    }
}
