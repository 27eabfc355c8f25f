//! The journal in PostgreSQL, shared by every host of a cluster: `[daemon] journal =
//! "postgresql://user@host/db"`. A lost connection is made again on the next statement,
//! with a backoff while the server stays away; a transaction it cut short is never
//! continued on the new connection.

use super::schema::{self, MIGRATIONS};
use super::sql::{numbered_as_dollars, Database, Dialect, Row, Value};
use super::{StoreError, StoreResult};
use bytes::BytesMut;
use postgres::types::{to_sql_checked, FromSql, IsNull, ToSql, Type};
use postgres::{Client, NoTls, Statement};
use std::cell::RefCell;
use std::collections::HashMap;
use std::error::Error;
use std::time::{Duration, Instant};

type BoxError = Box<dyn Error + Sync + Send>;

impl From<postgres::Error> for StoreError {
    fn from(e: postgres::Error) -> Self {
        // The server's own words (`DbError`) say more than the wrapper's "db error".
        let text = match e.as_db_error() {
            Some(db) => format!("{}: {}", db.severity(), db.message()),
            None => match e.source() {
                Some(source) => format!("{e}: {source}"),
                None => e.to_string(),
            },
        };
        StoreError::Database(format!("PostgreSQL: {text}"))
    }
}

impl ToSql for Value {
    fn to_sql(&self, ty: &Type, out: &mut BytesMut) -> Result<IsNull, BoxError> {
        match (self, ty) {
            (Value::Null, _) => Ok(IsNull::Yes),
            (Value::Int(v), &Type::INT8) => v.to_sql(ty, out),
            (Value::Int(v), &Type::INT4) => i32::try_from(*v)?.to_sql(ty, out),
            (Value::Int(v), &Type::INT2) => i16::try_from(*v)?.to_sql(ty, out),
            (Value::Int(v), &Type::FLOAT8) => (*v as f64).to_sql(ty, out),
            (Value::Int(v), &Type::BOOL) => (*v != 0).to_sql(ty, out),
            (Value::Real(v), &Type::FLOAT8) => v.to_sql(ty, out),
            (Value::Real(v), &Type::FLOAT4) => (*v as f32).to_sql(ty, out),
            (Value::Text(v), _) if <&str as ToSql>::accepts(ty) => v.as_str().to_sql(ty, out),
            (Value::Blob(v), &Type::BYTEA) => v.as_slice().to_sql(ty, out),
            (value, ty) => Err(format!("cannot pass {value:?} as {ty}").into()),
        }
    }

    fn accepts(_: &Type) -> bool {
        true
    }

    to_sql_checked!();
}

impl<'a> FromSql<'a> for Value {
    fn from_sql(ty: &Type, raw: &'a [u8]) -> Result<Value, BoxError> {
        Ok(match *ty {
            Type::INT8 => Value::Int(i64::from_sql(ty, raw)?),
            Type::INT4 => Value::Int(i64::from(i32::from_sql(ty, raw)?)),
            Type::INT2 => Value::Int(i64::from(i16::from_sql(ty, raw)?)),
            Type::BOOL => Value::Int(i64::from(bool::from_sql(ty, raw)?)),
            Type::FLOAT8 => Value::Real(f64::from_sql(ty, raw)?),
            Type::FLOAT4 => Value::Real(f64::from(f32::from_sql(ty, raw)?)),
            Type::BYTEA => Value::Blob(<Vec<u8>>::from_sql(ty, raw)?),
            _ if <String as FromSql>::accepts(ty) => Value::Text(String::from_sql(ty, raw)?),
            _ => return Err(format!("the journal has no use for a {ty} column").into()),
        })
    }

    fn from_sql_null(_: &Type) -> Result<Value, BoxError> {
        Ok(Value::Null)
    }

    fn accepts(_: &Type) -> bool {
        true
    }
}

/// The connection, made again when it is lost.
struct Connection {
    client: Option<Client>,
    /// Prepared statements by their SQL (prepared again after a reconnect).
    statements: HashMap<String, Statement>,
    /// Inside `BEGIN` … `COMMIT`: a connection lost now fails the rest of the transaction.
    in_transaction: bool,
    /// Failed connection attempts in a row, and when to try again.
    failures: u32,
    /// The last connection was lost (the server stopped, or ended it).
    lost: bool,
    next_try: Instant,
}

/// A PostgreSQL connection for the journal.
pub struct PostgresDb {
    url: String,
    /// Names this connection in `pg_stat_activity` (`application_name`).
    purpose: String,
    connection: RefCell<Connection>,
}

/// How long a connection attempt may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// The longest wait between connection attempts while the server is away.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// The URL with its password, if any, replaced by `***`, for messages.
pub fn redacted(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let Some((userinfo, host)) = rest.split_once('@') else {
        return url.to_string();
    };
    match userinfo.split_once(':') {
        Some((user, _)) => format!("{scheme}://{user}:***@{host}"),
        None => url.to_string(),
    }
}

impl PostgresDb {
    /// Connects to `url` and brings the schema up to date (under a lock, so hosts starting
    /// together migrate once).
    pub fn open(url: &str, purpose: &str) -> StoreResult<PostgresDb> {
        let db = PostgresDb::connect(url, purpose)?;
        db.migrate()?;
        Ok(db)
    }

    /// Connects without touching the schema (readers).
    pub fn connect(url: &str, purpose: &str) -> StoreResult<PostgresDb> {
        let db = PostgresDb::unconnected(url, purpose);
        db.batch("SELECT 1")?;
        Ok(db)
    }

    /// A handle that connects on its first statement.
    fn unconnected(url: &str, purpose: &str) -> PostgresDb {
        PostgresDb {
            url: url.to_string(),
            purpose: purpose.to_string(),
            connection: RefCell::new(Connection {
                client: None,
                statements: HashMap::new(),
                in_transaction: false,
                failures: 0,
                lost: false,
                next_try: Instant::now(),
            }),
        }
    }

    fn new_client(&self) -> StoreResult<Client> {
        let mut config: postgres::Config = self.url.parse().map_err(|e| {
            StoreError::Database(format!(
                "journal URL {} is not a PostgreSQL connection URL: {e}",
                redacted(&self.url)
            ))
        })?;
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(CONNECT_TIMEOUT);
        }
        config.application_name(&format!("darkroom {}", self.purpose));
        // The server's notices (`... already exists, skipping`) are not the journal's news.
        config.options("-c client_min_messages=warning");
        // A server that vanishes without closing the connection is noticed within seconds.
        config.keepalives_idle(Duration::from_secs(5));
        Ok(config.connect(NoTls)?)
    }

    /// Runs `work` on a live client, connecting first when there is none.
    fn with_client<T>(
        &self,
        work: impl FnOnce(&mut Client, &mut HashMap<String, Statement>) -> Result<T, postgres::Error>,
    ) -> StoreResult<T> {
        let mut guard = self.connection.borrow_mut();
        let connection = &mut *guard;
        let live = connection.client.as_ref().is_some_and(|c| !c.is_closed());
        if !live {
            if connection.in_transaction {
                return Err(StoreError::Database(
                    "PostgreSQL: the connection was lost inside a transaction".into(),
                ));
            }
            connection.client = None;
            connection.statements.clear();
            if Instant::now() < connection.next_try {
                return Err(StoreError::Database(format!(
                    "PostgreSQL at {} is unreachable; trying again shortly",
                    redacted(&self.url)
                )));
            }
            match self.new_client() {
                Ok(client) => {
                    if connection.failures > 0 || connection.lost {
                        tracing::info!(
                            journal = %redacted(&self.url),
                            purpose = %self.purpose,
                            "reconnected to the journal"
                        );
                    }
                    connection.failures = 0;
                    connection.lost = false;
                    connection.client = Some(client);
                }
                Err(e) => {
                    connection.failures += 1;
                    let backoff = Duration::from_millis(250)
                        .saturating_mul(1 << connection.failures.min(5))
                        .min(MAX_BACKOFF);
                    connection.next_try = Instant::now() + backoff;
                    if connection.failures == 1 {
                        tracing::warn!(
                            journal = %redacted(&self.url),
                            purpose = %self.purpose,
                            error = %e,
                            "cannot reach the journal; retrying with backoff"
                        );
                    }
                    return Err(e);
                }
            }
        }
        let client = connection.client.as_mut().expect("connected above");
        let result = work(client, &mut connection.statements);
        if result.is_err() && client.is_closed() && !connection.lost {
            connection.lost = true;
            tracing::warn!(
                journal = %redacted(&self.url),
                purpose = %self.purpose,
                "lost the connection to the journal; reconnecting"
            );
        }
        Ok(result?)
    }

    fn prepared(
        client: &mut Client,
        statements: &mut HashMap<String, Statement>,
        sql: &str,
    ) -> Result<Statement, postgres::Error> {
        if let Some(statement) = statements.get(sql) {
            return Ok(statement.clone());
        }
        let statement = client.prepare(&numbered_as_dollars(sql))?;
        statements.insert(sql.to_string(), statement.clone());
        Ok(statement)
    }

    fn migrate(&self) -> StoreResult<()> {
        self.batch("SELECT pg_advisory_lock(7315)")?;
        let result = self.migrate_locked();
        let _ = self.batch("SELECT pg_advisory_unlock(7315)");
        result
    }

    fn migrate_locked(&self) -> StoreResult<()> {
        self.batch("CREATE TABLE IF NOT EXISTS schema_version (version BIGINT NOT NULL)")?;
        let rows = self.rows("SELECT version FROM schema_version", &[])?;
        let version = match rows.first() {
            Some(row) => row.int(0)? as usize,
            None => {
                self.execute("INSERT INTO schema_version (version) VALUES (0)", &[])?;
                0
            }
        };
        if version > schema::newest() {
            return Err(StoreError::Database(schema::too_new(version)));
        }
        for (index, migration) in MIGRATIONS.iter().enumerate().skip(version) {
            super::sql::transaction(self, || {
                self.batch(migration.postgres)?;
                self.execute(
                    "UPDATE schema_version SET version = ?1",
                    &[Value::Int(index as i64 + 1)],
                )?;
                Ok(())
            })?;
            tracing::info!(
                version = index + 1,
                what = migration.what,
                "journal schema migrated"
            );
        }
        Ok(())
    }
}

/// The channel a job queued (or waiting for its tool) is announced on.
pub const WORK_CHANNEL: &str = "darkroom_work";

/// Listens on [`WORK_CHANNEL`] on a connection of its own and calls `wake` for each
/// announcement (and after each reconnect, since work may have been queued meanwhile), so
/// idle hosts start queued work at once instead of at their next look. Returns when `wake`
/// returns false.
pub fn listen_for_work(url: &str, wake: impl Fn() -> bool) {
    let db = PostgresDb::unconnected(url, "listener");
    loop {
        let mut client = match db.new_client() {
            Ok(client) => client,
            Err(_) => {
                std::thread::sleep(MAX_BACKOFF);
                if !wake() {
                    return;
                }
                continue;
            }
        };
        if client
            .batch_execute(&format!("LISTEN {WORK_CHANNEL}"))
            .is_err()
        {
            continue;
        }
        if !wake() {
            return;
        }
        loop {
            let next = {
                let mut notifications = client.notifications();
                let mut iter = notifications.timeout_iter(Duration::from_secs(5));
                postgres::fallible_iterator::FallibleIterator::next(&mut iter).map(|n| n.is_some())
            };
            match next {
                Ok(true) => {
                    if !wake() {
                        return;
                    }
                }
                Err(_) => break,
                Ok(false) if client.is_closed() => break,
                Ok(false) => {}
            }
        }
    }
}

impl Database for PostgresDb {
    fn dialect(&self) -> Dialect {
        Dialect::Postgres
    }

    fn execute(&self, sql: &str, params: &[Value]) -> StoreResult<u64> {
        let refs: Vec<&(dyn ToSql + Sync)> = params.iter().map(|v| v as _).collect();
        self.with_client(|client, statements| {
            let statement = PostgresDb::prepared(client, statements, sql)?;
            client.execute(&statement, &refs)
        })
    }

    fn rows(&self, sql: &str, params: &[Value]) -> StoreResult<Vec<Row>> {
        let refs: Vec<&(dyn ToSql + Sync)> = params.iter().map(|v| v as _).collect();
        let rows = self.with_client(|client, statements| {
            let statement = PostgresDb::prepared(client, statements, sql)?;
            client.query(&statement, &refs)
        })?;
        rows.iter()
            .map(|row| {
                (0..row.len())
                    .map(|i| row.try_get::<_, Value>(i).map_err(StoreError::from))
                    .collect::<StoreResult<Vec<Value>>>()
                    .map(Row)
            })
            .collect()
    }

    fn batch(&self, sql: &str) -> StoreResult<()> {
        let starts = sql.starts_with("BEGIN");
        let ends = sql == "COMMIT" || sql == "ROLLBACK";
        let result = self.with_client(|client, _| client.batch_execute(sql));
        let mut connection = self.connection.borrow_mut();
        if starts && result.is_ok() {
            connection.in_transaction = true;
        }
        if ends {
            connection.in_transaction = false;
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_password_never_reaches_a_message() {
        assert_eq!(
            redacted("postgresql://darkroom:s3cret@db.lan:5432/jobs"),
            "postgresql://darkroom:***@db.lan:5432/jobs"
        );
        assert_eq!(
            redacted("postgresql://darkroom@db.lan/jobs"),
            "postgresql://darkroom@db.lan/jobs"
        );
        assert_eq!(redacted("host=/tmp user=x"), "host=/tmp user=x");
    }
}
