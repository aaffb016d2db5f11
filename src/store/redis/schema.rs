//! The schema key: written on first start, its version checked; and whether the
//! server keeps what it is told across a restart.

use super::*;

impl RedisStore {
    pub(super) async fn prepare_schema(&mut self) -> Result<(), StoreError> {
        let key = self.keys.schema();
        let _: bool = self
            .conn
            .set_nx(&key, REDIS_SCHEMA_VERSION)
            .await
            .map_err(db("create schema"))?;
        let found: Option<String> = self.conn.get(&key).await.map_err(db("check schema"))?;
        match found {
            Some(v) if v == REDIS_SCHEMA_VERSION.to_string() => Ok(()),
            Some(v) => Err(unknown_version(&self.keys, &v)),
            None => Err(StoreError::Schema(format!(
                "`{key}` vanished as it was written; is another program deleting keys under `{}`?",
                self.keys.prefix
            ))),
        }
    }
}

pub(super) fn unknown_version(keys: &Keys, found: &str) -> StoreError {
    let shown: String = found.chars().take(16).collect();
    StoreError::Schema(format!(
        "`{}` holds layout version {shown:?}; this tokenproxy knows version {REDIS_SCHEMA_VERSION}. Run the tokenproxy that wrote it, or set store.prefix to a prefix of its own",
        keys.schema()
    ))
}

/// What a Redis restart would lose, from the server's persistence settings; `None`
/// when writes reach the disk before they are answered, or when the server does
/// not say (managed services often refuse `CONFIG`).
pub(super) async fn persistence_warning(
    conn: &mut impl redis::aio::ConnectionLike,
) -> Option<String> {
    let settings: Vec<String> = redis::cmd("CONFIG")
        .arg("GET")
        .arg("append*")
        .query_async(conn)
        .await
        .ok()?;
    let setting = |name: &str| {
        settings
            .chunks(2)
            .find(|kv| kv[0] == name)
            .and_then(|kv| kv.get(1).cloned())
    };
    match (setting("appendonly")?.as_str(), setting("appendfsync")?.as_str()) {
        ("yes", "always") => None,
        ("yes", fsync) => Some(format!(
            "the Redis server syncs its log to disk `{fsync}`, not `always`: a crash of its host can lose the newest token, whose refresh token the provider has already rotated. Set appendfsync always on the server"
        )),
        _ => Some(
            "the Redis server keeps tokens in memory only (appendonly no): its restart loses the rotated refresh token. Set appendonly yes and appendfsync always on the server".into(),
        ),
    }
}
