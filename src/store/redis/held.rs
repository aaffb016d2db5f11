//! A held lock: its key with this holder's value, renewed while the holder
//! lives, and the fenced write made under it.

use super::*;

/// Writes `record` if the stored generation is `seen` (`None`: whatever it is), and
/// announces it, in one script.
pub(super) async fn save(
    conn: &mut ConnectionManager,
    keys: &Keys,
    token: &str,
    record: &StoredToken,
    seen: Option<u64>,
) -> Result<(), StoreError> {
    let script = redis::Script::new(SAVE);
    let mut call = script.key(keys.token(token));
    call.arg(seen.map(|s| s.to_string()).unwrap_or_default())
        .arg(keys.channel())
        .arg(token);
    for (field, value) in fields(record) {
        call.arg(field).arg(value);
    }
    let (written, stored): (i64, String) = call.invoke_async(conn).await.map_err(db("write"))?;
    if written == 0 {
        return Err(StoreError::Fenced {
            token: token.to_owned(),
            seen: seen.unwrap_or(0),
            stored: stored.parse().unwrap_or(0),
        });
    }
    Ok(())
}

/// A taken lock: its key, the value that proves it is ours, the renewing task.
pub(super) struct RedisHeld {
    pub(super) conn: ConnectionManager,
    pub(super) keys: Keys,
    pub(super) token: String,
    pub(super) key: String,
    pub(super) value: String,
    pub(super) renew: JoinHandle<()>,
    pub(super) lapsed: Lapsed,
    pub(super) lease: Duration,
}

impl RedisHeld {
    /// Compare-and-delete: a lock that lapsed and was taken by another instance
    /// is theirs, and stays.
    async fn let_go(mut conn: ConnectionManager, key: String, value: String, lapsed: Lapsed) {
        let released: Result<i64, _> = redis::Script::new(RELEASE)
            .key(&key)
            .arg(&value)
            .invoke_async(&mut conn)
            .await;
        if released.is_ok_and(|n| n == 0) {
            lapsed.report();
        }
    }
}

#[async_trait::async_trait]
impl Held for RedisHeld {
    async fn load(&mut self) -> Result<Option<StoredToken>, StoreError> {
        read(&mut self.conn, &self.keys, &self.token).await
    }

    async fn save(&mut self, record: &StoredToken, seen: Option<u64>) -> Result<(), StoreError> {
        save(&mut self.conn, &self.keys, &self.token, record, seen).await
    }

    async fn renew(&mut self) -> Result<Option<tokio::time::Instant>, StoreError> {
        let asked = tokio::time::Instant::now();
        let lease_ms = u64::try_from(self.lease.as_millis()).unwrap_or(u64::MAX);
        let renewed: i64 = redis::Script::new(RENEW)
            .key(&self.key)
            .arg(&self.value)
            .arg(lease_ms)
            .invoke_async(&mut self.conn)
            .await
            .map_err(db("lock"))?;
        if renewed == 0 {
            self.lapsed.report();
            return Err(StoreError::LeaseLost {
                token: self.token.clone(),
            });
        }
        Ok(Some(asked + self.lease))
    }

    async fn release(mut self: Box<Self>) {
        self.renew.abort();
        let (key, value) = (
            std::mem::take(&mut self.key),
            std::mem::take(&mut self.value),
        );
        RedisHeld::let_go(self.conn.clone(), key, value, self.lapsed.clone()).await;
    }
}

impl Drop for RedisHeld {
    fn drop(&mut self) {
        self.renew.abort();
        if self.key.is_empty() {
            return; // released
        }
        let (key, value) = (
            std::mem::take(&mut self.key),
            std::mem::take(&mut self.value),
        );
        tokio::spawn(RedisHeld::let_go(
            self.conn.clone(),
            key,
            value,
            self.lapsed.clone(),
        ));
    }
}
