//! The shared store on Redis: one hash per token under a configurable prefix, keys
//! other tools may read.
//!
//! Keys (`P` is `store.prefix`, `tokenproxy:` unless set):
//! - `P token:<name>`: a hash with `generation`, `access_token`, `refresh_token`,
//!   `expires_at_ms`, `issued_at_ms`, `extra` (JSON) and `updated_at_ms`;
//! - `P lock:<name>`: the lock, a string holding its holder's random value with a
//!   time to live of `store.lease`;
//! - `P intent:<name>`: a hash announcing a refresh about to spend a refresh token;
//! - `P schema`: the layout version, `1`;
//! - channel `P changes`: the names of tokens as new records are written.
//!
//! The lock is a lease: `SET … NX PX <lease>` with a value only its holder knows. A
//! task renews it (compare-and-`PEXPIRE`, every third of the lease) while the
//! holder lives, and it is released by compare-and-delete, never by a plain `DEL`,
//! which could free a lock that lapsed and was taken by another instance. The write
//! of a refresh is a script that replaces the hash only if its generation is still
//! the one the holder saw, and publishes the change in the same step: a holder
//! whose lease lapsed cannot overwrite a newer state.
//!
//! Durability is the server's: with `appendonly yes` and `appendfsync always` a
//! write is on disk when it returns. Opening the store reads the server's
//! persistence settings where it may, and says when a restart would lose tokens.
//!
//! Length: the store's operations on Redis, each one command or script on the same
//! keys, read best side by side.

use std::time::Duration;

use redis::AsyncCommands;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use tokio::task::JoinHandle;

use super::{
    Held, Intent, IntentRead, Lapsed, RECORD_VERSION, StoreError, StoredToken, TokenStore,
};
use crate::secret::Secret;

mod changes;
mod held;
mod schema;
mod scripts;

use changes::{RECONNECT_MAX, listen};
use held::{RedisHeld, save};
use schema::{persistence_warning, unknown_version};
use scripts::{LOAD_INTENT, RELEASE, RENEW, SAVE, SWAP_INTENT};

/// The key layout this build reads and writes.
pub const REDIS_SCHEMA_VERSION: u32 = 1;
/// How long one command may take before the store counts as unreachable.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(10);

/// An intent as the swap script compares it.
fn intent_key(intent: Option<&Intent>) -> String {
    intent.map_or(String::new(), |i| {
        format!(
            "{}|{}|{}|{}",
            i.owner,
            i.generation,
            i.refresh_token_sha256,
            if i.refused { "1" } else { "0" }
        )
    })
}

pub struct RedisStore {
    conn: ConnectionManager,
    keys: Keys,
    lease: Duration,
    changes: tokio::sync::broadcast::Sender<String>,
    listener: JoinHandle<()>,
}

/// The names of everything under the prefix.
#[derive(Clone)]
struct Keys {
    prefix: String,
}

impl Keys {
    fn token(&self, name: &str) -> String {
        format!("{}token:{name}", self.prefix)
    }
    fn lock(&self, name: &str) -> String {
        format!("{}lock:{name}", self.prefix)
    }
    fn intent(&self, name: &str) -> String {
        format!("{}intent:{name}", self.prefix)
    }
    fn schema(&self) -> String {
        format!("{}schema", self.prefix)
    }
    fn channel(&self) -> String {
        format!("{}changes", self.prefix)
    }
}

fn db(op: &'static str) -> impl Fn(redis::RedisError) -> StoreError {
    move |e| StoreError::Database {
        op,
        detail: error_text(&e),
    }
}

/// The server's or the driver's words, without the URL (it may hold a password).
fn error_text(e: &redis::RedisError) -> String {
    if e.is_timeout() {
        return format!("no answer within {}s", COMMAND_TIMEOUT.as_secs());
    }
    e.to_string()
}

/// A client for `url`; `ca_pem`: the certificates to trust for `rediss://` instead
/// of the system's.
fn client(url: &Secret, ca_pem: Option<Vec<u8>>) -> Result<redis::Client, StoreError> {
    let bad_url = |_| StoreError::Database {
        op: "configure",
        detail:
            "store.url is not a Redis URL (redis://:password@host:6379/0, or rediss:// for TLS)"
                .into(),
    };
    match ca_pem {
        Some(pem) if url.expose().starts_with("rediss:") => redis::Client::build_with_tls(
            url.expose(),
            redis::TlsCertificates {
                client_tls: None,
                root_cert: Some(pem),
            },
        )
        .map_err(bad_url),
        _ => redis::Client::open(url.expose()).map_err(bad_url),
    }
}

/// A connection, or why not within [`COMMAND_TIMEOUT`].
async fn connect<C>(
    connecting: impl Future<Output = redis::RedisResult<C>>,
) -> Result<C, StoreError> {
    tokio::time::timeout(COMMAND_TIMEOUT, connecting)
        .await
        .map_err(|_| StoreError::Database {
            op: "connect",
            detail: format!("no answer within {}s", COMMAND_TIMEOUT.as_secs()),
        })?
        .map_err(db("connect"))
}

impl RedisStore {
    /// Connects, writes the layout version if missing and checks it.
    pub async fn open(
        url: &Secret,
        ca_pem: Option<Vec<u8>>,
        prefix: &str,
        lease: Duration,
    ) -> Result<RedisStore, StoreError> {
        let client = client(url, ca_pem)?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(COMMAND_TIMEOUT))
            .set_response_timeout(Some(COMMAND_TIMEOUT))
            // A restarted server is reached again within half a second of
            // answering, not after a backoff grown while it was down.
            .set_number_of_retries(6)
            .set_max_delay(RECONNECT_MAX);
        let conn = connect(ConnectionManager::new_with_config(client.clone(), config)).await?;
        let keys = Keys {
            prefix: prefix.to_owned(),
        };
        let (changes, _) = tokio::sync::broadcast::channel(64);
        let listener = tokio::spawn(listen(client, keys.channel(), changes.clone()));
        let mut store = RedisStore {
            conn,
            keys,
            lease,
            changes,
            listener,
        };
        store.prepare_schema().await?;
        if let Some(warning) = persistence_warning(&mut store.conn).await {
            tracing::warn!("{warning}");
        }
        Ok(store)
    }

    /// For `tokenproxy check`: connects and reports the layout, changing nothing.
    pub async fn probe(
        url: &Secret,
        ca_pem: Option<Vec<u8>>,
        prefix: &str,
    ) -> Result<String, StoreError> {
        let client = client(url, ca_pem)?;
        let mut conn = connect(client.get_multiplexed_async_connection()).await?;
        let keys = Keys {
            prefix: prefix.to_owned(),
        };
        let version: Option<String> = conn.get(keys.schema()).await.map_err(db("check schema"))?;
        let mut text = match version {
            None => format!("reachable; no keys under `{prefix}` yet (written at the first start)"),
            Some(v) if v == REDIS_SCHEMA_VERSION.to_string() => {
                format!("reachable; keys under `{prefix}`, layout version {v}")
            }
            Some(v) => return Err(unknown_version(&keys, &v)),
        };
        if let Some(warning) = persistence_warning(&mut conn).await {
            text.push_str("\n  warning: ");
            text.push_str(&warning);
        }
        Ok(text)
    }
}

/// The record in a token's hash; `None` for an absent or empty hash.
fn to_record(
    keys: &Keys,
    name: &str,
    fields: std::collections::HashMap<String, String>,
) -> Result<Option<StoredToken>, StoreError> {
    if fields.is_empty() {
        return Ok(None);
    }
    let corrupt = |detail: String| StoreError::Corrupt {
        path: format!("Redis key `{}`", keys.token(name)).into(),
        token: name.to_owned(),
        detail,
    };
    let number = |field: &str| -> Result<u64, StoreError> {
        match fields.get(field) {
            None => Err(corrupt(format!("field `{field}` is missing"))),
            Some(v) => v
                .parse()
                .map_err(|_| corrupt(format!("field `{field}` is not a whole number"))),
        }
    };
    let extra = match fields.get("extra") {
        None => Default::default(),
        Some(v) => match serde_json::from_str::<serde_json::Value>(v) {
            Ok(serde_json::Value::Object(m)) => m,
            _ => return Err(corrupt("field `extra` is not a JSON object".into())),
        },
    };
    Ok(Some(StoredToken {
        version: RECORD_VERSION,
        generation: number("generation")?,
        access_token: fields.get("access_token").cloned().map(Secret::new),
        refresh_token: fields.get("refresh_token").cloned().map(Secret::new),
        issued_at_ms: number("issued_at_ms")?,
        expires_at_ms: number("expires_at_ms")?,
        extra,
    }))
}

/// The hash fields of `record`, as the save script takes them.
fn fields(record: &StoredToken) -> Vec<(&'static str, String)> {
    let mut out = vec![
        ("generation", record.generation.to_string()),
        ("issued_at_ms", record.issued_at_ms.to_string()),
        ("expires_at_ms", record.expires_at_ms.to_string()),
        (
            "extra",
            serde_json::Value::Object(record.extra.clone()).to_string(),
        ),
        (
            "updated_at_ms",
            crate::clock::time_to_ms(std::time::SystemTime::now()).to_string(),
        ),
    ];
    if let Some(t) = &record.access_token {
        out.push(("access_token", t.expose().to_owned()));
    }
    if let Some(t) = &record.refresh_token {
        out.push(("refresh_token", t.expose().to_owned()));
    }
    out
}

async fn read(
    conn: &mut ConnectionManager,
    keys: &Keys,
    name: &str,
) -> Result<Option<StoredToken>, StoreError> {
    let fields: std::collections::HashMap<String, String> =
        conn.hgetall(keys.token(name)).await.map_err(db("read"))?;
    to_record(keys, name, fields)
}

#[async_trait::async_trait]
impl TokenStore for RedisStore {
    fn kind(&self) -> &'static str {
        "redis"
    }

    async fn load(&self, token: &str) -> Result<Option<StoredToken>, StoreError> {
        read(&mut self.conn.clone(), &self.keys, token).await
    }

    async fn lock(&self, token: &str, wait: Duration) -> Result<Box<dyn Held>, StoreError> {
        let mut conn = self.conn.clone();
        let key = self.keys.lock(token);
        let value = format!("{:016x}{:016x}", fastrand::u64(..), fastrand::u64(..));
        let lease_ms = u64::try_from(self.lease.as_millis()).unwrap_or(u64::MAX);
        let deadline = tokio::time::Instant::now() + wait;
        let mut pause = Duration::from_millis(10);
        loop {
            let taken: Option<String> = redis::cmd("SET")
                .arg(&key)
                .arg(&value)
                .arg("NX")
                .arg("PX")
                .arg(lease_ms)
                .query_async(&mut conn)
                .await
                .map_err(db("lock"))?;
            if taken.is_some() {
                break;
            }
            let now = tokio::time::Instant::now();
            if now >= deadline {
                return Err(StoreError::LockTimeout {
                    path: format!("Redis key `{key}`").into(),
                    waited: wait,
                });
            }
            tokio::time::sleep(pause.min(deadline - now)).await;
            pause = (pause * 2).min(Duration::from_millis(200));
        }
        let lapsed = Lapsed::new(token);
        let renew = {
            let mut conn = conn.clone();
            let (key, value) = (key.clone(), value.clone());
            let every = self.lease / 3;
            let lapsed = lapsed.clone();
            tokio::spawn(async move {
                let script = redis::Script::new(RENEW);
                loop {
                    tokio::time::sleep(every).await;
                    let renewed: Result<i64, _> = script
                        .key(&key)
                        .arg(&value)
                        .arg(lease_ms)
                        .invoke_async(&mut conn)
                        .await;
                    if renewed.as_ref().is_ok_and(|&n| n == 0) {
                        lapsed.report();
                        return;
                    }
                }
            })
        };
        Ok(Box::new(RedisHeld {
            conn,
            keys: self.keys.clone(),
            token: token.to_owned(),
            key,
            value,
            renew,
            lapsed,
            lease: self.lease,
        }))
    }

    async fn write(&self, token: &str, record: &StoredToken, seen: u64) -> Result<(), StoreError> {
        save(
            &mut self.conn.clone(),
            &self.keys,
            token,
            record,
            Some(seen),
        )
        .await
    }

    async fn load_intent(&self, token: &str) -> Result<IntentRead, StoreError> {
        let answer: Vec<String> = redis::Script::new(LOAD_INTENT)
            .key(self.keys.intent(token))
            .invoke_async(&mut self.conn.clone())
            .await
            .map_err(db("read intent"))?;
        let now_ms = answer.first().and_then(|v| v.parse().ok()).unwrap_or(0);
        let fields: std::collections::HashMap<&str, &str> = answer[1.min(answer.len())..]
            .chunks(2)
            .filter_map(|kv| Some((kv[0].as_str(), kv.get(1)?.as_str())))
            .collect();
        let number = |f: &str| fields.get(f).and_then(|v| v.parse().ok());
        let intent = match (
            number("generation"),
            fields.get("refresh_token_sha256"),
            number("at_ms"),
        ) {
            (Some(generation), Some(sha), Some(at_ms)) => Some(Intent {
                owner: fields.get("owner").map_or("", |v| v).to_owned(),
                generation,
                refresh_token_sha256: (*sha).to_owned(),
                at_ms,
                refused: fields.get("refused") == Some(&"1"),
            }),
            // Absent, or not written by tokenproxy: nothing to report.
            _ => None,
        };
        Ok(IntentRead { intent, now_ms })
    }

    async fn swap_intent(
        &self,
        token: &str,
        expected: Option<&Intent>,
        new: Option<&Intent>,
    ) -> Result<bool, StoreError> {
        let script = redis::Script::new(SWAP_INTENT);
        let mut call = script.key(self.keys.intent(token));
        call.arg(intent_key(expected)).arg(intent_key(new));
        if let Some(n) = new {
            call.arg(&n.owner)
                .arg(n.generation)
                .arg(&n.refresh_token_sha256)
                .arg(if n.refused { "1" } else { "0" });
        }
        let done: i64 = call
            .invoke_async(&mut self.conn.clone())
            .await
            .map_err(db("write intent"))?;
        Ok(done == 1)
    }

    fn lease(&self) -> Option<Duration> {
        Some(self.lease)
    }

    fn changes(&self) -> Option<tokio::sync::broadcast::Receiver<String>> {
        Some(self.changes.subscribe())
    }
}

impl Drop for RedisStore {
    fn drop(&mut self) {
        self.listener.abort();
    }
}
