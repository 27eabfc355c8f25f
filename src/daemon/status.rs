//! `darkroom status`: what the journal says, read while the daemon runs.

use crate::daemon::config::Config;
use crate::daemon::journal::{self, Kind, Location, State, Store};
use crate::io::clock;
use std::fmt::Write;

/// Renders a duration in seconds as `3d4h`, `2h5m`, `4m10s` or `12s`.
pub fn human_duration(seconds: f64) -> String {
    let s = seconds.max(0.0) as u64;
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m{}s", s / 60, s % 60),
        3600..=86399 => format!("{}h{}m", s / 3600, (s % 3600) / 60),
        _ => format!("{}d{}h", s / 86400, (s % 86400) / 3600),
    }
}

/// Whether a failed job's error says its file was in an inbox that no pattern of its rule
/// takes (`Daemon::set_aside_unaccepted`).
fn is_not_taken(error: &str) -> bool {
    error.contains(": not taken: no pattern of rule")
}

/// The status report for the daemon configured by `config`.
pub fn report(config: &Config) -> anyhow::Result<String> {
    let opening = config.daemon.journal_opening();
    let where_ = opening.location.describe(&config.daemon.state_dir);
    let path = config.daemon.state_dir.join(journal::FILE_NAME);
    if opening.location == Location::Sqlite && !path.exists() {
        anyhow::bail!(
            "no journal at {}: the daemon has not run with this config yet (start it with `darkroom serve --config {}`)",
            path.display(),
            config.path.display()
        );
    }
    let journal = opening
        .open_reader("status")
        .map_err(|e| anyhow::anyhow!("cannot read the journal {where_}: {e}"))?;
    let now = clock::now();
    let mut out = String::new();
    writeln!(out, "journal: {where_}")?;
    if config.daemon.shares_journal() {
        let hosts = journal.hosts()?;
        writeln!(out, "hosts: {}", hosts.len())?;
        for host in &hosts {
            let state = match host.stopped_at {
                Some(at) => format!("stopped {} ago", human_duration(now - at)),
                None if host.heartbeat_age > config.daemon.lease_timeout.as_secs_f64() => {
                    format!(
                        "SILENT for {} (its leases have lapsed)",
                        human_duration(host.heartbeat_age)
                    )
                }
                None => format!(
                    "alive, last heartbeat {} ago",
                    human_duration(host.heartbeat_age)
                ),
            };
            let running = if host.running.is_empty() {
                "running nothing".to_string()
            } else {
                format!(
                    "running {} (jobs {})",
                    host.running.len(),
                    host.running
                        .iter()
                        .take(10)
                        .map(|id| format!("#{id}"))
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            };
            let leads = if host.leads.is_empty() {
                String::new()
            } else {
                format!(", elected {}", host.leads.join(", "))
            };
            writeln!(
                out,
                "  {} (pid {}, roles {}, {}): {state}, {running}{leads}",
                host.name, host.pid, host.roles, host.version
            )?;
        }
    }
    let counts = journal.counts()?;
    for kind in [Kind::Input, Kind::Return] {
        let parts: Vec<String> = State::ALL
            .iter()
            .filter_map(|state| {
                counts
                    .iter()
                    .find(|(k, s, _)| *k == kind && s == state)
                    .map(|(_, _, n)| format!("{} {n}", state.as_str()))
            })
            .collect();
        let label = match kind {
            Kind::Input => "originals",
            Kind::Return => "returns  ",
        };
        let text = if parts.is_empty() {
            "none".to_string()
        } else {
            parts.join(", ")
        };
        writeln!(out, "{label}: {text}")?;
    }
    let awaiting = journal.in_state(State::AwaitingReturn, 1000)?;
    writeln!(out, "awaiting return: {}", awaiting.len())?;
    for job in awaiting.iter().take(20) {
        let waited = human_duration(now - job.updated_at);
        let left = job
            .expires_at
            .map(|e| human_duration(e - now))
            .unwrap_or_else(|| "?".into());
        writeln!(
            out,
            "  #{} [{}] {} -> {} (waiting {waited}, expires in {left})",
            job.id,
            job.rule,
            job.claimed_path.display(),
            job.proxy_path
                .as_deref()
                .map(|p| p.display().to_string())
                .unwrap_or_default()
        )?;
    }
    let at_tool = journal.in_state(State::AtTool, 1000)?;
    let waiting_for_tool = journal.in_state(State::WaitingForTool, 1000)?;
    if !at_tool.is_empty() || !waiting_for_tool.is_empty() {
        writeln!(
            out,
            "with the tool: {}, waiting for tool: {}",
            at_tool.len(),
            waiting_for_tool.len()
        )?;
        for job in at_tool.iter().chain(&waiting_for_tool).take(20) {
            let attempt = match (&job.tool_server, job.tool_attempt) {
                (Some(server), n) if n > 0 => format!(" attempt {n} at {server}"),
                _ => String::new(),
            };
            let why = match (job.state, job.error.as_deref()) {
                (State::WaitingForTool, Some(error)) => format!(": {error}"),
                _ => String::new(),
            };
            writeln!(
                out,
                "  #{} [{}] {} {} for {}{attempt}{why}",
                job.id,
                job.rule,
                job.claimed_path.display(),
                if job.state == State::AtTool {
                    "with the tool"
                } else {
                    "waiting for tool"
                },
                human_duration(now - job.updated_at),
            )?;
        }
    }
    let held = journal.in_state(State::Held, 20)?;
    if !held.is_empty() {
        writeln!(out, "held returns: {}", held.len())?;
        for job in &held {
            writeln!(
                out,
                "  #{} [{}] {}: {}",
                job.id,
                job.rule,
                job.path.display(),
                job.error.as_deref().unwrap_or("")
            )?;
        }
    }
    let incomplete = journal.in_state(State::Incomplete, 20)?;
    if !incomplete.is_empty() {
        writeln!(
            out,
            "incomplete files, left in place in case a writer is still adding to them: {}",
            incomplete.len()
        )?;
        for job in &incomplete {
            let left = job
                .next_attempt_at
                .map(|t| human_duration(t - now))
                .unwrap_or_else(|| "?".into());
            writeln!(
                out,
                "  #{} [{}] {} (set aside in {left} unless it changes): {}",
                job.id,
                job.rule,
                job.path.display(),
                job.error.as_deref().unwrap_or("")
            )?;
        }
    }
    let not_taken = journal
        .in_state(State::Failed, 100_000)?
        .iter()
        .filter(|job| job.error.as_deref().is_some_and(is_not_taken))
        .count();
    if not_taken > 0 {
        writeln!(
            out,
            "files no rule took (set aside in failed/<rule>/ with what the rule takes): {not_taken}"
        )?;
    }
    let mut special = Vec::new();
    for rule in &config.rules {
        special.extend(crate::daemon::intake::special_entries(&rule.watch));
    }
    if !special.is_empty() {
        writeln!(
            out,
            "special entries in inboxes, left alone (never opened): {}",
            special.len()
        )?;
        for (path, what) in special.iter().take(20) {
            writeln!(out, "  {}: {what}", path.display())?;
        }
    }
    let failed = journal.in_state(State::Failed, 10)?;
    writeln!(out, "recent failures: {}", failed.len())?;
    for job in &failed {
        writeln!(
            out,
            "  #{} [{}] {} ({} ago): {}",
            job.id,
            job.rule,
            job.path.display(),
            human_duration(now - job.updated_at),
            job.error.as_deref().unwrap_or("")
        )?;
    }
    if !config.notify.is_empty() {
        // A journal the daemon has not migrated yet has no deliveries table.
        let deliveries = journal.deliveries().unwrap_or_default();
        writeln!(out, "notifications:")?;
        for target in &config.notify {
            let delivery = deliveries.iter().find(|d| d.target == target.url);
            let line = match delivery {
                None => "no deliveries yet".to_string(),
                Some(d) if d.failures == 0 => format!("ok, up to event {}", d.last_event),
                Some(d) => format!(
                    "FAILING: {} tries in a row, last: {}; next try in {}",
                    d.failures,
                    d.last_error.as_deref().unwrap_or("?"),
                    d.next_try_at
                        .map(|at| human_duration(at - now))
                        .unwrap_or_else(|| "a moment".into())
                ),
            };
            writeln!(out, "  {}: {line}", target.url)?;
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_naturally() {
        assert_eq!(human_duration(12.4), "12s");
        assert_eq!(human_duration(250.0), "4m10s");
        assert_eq!(human_duration(7500.0), "2h5m");
        assert_eq!(human_duration(3.0 * 86400.0 + 4.0 * 3600.0), "3d4h");
    }
}
