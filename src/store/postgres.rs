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

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use deadpool_postgres::{Manager, ManagerConfig, Object, Pool, RecyclingMethod, Runtime};
use tokio::task::JoinHandle;

use super::{Held, Intent, Lapsed, RECORD_VERSION, StoreError, StoredToken, TokenStore};
use crate::secret::Secret;

/// The schema this build reads and writes.
pub const SCHEMA_VERSION: i32 = 1;
/// Serialises schema creation between instances starting together.
const SCHEMA_LOCK: i64 = 0x746f_6b65_6e70_7278; // "tokenprx"
/// Columns of `tokenproxy_tokens` and their types, as `information_schema` names them.
const COLUMNS: [(&str, &str); 8] = [
    ("name", "text"),
    ("access_token", "text"),
    ("refresh_token", "text"),
    ("expires_at", "timestamp with time zone"),
    ("issued_at", "timestamp with time zone"),
    ("generation", "bigint"),
    ("extra", "jsonb"),
    ("updated_at", "timestamp with time zone"),
];

const CREATE: &str = "
CREATE TABLE IF NOT EXISTS tokenproxy_schema (version integer NOT NULL);
CREATE TABLE IF NOT EXISTS tokenproxy_tokens (
    name text PRIMARY KEY,
    access_token text,
    refresh_token text,
    expires_at timestamptz,
    issued_at timestamptz,
    generation bigint NOT NULL DEFAULT 0,
    extra jsonb NOT NULL DEFAULT '{}',
    updated_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE IF NOT EXISTS tokenproxy_intents (
    name text PRIMARY KEY,
    generation bigint NOT NULL,
    refresh_token_sha256 text NOT NULL,
    started_at timestamptz NOT NULL
);";

pub struct PgStore {
    pool: Pool,
    lease: Duration,
    changes: tokio::sync::broadcast::Sender<String>,
    listener: JoinHandle<()>,
}

/// The channel refreshes notify on.
const CHANNEL: &str = "tokenproxy_tokens";

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
                // A connection comes back from a lock holder that may have been cut
                // off mid-transaction: whatever it left open ends here.
                recycling_method: RecyclingMethod::Custom("ROLLBACK".into()),
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

    async fn prepare_schema(&self) -> Result<(), StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(db("create schema"))?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&SCHEMA_LOCK])
            .await
            .map_err(db("create schema"))?;
        tx.batch_execute(CREATE)
            .await
            .map_err(db("create schema"))?;
        match schema_versions(&*tx).await?.as_slice() {
            [] => {
                tx.execute(
                    "INSERT INTO tokenproxy_schema (version) VALUES ($1)",
                    &[&SCHEMA_VERSION],
                )
                .await
                .map_err(db("create schema"))?;
            }
            [SCHEMA_VERSION] => {}
            other => return Err(unknown_version(other)),
        }
        let found: Vec<(String, String)> = tx
            .query(
                "SELECT column_name::text, data_type::text FROM information_schema.columns
                 WHERE table_name = 'tokenproxy_tokens' AND table_schema = current_schema()",
                &[],
            )
            .await
            .map_err(db("check schema"))?
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect();
        for (name, kind) in COLUMNS {
            if !found.iter().any(|(n, k)| n == name && k == kind) {
                return Err(StoreError::Schema(format!(
                    "tokenproxy_tokens has no column `{name}` of type {kind}: it was not made by this tokenproxy. Rename that table, or point store.url at another database"
                )));
            }
        }
        tx.commit().await.map_err(db("create schema"))
    }
}

/// Forwards the names in `NOTIFY tokenproxy_tokens` to `changes`, reconnecting
/// with backoff (1 s doubling to 30 s) and announcing `*` after each (re)connection.
async fn listen(
    config: tokio_postgres::Config,
    tls: tokio_postgres_rustls::MakeRustlsConnect,
    changes: tokio::sync::broadcast::Sender<String>,
) {
    use futures_util::StreamExt;
    let mut backoff = Duration::from_secs(1);
    loop {
        match config.connect(tls.clone()).await {
            Ok((client, mut connection)) => {
                let forward = changes.clone();
                let driver = tokio::spawn(async move {
                    let mut messages =
                        futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
                    while let Some(Ok(message)) = messages.next().await {
                        if let tokio_postgres::AsyncMessage::Notification(n) = message {
                            let _ = forward.send(n.payload().to_owned());
                        }
                    }
                });
                if client
                    .batch_execute(&format!("LISTEN {CHANNEL}"))
                    .await
                    .is_ok()
                {
                    backoff = Duration::from_secs(1);
                    // Whatever changed while no one was listening.
                    let _ = changes.send("*".into());
                }
                let _ = driver.await;
                tracing::debug!("store notifications: connection ended; reconnecting");
            }
            Err(e) => {
                tracing::debug!(error = %error_text(&e), retry_in_s = backoff.as_secs(), "store notifications: cannot connect");
            }
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(30));
    }
}

/// The rows of `tokenproxy_schema` (one, normally).
async fn schema_versions(
    client: &impl tokio_postgres::GenericClient,
) -> Result<Vec<i32>, StoreError> {
    Ok(client
        .query("SELECT version FROM tokenproxy_schema", &[])
        .await
        .map_err(db("check schema"))?
        .iter()
        .map(|r| r.get(0))
        .collect())
}

fn unknown_version(found: &[i32]) -> StoreError {
    StoreError::Schema(format!(
        "tokenproxy_schema holds version {found:?}; this tokenproxy knows version {SCHEMA_VERSION}. Run the tokenproxy that created it, or migrate the table"
    ))
}

fn to_record(row: &tokio_postgres::Row) -> Option<StoredToken> {
    let generation: i64 = row.get("generation");
    let access: Option<String> = row.get("access_token");
    let refresh: Option<String> = row.get("refresh_token");
    // The placeholder row a first lock inserts is "no record".
    if generation == 0 && access.is_none() && refresh.is_none() {
        return None;
    }
    let ms = |t: Option<SystemTime>| t.map_or(0, crate::token::time_to_ms);
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
        let client = self.client().await?;
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
        }))
    }

    async fn save_intent(&self, token: &str, intent: &Intent) -> Result<(), StoreError> {
        let client = self.client().await?;
        let generation = i64::try_from(intent.generation).unwrap_or(i64::MAX);
        client
            .execute(
                "INSERT INTO tokenproxy_intents (name, generation, refresh_token_sha256, started_at)
                 VALUES ($1, $2, $3, $4)
                 ON CONFLICT (name) DO UPDATE SET generation = $2, refresh_token_sha256 = $3, started_at = $4",
                &[
                    &token,
                    &generation,
                    &intent.refresh_token_sha256,
                    &crate::token::ms_to_time(intent.at_ms),
                ],
            )
            .await
            .map_err(db("write intent"))?;
        Ok(())
    }

    async fn load_intent(&self, token: &str) -> Result<Option<Intent>, StoreError> {
        let client = self.client().await?;
        let row = client
            .query_opt(
                "SELECT generation, refresh_token_sha256, started_at FROM tokenproxy_intents WHERE name = $1",
                &[&token],
            )
            .await
            .map_err(db("read intent"))?;
        Ok(row.map(|r| Intent {
            generation: u64::try_from(r.get::<_, i64>(0)).unwrap_or(0),
            refresh_token_sha256: r.get(1),
            at_ms: crate::token::time_to_ms(r.get(2)),
        }))
    }

    async fn clear_intent(&self, token: &str) -> Result<(), StoreError> {
        let client = self.client().await?;
        client
            .execute("DELETE FROM tokenproxy_intents WHERE name = $1", &[&token])
            .await
            .map_err(db("write intent"))?;
        Ok(())
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

/// A locked row: the transaction that holds it, and the task that renews it.
struct PgHeld {
    /// `None` once handed back.
    client: Option<Arc<Object>>,
    renew: JoinHandle<()>,
    token: String,
    /// Whether the locking transaction is still open.
    open: bool,
    lapsed: Lapsed,
}

impl PgHeld {
    fn client(&self) -> Result<&Object, StoreError> {
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
        let generation = i64::try_from(record.generation).unwrap_or(i64::MAX);
        let expires = crate::token::ms_to_time(record.expires_at_ms);
        let issued = crate::token::ms_to_time(record.issued_at_ms);
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
                    &self.token,
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
                    &[&self.token],
                )
                .await
                .map_err(db("read"))?
                .map_or(0, |r| r.get(0));
            return Err(StoreError::Fenced {
                token: self.token.clone(),
                seen: seen.unwrap_or(0),
                stored: u64::try_from(stored).unwrap_or(0),
            });
        }
        client
            .execute("SELECT pg_notify($1, $2)", &[&CHANNEL, &self.token])
            .await
            .map_err(db("write"))?;
        if self.open {
            // Durable, the others told, and the lock released, in one step.
            client.batch_execute("COMMIT").await.map_err(db("write"))?;
            self.open = false;
            self.renew.abort();
        }
        Ok(())
    }
}

impl Drop for PgHeld {
    fn drop(&mut self) {
        self.renew.abort();
        let Some(client) = self.client.take() else {
            return;
        };
        if self.open {
            // Ends the transaction, and with it the lock, before the connection goes
            // back to the pool (the pool's recycling rolls back too, as a second net).
            let lapsed = self.lapsed.clone();
            tokio::spawn(async move {
                if client.batch_execute("ROLLBACK").await.is_err() {
                    lapsed.report();
                }
            });
        }
    }
}
