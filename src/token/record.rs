//! Token records: the record a token response makes, and the write of one that
//! could not be stored when it was made.

use std::time::{Duration, SystemTime};

use super::response::TokenResponse;
use crate::clock::time_to_ms;
use crate::secret::Secret;
use crate::store::{RECORD_VERSION, StoreError, StoredToken, TokenStore};

/// The record a token response makes of generation `generation`.
pub(super) fn new_record(
    generation: u64,
    resp: TokenResponse,
    refresh_token: Option<Secret>,
    default_lifetime: Duration,
) -> StoredToken {
    let now = SystemTime::now();
    let lifetime = resp.lifetime.unwrap_or(default_lifetime);
    StoredToken {
        version: RECORD_VERSION,
        generation: generation + 1,
        access_token: Some(resp.access_token),
        // RFC 6749 §6: no new refresh token means the old one stays valid.
        refresh_token: resp.refresh_token.or(refresh_token),
        issued_at_ms: time_to_ms(now),
        expires_at_ms: time_to_ms(now + lifetime),
        extra: resp.extra,
    }
}

/// Writes a record that could not be stored when it was made, over generation
/// `seen`, and reads it back. `Ok(None)`: stored (this process's record is what
/// the store holds now); `Ok(Some(newer))`: another instance stored a newer one,
/// to be used instead.
pub async fn persist(
    store: &dyn TokenStore,
    name: &str,
    record: &StoredToken,
    seen: u64,
) -> Result<Option<StoredToken>, StoreError> {
    let mut over = seen;
    for _ in 0..3 {
        match store.write(name, record, over).await {
            Ok(()) => {}
            Err(StoreError::Fenced { .. }) => {
                match store.load(name).await? {
                    // Another instance refreshed: its record is the chain's newest.
                    Some(s) if s.generation >= record.generation => {
                        return Ok(if same(&s, record) { None } else { Some(s) });
                    }
                    // The store lost the record, or went back to an older one
                    // (a restart without persistence, a restored backup): this
                    // record is the newest truth; write it over what is there.
                    other => {
                        over = other.map_or(0, |s| s.generation);
                        continue;
                    }
                }
            }
            Err(e) => return Err(e),
        }
        // Success only when the store reads back this process's record.
        match store.load(name).await? {
            Some(s) if same(&s, record) => return Ok(None),
            Some(s) if s.generation >= record.generation => return Ok(Some(s)),
            other => over = other.map_or(0, |s| s.generation),
        }
    }
    Err(StoreError::Database {
        op: "write",
        detail: "the store did not keep the record written to it".into(),
    })
}

fn same(a: &StoredToken, b: &StoredToken) -> bool {
    a.generation == b.generation
        && a.refresh_token == b.refresh_token
        && a.access_token == b.access_token
}
