//! The journal's operations in SQL, written once for both databases ([`Database`]): the one
//! place that holds the journal's queries.
//!
//! On PostgreSQL several hosts share the journal. A host takes queued work with `FOR UPDATE
//! SKIP LOCKED` and starts it under a lease (`leased_by`, `lease_until` on the database's
//! clock) that its heartbeat renews. Every later write about a job whose attempt this host
//! started is fenced: it applies only while the job is still running under this host's
//! lease and attempt number. A host whose lease lapsed (paused, cut off, killed) and whose
//! job another host took over can therefore never commit over that host.

use super::sql::{transaction, values, Database, Dialect, Row, Value};
use super::*;
use std::cell::RefCell;
use std::collections::HashMap;
use std::time::Duration;

const COLUMNS: &str = "id, kind, rule, claimed_path, path, size, sha256, state, attempts, \
    next_attempt_at, created_at, updated_at, error, parent, variant, pairing, output_path, \
    proxy_path, proxy_width, proxy_height, signature, expires_at, closed, details, mtime_ns, \
    tool_attempt, tool_server, failure, leased_by, lease_until";

/// The states of a job some host is working on.
const RUNNING: &str = "('running', 'merging', 'at-tool')";

fn job_from_row(row: &Row) -> StoreResult<Job> {
    Ok(Job {
        id: row.int(0)?,
        kind: Kind::parse(&row.text(1)?),
        rule: row.text(2)?,
        claimed_path: PathBuf::from(row.text(3)?),
        path: PathBuf::from(row.text(4)?),
        size: row.int(5)? as u64,
        sha256: row.text(6)?,
        state: State::parse(&row.text(7)?).unwrap_or(State::Failed),
        attempts: row.u32(8)?,
        next_attempt_at: row.opt_real(9)?,
        created_at: row.real(10)?,
        updated_at: row.real(11)?,
        error: row.opt_text(12)?,
        parent: row.opt_int(13)?,
        variant: row.opt_u32(14)?,
        pairing: row.opt_text(15)?,
        output_path: row.opt_text(16)?.map(PathBuf::from),
        proxy_path: row.opt_text(17)?.map(PathBuf::from),
        proxy_width: row.opt_u32(18)?,
        proxy_height: row.opt_u32(19)?,
        signature: row.opt_blob(20)?,
        expires_at: row.opt_real(21)?,
        closed: row.int(22)? != 0,
        details: row.opt_text(23)?,
        mtime_ns: row.int(24)?,
        tool_attempt: row.u32(25)?,
        tool_server: row.opt_text(26)?,
        failure: row.opt_text(27)?,
        leased_by: row.opt_text(28)?,
        lease_until: row.opt_real(29)?,
    })
}

const EVENT_COLUMNS: &str =
    "e.id, e.job, j.rule, j.kind, e.at, e.state, e.attempts, e.error, e.failure";

fn event_from_row(row: &Row) -> StoreResult<JobEvent> {
    Ok(JobEvent {
        id: row.int(0)?,
        job: row.int(1)?,
        rule: row.text(2)?,
        kind: Kind::parse(&row.text(3)?),
        at: row.real(4)?,
        state: State::parse(&row.text(5)?).unwrap_or(State::Failed),
        attempts: row.u32(6)?,
        error: row.opt_text(7)?,
        failure: row.opt_text(8)?,
    })
}

const DELIVERY_COLUMNS: &str = "target, last_event, failures, next_try_at, last_error";

fn delivery_from_row(row: &Row) -> StoreResult<Delivery> {
    Ok(Delivery {
        target: row.text(0)?,
        last_event: row.int(1)?,
        failures: row.u32(2)?,
        next_try_at: row.opt_real(3)?,
        last_error: row.opt_text(4)?,
    })
}

fn text(path: &Path) -> String {
    path.to_string_lossy().into_owned()
}

/// A job that ended without a result and whose file left the folder it was claimed from
/// (set aside into `failed/`, or withdrawn): the same file appearing there again is that
/// job's retry, not a file already handled.
const CAME_BACK: &str = "(state IN ('failed', 'cancelled') AND path != claimed_path) \
    OR state = 'withdrawn'";

/// The journal over one database connection, as one host.
pub struct SqlStore {
    db: Box<dyn Database>,
    /// This host's name in leases (`[daemon] host`).
    host: String,
    /// How long a lease lasts without a heartbeat, in seconds.
    lease: f64,
    /// The attempt this host started of each job it runs: its fencing token.
    held: RefCell<HashMap<i64, u32>>,
}

impl SqlStore {
    pub fn new(db: Box<dyn Database>, host: &str, lease: Duration) -> SqlStore {
        SqlStore {
            db,
            host: host.to_string(),
            lease: lease.as_secs_f64(),
            held: RefCell::new(HashMap::new()),
        }
    }

    /// Several hosts may share this journal (PostgreSQL): work is leased, not just taken.
    fn shared(&self) -> bool {
        self.db.dialect() == Dialect::Postgres
    }

    fn dialect(&self) -> Dialect {
        self.db.dialect()
    }

    fn jobs(&self, sql_where: &str, params: &[Value]) -> StoreResult<Vec<Job>> {
        self.db
            .rows(
                &format!("SELECT {COLUMNS} FROM jobs WHERE {sql_where}"),
                params,
            )?
            .iter()
            .map(job_from_row)
            .collect()
    }

    fn job(&self, sql_where: &str, params: &[Value]) -> StoreResult<Option<Job>> {
        Ok(self.jobs(sql_where, params)?.into_iter().next())
    }

    fn exists(&self, sql: &str, params: &[Value]) -> StoreResult<bool> {
        Ok(!self.db.rows(sql, params)?.is_empty())
    }

    fn optional_real(&self, sql: &str, params: &[Value]) -> StoreResult<Option<f64>> {
        match self.db.rows(sql, params)?.first() {
            Some(row) => row.opt_real(0),
            None => Ok(None),
        }
    }

    /// Updates job `id`: `set` is the `SET` list, its parameters from `?2` on (`?1` is the
    /// id). While this host runs an attempt of the job, the update is fenced by that
    /// attempt; `ends` says the update ends the attempt (the job leaves its running state),
    /// which gives up the lease.
    fn update_job(&self, id: i64, set: &str, params: &[Value], ends: bool) -> StoreResult<()> {
        let mut all = Vec::with_capacity(params.len() + 3);
        all.push(Value::Int(id));
        all.extend_from_slice(params);
        let release = if ends {
            ", leased_by = NULL, lease_until = NULL"
        } else {
            ""
        };
        let held = self.held.borrow().get(&id).copied();
        let fence = match held {
            Some(attempt) => {
                all.push(Value::Text(self.host.clone()));
                all.push(Value::Int(i64::from(attempt)));
                format!(
                    " AND leased_by = ?{} AND attempts = ?{} AND state IN {RUNNING}",
                    all.len() - 1,
                    all.len()
                )
            }
            None => String::new(),
        };
        let changed = self.db.execute(
            &format!("UPDATE jobs SET {set}{release} WHERE id = ?1{fence}"),
            &all,
        )?;
        if held.is_some() {
            if changed == 0 {
                self.held.borrow_mut().remove(&id);
                return Err(StoreError::Fenced { job: id });
            }
            if ends {
                self.held.borrow_mut().remove(&id);
            }
        }
        Ok(())
    }
}

impl Store for SqlStore {
    fn find_identity(
        &self,
        rule: &str,
        kind: Kind,
        identity: &FileIdentity,
    ) -> StoreResult<Option<Job>> {
        self.job(
            "rule = ?1 AND kind = ?2 AND claimed_path = ?3 AND size = ?4 AND mtime_ns = ?5 \
             AND sha256 = ?6",
            values![
                rule,
                kind.as_str(),
                text(&identity.path),
                identity.size,
                identity.mtime_ns,
                identity.sha256.as_str()
            ],
        )
    }

    fn knows_stat(
        &self,
        rule: &str,
        kind: Kind,
        path: &Path,
        size: u64,
        mtime_ns: i64,
    ) -> StoreResult<bool> {
        self.exists(
            &format!(
                "SELECT 1 FROM jobs WHERE rule = ?1 AND kind = ?2 AND claimed_path = ?3 \
                 AND size = ?4 AND mtime_ns = ?5 AND NOT ({CAME_BACK}) LIMIT 1"
            ),
            values![rule, kind.as_str(), text(path), size, mtime_ns],
        )
    }

    fn insert(
        &self,
        rule: &str,
        kind: Kind,
        identity: &FileIdentity,
        state: State,
    ) -> StoreResult<i64> {
        let rows = self.db.rows(
            "INSERT INTO jobs (kind, rule, claimed_path, path, size, mtime_ns, inode, sha256, \
             state, created_at, updated_at) VALUES (?1, ?2, ?3, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?9) \
             RETURNING id",
            values![
                kind.as_str(),
                rule,
                text(&identity.path),
                identity.size,
                identity.mtime_ns,
                identity.inode,
                identity.sha256.as_str(),
                state.as_str(),
                now()
            ],
        )?;
        rows.first()
            .ok_or_else(|| StoreError::Database("the insert returned no id".into()))?
            .int(0)
    }

    fn get(&self, id: i64) -> StoreResult<Option<Job>> {
        self.job("id = ?1", values![id])
    }

    fn interrupted(&self) -> StoreResult<Vec<Job>> {
        if self.shared() {
            // Only this host's own: another host's running jobs are its business until its
            // lease lapses.
            self.jobs(
                &format!("state IN {RUNNING} AND leased_by = ?1 ORDER BY id"),
                values![self.host.as_str()],
            )
        } else {
            self.jobs(&format!("state IN {RUNNING} ORDER BY id"), &[])
        }
    }

    fn runnable(&self, at: f64, limit: usize, filter: &Runnable<'_>) -> StoreResult<Vec<Job>> {
        let states = if filter.tool_waits_only {
            "('waiting-for-tool')"
        } else {
            "('queued', 'waiting-for-tool')"
        };
        let mut params: Vec<Value> = values![at, limit as i64].to_vec();
        if self.shared() {
            params.extend_from_slice(values![self.host.as_str(), self.lease]);
        }
        let of_rules = match filter.rules {
            None => String::new(),
            Some([]) => return Ok(Vec::new()),
            Some(rules) => {
                let first = params.len() + 1;
                params.extend(rules.iter().map(|r| Value::Text(r.clone())));
                let placeholders: Vec<String> =
                    (first..=params.len()).map(|i| format!("?{i}")).collect();
                format!(" AND rule IN ({})", placeholders.join(", "))
            }
        };
        if !self.shared() {
            return self.jobs(
                &format!(
                    "state IN {states} \
                     AND (next_attempt_at IS NULL OR next_attempt_at <= ?1){of_rules} \
                     ORDER BY id LIMIT ?2"
                ),
                &params,
            );
        }
        let now = self.dialect().now();
        let mut jobs: Vec<Job> = self
            .db
            .rows(
                &format!(
                    "UPDATE jobs SET leased_by = ?3, lease_until = {now} + ?4 WHERE id IN (\
                       SELECT id FROM jobs WHERE state IN {states} \
                       AND (next_attempt_at IS NULL OR next_attempt_at <= ?1) \
                       AND (leased_by IS NULL OR leased_by = ?3 OR lease_until < {now}){of_rules} \
                       ORDER BY id LIMIT ?2 {}) RETURNING {COLUMNS}",
                    self.dialect().skip_locked()
                ),
                &params,
            )?
            .iter()
            .map(job_from_row)
            .collect::<StoreResult<_>>()?;
        jobs.sort_by_key(|j| j.id);
        Ok(jobs)
    }

    fn release_unstarted(&self) -> StoreResult<()> {
        if self.shared() {
            self.db.execute(
                "UPDATE jobs SET leased_by = NULL, lease_until = NULL \
                 WHERE leased_by = ?1 AND state IN ('queued', 'waiting-for-tool')",
                values![self.host.as_str()],
            )?;
        }
        Ok(())
    }

    fn next_retry_at(&self, at: f64) -> StoreResult<Option<f64>> {
        self.optional_real(
            "SELECT MIN(next_attempt_at) FROM jobs WHERE state IN ('queued', 'waiting-for-tool') \
             AND next_attempt_at > ?1",
            values![at],
        )
    }

    fn pending_proxies(&self, rule: &str) -> StoreResult<Vec<Job>> {
        self.jobs(
            "kind = 'split' AND rule = ?1 AND closed = 0 AND proxy_path IS NOT NULL \
             AND state IN ('awaiting-return', 'expired', 'done') ORDER BY id",
            values![rule],
        )
    }

    fn overdue(&self, at: f64) -> StoreResult<Vec<Job>> {
        self.jobs(
            "kind = 'split' AND state = 'awaiting-return' AND expires_at <= ?1",
            values![at],
        )
    }

    fn window_over(&self, at: f64, grace: f64, rule: &str) -> StoreResult<Vec<Job>> {
        self.jobs(
            "kind = 'split' AND rule = ?3 AND closed = 0 AND expires_at IS NOT NULL \
             AND expires_at + ?2 <= ?1 AND state IN ('expired', 'done')",
            values![at, grace, rule],
        )
    }

    fn next_deadline(&self) -> StoreResult<Option<f64>> {
        self.optional_real(
            "SELECT MIN(t) FROM (\
               SELECT MIN(expires_at) AS t FROM jobs WHERE kind = 'split' AND state = 'awaiting-return' \
               UNION ALL \
               SELECT MIN(next_attempt_at) AS t FROM jobs WHERE state = 'incomplete') AS deadlines",
            &[],
        )
    }

    fn set_incomplete(&self, id: i64, until: f64, reason: &str) -> StoreResult<()> {
        self.update_job(
            id,
            "state = 'incomplete', next_attempt_at = ?2, error = ?3, updated_at = ?4",
            values![until, reason, now()],
            true,
        )
    }

    fn incomplete_due(&self, at: f64) -> StoreResult<Vec<Job>> {
        self.jobs(
            "state = 'incomplete' AND next_attempt_at <= ?1 ORDER BY id",
            values![at],
        )
    }

    fn superseded_by(&self, newer: i64) -> StoreResult<Vec<Job>> {
        self.jobs(
            "id != ?1 AND state IN ('queued', 'incomplete', 'held') AND (rule, kind, claimed_path) = \
             (SELECT rule, kind, claimed_path FROM jobs WHERE id = ?1) ORDER BY id",
            values![newer],
        )
    }

    fn variants_of(&self, parent: i64) -> StoreResult<Vec<Job>> {
        self.jobs(
            "kind = 'merge' AND parent = ?1 AND variant IS NOT NULL ORDER BY variant",
            values![parent],
        )
    }

    fn output_taken(&self, path: &Path, except_parent: i64) -> StoreResult<bool> {
        self.exists(
            "SELECT 1 FROM jobs WHERE output_path = ?1 AND (parent IS NULL OR parent != ?2) LIMIT 1",
            values![text(path), except_parent],
        )
    }

    fn set_state(&self, id: i64, state: State, error: Option<&str>) -> StoreResult<()> {
        let ends = !matches!(state, State::Running | State::Merging | State::AtTool);
        self.update_job(
            id,
            "state = ?2, error = ?3, updated_at = ?4",
            values![state.as_str(), error, now()],
            ends,
        )
    }

    fn start_attempt(&self, id: i64, state: State) -> StoreResult<()> {
        let now_db = self.dialect().now();
        let rows = self.db.rows(
            &format!(
                "UPDATE jobs SET state = ?2, attempts = attempts + 1, leased_by = ?3, \
                 lease_until = {now_db} + ?4, updated_at = ?5 \
                 WHERE id = ?1 AND (leased_by IS NULL OR leased_by = ?3 OR lease_until < {now_db}) \
                 RETURNING attempts"
            ),
            values![id, state.as_str(), self.host.as_str(), self.lease, now()],
        )?;
        let Some(row) = rows.first() else {
            return Err(StoreError::Fenced { job: id });
        };
        self.held.borrow_mut().insert(id, row.u32(0)?);
        Ok(())
    }

    fn retry_at(&self, id: i64, at: f64, error: &str) -> StoreResult<()> {
        self.update_job(
            id,
            "state = 'queued', next_attempt_at = ?2, error = ?3, updated_at = ?4",
            values![at, error, now()],
            true,
        )
    }

    fn requeue_interrupted(&self, id: i64) -> StoreResult<()> {
        self.update_job(
            id,
            &format!(
                "state = CASE state WHEN 'at-tool' THEN 'waiting-for-tool' ELSE 'queued' END, \
                 attempts = {}(attempts - 1, 0), updated_at = ?2",
                self.dialect().greatest()
            ),
            values![now()],
            true,
        )
    }

    fn reclaim_lapsed(&self) -> StoreResult<Vec<(Job, String)>> {
        if !self.shared() {
            return Ok(Vec::new());
        }
        let now_db = self.dialect().now();
        let columns: Vec<String> = COLUMNS.split(", ").map(|c| format!("jobs.{c}")).collect();
        self.db
            .rows(
                &format!(
                    "UPDATE jobs SET \
                     state = CASE jobs.state WHEN 'at-tool' THEN 'waiting-for-tool' ELSE 'queued' END, \
                     error = 'taken over: host ' || lapsed.host || ' stopped renewing its lease', \
                     leased_by = NULL, lease_until = NULL, updated_at = ?1 \
                     FROM (SELECT id, COALESCE(leased_by, 'unknown') AS host FROM jobs \
                           WHERE state IN {RUNNING} \
                           AND (lease_until IS NULL OR lease_until < {now_db}) {}) AS lapsed \
                     WHERE jobs.id = lapsed.id RETURNING {}, lapsed.host",
                    self.dialect().skip_locked(),
                    columns.join(", ")
                ),
                values![now()],
            )?
            .iter()
            .map(|row| Ok((job_from_row(row)?, row.text(30)?)))
            .collect()
    }

    fn set_path(&self, id: i64, path: &Path) -> StoreResult<()> {
        self.update_job(
            id,
            "path = ?2, updated_at = ?3",
            values![text(path), now()],
            false,
        )
    }

    fn proxy_written(
        &self,
        id: i64,
        proxy_path: &Path,
        size: (u32, u32),
        signature: &[u8],
        expires_at: f64,
        details: &str,
    ) -> StoreResult<()> {
        self.update_job(
            id,
            "state = 'awaiting-return', proxy_path = ?2, proxy_width = ?3, proxy_height = ?4, \
             signature = ?5, expires_at = ?6, details = ?7, error = NULL, updated_at = ?8",
            values![
                text(proxy_path),
                size.0,
                size.1,
                signature,
                expires_at,
                details,
                now()
            ],
            true,
        )
    }

    fn pair(
        &self,
        id: i64,
        parent: i64,
        variant: u32,
        pairing: &str,
        output_path: &Path,
    ) -> StoreResult<()> {
        self.update_job(
            id,
            "parent = ?2, variant = ?3, pairing = ?4, output_path = ?5, updated_at = ?6",
            values![parent, variant, pairing, text(output_path), now()],
            false,
        )
    }

    fn merge_done(
        &self,
        id: i64,
        parent: i64,
        return_now_at: &Path,
        original_now_at: &Path,
        details: &str,
    ) -> StoreResult<()> {
        let t = now();
        transaction(self.db.as_ref(), || {
            self.update_job(
                id,
                "state = 'done', path = ?2, details = ?3, error = NULL, updated_at = ?4",
                values![text(return_now_at), details, t],
                true,
            )?;
            self.update_job(
                parent,
                "state = 'done', path = ?2, error = NULL, updated_at = ?3",
                values![text(original_now_at), t],
                false,
            )
        })
    }

    fn set_tool_attempt(&self, id: i64, attempt: u32, server: &str) -> StoreResult<()> {
        self.update_job(
            id,
            "tool_attempt = ?2, tool_server = ?3, updated_at = ?4",
            values![attempt, server, now()],
            false,
        )
    }

    fn wait_for_tool(&self, id: i64, at: f64, reason: &str) -> StoreResult<()> {
        self.update_job(
            id,
            &format!(
                "state = 'waiting-for-tool', next_attempt_at = ?2, error = ?3, \
                 attempts = {}(attempts - 1, 0), updated_at = ?4",
                self.dialect().greatest()
            ),
            values![at, reason, now()],
            true,
        )
    }

    fn tool_returned(
        &self,
        rule: &str,
        parent: i64,
        returns: &[ToolReturn],
        expires_at: f64,
        details: &str,
    ) -> StoreResult<Vec<i64>> {
        let t = now();
        transaction(self.db.as_ref(), || {
            // The split job first: a host that no longer holds it adds no returns.
            self.update_job(
                parent,
                "state = 'awaiting-return', expires_at = ?2, error = NULL, \
                 next_attempt_at = NULL, details = ?4, updated_at = ?3",
                values![expires_at, t, details],
                true,
            )?;
            let mut ids = Vec::with_capacity(returns.len());
            for r in returns {
                let rows = self.db.rows(
                    "INSERT INTO jobs (kind, rule, claimed_path, path, size, mtime_ns, inode, \
                     sha256, state, created_at, updated_at, parent, variant, pairing, output_path) \
                     VALUES ('merge', ?1, ?2, ?2, ?3, ?4, ?5, ?6, 'queued', ?7, ?7, ?8, ?9, 'tool', ?10) \
                     RETURNING id",
                    values![
                        rule,
                        text(&r.identity.path),
                        r.identity.size,
                        r.identity.mtime_ns,
                        r.identity.inode,
                        r.identity.sha256.as_str(),
                        t,
                        parent,
                        r.variant,
                        text(&r.output_path)
                    ],
                )?;
                ids.push(
                    rows.first()
                        .ok_or_else(|| StoreError::Database("the insert returned no id".into()))?
                        .int(0)?,
                );
            }
            Ok(ids)
        })
    }

    fn set_output(&self, id: i64, output: &Path) -> StoreResult<()> {
        self.update_job(
            id,
            "output_path = ?2, updated_at = ?3",
            values![text(output), now()],
            false,
        )
    }

    fn job_done(&self, id: i64, input_now_at: &Path, details: &str) -> StoreResult<()> {
        self.update_job(
            id,
            "state = 'done', path = ?2, details = ?3, error = NULL, updated_at = ?4",
            values![text(input_now_at), details, now()],
            true,
        )
    }

    fn close(&self, id: i64) -> StoreResult<()> {
        self.update_job(id, "closed = 1, updated_at = ?2", values![now()], false)
    }

    fn counts(&self) -> StoreResult<Vec<(Kind, State, u64)>> {
        self.db
            .rows(
                "SELECT kind, state, COUNT(*) FROM jobs GROUP BY kind, state ORDER BY kind",
                &[],
            )?
            .iter()
            .map(|row| {
                Ok((
                    Kind::parse(&row.text(0)?),
                    State::parse(&row.text(1)?).unwrap_or(State::Failed),
                    row.int(2)? as u64,
                ))
            })
            .collect()
    }

    fn in_state(&self, state: State, limit: usize) -> StoreResult<Vec<Job>> {
        self.jobs(
            "state = ?1 ORDER BY updated_at DESC LIMIT ?2",
            values![state.as_str(), limit as i64],
        )
    }

    fn last_finished(&self) -> StoreResult<Option<Job>> {
        self.job(
            "state IN ('done', 'failed', 'awaiting-return') ORDER BY updated_at DESC LIMIT 1",
            &[],
        )
    }

    fn set_failed(
        &self,
        id: i64,
        state: State,
        class: FailureClass,
        reason: &str,
        input_now_at: &Path,
    ) -> StoreResult<()> {
        self.update_job(
            id,
            "state = ?2, failure = ?3, error = ?4, path = ?5, updated_at = ?6",
            values![state.as_str(), class, reason, text(input_now_at), now()],
            true,
        )
    }

    fn requeue(&self, id: i64, path: &Path) -> StoreResult<()> {
        self.update_job(
            id,
            "state = 'queued', attempts = 0, next_attempt_at = NULL, failure = NULL, path = ?2, \
             updated_at = ?3",
            values![text(path), now()],
            true,
        )
    }

    fn jobs_page(&self, query: &JobQuery) -> StoreResult<Vec<Job>> {
        // `substr(x, length(x) - length(name))` is `/name` when x ends in it, on both
        // databases (their `substr` differ only for positions below 1).
        self.jobs(
            "(CAST(?1 AS TEXT) IS NULL OR rule = ?1) AND (CAST(?2 AS TEXT) IS NULL OR state = ?2) \
             AND (CAST(?3 AS TEXT) IS NULL OR kind = ?3) AND (CAST(?4 AS BIGINT) IS NULL OR id < ?4) \
             AND (CAST(?6 AS TEXT) IS NULL OR claimed_path = ?6) \
             AND (CAST(?7 AS TEXT) IS NULL OR \
                  substr(claimed_path, length(claimed_path) - length(?7)) = '/' || ?7) \
             ORDER BY id DESC LIMIT ?5",
            values![
                query.rule.as_deref(),
                query.state.map(State::as_str),
                query.kind.map(Kind::as_str),
                query.before,
                query.limit as i64,
                query.claimed_path.as_deref().map(text),
                query.file_name.as_deref()
            ],
        )
    }

    fn counts_by_rule(&self) -> StoreResult<Vec<(String, Kind, State, u64)>> {
        self.db
            .rows(
                "SELECT rule, kind, state, COUNT(*) FROM jobs GROUP BY rule, kind, state",
                &[],
            )?
            .iter()
            .map(|row| {
                Ok((
                    row.text(0)?,
                    Kind::parse(&row.text(1)?),
                    State::parse(&row.text(2)?).unwrap_or(State::Failed),
                    row.int(3)? as u64,
                ))
            })
            .collect()
    }

    fn oldest_in_state(&self, state: State) -> StoreResult<Option<f64>> {
        self.optional_real(
            "SELECT MIN(updated_at) FROM jobs WHERE state = ?1",
            values![state.as_str()],
        )
    }

    fn events_of(&self, job: i64) -> StoreResult<Vec<JobEvent>> {
        self.db
            .rows(
                &format!(
                    "SELECT {EVENT_COLUMNS} FROM events e JOIN jobs j ON j.id = e.job \
                     WHERE e.job = ?1 ORDER BY e.id"
                ),
                values![job],
            )?
            .iter()
            .map(event_from_row)
            .collect()
    }

    fn events_after(&self, after: i64, limit: usize) -> StoreResult<Vec<JobEvent>> {
        self.db
            .rows(
                &format!(
                    "SELECT {EVENT_COLUMNS} FROM events e JOIN jobs j ON j.id = e.job \
                     WHERE e.id > ?1 ORDER BY e.id LIMIT ?2"
                ),
                values![after, limit as i64],
            )?
            .iter()
            .map(event_from_row)
            .collect()
    }

    fn last_event_id(&self) -> StoreResult<i64> {
        match self
            .db
            .rows("SELECT COALESCE(MAX(id), 0) FROM events", &[])?
            .first()
        {
            Some(row) => row.int(0),
            None => Ok(0),
        }
    }

    fn delivery(&self, target: &str) -> StoreResult<Option<Delivery>> {
        self.db
            .rows(
                &format!("SELECT {DELIVERY_COLUMNS} FROM deliveries WHERE target = ?1"),
                values![target],
            )?
            .first()
            .map(delivery_from_row)
            .transpose()
    }

    fn set_delivery(&self, delivery: &Delivery) -> StoreResult<()> {
        self.db.execute(
            "INSERT INTO deliveries (target, last_event, failures, next_try_at, last_error) \
             VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT(target) DO UPDATE SET \
             last_event = excluded.last_event, failures = excluded.failures, \
             next_try_at = excluded.next_try_at, last_error = excluded.last_error",
            values![
                delivery.target.as_str(),
                delivery.last_event,
                delivery.failures,
                delivery.next_try_at,
                delivery.last_error.as_deref()
            ],
        )?;
        Ok(())
    }

    fn deliveries(&self) -> StoreResult<Vec<Delivery>> {
        self.db
            .rows(
                &format!("SELECT {DELIVERY_COLUMNS} FROM deliveries ORDER BY target"),
                &[],
            )?
            .iter()
            .map(delivery_from_row)
            .collect()
    }

    fn register_host(&self, roles: &str) -> StoreResult<()> {
        if let Some(row) = self
            .db
            .rows(
                &format!(
                    "SELECT pid, {} - heartbeat_at FROM hosts WHERE name = ?1 AND stopped_at IS NULL",
                    self.dialect().now()
                ),
                values![self.host.as_str()],
            )?
            .first()
        {
            let (pid, silent_for) = (row.int(0)?, row.real(1)?);
            let alive_here = pid != i64::from(std::process::id())
                && libc::pid_t::try_from(pid)
                    // SAFETY: kill with signal 0 only asks whether the process exists.
                    .is_ok_and(|pid| unsafe { libc::kill(pid, 0) } == 0);
            if self.shared() && silent_for < self.lease && alive_here {
                return Err(StoreError::Database(format!(
                    "another darkroom (pid {pid}) already runs as host '{}' on this journal: \
                     give each daemon its own `host` in [daemon]",
                    self.host
                )));
            }
        }
        let now_db = self.dialect().now();
        self.db.execute(
            &format!(
                "INSERT INTO hosts (name, pid, roles, version, started_at, heartbeat_at) \
                 VALUES (?1, ?2, ?3, ?4, {now_db}, {now_db}) ON CONFLICT(name) DO UPDATE SET \
                 pid = excluded.pid, roles = excluded.roles, version = excluded.version, \
                 started_at = excluded.started_at, heartbeat_at = excluded.heartbeat_at, \
                 stopped_at = NULL"
            ),
            values![
                self.host.as_str(),
                i64::from(std::process::id()),
                roles,
                crate::recipes::VERSION
            ],
        )?;
        Ok(())
    }

    fn heartbeat(&self) -> StoreResult<u64> {
        let now_db = self.dialect().now();
        self.db.execute(
            &format!("UPDATE hosts SET heartbeat_at = {now_db} WHERE name = ?1"),
            values![self.host.as_str()],
        )?;
        self.db.execute(
            &format!(
                "UPDATE jobs SET lease_until = {now_db} + ?2 \
                 WHERE leased_by = ?1 AND state IN {RUNNING}"
            ),
            values![self.host.as_str(), self.lease],
        )
    }

    fn host_stopped(&self) -> StoreResult<()> {
        self.db.execute(
            &format!(
                "UPDATE hosts SET stopped_at = {} WHERE name = ?1",
                self.dialect().now()
            ),
            values![self.host.as_str()],
        )?;
        self.db.execute(
            "DELETE FROM leaders WHERE host = ?1",
            values![self.host.as_str()],
        )?;
        Ok(())
    }

    fn lead(&self, role: &str) -> StoreResult<bool> {
        if !self.shared() {
            return Ok(true);
        }
        let now_db = self.dialect().now();
        let rows = self.db.rows(
            &format!(
                "INSERT INTO leaders (role, host, until) VALUES (?1, ?2, {now_db} + ?3) \
                 ON CONFLICT(role) DO UPDATE SET host = excluded.host, until = excluded.until \
                 WHERE leaders.host = excluded.host OR leaders.until < {now_db} RETURNING host"
            ),
            values![role, self.host.as_str(), self.lease],
        )?;
        Ok(!rows.is_empty())
    }

    fn hosts(&self) -> StoreResult<Vec<Host>> {
        let now_db = self.dialect().now();
        let mut hosts: Vec<Host> = self
            .db
            .rows(
                &format!(
                    "SELECT name, pid, roles, version, started_at, {now_db} - heartbeat_at, \
                     stopped_at FROM hosts ORDER BY name"
                ),
                &[],
            )?
            .iter()
            .map(|row| {
                Ok(Host {
                    name: row.text(0)?,
                    pid: row.int(1)?,
                    roles: row.text(2)?,
                    version: row.text(3)?,
                    started_at: row.real(4)?,
                    heartbeat_age: row.real(5)?,
                    stopped_at: row.opt_real(6)?,
                    running: Vec::new(),
                    leads: Vec::new(),
                })
            })
            .collect::<StoreResult<_>>()?;
        for row in self.db.rows(
            &format!(
                "SELECT leased_by, id FROM jobs WHERE state IN {RUNNING} \
                 AND leased_by IS NOT NULL ORDER BY id"
            ),
            &[],
        )? {
            let (host, id) = (row.text(0)?, row.int(1)?);
            if let Some(h) = hosts.iter_mut().find(|h| h.name == host) {
                h.running.push(id);
            }
        }
        for row in self.db.rows(
            &format!("SELECT host, role FROM leaders WHERE until >= {now_db} ORDER BY role"),
            &[],
        )? {
            let (host, role) = (row.text(0)?, row.text(1)?);
            if let Some(h) = hosts.iter_mut().find(|h| h.name == host) {
                h.leads.push(role);
            }
        }
        Ok(hosts)
    }
}

/// Copies every job, event and webhook position of `from` into the empty journal `to`,
/// keeping their ids, in one transaction of `to`; jobs left running are queued again.
pub(super) fn copy_sqlite_to_postgres(
    from: &dyn Database,
    to: &dyn Database,
) -> StoreResult<Copied> {
    let held: i64 = to
        .rows("SELECT count(*) FROM jobs", &[])?
        .first()
        .map_or(Ok(0), |r| r.int(0))?;
    if held > 0 {
        return Err(StoreError::Database(format!(
            "the PostgreSQL journal already holds {held} jobs: migrate into an empty database"
        )));
    }
    let copy = |table: &str, columns: &str| -> StoreResult<u64> {
        let rows = from.rows(&format!("SELECT {columns} FROM {table} ORDER BY 1"), &[])?;
        let count = columns.split(", ").count();
        let placeholders: Vec<String> = (1..=count).map(|i| format!("?{i}")).collect();
        let insert = format!(
            "INSERT INTO {table} ({columns}) VALUES ({})",
            placeholders.join(", ")
        );
        for row in &rows {
            to.execute(&insert, &row.0)?;
        }
        Ok(rows.len() as u64)
    };
    transaction(to, || {
        // The copied events are the log; the triggers would add a second one.
        to.batch("ALTER TABLE jobs DISABLE TRIGGER USER")?;
        let jobs = copy("jobs", &format!("{COLUMNS}, inode"))?;
        let events = copy("events", "id, job, at, state, attempts, error, failure")?;
        let deliveries = copy("deliveries", DELIVERY_COLUMNS)?;
        to.batch("ALTER TABLE jobs ENABLE TRIGGER USER")?;
        let requeued = to.execute(
            &format!(
                "UPDATE jobs SET state = CASE state WHEN 'at-tool' THEN 'waiting-for-tool' \
                 ELSE 'queued' END, attempts = GREATEST(attempts - 1, 0), leased_by = NULL, \
                 lease_until = NULL WHERE state IN {RUNNING}"
            ),
            &[],
        )?;
        to.batch(
            "SELECT setval('jobs_id_seq', GREATEST((SELECT MAX(id) FROM jobs), 1)); \
             SELECT setval('events_id_seq', GREATEST((SELECT MAX(id) FROM events), 1))",
        )?;
        Ok(Copied {
            jobs,
            events,
            deliveries,
            requeued,
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::daemon::journal::sqlite::SqliteDb;

    fn open(dir: &Path) -> SqlStore {
        SqlStore::new(
            Box::new(SqliteDb::open(dir).unwrap()),
            "here",
            Duration::from_secs(15),
        )
    }

    fn identity(name: &str) -> FileIdentity {
        FileIdentity {
            path: PathBuf::from(name),
            size: 10,
            mtime_ns: 5,
            inode: 7,
            sha256: "ab".repeat(32),
        }
    }

    #[test]
    fn an_identity_is_queued_once_and_survives_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let journal = open(dir.path());
        let id = journal
            .insert("photos", Kind::Input, &identity("/in/a.jpg"), State::Queued)
            .unwrap();
        assert!(journal
            .insert("photos", Kind::Input, &identity("/in/a.jpg"), State::Queued)
            .is_err());
        journal.start_attempt(id, State::Running).unwrap();
        drop(journal);
        let journal = open(dir.path());
        let found = journal
            .find_identity("photos", Kind::Input, &identity("/in/a.jpg"))
            .unwrap()
            .unwrap();
        assert_eq!(
            (found.id, found.state, found.attempts),
            (id, State::Running, 1)
        );
        assert_eq!(journal.interrupted().unwrap().len(), 1);
        journal.requeue_interrupted(id).unwrap();
        let job = journal.get(id).unwrap().unwrap();
        assert_eq!((job.state, job.attempts), (State::Queued, 0));
    }

    #[test]
    fn retries_wait_for_their_time() {
        let dir = tempfile::tempdir().unwrap();
        let journal = open(dir.path());
        let id = journal
            .insert("r", Kind::Input, &identity("/in/b.jpg"), State::Queued)
            .unwrap();
        journal.retry_at(id, now() + 100.0, "disk full").unwrap();
        assert!(journal
            .runnable(now(), 10, &Runnable::default())
            .unwrap()
            .is_empty());
        assert_eq!(
            journal
                .runnable(now() + 101.0, 10, &Runnable::default())
                .unwrap()
                .len(),
            1
        );
    }

    #[test]
    fn every_state_change_lands_in_the_event_log_and_a_file_set_aside_can_come_back() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        let file = identity("/inbox/photos/a.png");
        let id = store
            .insert("photos", Kind::Input, &file, State::Queued)
            .unwrap();
        store.start_attempt(id, State::Running).unwrap();
        // Not a state change: no event.
        store.set_output(id, Path::new("/out/a.png")).unwrap();
        let aside = Path::new("/failed/a.png");
        store
            .set_failed(id, State::Failed, "bad-input", "not an image", aside)
            .unwrap();
        let events = store.events_of(id).unwrap();
        let states: Vec<State> = events.iter().map(|e| e.state).collect();
        assert_eq!(states, [State::Queued, State::Running, State::Failed]);
        assert_eq!(events[2].failure.as_deref(), Some("bad-input"));
        assert_eq!(events[2].error.as_deref(), Some("not an image"));
        assert_eq!(store.last_event_id().unwrap(), events[2].id);
        assert_eq!(store.events_after(events[0].id, 10).unwrap().len(), 2);
        // Set aside, the file is no longer "known" where it was claimed: its return is a retry.
        assert!(!store
            .knows_stat("photos", Kind::Input, &file.path, file.size, file.mtime_ns)
            .unwrap());
        store.requeue(id, &file.path).unwrap();
        let job = store.get(id).unwrap().unwrap();
        assert_eq!(
            (job.state, job.attempts, job.failure),
            (State::Queued, 0, None)
        );
        assert!(store
            .knows_stat("photos", Kind::Input, &file.path, file.size, file.mtime_ns)
            .unwrap());
        let page = store
            .jobs_page(&JobQuery {
                file_name: Some("a.png".into()),
                limit: 10,
                ..JobQuery::default()
            })
            .unwrap();
        assert_eq!(page.len(), 1);
        let delivery = Delivery {
            target: "http://x/hook".into(),
            last_event: 3,
            failures: 2,
            next_try_at: Some(1.0),
            last_error: Some("refused".into()),
        };
        store.set_delivery(&delivery).unwrap();
        assert_eq!(store.delivery("http://x/hook").unwrap(), Some(delivery));
    }
}
