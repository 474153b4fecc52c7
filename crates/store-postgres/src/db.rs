//! Small helpers over a pooled client or a transaction: cached statements, rows, the advisory lock keys.

use deadpool_postgres::GenericClient;
use tokio_postgres::Row;
use tokio_postgres::types::ToSql;

use crate::error::Res;

/// Parameters of a statement.
pub(crate) type Params<'a> = &'a [&'a (dyn ToSql + Sync)];

/// Every row of a statement (prepared once per connection, then cached).
pub(crate) async fn rows<C: GenericClient>(c: &C, sql: &str, params: Params<'_>) -> Res<Vec<Row>> {
    let stmt = c.prepare_cached(sql).await?;
    Ok(c.query(&stmt, params).await?)
}

/// The row of a statement that returns at most one.
pub(crate) async fn row<C: GenericClient>(c: &C, sql: &str, params: Params<'_>) -> Res<Option<Row>> {
    let stmt = c.prepare_cached(sql).await?;
    Ok(c.query_opt(&stmt, params).await?)
}

/// How many rows a statement changed.
pub(crate) async fn exec<C: GenericClient>(c: &C, sql: &str, params: Params<'_>) -> Res<u64> {
    let stmt = c.prepare_cached(sql).await?;
    Ok(c.execute(&stmt, params).await?)
}

/// Whether a statement returns a row.
pub(crate) async fn exists<C: GenericClient>(c: &C, sql: &str, params: Params<'_>) -> Res<bool> {
    Ok(row(c, sql, params).await?.is_some())
}

/// The schema the connection's `search_path` creates tables in (`None`: it names no existing schema).
pub(crate) async fn current_schema(client: &tokio_postgres::Client) -> Result<Option<String>, tokio_postgres::Error> {
    client.query_one("SELECT current_schema()", &[]).await?.try_get(0)
}

/// The key of one of Confab's advisory locks of a schema (`writes`: the cluster-wide write lock; `migrate`:
/// migrations). Derived from the schema's name, so two deployments in two schemas of one database do not
/// wait for each other. FNV-1a, 64 bits: stable across processes and releases.
pub(crate) fn lock_key(purpose: &str, schema: &str) -> i64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in "confab/"
        .bytes()
        .chain(purpose.bytes())
        .chain([b'/'])
        .chain(schema.bytes())
    {
        h = (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3);
    }
    h as i64
}
