//! The daemon's Prometheus metrics (`GET /metrics`, OpenMetrics text). Counters and
//! histograms are fed as things happen (by the main thread, which sees every job end);
//! what the journal already knows (jobs by state, queue depth, proxies awaiting return) and
//! what the model lane and the IO shell count are read at each scrape.

use crate::daemon::journal::{Kind, State, Store};
use crate::daemon::model_lane::LaneState;
use crate::recipes::Rule;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::{Registry, Unit};
use std::sync::atomic::AtomicU64;
use std::sync::Mutex;

/// The OpenMetrics text as the older Prometheus text format (0.0.4), for clients that do
/// not ask for OpenMetrics (`curl | promtool check metrics`): a counter's family takes its
/// samples' `_total` name, and `# UNIT` and `# EOF` go.
pub fn as_prometheus_text(openmetrics: &str) -> String {
    let counters: std::collections::HashSet<&str> = openmetrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|rest| rest.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(openmetrics.len());
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let renamed = ["# HELP ", "# TYPE "].iter().find_map(|prefix| {
            let rest = line.strip_prefix(prefix)?;
            let (name, tail) = rest.split_once(' ')?;
            counters
                .contains(name)
                .then(|| format!("{prefix}{name}_total {tail}"))
        });
        match renamed {
            Some(line) => out.push_str(&line),
            None => out.push_str(line),
        }
        out.push('\n');
    }
    out
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct JobLabels {
    rule: String,
    recipe: String,
    kind: String,
    state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RuleLabels {
    rule: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DurationLabels {
    recipe: String,
    kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StageLabels {
    recipe: String,
    stage: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FailureLabels {
    rule: String,
    class: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ProviderLabels {
    provider: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DeviceLabels {
    device: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TargetLabels {
    target: String,
}

/// Job and stage times: 10 ms to about 3 hours.
fn seconds_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.01, 2.5, 14))
}

/// The daemon's metrics; shared between the main thread and the HTTP listener.
pub struct Metrics {
    registry: Registry,
    /// Held while a scrape refreshes the gauges read from the journal.
    scrape: Mutex<()>,
    jobs: Family<JobLabels, Gauge>,
    queue_depth: Family<RuleLabels, Gauge>,
    awaiting_return: Family<RuleLabels, Gauge>,
    oldest_awaiting_return: Gauge<f64, AtomicU64>,
    job_seconds: Family<DurationLabels, Histogram>,
    stage_seconds: Family<StageLabels, Histogram>,
    claim_latency: Histogram,
    queue_wait: Histogram,
    failures: Family<FailureLabels, Counter>,
    lane_busy: Gauge,
    lane_busy_seconds: Counter<f64, AtomicU64>,
    lane_runs: Counter,
    lane_provider: Family<ProviderLabels, Gauge>,
    device_failed: Family<DeviceLabels, Gauge>,
    read_bytes: Counter,
    written_bytes: Counter,
    notify_failing: Family<TargetLabels, Gauge>,
    notify_delivered: Family<TargetLabels, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("darkroom");
        let jobs = Family::<JobLabels, Gauge>::default();
        registry.register(
            "jobs",
            "Jobs in the journal by rule, recipe, kind (split: an input, merge: a return) and state",
            jobs.clone(),
        );
        let queue_depth = Family::<RuleLabels, Gauge>::default();
        registry.register(
            "queue_depth",
            "Jobs waiting to run (queued, or waiting for their tool) by rule",
            queue_depth.clone(),
        );
        let awaiting_return = Family::<RuleLabels, Gauge>::default();
        registry.register(
            "proxies_awaiting_return",
            "Proxies written and waiting for their processed return, by rule",
            awaiting_return.clone(),
        );
        let oldest_awaiting_return = Gauge::<f64, AtomicU64>::default();
        registry.register_with_unit(
            "oldest_awaiting_return_age",
            "How long the longest-waiting proxy has waited for its return (0 when none waits)",
            Unit::Seconds,
            oldest_awaiting_return.clone(),
        );
        let job_seconds = Family::<DurationLabels, Histogram>::new_with_constructor(
            seconds_histogram as fn() -> Histogram,
        );
        registry.register_with_unit(
            "job_duration",
            "Time a job's work took on its worker, by recipe and kind",
            Unit::Seconds,
            job_seconds.clone(),
        );
        let stage_seconds = Family::<StageLabels, Histogram>::new_with_constructor(
            seconds_histogram as fn() -> Histogram,
        );
        registry.register_with_unit(
            "stage_duration",
            "Time of each stage of a job (decode, model, merge, encode, write, ...) by recipe",
            Unit::Seconds,
            stage_seconds.clone(),
        );
        let claim_latency = seconds_histogram();
        registry.register_with_unit(
            "claim_latency",
            "From a file's last change to its claim in the journal (includes the stability window)",
            Unit::Seconds,
            claim_latency.clone(),
        );
        let queue_wait = seconds_histogram();
        registry.register_with_unit(
            "queue_wait",
            "From a job's claim to the start of its first attempt",
            Unit::Seconds,
            queue_wait.clone(),
        );
        let failures = Family::<FailureLabels, Counter>::default();
        registry.register(
            "failures",
            "Jobs that ended without a result, by rule and class (bad-input, rejected, gave-up, \
             timeout, expired, cancelled)",
            failures.clone(),
        );
        let lane_busy = Gauge::default();
        registry.register(
            "model_lane_running",
            "1 while the model lane runs a model",
            lane_busy.clone(),
        );
        let lane_busy_seconds = Counter::<f64, AtomicU64>::default();
        registry.register_with_unit(
            "model_lane_busy",
            "Time the model lane spent loading and running models",
            Unit::Seconds,
            lane_busy_seconds.clone(),
        );
        let lane_runs = Counter::default();
        registry.register(
            "model_lane_runs",
            "Model loads and runs on the lane",
            lane_runs.clone(),
        );
        let lane_provider = Family::<ProviderLabels, Gauge>::default();
        registry.register(
            "model_lane_provider",
            "1 for the execution provider of the model the lane loaded last",
            lane_provider.clone(),
        );
        let device_failed = Family::<DeviceLabels, Gauge>::default();
        registry.register(
            "model_lane_device_failed",
            "1 for a CUDA device of [runtime] devices that cannot be used (its lane takes no work), \
             0 for one that works",
            device_failed.clone(),
        );
        let read_bytes = Counter::default();
        registry.register_with_unit(
            "read",
            "Bytes read from inputs and returns (hashing and decoding)",
            Unit::Bytes,
            read_bytes.clone(),
        );
        let written_bytes = Counter::default();
        registry.register_with_unit(
            "written",
            "Bytes of outputs written durably",
            Unit::Bytes,
            written_bytes.clone(),
        );
        let notify_failing = Family::<TargetLabels, Gauge>::default();
        registry.register(
            "notify_failing",
            "Failed deliveries in a row of the webhook target's next notification",
            notify_failing.clone(),
        );
        let notify_delivered = Family::<TargetLabels, Counter>::default();
        registry.register(
            "notify_delivered",
            "Notifications a webhook target accepted",
            notify_delivered.clone(),
        );
        Metrics {
            registry,
            scrape: Mutex::new(()),
            jobs,
            queue_depth,
            awaiting_return,
            oldest_awaiting_return,
            job_seconds,
            stage_seconds,
            claim_latency,
            queue_wait,
            failures,
            lane_busy,
            lane_busy_seconds,
            lane_runs,
            lane_provider,
            device_failed,
            read_bytes,
            written_bytes,
            notify_failing,
            notify_delivered,
        }
    }

    /// A job ended without a result.
    pub fn failed(&self, rule: &str, class: &str) {
        self.failures
            .get_or_create(&FailureLabels {
                rule: rule.to_string(),
                class: class.to_string(),
            })
            .inc();
    }

    /// A job's work came back after `seconds`, with its stages' times.
    pub fn job_ran(&self, recipe: &str, kind: Kind, seconds: f64, stages: &[(String, f64)]) {
        self.job_seconds
            .get_or_create(&DurationLabels {
                recipe: recipe.to_string(),
                kind: kind.as_str().to_string(),
            })
            .observe(seconds);
        for (stage, seconds) in stages {
            self.stage_seconds
                .get_or_create(&StageLabels {
                    recipe: recipe.to_string(),
                    stage: stage.clone(),
                })
                .observe(*seconds);
        }
    }

    /// A file was claimed `seconds` after its last change.
    pub fn claimed(&self, seconds: f64) {
        self.claim_latency.observe(seconds.max(0.0));
    }

    /// A job started its first attempt `seconds` after its claim.
    pub fn started(&self, seconds: f64) {
        self.queue_wait.observe(seconds.max(0.0));
    }

    /// A webhook target accepted a notification.
    pub fn delivered(&self, target: &str) {
        self.notify_delivered
            .get_or_create(&TargetLabels {
                target: target.to_string(),
            })
            .inc();
    }

    /// The metrics in the OpenMetrics text format, with the gauges read from `journal`,
    /// `lane` (all lanes as one), each of `lanes` and the IO counters now.
    pub fn render(
        &self,
        journal: &dyn Store,
        rules: &[Rule],
        (lane, lanes): (&LaneState, &[LaneState]),
        now: f64,
    ) -> anyhow::Result<String> {
        let _scrape = self.scrape.lock().unwrap_or_else(|p| p.into_inner());
        let recipe_of = |rule: &str| {
            rules
                .iter()
                .find(|r| r.name == rule)
                .map_or("(removed rule)", |r| r.recipe.name())
                .to_string()
        };
        self.jobs.clear();
        self.queue_depth.clear();
        self.awaiting_return.clear();
        for rule in rules {
            let labels = RuleLabels {
                rule: rule.name.clone(),
            };
            self.queue_depth.get_or_create(&labels).set(0);
            if rule.recipe.return_folder().is_some() {
                self.awaiting_return.get_or_create(&labels).set(0);
            }
        }
        for (rule, kind, state, count) in journal.counts_by_rule()? {
            let count = count as i64;
            self.jobs
                .get_or_create(&JobLabels {
                    recipe: recipe_of(&rule),
                    rule: rule.clone(),
                    kind: kind.as_str().to_string(),
                    state: state.as_str().to_string(),
                })
                .set(count);
            let labels = RuleLabels { rule };
            if matches!(state, State::Queued | State::WaitingForTool) {
                self.queue_depth.get_or_create(&labels).inc_by(count);
            }
            if state == State::AwaitingReturn {
                self.awaiting_return.get_or_create(&labels).inc_by(count);
            }
        }
        let oldest = journal.oldest_in_state(State::AwaitingReturn)?;
        self.oldest_awaiting_return
            .set(oldest.map_or(0.0, |since| (now - since).max(0.0)));
        self.lane_busy.set(i64::from(lane.busy_with.is_some()));
        let busy = lane.busy_seconds - self.lane_busy_seconds.get();
        if busy > 0.0 {
            self.lane_busy_seconds.inc_by(busy);
        }
        self.lane_runs
            .inc_by(lane.runs.saturating_sub(self.lane_runs.get()));
        self.lane_provider.clear();
        if let Some(provider) = &lane.provider {
            self.lane_provider
                .get_or_create(&ProviderLabels {
                    provider: provider.clone(),
                })
                .set(1);
        }
        self.device_failed.clear();
        for state in lanes {
            if let Some(device) = state.device {
                self.device_failed
                    .get_or_create(&DeviceLabels {
                        device: device.to_string(),
                    })
                    .set(i64::from(state.device_error.is_some()));
            }
        }
        let (read, written) = crate::io::traffic::totals();
        self.read_bytes
            .inc_by(read.saturating_sub(self.read_bytes.get()));
        self.written_bytes
            .inc_by(written.saturating_sub(self.written_bytes.get()));
        self.notify_failing.clear();
        for delivery in journal.deliveries()? {
            self.notify_failing
                .get_or_create(&TargetLabels {
                    target: delivery.target,
                })
                .set(i64::from(delivery.failures));
        }
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry)?;
        Ok(text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_keep_their_help_in_the_prometheus_text_format() {
        let open = "# HELP x_failures Failures.\n# TYPE x_failures counter\nx_failures_total{a=\"b\"} 1\n\
                    # HELP x_age Age.\n# TYPE x_age gauge\n# UNIT x_age seconds\nx_age 2.0\n# EOF\n";
        assert_eq!(
            as_prometheus_text(open),
            "# HELP x_failures_total Failures.\n# TYPE x_failures_total counter\nx_failures_total{a=\"b\"} 1\n\
             # HELP x_age Age.\n# TYPE x_age gauge\nx_age 2.0\n"
        );
    }
}
