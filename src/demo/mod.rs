//! A local OAuth provider and API, for `tokenproxy demo` and for the tests.
//!
//! [`Provider`] runs two loopback servers that share one state:
//! - a token endpoint that behaves like strict real providers: it rotates refresh
//!   tokens, treats a reused refresh token as theft (RFC 9700 §4.14.2: the whole
//!   chain is revoked), checks client credentials the way the options say (form,
//!   Basic, signed client assertion), verifies JWT bearer assertions, can send
//!   `expires_in` as a string, a number or not at all, adds provider fields such as
//!   `instance_url`, refuses refreshes inside a minimum interval (Exact Online),
//!   shapes errors like RFC 6749, HubSpot or Zoho, serves RFC 8414 metadata, and
//!   can be switched into failure modes (5xx, HTML, hanging, 429, `invalid_grant`,
//!   no `access_token`);
//! - an API that accepts only the current, unexpired access token (as a bearer
//!   header, another header format, or a query parameter) and echoes what it
//!   received, with `…/download?bytes=N` for large bodies, `…/slow?ms=N` for
//!   requests in flight, `…/hold` for requests held until the test releases them
//!   ([`Provider::release_held`]), and `…/redirect` for `Location` handling.
//!
//! Counters and the last token request let tests assert what happened on the
//! wire. Nothing here is used by `tokenproxy run`.

mod api;
mod provider;
mod quota;
mod serve;

use std::net::SocketAddr;

pub use provider::{
    ApiAuth, ErrorStyle, ExpectAuth, ExpiresIn, Mode, Provider, ProviderOptions, Received,
    VerifyKey,
};
pub use quota::RateLimitSim;

impl Provider {
    /// API calls answered `429` for being over the simulated rate limits.
    pub fn rate_limited(&self) -> u64 {
        self.lock().quotas.refused
    }

    pub fn api_requests(&self) -> u64 {
        self.api_requests.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Answers every `…/hold` request, waiting or still to come.
    pub fn release_held(&self) {
        self.held.send_replace(true);
    }

    pub fn api_connections(&self) -> u64 {
        self.api_connections
            .load(std::sync::atomic::Ordering::SeqCst)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error("demo servers: {0}")]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error(transparent)]
    Start(#[from] crate::StartError),
}

/// `tokenproxy demo`: provider, API and proxy in one process, until Ctrl-C.
pub async fn run(
    listen: SocketAddr,
    request_log: crate::logging::RequestLog,
) -> Result<(), DemoError> {
    let provider = Provider::start(ProviderOptions::default()).await?;
    let dir = std::env::temp_dir().join(format!("tokenproxy-demo-{}", std::process::id()));
    let text = format!(
        r#"
[listen]
proxy = "{listen}"
admin = "127.0.0.1:0"

[store]
path = "{dir}"

[tokens.demo]
grant = "refresh_token"
token_url = "{token_url}"
client_id = "demo-client"
client_secret = "demo-secret"
refresh_token = "demo-refresh-0"
refresh_before = "10s"

[[routes]]
prefix = "/demo/"
upstream = "{api_url}"
token = "demo"
"#,
        dir = dir.display(),
        token_url = provider.token_url,
        api_url = provider.api_url,
    );
    let mut config = crate::config::Config::parse(&text, "demo.toml".as_ref())?;
    // The demo's credentials are deliberately literal and fake.
    config.warnings.clear();
    let running = crate::start(config, request_log).await?;
    let (proxy, admin) = (running.proxy.clone(), running.admin_addr);
    println!(
        "tokenproxy demo is running.

  token endpoint  {token_url}  (30 s access tokens, rotating refresh tokens, reuse = revocation)
  API             {api_url}  (accepts only the current access token)
  proxy           http://{proxy}/demo/  →  API, with the token added
  admin           http://{admin}/status
  state           {dir}

Try:
  curl -s 'http://{proxy}/demo/hello?page=1'         # echoed by the API: \"authorized\": it saw a valid token
  curl -s 'http://{proxy}/demo/download?bytes=10000000' | wc -c
  curl -s http://{admin}/status                       # watch the generation grow every ~20 s
  curl -s -X POST http://{admin}/tokens/demo/refresh
  curl -s http://{proxy}/nowhere                      # 404: tokenproxy is not an open proxy

Ctrl-C stops it.",
        token_url = provider.token_url,
        api_url = provider.api_url,
        dir = dir.display(),
    );
    crate::server::shutdown_signal().await;
    running.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
