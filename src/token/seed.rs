//! Storing tokens a person obtained: `tokenproxy seed NAME` (a refresh token from
//! elsewhere) and the code exchange of `tokenproxy login NAME`.
//!
//! The input is a refresh token, or a whole token response (JSON) from the provider.
//! With verification (the default), one refresh proves the token works and its
//! result is what gets stored, so the seeded token is spent exactly once and its
//! successor is durable. Without it, the token is stored as given. Either way the
//! record gets a generation above whatever the store held, and a running instance
//! waiting for a person picks it up (see `TokenSource::reload`).

use std::time::SystemTime;

use super::response::{self, GrantError};
use super::{Exchange, TokenSource};
use crate::clock::time_to_ms;
use crate::config::GrantKind;
use crate::secret::Secret;
use crate::store::{RECORD_VERSION, StoreError, StoredToken};

#[derive(Debug, thiserror::Error)]
pub enum SeedError {
    #[error(
        "token `{0}` does not use grant = \"refresh_token\", so it has no refresh token to seed"
    )]
    NotRefreshGrant(String),
    #[error(
        "the input is {0}; pipe a refresh token, or the provider's JSON token response, on standard input"
    )]
    Input(String),
    #[error("the token endpoint refused the seeded refresh token: {0}")]
    Verify(#[from] GrantError),
    #[error("token store: {0}")]
    Store(#[from] StoreError),
}

impl TokenSource {
    /// Stores `input` as this token's refresh token (verified by one refresh unless
    /// `verify` is false) and returns the stored record.
    pub async fn seed(&self, input: &str, verify: bool) -> Result<StoredToken, SeedError> {
        self.refresh_grant_only()?;
        let given = parse_input(input)?;
        if verify {
            return self
                .obtain_and_store(
                    Exchange::Grant(Some(&given.refresh_token)),
                    Some(given.refresh_token.clone()),
                )
                .await;
        }
        let now = SystemTime::now();
        let expires = match (&given.access_token, given.lifetime) {
            (Some(_), Some(l)) => now + l,
            (Some(_), None) => now + self.config.default_lifetime,
            (None, _) => now,
        };
        let mut held = self.store.lock(self.name(), self.lock_wait()).await?;
        let saved = async {
            let record = StoredToken {
                version: RECORD_VERSION,
                generation: next_generation(held.as_mut()).await?,
                access_token: given.access_token,
                refresh_token: Some(given.refresh_token),
                issued_at_ms: time_to_ms(now),
                expires_at_ms: time_to_ms(expires),
                extra: given.extra,
            };
            held.save(&record, None).await?;
            Ok(record)
        }
        .await;
        // Let go before the process exits, or the next instance waits a lease.
        held.release().await;
        saved
    }

    /// `tokenproxy login`: exchanges an authorization code (with its PKCE verifier)
    /// and stores the tokens exactly as a refresh would.
    pub async fn exchange_code(
        &self,
        code: &str,
        redirect_uri: &str,
        verifier: &str,
    ) -> Result<StoredToken, SeedError> {
        self.refresh_grant_only()?;
        let record = self
            .obtain_and_store(
                Exchange::Code {
                    code,
                    redirect_uri,
                    verifier,
                },
                None,
            )
            .await?;
        if record.refresh_token.is_none() {
            return Err(SeedError::Input(
                "a token response without refresh_token (the provider may need offline access: see authorize_params)".into(),
            ));
        }
        Ok(record)
    }

    fn refresh_grant_only(&self) -> Result<(), SeedError> {
        if self.config.grant.kind() != GrantKind::RefreshToken {
            return Err(SeedError::NotRefreshGrant(self.name().into()));
        }
        Ok(())
    }

    /// One token request, and its result stored under the store's lock; nothing is
    /// stored when the request fails.
    async fn obtain_and_store(
        &self,
        exchange: Exchange<'_>,
        keep: Option<Secret>,
    ) -> Result<StoredToken, SeedError> {
        let mut held = self.store.lock(self.name(), self.lock_wait()).await?;
        let saved = async {
            let generation = next_generation(held.as_mut()).await?;
            let now = SystemTime::now();
            let until = tokio::time::Instant::now() + self.config.timeout;
            let r = self.request(exchange, until).await?;
            let record = StoredToken {
                version: RECORD_VERSION,
                generation,
                access_token: Some(r.access_token),
                refresh_token: r.refresh_token.or(keep),
                issued_at_ms: time_to_ms(now),
                expires_at_ms: time_to_ms(now + r.lifetime.unwrap_or(self.config.default_lifetime)),
                extra: r.extra,
            };
            // A person's act: it replaces whatever is stored.
            held.save(&record, None).await?;
            Ok(record)
        }
        .await;
        // Let go before the process exits, or the next instance waits a lease.
        held.release().await;
        saved
    }
}

/// One more than the stored generation. A corrupt record is exactly what seeding
/// repairs: it does not block it.
async fn next_generation(held: &mut dyn crate::store::Held) -> Result<u64, SeedError> {
    match held.load().await {
        Ok(stored) => Ok(stored.map_or(0, |s| s.generation) + 1),
        Err(e) if e.is_terminal() => Ok(1),
        Err(e) => Err(e.into()),
    }
}

#[derive(Debug)]
struct Given {
    refresh_token: Secret,
    access_token: Option<Secret>,
    lifetime: Option<std::time::Duration>,
    extra: serde_json::Map<String, serde_json::Value>,
}

fn parse_input(input: &str) -> Result<Given, SeedError> {
    let text = input.trim();
    if text.is_empty() {
        return Err(SeedError::Input("empty".into()));
    }
    if !text.starts_with('{') {
        if text.chars().any(char::is_whitespace) {
            return Err(SeedError::Input(
                "not a single token (it contains white space)".into(),
            ));
        }
        return Ok(Given {
            refresh_token: Secret::new(text),
            access_token: None,
            lifetime: None,
            extra: Default::default(),
        });
    }
    // A provider's token response, possibly without an access token.
    let mut value: serde_json::Value = serde_json::from_str(text)
        .map_err(|_| SeedError::Input("JSON that cannot be read".into()))?;
    let has_access = value.get("access_token").is_some();
    if !has_access && let Some(obj) = value.as_object_mut() {
        obj.insert("access_token".into(), "-".into());
    }
    let parsed = response::parse(
        http::StatusCode::OK,
        value.to_string().as_bytes(),
        None,
        SystemTime::now(),
    )
    .map_err(|e| SeedError::Input(format!("not a token response ({e})")))?;
    let refresh_token = parsed
        .refresh_token
        .ok_or_else(|| SeedError::Input("a token response without refresh_token".into()))?;
    Ok(Given {
        refresh_token,
        access_token: has_access.then_some(parsed.access_token),
        lifetime: parsed.lifetime,
        extra: parsed.extra,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_a_bare_token_or_a_token_response() {
        let g = parse_input("  rt-with!bang\n").unwrap();
        assert_eq!(g.refresh_token.expose(), "rt-with!bang");
        assert!(g.access_token.is_none());
        let g = parse_input(r#"{"access_token":"a","refresh_token":"r","expires_in":"600","instance_url":"https://x"}"#).unwrap();
        assert_eq!(g.refresh_token.expose(), "r");
        assert_eq!(g.access_token.unwrap().expose(), "a");
        assert_eq!(g.lifetime.unwrap().as_secs(), 600);
        assert!(g.extra.contains_key("instance_url"));
        let g = parse_input(r#"{"refresh_token":"r"}"#).unwrap();
        assert!(g.access_token.is_none());
    }

    #[test]
    fn refuses_what_is_not_a_token_without_echoing_it() {
        for bad in [
            "",
            "two words",
            "{not json",
            r#"{"access_token":"secret-a"}"#,
        ] {
            let e = parse_input(bad).unwrap_err().to_string();
            assert!(!e.contains("secret-a") && !e.contains("two words"), "{e}");
        }
    }
}
