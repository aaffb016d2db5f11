//! A locked row: the transaction that holds it, renewed while the holder lives,
//! and the fenced write made in it.

use super::*;

/// Writes `record` in the transaction of `client`, fenced by `seen` (`None`:
/// whatever is stored), and announces it at the commit.
pub(super) async fn update(
    client: &impl tokio_postgres::GenericClient,
    token: &str,
    record: &StoredToken,
    seen: Option<u64>,
) -> Result<(), StoreError> {
    let generation = i64::try_from(record.generation).unwrap_or(i64::MAX);
    let expires = crate::clock::ms_to_time(record.expires_at_ms);
    let issued = crate::clock::ms_to_time(record.issued_at_ms);
    let extra = serde_json::Value::Object(record.extra.clone());
    let access = record.access_token.as_ref().map(Secret::expose);
    let refresh = record.refresh_token.as_ref().map(Secret::expose);
    let seen_i = seen.map(|s| i64::try_from(s).unwrap_or(i64::MAX));
    // `seen` NULL: replace whatever is stored (seed, login).
    let updated = client
        .execute(
            "UPDATE tokenproxy_tokens SET access_token = $2, refresh_token = $3,
                expires_at = $4, issued_at = $5, generation = $6, extra = $7, updated_at = now()
             WHERE name = $1 AND ($8::bigint IS NULL OR generation = $8)",
            &[
                &token,
                &access,
                &refresh,
                &expires,
                &issued,
                &generation,
                &extra,
                &seen_i,
            ],
        )
        .await
        .map_err(db("write"))?;
    if updated == 0 {
        let stored: i64 = client
            .query_opt(
                "SELECT generation FROM tokenproxy_tokens WHERE name = $1",
                &[&token],
            )
            .await
            .map_err(db("read"))?
            .map_or(0, |r| r.get(0));
        return Err(StoreError::Fenced {
            token: token.to_owned(),
            seen: seen.unwrap_or(0),
            stored: u64::try_from(stored).unwrap_or(0),
        });
    }
    client
        .execute("SELECT pg_notify($1, $2)", &[&CHANNEL, &token])
        .await
        .map_err(db("write"))?;
    Ok(())
}

/// A locked row: the transaction that holds it, on a connection of its own, and
/// the task that renews it.
pub(super) struct PgHeld {
    /// `None` once handed back.
    pub(super) client: Option<Arc<deadpool_postgres::ClientWrapper>>,
    pub(super) renew: JoinHandle<()>,
    pub(super) token: String,
    /// Whether the locking transaction is still open.
    pub(super) open: bool,
    pub(super) lapsed: Lapsed,
    pub(super) lease: Duration,
}

impl PgHeld {
    fn client(&self) -> Result<&deadpool_postgres::ClientWrapper, StoreError> {
        self.client.as_deref().ok_or_else(|| StoreError::Database {
            op: "write",
            detail: "the lock was released".into(),
        })
    }
}

#[async_trait::async_trait]
impl Held for PgHeld {
    async fn load(&mut self) -> Result<Option<StoredToken>, StoreError> {
        let row = self
            .client()?
            .query_opt(SELECT, &[&self.token])
            .await
            .map_err(db("read"))?;
        Ok(row.as_ref().and_then(to_record))
    }

    async fn save(&mut self, record: &StoredToken, seen: Option<u64>) -> Result<(), StoreError> {
        let client = self.client()?;
        update(&**client, &self.token, record, seen).await?;
        if self.open {
            // Durable, the others told, and the lock released, in one step.
            client.batch_execute("COMMIT").await.map_err(db("write"))?;
            self.open = false;
            self.renew.abort();
        }
        Ok(())
    }

    async fn renew(&mut self) -> Result<Option<tokio::time::Instant>, StoreError> {
        if !self.open {
            return Err(StoreError::LeaseLost {
                token: self.token.clone(),
            });
        }
        let asked = tokio::time::Instant::now();
        match self.client()?.batch_execute("SELECT 1").await {
            Ok(()) => Ok(Some(asked + self.lease)),
            Err(e) if e.is_closed() || e.as_db_error().is_some() => {
                // The session ended (its idle timeout, or the server) or the
                // transaction failed: the row lock is gone with it.
                self.lapsed.report();
                self.open = false;
                Err(StoreError::LeaseLost {
                    token: self.token.clone(),
                })
            }
            Err(e) => Err(db("lock")(e)),
        }
    }

    async fn release(mut self: Box<Self>) {
        self.renew.abort();
        if let Some(client) = self.client.take()
            && self.open
        {
            self.open = false;
            if client.batch_execute("ROLLBACK").await.is_err() {
                self.lapsed.report();
            }
        }
    }
}

impl Drop for PgHeld {
    fn drop(&mut self) {
        self.renew.abort();
        let Some(client) = self.client.take() else {
            return;
        };
        if self.open {
            // Ends the transaction, and with it the lock, at once; closing the
            // connection (it is not pooled) would end it too.
            let lapsed = self.lapsed.clone();
            tokio::spawn(async move {
                if client.batch_execute("ROLLBACK").await.is_err() {
                    lapsed.report();
                }
            });
        }
    }
}
