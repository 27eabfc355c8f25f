//! Webhooks (`[[notify]]`): each target is told of the job ends it asked for, by a JSON
//! POST, at least once.
//!
//! The outbox is the journal's event log, which records every state change in the same
//! transaction as the change: nothing that ends can miss its notification, whatever
//! crashes. Each target has a cursor (`deliveries`: the last event it took) that moves on
//! only after the target answered 2xx; a target that fails is tried again with backoff,
//! from the same event, so a receiver sees events in order and may see one twice (after a
//! crash between its answer and the cursor's write). The `Idempotency-Key` header and the
//! body's `id` name the event, so a receiver can drop repeats.
//!
//! The deliverer runs on a thread of its own with its own journal connection, which writes
//! only the `deliveries` table.

use crate::daemon::config::{Config, NotifyEvent, NotifyTarget};
use crate::daemon::journal::{Delivery, Job, JobEvent, Kind, SqlStore, State, Store};
use crate::daemon::metrics::Metrics;
use crate::io::clock;
use hmac::{Hmac, Mac};
use serde_json::{json, Value};
use sha2::Sha256;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::{Arc, RwLock};
use std::time::Duration;

/// How often the event log is looked at when nothing is due.
const POLL: Duration = Duration::from_millis(500);
/// Backoff after the first failure, doubled up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: f64 = 1.0;
const MAX_BACKOFF: f64 = 300.0;
/// A receiver gets this long to answer.
const TIMEOUT: Duration = Duration::from_secs(10);

/// The notification a job's event makes, if it is one a webhook can ask for.
pub fn event_kind(event: &JobEvent) -> Option<NotifyEvent> {
    match event.state {
        State::Done => Some(NotifyEvent::Done),
        State::Expired => Some(NotifyEvent::Expired),
        State::Cancelled => Some(NotifyEvent::Cancelled),
        State::Failed if event.failure.as_deref() == Some("gave-up") => Some(NotifyEvent::GaveUp),
        State::Failed => Some(NotifyEvent::Failed),
        _ => None,
    }
}

/// The body of a notification.
pub fn payload(
    event: &JobEvent,
    kind: NotifyEvent,
    job: Option<&Job>,
    outputs: &[String],
    config: &Config,
) -> Value {
    let recipe = config
        .rule(&event.rule)
        .map(|r| r.recipe.name())
        .unwrap_or("(removed rule)");
    json!({
        "id": idempotency_key(event),
        "event": kind.as_str(),
        "at": clock::rfc3339(event.at),
        "job": {
            "id": event.job,
            "rule": event.rule,
            "recipe": recipe,
            "kind": event.kind.as_str(),
            "state": event.state.as_str(),
            "attempts": event.attempts,
            "file": job.map(|j| j.claimed_path.display().to_string()),
            "error": event.error,
            "failure": event.failure,
            "parent": job.and_then(|j| j.parent),
            "outputs": outputs,
            "url": format!("/api/v1/jobs/{}", event.job),
        },
    })
}

/// Stable across restarts and retries: the journal's event id, with the job it is of.
pub fn idempotency_key(event: &JobEvent) -> String {
    format!("darkroom-job{}-event{}", event.job, event.id)
}

/// `sha256=<hex>` of HMAC-SHA256 over the body with the target's secret.
pub fn signature(secret: &str, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes any key");
    mac.update(body);
    let digest = mac.finalize().into_bytes();
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256={hex}")
}

/// The outputs an event's job made (a split job's through its merges), as absolute paths.
fn outputs_of(store: &dyn Store, job: &Job) -> Vec<String> {
    let mut outputs = Vec::new();
    if job.state == State::Done {
        if let Some(output) = &job.output_path {
            outputs.push(output.display().to_string());
        }
    }
    if job.kind == Kind::Input {
        for child in store.variants_of(job.id).unwrap_or_default() {
            if child.state == State::Done {
                if let Some(output) = child.output_path {
                    outputs.push(output.display().to_string());
                }
            }
        }
    }
    outputs
}

/// Starts the deliverer thread. It stops when `stop` is dropped or sent to.
pub fn start(
    config: Arc<RwLock<Arc<Config>>>,
    metrics: Arc<Metrics>,
    leading: Arc<std::sync::atomic::AtomicBool>,
    stop: Receiver<()>,
) -> anyhow::Result<std::thread::JoinHandle<()>> {
    let opening = config
        .read()
        .map(|c| c.daemon.journal_opening())
        .map_err(|_| anyhow::anyhow!("the config lock is poisoned"))?;
    let store = opening.open("webhooks")?;
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(TIMEOUT))
        .http_status_as_error(false)
        .user_agent(format!("darkroom/{}", crate::recipes::VERSION))
        .build()
        .into();
    let thread = std::thread::Builder::new()
        .name("darkroom-notify".into())
        .spawn(move || loop {
            let config = config.read().map(|c| Arc::clone(&c)).expect("config lock");
            let mut wait = POLL;
            // Of the hosts that share a journal, the elected one tells the targets.
            let leading = leading.load(std::sync::atomic::Ordering::SeqCst);
            for target in config.notify.iter().filter(|_| leading) {
                if let Some(next) = deliver_due(&store, &agent, target, &config, &metrics) {
                    wait = wait.min(next);
                }
            }
            match stop.recv_timeout(wait) {
                Err(RecvTimeoutError::Timeout) => {}
                _ => return,
            }
        })?;
    Ok(thread)
}

/// Delivers what is due for `target`; returns how soon to look again if sooner than a poll.
fn deliver_due(
    store: &SqlStore,
    agent: &ureq::Agent,
    target: &NotifyTarget,
    config: &Config,
    metrics: &Metrics,
) -> Option<Duration> {
    let now = clock::now();
    let mut delivery = match store.delivery(&target.url) {
        Ok(Some(delivery)) => delivery,
        Ok(None) => {
            // A new target hears of what happens from now on, not of the whole history.
            let delivery = Delivery {
                target: target.url.clone(),
                last_event: store.last_event_id().ok()?,
                ..Delivery::default()
            };
            store.set_delivery(&delivery).ok()?;
            delivery
        }
        Err(e) => {
            tracing::error!(target = %target.url, error = %e, "cannot read the webhook's delivery state");
            return None;
        }
    };
    if let Some(at) = delivery.next_try_at {
        if at > now {
            return Some(Duration::from_secs_f64((at - now).min(POLL.as_secs_f64())));
        }
    }
    let events = store.events_after(delivery.last_event, 200).ok()?;
    for event in events {
        let wanted = event_kind(&event).filter(|kind| target.events.contains(kind));
        let Some(kind) = wanted else {
            delivery.last_event = event.id;
            continue;
        };
        let job = store.get(event.job).ok().flatten();
        let outputs = job
            .as_ref()
            .map(|j| outputs_of(store, j))
            .unwrap_or_default();
        let body = payload(&event, kind, job.as_ref(), &outputs, config).to_string();
        match post(agent, target, &event, kind, &body) {
            Ok(()) => {
                if delivery.failures > 0 {
                    tracing::info!(target = %target.url, after_failures = delivery.failures, "webhook answers again");
                }
                delivery.last_event = event.id;
                delivery.failures = 0;
                delivery.next_try_at = None;
                delivery.last_error = None;
                metrics.delivered(&target.url);
                tracing::debug!(target = %target.url, job = event.job, event = kind.as_str(), "notified");
            }
            Err(error) => {
                delivery.failures += 1;
                let backoff = (FIRST_BACKOFF * 2f64.powi(delivery.failures.min(16) as i32 - 1))
                    .min(MAX_BACKOFF);
                delivery.next_try_at = Some(now + backoff);
                let level_is_warn = delivery.failures == 1 || delivery.failures % 10 == 0;
                if level_is_warn {
                    tracing::warn!(
                        target = %target.url,
                        job = event.job,
                        event = kind.as_str(),
                        failures = delivery.failures,
                        retry_in_seconds = format!("{backoff:.0}"),
                        %error,
                        "webhook delivery failed; it will be retried"
                    );
                }
                delivery.last_error = Some(error);
                break;
            }
        }
        // The cursor is durable after each delivery: a crash repeats at most this one.
        if let Err(e) = store.set_delivery(&delivery) {
            tracing::error!(target = %target.url, error = %e, "cannot record a webhook delivery");
            return None;
        }
    }
    if let Err(e) = store.set_delivery(&delivery) {
        tracing::error!(target = %target.url, error = %e, "cannot record a webhook delivery");
    }
    None
}

fn post(
    agent: &ureq::Agent,
    target: &NotifyTarget,
    event: &JobEvent,
    kind: NotifyEvent,
    body: &str,
) -> Result<(), String> {
    let mut request = agent
        .post(&target.url)
        .header("Content-Type", "application/json")
        .header("Idempotency-Key", idempotency_key(event))
        .header("X-Darkroom-Event", kind.as_str());
    if let Some(secret) = &target.secret {
        request = request.header("X-Darkroom-Signature", signature(secret, body.as_bytes()));
    }
    match request.send(body) {
        Ok(response) if response.status().is_success() => Ok(()),
        Ok(response) => Err(format!("the receiver answered {}", response.status())),
        Err(e) => Err(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_are_hmac_sha256_of_the_body() {
        // RFC 4231, test case 2.
        assert_eq!(
            signature("Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn gave_up_is_told_apart_from_a_bad_input() {
        let mut event = JobEvent {
            id: 7,
            job: 3,
            rule: "photos".into(),
            kind: Kind::Input,
            at: 0.0,
            state: State::Failed,
            attempts: 5,
            error: None,
            failure: Some("gave-up".into()),
        };
        assert_eq!(event_kind(&event), Some(NotifyEvent::GaveUp));
        event.failure = Some("bad-input".into());
        assert_eq!(event_kind(&event), Some(NotifyEvent::Failed));
        event.state = State::Running;
        assert_eq!(event_kind(&event), None);
        assert_eq!(idempotency_key(&event), "darkroom-job3-event7");
    }
}
