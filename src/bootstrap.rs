//! One-off commands on the configured store, without a running proxy:
//! `tokenproxy seed` and `tokenproxy login`.

use std::sync::Arc;

use crate::config::Config;
use crate::instance::{StartError, open_store};
use crate::token::{self, TokenHttp, TokenSource};
use crate::{clock, metrics, store, tls};

/// Why `tokenproxy seed` or `tokenproxy login` failed.
#[derive(Debug, thiserror::Error)]
pub enum BootstrapError {
    #[error("no token named `{0}` is configured")]
    UnknownToken(String),
    #[error(transparent)]
    Start(#[from] StartError),
    #[error(transparent)]
    Seed(#[from] token::SeedError),
    #[error(transparent)]
    Login(#[from] crate::login::LoginError),
}

/// A token source of its own, on the configured store, for a one-off command.
async fn standalone_source(
    mut config: Config,
    name: &str,
) -> Result<(Arc<TokenSource>, &'static str), BootstrapError> {
    let roots = tls::roots(config.tls.ca_file.as_deref()).map_err(StartError::from)?;
    let store = open_store(&config, &roots).await?;
    let kind = store.kind();
    let http = TokenHttp::new(roots, config.proxy.connect_timeout).map_err(StartError::from)?;
    let index = config
        .tokens
        .iter()
        .position(|t| t.name == name)
        .ok_or_else(|| BootstrapError::UnknownToken(name.into()))?;
    let token = config.tokens.swap_remove(index);
    Ok((
        TokenSource::new(token, store, http, Arc::new(metrics::Metrics::new())),
        kind,
    ))
}

/// What was stored, in words (never a token).
fn stored_summary(name: &str, kind: &str, record: &store::StoredToken) -> String {
    let expires = clock::rfc3339(clock::ms_to_time(record.expires_at_ms));
    let mut text = format!(
        "stored token `{name}` (generation {}) in the {kind} store",
        record.generation
    );
    if record.access_token.is_some() {
        text += &format!("; access token valid until {expires}");
    }
    text += if record.refresh_token.is_some() {
        "; refresh token stored"
    } else {
        "; no refresh token"
    };
    if let Some(scope) = record.extra.get("scope").and_then(|s| s.as_str()) {
        text += &format!("; scopes: {scope}");
    }
    text
}

/// `tokenproxy seed NAME`: stores `input` as token `name`'s refresh token in the
/// configured store and says what was stored.
pub async fn seed(
    config: Config,
    name: &str,
    input: &str,
    verify: bool,
) -> Result<String, BootstrapError> {
    let (source, kind) = standalone_source(config, name).await?;
    let record = source.seed(input, verify).await?;
    Ok(format!(
        "{}{}
a running instance picks it up within seconds",
        stored_summary(name, kind, &record),
        if verify {
            " (verified with one refresh)"
        } else {
            " (not verified)"
        },
    ))
}

/// `tokenproxy login NAME`: the authorization code flow, then the same storing.
pub async fn login(
    config: Config,
    name: &str,
    opts: crate::login::LoginOptions,
) -> Result<String, BootstrapError> {
    let file = config.file.clone();
    let (source, kind) = standalone_source(config, name).await?;
    let record = crate::login::run(&source, &opts).await?;
    Ok(format!(
        "{}
start the proxy with: tokenproxy run -c {} (a running instance picks the token up within seconds)",
        stored_summary(name, kind, &record),
        file.display()
    ))
}
