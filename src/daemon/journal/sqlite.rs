//! The journal in one SQLite database (WAL, `synchronous=FULL`) in the state folder: the
//! default, for one host.

use super::schema::{self, MIGRATIONS};
use super::sql::{Database, Dialect, Row, Value};
use super::{StoreError, StoreResult, FILE_NAME};
use rusqlite::types::{Value as SqliteValue, ValueRef};
use rusqlite::{Connection, OpenFlags};
use std::path::Path;
use std::time::Duration;

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        StoreError::Database(e.to_string())
    }
}

/// One SQLite connection.
pub struct SqliteDb {
    connection: Connection,
}

fn to_sqlite(value: &Value) -> SqliteValue {
    match value {
        Value::Null => SqliteValue::Null,
        Value::Int(v) => SqliteValue::Integer(*v),
        Value::Real(v) => SqliteValue::Real(*v),
        Value::Text(v) => SqliteValue::Text(v.clone()),
        Value::Blob(v) => SqliteValue::Blob(v.clone()),
    }
}

fn from_sqlite(value: ValueRef<'_>) -> Value {
    match value {
        ValueRef::Null => Value::Null,
        ValueRef::Integer(v) => Value::Int(v),
        ValueRef::Real(v) => Value::Real(v),
        ValueRef::Text(v) => Value::Text(String::from_utf8_lossy(v).into_owned()),
        ValueRef::Blob(v) => Value::Blob(v.to_vec()),
    }
}

impl SqliteDb {
    /// Opens (creating if needed) the journal in `state_dir`, its schema brought up to date.
    pub fn open(state_dir: &Path) -> StoreResult<SqliteDb> {
        let mut connection = Connection::open(state_dir.join(FILE_NAME))?;
        connection.busy_timeout(Duration::from_secs(10))?;
        connection.pragma_update(None, "journal_mode", "WAL")?;
        connection.pragma_update(None, "synchronous", "FULL")?;
        connection.pragma_update(None, "foreign_keys", "ON")?;
        if migrate(&mut connection)? {
            // The migrations' pages leave the write-ahead log large; fold them into the
            // database now, so the log starts small (a file-size limit on the daemon then
            // bites its outputs, not its journal).
            connection.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))?;
        }
        Ok(SqliteDb { connection })
    }

    /// Opens an existing journal for reading only (`darkroom status`, the HTTP listener).
    pub fn open_read_only(state_dir: &Path) -> StoreResult<SqliteDb> {
        let connection = Connection::open_with_flags(
            state_dir.join(FILE_NAME),
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        connection.busy_timeout(Duration::from_secs(10))?;
        Ok(SqliteDb { connection })
    }
}

/// Brings the schema to the newest version this darkroom knows, each migration in its own
/// transaction. A journal written by a newer darkroom is refused, not downgraded. Returns
/// whether any migration ran.
fn migrate(connection: &mut Connection) -> StoreResult<bool> {
    let version: usize = connection.pragma_query_value(None, "user_version", |row| row.get(0))?;
    if version > schema::newest() {
        return Err(StoreError::Database(schema::too_new(version)));
    }
    for (index, migration) in MIGRATIONS.iter().enumerate().skip(version) {
        let transaction = connection.transaction()?;
        transaction.execute_batch(migration.sqlite)?;
        transaction.pragma_update(None, "user_version", index + 1)?;
        transaction.commit()?;
        tracing::debug!(
            version = index + 1,
            what = migration.what,
            "journal schema migrated"
        );
    }
    Ok(version < schema::newest())
}

impl Database for SqliteDb {
    fn dialect(&self) -> Dialect {
        Dialect::Sqlite
    }

    fn execute(&self, sql: &str, params: &[Value]) -> StoreResult<u64> {
        let mut statement = self.connection.prepare_cached(sql)?;
        let params: Vec<SqliteValue> = params.iter().map(to_sqlite).collect();
        Ok(statement.execute(rusqlite::params_from_iter(params))? as u64)
    }

    fn rows(&self, sql: &str, params: &[Value]) -> StoreResult<Vec<Row>> {
        let mut statement = self.connection.prepare_cached(sql)?;
        let columns = statement.column_count();
        let params: Vec<SqliteValue> = params.iter().map(to_sqlite).collect();
        let mut rows = statement.query(rusqlite::params_from_iter(params))?;
        let mut out = Vec::new();
        while let Some(row) = rows.next()? {
            let mut values = Vec::with_capacity(columns);
            for index in 0..columns {
                values.push(from_sqlite(row.get_ref(index)?));
            }
            out.push(Row(values));
        }
        Ok(out)
    }

    fn batch(&self, sql: &str) -> StoreResult<()> {
        Ok(self.connection.execute_batch(sql)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_schema_is_versioned_and_a_newer_journal_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        drop(SqliteDb::open(dir.path()).unwrap());
        let connection = Connection::open(dir.path().join(FILE_NAME)).unwrap();
        let version: usize = connection
            .pragma_query_value(None, "user_version", |row| row.get(0))
            .unwrap();
        assert_eq!(version, MIGRATIONS.len());
        // Opening again runs nothing twice.
        drop(SqliteDb::open(dir.path()).unwrap());
        connection
            .pragma_update(None, "user_version", MIGRATIONS.len() + 1)
            .unwrap();
        drop(connection);
        let error = SqliteDb::open(dir.path()).err().unwrap().to_string();
        assert!(error.contains("newer than this darkroom"), "{error}");
    }
}
