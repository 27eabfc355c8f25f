//! What the journal needs of an SQL database, whichever keeps it: statements with numbered
//! parameters (`?1`, `?2`, ...), rows of plain values, and transactions. SQLite and
//! PostgreSQL each implement [`Database`]; the journal's queries are written once, in
//! [`super::store`], against it.

use super::{StoreError, StoreResult};

/// A parameter or a column value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Null,
    Int(i64),
    Real(f64),
    Text(String),
    Blob(Vec<u8>),
}

impl From<i64> for Value {
    fn from(v: i64) -> Self {
        Value::Int(v)
    }
}

impl From<u32> for Value {
    fn from(v: u32) -> Self {
        Value::Int(i64::from(v))
    }
}

impl From<u64> for Value {
    fn from(v: u64) -> Self {
        Value::Int(v as i64)
    }
}

impl From<f64> for Value {
    fn from(v: f64) -> Self {
        Value::Real(v)
    }
}

impl From<&str> for Value {
    fn from(v: &str) -> Self {
        Value::Text(v.to_string())
    }
}

impl From<String> for Value {
    fn from(v: String) -> Self {
        Value::Text(v)
    }
}

impl From<&[u8]> for Value {
    fn from(v: &[u8]) -> Self {
        Value::Blob(v.to_vec())
    }
}

impl<T: Into<Value>> From<Option<T>> for Value {
    fn from(v: Option<T>) -> Self {
        v.map_or(Value::Null, Into::into)
    }
}

/// `[v1, v2, ...]` as parameters.
macro_rules! values {
    ($($v:expr),* $(,)?) => { &[$($crate::daemon::journal::sql::Value::from($v)),*] };
}
pub(crate) use values;

/// One result row.
#[derive(Debug, Clone)]
pub struct Row(pub Vec<Value>);

impl Row {
    fn at(&self, index: usize) -> StoreResult<&Value> {
        self.0
            .get(index)
            .ok_or_else(|| StoreError::Database(format!("the query returned no column {index}")))
    }

    fn mismatch(&self, index: usize, wanted: &str) -> StoreError {
        StoreError::Database(format!(
            "column {index} holds {:?}, not {wanted}",
            self.0.get(index)
        ))
    }

    pub fn int(&self, index: usize) -> StoreResult<i64> {
        self.opt_int(index)?
            .ok_or_else(|| self.mismatch(index, "an integer"))
    }

    pub fn opt_int(&self, index: usize) -> StoreResult<Option<i64>> {
        match self.at(index)? {
            Value::Null => Ok(None),
            Value::Int(v) => Ok(Some(*v)),
            _ => Err(self.mismatch(index, "an integer")),
        }
    }

    pub fn opt_u32(&self, index: usize) -> StoreResult<Option<u32>> {
        self.opt_int(index)?
            .map(|v| u32::try_from(v).map_err(|_| self.mismatch(index, "a u32")))
            .transpose()
    }

    pub fn u32(&self, index: usize) -> StoreResult<u32> {
        self.opt_u32(index)?
            .ok_or_else(|| self.mismatch(index, "an integer"))
    }

    pub fn opt_real(&self, index: usize) -> StoreResult<Option<f64>> {
        match self.at(index)? {
            Value::Null => Ok(None),
            Value::Real(v) => Ok(Some(*v)),
            Value::Int(v) => Ok(Some(*v as f64)),
            _ => Err(self.mismatch(index, "a number")),
        }
    }

    pub fn real(&self, index: usize) -> StoreResult<f64> {
        self.opt_real(index)?
            .ok_or_else(|| self.mismatch(index, "a number"))
    }

    pub fn opt_text(&self, index: usize) -> StoreResult<Option<String>> {
        match self.at(index)? {
            Value::Null => Ok(None),
            Value::Text(v) => Ok(Some(v.clone())),
            _ => Err(self.mismatch(index, "text")),
        }
    }

    pub fn text(&self, index: usize) -> StoreResult<String> {
        self.opt_text(index)?
            .ok_or_else(|| self.mismatch(index, "text"))
    }

    pub fn opt_blob(&self, index: usize) -> StoreResult<Option<Vec<u8>>> {
        match self.at(index)? {
            Value::Null => Ok(None),
            Value::Blob(v) => Ok(Some(v.clone())),
            _ => Err(self.mismatch(index, "bytes")),
        }
    }
}

/// Where a dialect's SQL differs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    Sqlite,
    Postgres,
}

impl Dialect {
    /// Locks the rows a work-taking query selects, passing over those another host holds.
    pub fn skip_locked(self) -> &'static str {
        match self {
            Dialect::Sqlite => "",
            Dialect::Postgres => "FOR UPDATE SKIP LOCKED",
        }
    }

    /// The database's clock in seconds since the epoch: leases are timed by one clock
    /// only, so the hosts' own clocks may disagree.
    pub fn now(self) -> &'static str {
        match self {
            Dialect::Sqlite => "((julianday('now') - 2440587.5) * 86400.0)",
            Dialect::Postgres => "extract(epoch from clock_timestamp())::float8",
        }
    }

    /// The greater of two integers.
    pub fn greatest(self) -> &'static str {
        match self {
            Dialect::Sqlite => "MAX",
            Dialect::Postgres => "GREATEST",
        }
    }

    /// Starts a transaction that writes.
    pub fn begin(self) -> &'static str {
        match self {
            Dialect::Sqlite => "BEGIN IMMEDIATE",
            Dialect::Postgres => "BEGIN",
        }
    }
}

/// A connection to the journal's database.
pub trait Database: Send {
    fn dialect(&self) -> Dialect;

    /// Runs one statement; returns the number of rows it changed.
    fn execute(&self, sql: &str, params: &[Value]) -> StoreResult<u64>;

    /// Runs one statement and returns its rows.
    fn rows(&self, sql: &str, params: &[Value]) -> StoreResult<Vec<Row>>;

    /// Runs statements without parameters (`BEGIN`, `COMMIT`, schema changes).
    fn batch(&self, sql: &str) -> StoreResult<()>;
}

/// Runs `work` in one transaction: committed when it succeeds, rolled back when it fails.
pub fn transaction<T>(db: &dyn Database, work: impl FnOnce() -> StoreResult<T>) -> StoreResult<T> {
    db.batch(db.dialect().begin())?;
    match work() {
        Ok(value) => {
            db.batch("COMMIT")?;
            Ok(value)
        }
        Err(e) => {
            let _ = db.batch("ROLLBACK");
            Err(e)
        }
    }
}

/// `?1`, `?2`, ... as PostgreSQL's `$1`, `$2`, ... (the journal's SQL holds no `?` inside
/// its string literals).
pub fn numbered_as_dollars(sql: &str) -> String {
    sql.replace('?', "$")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_and_row_getters() {
        assert_eq!(
            numbered_as_dollars("a = ?1 AND b = ?12"),
            "a = $1 AND b = $12"
        );
        let row = Row(vec![
            Value::Int(3),
            Value::Null,
            Value::Real(1.5),
            Value::Text("x".into()),
        ]);
        assert_eq!(row.int(0).unwrap(), 3);
        assert_eq!(row.opt_int(1).unwrap(), None);
        assert_eq!(row.real(0).unwrap(), 3.0);
        assert_eq!(row.real(2).unwrap(), 1.5);
        assert_eq!(row.text(3).unwrap(), "x");
        assert!(row.int(3).is_err());
        assert!(row.text(7).is_err());
        let params: &[Value] = values![1i64, None::<String>, "a"];
        assert_eq!(params[1], Value::Null);
    }
}
