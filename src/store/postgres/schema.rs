//! The schema: created on first start, serialised between instances by a
//! transaction advisory lock, its version and columns checked.

use super::*;

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
);
ALTER TABLE tokenproxy_intents
    ADD COLUMN IF NOT EXISTS owner text NOT NULL DEFAULT '',
    ADD COLUMN IF NOT EXISTS refused boolean NOT NULL DEFAULT false;";

impl PgStore {
    pub(super) async fn prepare_schema(&self) -> Result<(), StoreError> {
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

/// The rows of `tokenproxy_schema` (one, normally).
pub(super) async fn schema_versions(
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

pub(super) fn unknown_version(found: &[i32]) -> StoreError {
    StoreError::Schema(format!(
        "tokenproxy_schema holds version {found:?}; this tokenproxy knows version {SCHEMA_VERSION}. Run the tokenproxy that created it, or migrate the table"
    ))
}
