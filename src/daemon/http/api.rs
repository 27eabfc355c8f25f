//! The JSON endpoints: health, metrics, rules, jobs, retry and cancel.

use super::*;
use crate::daemon::journal::{Delivery, JobEvent, JobQuery, Kind, State};
use crate::io::clock;
use axum::extract::{Path as UrlPath, RawQuery};
use serde_json::Value;

/// Jobs per page unless `limit` says otherwise, and the most one page holds.
const DEFAULT_PAGE: usize = 50;
const MAX_PAGE: usize = 500;

pub(super) async fn healthz() -> Json<Value> {
    Json(json!({ "status": "alive", "version": crate::recipes::VERSION }))
}

/// Ready when the journal answers, the watchers are up and the model lane runs; otherwise
/// 503 with what is not.
pub(super) async fn readyz(Shared(app): Shared<App>) -> Response {
    let journal = app.read(|store| Ok(store.last_event_id()?)).await;
    let lane = app.context.lane.state();
    let watching = app.context.watching.load(Ordering::SeqCst);
    let mut not_ready = Vec::new();
    if let Err(e) = &journal {
        not_ready.push(format!("journal: {}", e.message));
    }
    if !watching {
        not_ready.push("watchers: the configured folders are not watched".to_string());
    }
    if !lane.alive {
        not_ready.push("model lane: its thread stopped".to_string());
    }
    let body = json!({
        "ready": not_ready.is_empty(),
        "journal": journal.is_ok(),
        "watching": watching,
        "model_lane": lane.alive,
        "not_ready": not_ready,
    });
    let status = if not_ready.is_empty() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(body)).into_response()
}

/// OpenMetrics for a client that asks for it (Prometheus does), else the Prometheus text
/// format (curl, promtool).
pub(super) async fn metrics(
    Shared(app): Shared<App>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let metrics = Arc::clone(&app.context.metrics);
    let rules = app.context.config().rules.clone();
    let (lane, lanes) = (app.context.lane.state(), app.context.lane.lane_states());
    let text = app
        .read(move |store| metrics.render(store, &rules, (&lane, &lanes), clock::now()))
        .await?;
    let openmetrics = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("application/openmetrics-text"));
    Ok(if openmetrics {
        (
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            text,
        )
            .into_response()
    } else {
        (
            [(
                header::CONTENT_TYPE,
                "text/plain; version=0.0.4; charset=utf-8",
            )],
            crate::daemon::metrics::as_prometheus_text(&text),
        )
            .into_response()
    })
}

/// A journal time as RFC 3339.
fn time(seconds: f64) -> Value {
    Value::String(clock::rfc3339(seconds))
}

/// The files a job made: its own output once done, or for an original of split-to-proxy,
/// what its done merges wrote.
fn outputs_of(job: &Job, children: &[Job], config: &Config) -> Vec<Value> {
    let mut outputs = Vec::new();
    if job.state == State::Done {
        if let Some(output) = &job.output_path {
            outputs.push(Value::String(shown_path(config, output)));
        }
    }
    for child in children {
        if child.state == State::Done {
            if let Some(output) = &child.output_path {
                outputs.push(Value::String(shown_path(config, output)));
            }
        }
    }
    outputs
}

/// A job as the API shows it.
pub(super) fn job_json(job: &Job, children: &[Job], config: &Config) -> Value {
    let recipe = config
        .rule(&job.rule)
        .map(|r| r.recipe.name())
        .unwrap_or("(removed rule)");
    let base = format!("/api/v1/jobs/{}", job.id);
    let outputs = outputs_of(job, children, config);
    let mut links = serde_json::Map::new();
    links.insert("self".into(), json!(base));
    links.insert("input".into(), json!(format!("{base}/input")));
    if !outputs.is_empty() {
        links.insert("output".into(), json!(format!("{base}/output")));
    }
    if job.proxy_path.is_some() && !job.closed {
        links.insert("proxy".into(), json!(format!("{base}/proxy")));
        if job.kind == Kind::Input {
            links.insert("return".into(), json!(format!("{base}/return")));
        }
    }
    if matches!(job.state, State::Failed | State::Cancelled) {
        links.insert("retry".into(), json!(format!("{base}/retry")));
    }
    json!({
        "id": job.id,
        "rule": job.rule,
        "recipe": recipe,
        "kind": job.kind.as_str(),
        "state": job.state.as_str(),
        "file": job.claimed_path.file_name().map(|n| n.to_string_lossy().into_owned()),
        "claimed_path": shown_path(config, &job.claimed_path),
        "path": shown_path(config, &job.path),
        "size": job.size,
        "sha256": job.sha256,
        "attempts": job.attempts,
        "created_at": time(job.created_at),
        "updated_at": time(job.updated_at),
        "next_attempt_at": job.next_attempt_at.map(time),
        "error": job.error,
        "failure": job.failure,
        "parent": job.parent,
        "variant": job.variant,
        "pairing": job.pairing,
        "outputs": outputs,
        "returns": children.iter().map(|c| c.id).collect::<Vec<_>>(),
        "proxy": job.proxy_path.as_deref().filter(|_| !job.closed).map(|p| shown_path(config, p)),
        "proxy_size": job.proxy_width.zip(job.proxy_height).map(|(w, h)| [w, h]),
        "expires_at": job.expires_at.map(time),
        "tool": (job.tool_attempt > 0).then(|| json!({
            "attempt": job.tool_attempt,
            "server": job.tool_server,
        })),
        "links": links,
    })
}

pub(super) fn event_json(event: &JobEvent) -> Value {
    json!({
        "event": event.id,
        "job": event.job,
        "rule": event.rule,
        "kind": event.kind.as_str(),
        "state": event.state.as_str(),
        "attempts": event.attempts,
        "at": time(event.at),
        "error": event.error,
        "failure": event.failure,
    })
}

fn delivery_json(delivery: &Delivery) -> Value {
    json!({
        "target": delivery.target,
        "last_event": delivery.last_event,
        "failures": delivery.failures,
        "next_try_at": delivery.next_try_at.map(time),
        "last_error": delivery.last_error,
    })
}

pub(super) async fn rules(Shared(app): Shared<App>) -> Result<Json<Value>, ApiError> {
    let config = app.context.config();
    let counts = app.read(|store| Ok(store.counts_by_rule()?)).await?;
    let rules: Vec<Value> = config
        .rules
        .iter()
        .map(|rule| {
            let mut states = serde_json::Map::new();
            for (name, _, state, count) in &counts {
                if *name == rule.name {
                    let entry = states.entry(state.as_str()).or_insert(json!(0));
                    *entry = json!(entry.as_u64().unwrap_or(0) + count);
                }
            }
            let report = rule.recipe.name() == "normalise";
            json!({
                "name": rule.name,
                "recipe": rule.recipe.name(),
                "inbox": shown_path(&config, &rule.watch),
                "patterns": rule.patterns.iter().map(|p| p.as_str()).collect::<Vec<_>>(),
                "returns": rule.recipe.return_folder().map(|f| shown_path(&config, f.path)),
                "jobs": states,
                "upload": format!("/api/v1/rules/{}/images", rule.name),
                "report": report.then(|| format!("/api/v1/rules/{}/report", rule.name)),
            })
        })
        .collect();
    Ok(Json(json!({ "rules": rules })))
}

/// The daemon at a glance: the model lane, webhook deliveries, counts.
pub(super) async fn status(Shared(app): Shared<App>) -> Result<Json<Value>, ApiError> {
    let config = app.context.config();
    let shared = config.daemon.shares_journal();
    let (counts, deliveries, oldest, hosts) = app
        .read(move |store| {
            Ok((
                store.counts()?,
                store.deliveries()?,
                store.oldest_in_state(State::AwaitingReturn)?,
                if shared { store.hosts()? } else { Vec::new() },
            ))
        })
        .await?;
    let lease = config.daemon.lease_timeout.as_secs_f64();
    let hosts: Vec<Value> = hosts
        .iter()
        .map(|h| {
            json!({
                "name": h.name,
                "pid": h.pid,
                "roles": h.roles.split(',').filter(|r| !r.is_empty()).collect::<Vec<_>>(),
                "version": h.version,
                "started_at": time(h.started_at),
                "seconds_since_heartbeat": h.heartbeat_age,
                "alive": h.stopped_at.is_none() && h.heartbeat_age <= lease,
                "stopped_at": h.stopped_at.map(time),
                "running": h.running,
                "elected": h.leads,
            })
        })
        .collect();
    let mut states = serde_json::Map::new();
    for (_, state, count) in counts {
        let entry = states.entry(state.as_str()).or_insert(json!(0));
        *entry = json!(entry.as_u64().unwrap_or(0) + count);
    }
    let targets: Vec<Value> = config
        .notify
        .iter()
        .map(|target| {
            let delivery = deliveries.iter().find(|d| d.target == target.url);
            json!({
                "url": target.url,
                "events": target.events.iter().map(|e| e.as_str()).collect::<Vec<_>>(),
                "delivery": delivery.map(delivery_json),
            })
        })
        .collect();
    Ok(Json(json!({
        "version": crate::recipes::VERSION,
        "jobs": states,
        "oldest_awaiting_return_since": oldest.map(time),
        "model_lane": app.context.lane.state(),
        "model_lanes": app.context.lane.lane_states(),
        "watching": app.context.watching.load(Ordering::SeqCst),
        "notify": targets,
        "host": config.daemon.host,
        "hosts": hosts,
    })))
}

/// Reads `rule`, `state`, `kind`, `limit` and `cursor` of `GET /jobs`.
fn job_query(query: Option<&str>, config: &Config) -> Result<JobQuery, ApiError> {
    let mut result = JobQuery {
        limit: DEFAULT_PAGE,
        ..JobQuery::default()
    };
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        let value = percent_decode(value);
        if value.is_empty() && matches!(key, "rule" | "state" | "kind" | "file") {
            return Err(ApiError::bad_request(format!(
                "{key} has no value: give one, or leave {key} out for every {key}"
            )));
        }
        match key {
            "rule" => {
                if config.rule(&value).is_none() {
                    return Err(ApiError::not_found(format!(
                        "no rule '{value}': the rules are {}",
                        rule_names(config)
                    )));
                }
                result.rule = Some(value);
            }
            "state" => {
                result.state = Some(State::parse(&value).ok_or_else(|| {
                    ApiError::bad_request(format!(
                        "'{value}' is not a state: use one of {}",
                        State::ALL.map(State::as_str).join(", ")
                    ))
                })?);
            }
            "kind" => {
                result.kind = Some(match value.as_str() {
                    "split" => Kind::Input,
                    "merge" => Kind::Return,
                    _ => {
                        return Err(ApiError::bad_request(format!(
                            "'{value}' is not a kind: use split (inputs) or merge (returns)"
                        )))
                    }
                });
            }
            "file" => result.file_name = Some(value),
            "limit" => {
                result.limit = value
                    .parse::<usize>()
                    .ok()
                    .filter(|n| (1..=MAX_PAGE).contains(n))
                    .ok_or_else(|| {
                        ApiError::bad_request(format!(
                            "limit must be a number from 1 to {MAX_PAGE}"
                        ))
                    })?;
            }
            "cursor" => {
                result.before = Some(value.parse::<i64>().map_err(|_| {
                    ApiError::bad_request(
                        "cursor must be the next_cursor of the previous page (a number)",
                    )
                })?);
            }
            other => {
                return Err(ApiError::bad_request(format!(
                    "unknown parameter '{other}': use rule, state, kind, file, limit, cursor"
                )))
            }
        }
    }
    Ok(result)
}

fn rule_names(config: &Config) -> String {
    config
        .rules
        .iter()
        .map(|r| r.name.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

pub(super) async fn jobs(
    Shared(app): Shared<App>,
    RawQuery(query): RawQuery,
) -> Result<Json<Value>, ApiError> {
    let config = app.context.config();
    let query = job_query(query.as_deref(), &config)?;
    let limit = query.limit;
    let jobs = app
        .read(move |store| {
            let page = store.jobs_page(&query)?;
            let mut out = Vec::with_capacity(page.len());
            for job in page {
                let children = if job.kind == Kind::Input {
                    store.variants_of(job.id)?
                } else {
                    Vec::new()
                };
                out.push((job, children));
            }
            Ok(out)
        })
        .await?;
    let next_cursor = (jobs.len() == limit)
        .then(|| jobs.last().map(|(job, _)| job.id))
        .flatten();
    let items: Vec<Value> = jobs
        .iter()
        .map(|(job, children)| job_json(job, children, &config))
        .collect();
    Ok(Json(json!({ "jobs": items, "next_cursor": next_cursor })))
}

/// A path parameter as the handlers take it: the text, or why axum could not read it.
pub(super) type PathText = Result<UrlPath<String>, axum::extract::rejection::PathRejection>;

/// The text of a path parameter; a malformed one is a 400 with axum's reason.
pub(super) fn path_text(param: PathText) -> Result<String, ApiError> {
    let UrlPath(text) = param.map_err(|e| ApiError::bad_request(e.body_text()))?;
    Ok(text)
}

/// Reads a job id from the path.
pub(super) fn job_id(id: PathText) -> Result<i64, ApiError> {
    let text = path_text(id)?;
    text.parse::<i64>()
        .ok()
        .filter(|id| *id > 0)
        .ok_or_else(|| {
            ApiError::bad_request(format!("'{text}' is not a job id (a positive number)"))
        })
}

/// The job, its merges (an original's returns) and its events.
pub(super) async fn load_job(
    app: &App,
    id: i64,
) -> Result<(Job, Vec<Job>, Vec<JobEvent>), ApiError> {
    let found = app
        .read(move |store| {
            let Some(job) = store.get(id)? else {
                return Ok(None);
            };
            let children = if job.kind == Kind::Input {
                store.variants_of(id)?
            } else {
                Vec::new()
            };
            Ok(Some((job, children, store.events_of(id)?)))
        })
        .await?;
    found.ok_or_else(|| ApiError::not_found(format!("no job {id}: GET /api/v1/jobs lists them")))
}

pub(super) async fn job(Shared(app): Shared<App>, id: PathText) -> Result<Json<Value>, ApiError> {
    let id = job_id(id)?;
    let (job, children, events) = load_job(&app, id).await?;
    let config = app.context.config();
    let mut body = job_json(&job, &children, &config);
    body["events"] = Value::Array(events.iter().map(event_json).collect());
    Ok(Json(body))
}

pub(super) async fn retry(Shared(app): Shared<App>, id: PathText) -> Result<Response, ApiError> {
    let id = job_id(id)?;
    let job = app
        .command(|reply| Command::Retry { job: id, reply })
        .await?;
    let config = app.context.config();
    Ok((StatusCode::ACCEPTED, Json(job_json(&job, &[], &config))).into_response())
}

pub(super) async fn cancel(Shared(app): Shared<App>, id: PathText) -> Result<Response, ApiError> {
    let id = job_id(id)?;
    let job = app
        .command(|reply| Command::Cancel { job: id, reply })
        .await?;
    let config = app.context.config();
    Ok((StatusCode::OK, Json(job_json(&job, &[], &config))).into_response())
}
