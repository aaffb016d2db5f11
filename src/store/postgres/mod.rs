//! The shared store on PostgreSQL: one row per token in `tokenproxy_tokens`, a
//! documented table other tools may read.
//!
//! The lock is a row lock (`SELECT … FOR UPDATE`) taken in a transaction on a
//! connection of its own for as long as it is held. It is a lease: it ends when the
//! transaction ends, and the session sets `idle_in_transaction_session_timeout` to
//! the lease, so a holder that dies or freezes loses it after at most the lease. A
//! task renews it (a statement every third of the lease) while the holder lives.
//! The write of a refresh is `UPDATE … WHERE generation = $seen` in the same
//! transaction, committed before the lock is released: a holder whose lease ended
//! cannot write at all (its session is gone), and a writer that did not hold the
//! lock cannot overwrite a newer generation. Nothing uses session-level advisory
//! locks, which silently stop protecting once a pooled connection is reused.
//!
//! Pick-up: a refresh's transaction sends `NOTIFY tokenproxy_tokens, '<name>'`,
//! delivered at its commit; every instance `LISTEN`s on a connection of its own and
//! passes the name on ([`TokenStore::changes`]), so the others adopt the new token at
//! once instead of at their own refresh time. After a lost connection it reconnects
//! with backoff and announces `*` (look at everything), the polling fallback.
//!
//! Schema: created on first start, serialised between instances by a transaction
//! advisory lock; `tokenproxy_schema.version` is checked, and an unknown version or
//! a `tokenproxy_tokens` without the expected columns is refused by name.
//!
//! Length: the store's operations on PostgreSQL, each one statement or transaction
//! on the same row, read best side by side.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use deadpool_postgres::{Manager, ManagerConfig, Object, Pool, RecyclingMethod, Runtime};
use tokio::task::JoinHandle;

use super::{
    Held, Intent, IntentRead, Lapsed, RECORD_VERSION, StoreError, StoredToken, TokenStore,
};
use crate::secret::Secret;

mod changes;
mod held;
mod schema;

use changes::listen;
use held::{PgHeld, update};
use schema::{schema_versions, unknown_version};

/// The schema this build reads and writes.
pub const SCHEMA_VERSION: i32 = 1;

pub struct PgStore {
    pool: Pool,
    lease: Duration,
    changes: tokio::sync::broadcast::Sender<String>,
    listener: JoinHandle<()>,
}

/// The channel refreshes notify on.
const CHANNEL: &str = "tokenproxy_tokens";
/// Longest wait for the row lock of a write made without holding the lock (the
/// holder of the lock re-reads and lets go quickly).
const WRITE_LOCK_TIMEOUT: Duration = Duration::from_secs(5);

fn db(op: &'static str) -> impl Fn(tokio_postgres::Error) -> StoreError {
    move |e| StoreError::Database {
        op,
        detail: error_text(&e),
    }
}

/// The database's own message when there is one (it names the problem), else the
/// driver's.
fn error_text(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(d) => format!("{} ({})", d.message(), d.code().code()),
        None => e.to_string(),
    }
}

fn pool_error(e: deadpool_postgres::PoolError) -> StoreError {
    StoreError::Database {
        op: "connect",
        detail: e.to_string(),
    }
}

impl PgStore {
    /// Connects, creates the schema if missing and checks it. `tokens`: how many
    /// tokens may hold a lock (a connection each) at once.
    pub async fn open(
        url: &Secret,
        tls: rustls::ClientConfig,
        lease: Duration,
        tokens: usize,
    ) -> Result<PgStore, StoreError> {
        let config: tokio_postgres::Config =
            url.expose().parse().map_err(|_| StoreError::Database {
                op: "configure",
                detail: "store.url is not a PostgreSQL URL (postgres://user:password@host:port/database?sslmode=require)".into(),
            })?;
        let tls = tokio_postgres_rustls::MakeRustlsConnect::new(tls);
        let manager = Manager::from_config(
            config.clone(),
            tls.clone(),
            ManagerConfig {
                // No pooled connection is ever left in a transaction: a lock's
                // connection leaves the pool for good (see `lock`), and the few
                // transactions on pooled ones end before they are handed back.
                recycling_method: RecyclingMethod::Fast,
            },
        );
        // A lock holds a connection for a whole token request; reads and intents
        // need a few more.
        let pool = Pool::builder(manager)
            .max_size(4 + 2 * tokens)
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(Duration::from_secs(10)))
            .create_timeout(Some(Duration::from_secs(10)))
            .recycle_timeout(Some(Duration::from_secs(5)))
            .build()
            .map_err(|e| StoreError::Database {
                op: "configure",
                detail: e.to_string(),
            })?;
        let (changes, _) = tokio::sync::broadcast::channel(64);
        let listener = tokio::spawn(listen(config, tls, changes.clone()));
        let store = PgStore {
            pool,
            lease,
            changes,
            listener,
        };
        store.prepare_schema().await?;
        Ok(store)
    }

    /// For `tokenproxy check`: connects and reports the schema, changing nothing.
    pub async fn probe(url: &Secret, tls: rustls::ClientConfig) -> Result<String, StoreError> {
        let config: tokio_postgres::Config =
            url.expose().parse().map_err(|_| StoreError::Database {
                op: "configure",
                detail: "store.url is not a PostgreSQL URL".into(),
            })?;
        let tls = tokio_postgres_rustls::MakeRustlsConnect::new(tls);
        let (client, conn) = tokio::time::timeout(Duration::from_secs(10), config.connect(tls))
            .await
            .map_err(|_| StoreError::Database {
                op: "connect",
                detail: "no answer within 10 s".into(),
            })?
            .map_err(db("connect"))?;
        let driver = tokio::spawn(conn);
        let exists: bool = client
            .query_one("SELECT to_regclass('tokenproxy_schema') IS NOT NULL", &[])
            .await
            .map_err(db("check schema"))?
            .get(0);
        let text = if exists {
            match schema_versions(&client).await?.as_slice() {
                [SCHEMA_VERSION] => format!("reachable; schema version {SCHEMA_VERSION}"),
                other => return Err(unknown_version(other)),
            }
        } else {
            "reachable; no tokenproxy tables yet (created at the first start)".to_owned()
        };
        driver.abort();
        Ok(text)
    }

    async fn client(&self) -> Result<Object, StoreError> {
        self.pool.get().await.map_err(pool_error)
    }
}

fn to_record(row: &tokio_postgres::Row) -> Option<StoredToken> {
    let generation: i64 = row.get("generation");
    let access: Option<String> = row.get("access_token");
    let refresh: Option<String> = row.get("refresh_token");
    // The placeholder row a first lock inserts is "no record".
    if generation == 0 && access.is_none() && refresh.is_none() {
        return None;
    }
    let ms = |t: Option<SystemTime>| t.map_or(0, crate::clock::time_to_ms);
    let extra = match row.get::<_, serde_json::Value>("extra") {
        serde_json::Value::Object(m) => m,
        _ => Default::default(),
    };
    Some(StoredToken {
        version: RECORD_VERSION,
        generation: u64::try_from(generation).unwrap_or(0),
        access_token: access.map(Secret::new),
        refresh_token: refresh.map(Secret::new),
        issued_at_ms: ms(row.get("issued_at")),
        expires_at_ms: ms(row.get("expires_at")),
        extra,
    })
}

const SELECT: &str = "SELECT generation, access_token, refresh_token, expires_at, issued_at, extra
    FROM tokenproxy_tokens WHERE name = $1";

#[async_trait::async_trait]
impl TokenStore for PgStore {
    fn kind(&self) -> &'static str {
        "postgres"
    }

    async fn load(&self, token: &str) -> Result<Option<StoredToken>, StoreError> {
        let client = self.client().await?;
        let row = client
            .query_opt(SELECT, &[&token])
            .await
            .map_err(db("read"))?;
        Ok(row.as_ref().and_then(to_record))
    }

    async fn lock(&self, token: &str, wait: Duration) -> Result<Box<dyn Held>, StoreError> {
        // The lock's connection leaves the pool: the transaction that holds the
        // lock ends with it, and no pooled connection is ever handed out mid-
        // transaction.
        let client = Object::take(self.client().await?);
        // The row to lock exists before anyone locks it.
        client
            .execute(
                "INSERT INTO tokenproxy_tokens (name) VALUES ($1) ON CONFLICT (name) DO NOTHING",
                &[&token],
            )
            .await
            .map_err(db("lock"))?;
        client
            .batch_execute(&format!(
                "BEGIN; SET LOCAL lock_timeout = {}; SET LOCAL idle_in_transaction_session_timeout = {}",
                wait.as_millis().max(1),
                self.lease.as_millis().max(1)
            ))
            .await
            .map_err(db("lock"))?;
        let locked = client
            .query_one(
                "SELECT generation FROM tokenproxy_tokens WHERE name = $1 FOR UPDATE",
                &[&token],
            )
            .await;
        if let Err(e) = locked {
            let _ = client.batch_execute("ROLLBACK").await;
            if e.code() == Some(&tokio_postgres::error::SqlState::LOCK_NOT_AVAILABLE) {
                return Err(StoreError::LockTimeout {
                    path: format!("tokenproxy_tokens row `{token}`").into(),
                    waited: wait,
                });
            }
            return Err(db("lock")(e));
        }
        let client = Arc::new(client);
        let lapsed = Lapsed::new(token);
        let renew = {
            let client = Arc::clone(&client);
            let every = self.lease / 3;
            let lapsed = lapsed.clone();
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(every).await;
                    if client.batch_execute("SELECT 1").await.is_err() {
                        lapsed.report();
                        return;
                    }
                }
            })
        };
        Ok(Box::new(PgHeld {
            client: Some(client),
            renew,
            token: token.to_owned(),
            open: true,
            lapsed,
            lease: self.lease,
        }))
    }

    async fn write(&self, token: &str, record: &StoredToken, seen: u64) -> Result<(), StoreError> {
        let mut client = self.client().await?;
        // A store that lost the row (restored from an older backup) gets it back.
        client
            .execute(
                "INSERT INTO tokenproxy_tokens (name) VALUES ($1) ON CONFLICT (name) DO NOTHING",
                &[&token],
            )
            .await
            .map_err(db("write"))?;
        let tx = client.transaction().await.map_err(db("write"))?;
        tx.batch_execute(&format!(
            "SET LOCAL lock_timeout = {}",
            WRITE_LOCK_TIMEOUT.as_millis()
        ))
        .await
        .map_err(db("write"))?;
        update(&*tx, token, record, Some(seen)).await?;
        tx.commit().await.map_err(db("write"))
    }

    async fn load_intent(&self, token: &str) -> Result<IntentRead, StoreError> {
        let client = self.client().await?;
        let row = client
            .query_one(
                "SELECT i.owner, i.generation, i.refresh_token_sha256, i.started_at, i.refused,
                        (extract(epoch FROM clock_timestamp()) * 1000)::bigint
                 FROM (SELECT 1) AS one LEFT JOIN tokenproxy_intents i ON i.name = $1",
                &[&token],
            )
            .await
            .map_err(db("read intent"))?;
        let now_ms = u64::try_from(row.get::<_, i64>(5)).unwrap_or(0);
        let intent = row
            .get::<_, Option<String>>(2)
            .map(|refresh_token_sha256| Intent {
                owner: row.get(0),
                generation: u64::try_from(row.get::<_, i64>(1)).unwrap_or(0),
                refresh_token_sha256,
                at_ms: crate::clock::time_to_ms(row.get(3)),
                refused: row.get(4),
            });
        Ok(IntentRead { intent, now_ms })
    }

    async fn swap_intent(
        &self,
        token: &str,
        expected: Option<&Intent>,
        new: Option<&Intent>,
    ) -> Result<bool, StoreError> {
        let client = self.client().await?;
        let as_i64 = |i: &Intent| i64::try_from(i.generation).unwrap_or(i64::MAX);
        let changed = match (expected, new) {
            (None, None) => return Ok(true),
            (None, Some(n)) => {
                client
                    .execute(
                        "INSERT INTO tokenproxy_intents
                            (name, owner, generation, refresh_token_sha256, refused, started_at)
                         VALUES ($1, $2, $3, $4, $5, clock_timestamp())
                         ON CONFLICT (name) DO NOTHING",
                        &[
                            &token,
                            &n.owner,
                            &as_i64(n),
                            &n.refresh_token_sha256,
                            &n.refused,
                        ],
                    )
                    .await
            }
            (Some(e), Some(n)) => {
                client
                    .execute(
                        "UPDATE tokenproxy_intents SET owner = $2, generation = $3,
                            refresh_token_sha256 = $4, refused = $5, started_at = clock_timestamp()
                         WHERE name = $1 AND owner = $6 AND generation = $7
                            AND refresh_token_sha256 = $8 AND refused = $9",
                        &[
                            &token,
                            &n.owner,
                            &as_i64(n),
                            &n.refresh_token_sha256,
                            &n.refused,
                            &e.owner,
                            &as_i64(e),
                            &e.refresh_token_sha256,
                            &e.refused,
                        ],
                    )
                    .await
            }
            (Some(e), None) => {
                client
                    .execute(
                        "DELETE FROM tokenproxy_intents WHERE name = $1 AND owner = $2
                            AND generation = $3 AND refresh_token_sha256 = $4 AND refused = $5",
                        &[
                            &token,
                            &e.owner,
                            &as_i64(e),
                            &e.refresh_token_sha256,
                            &e.refused,
                        ],
                    )
                    .await
            }
        };
        Ok(changed.map_err(db("write intent"))? == 1)
    }

    fn lease(&self) -> Option<Duration> {
        Some(self.lease)
    }

    fn changes(&self) -> Option<tokio::sync::broadcast::Receiver<String>> {
        Some(self.changes.subscribe())
    }
}

impl Drop for PgStore {
    fn drop(&mut self) {
        self.listener.abort();
    }
}
