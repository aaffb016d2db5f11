//! One request to a token endpoint: the form, the client authentication, a bounded
//! read of the answer. It does not decide when to refresh or what to do with the
//! result; `TokenSource` does.

use std::borrow::Cow;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use base64::Engine;
use http::header::{ACCEPT, AUTHORIZATION, RETRY_AFTER};
use reqwest::Url;

use super::jwt::Signer;
use super::response::{self, GrantError, TokenResponse};
use crate::config::{ClientAuth, Grant, TokenConfig};
use crate::secret::{Secret, SecretRef};

/// Token responses are small; a larger body is cut off at this size and fails to parse.
const MAX_RESPONSE: usize = 1024 * 1024;
const CLIENT_ASSERTION_TYPE: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

/// What token requests are sent with: a shared client, and the trust roots for
/// building a mutual-TLS client when a token has a client certificate.
#[derive(Clone)]
pub struct TokenHttp {
    pub client: reqwest::Client,
    pub roots: Arc<rustls::RootCertStore>,
    pub connect_timeout: Duration,
}

impl TokenHttp {
    pub fn new(
        roots: Arc<rustls::RootCertStore>,
        connect_timeout: Duration,
    ) -> Result<TokenHttp, crate::tls::TlsError> {
        let tls = crate::tls::client_config(Arc::clone(&roots), None)?;
        let client = build(tls, connect_timeout)
            .map_err(|e| crate::tls::TlsError::ClientCert(e.to_string()))?;
        Ok(TokenHttp {
            client,
            roots,
            connect_timeout,
        })
    }

    /// The shared client, or one presenting the token's client certificate, read
    /// now from its secret references so that a rotated certificate takes effect.
    fn client_for(&self, cfg: &TokenConfig) -> Result<Cow<'_, reqwest::Client>, GrantError> {
        let Some((cert, key)) = &cfg.client_cert else {
            return Ok(Cow::Borrowed(&self.client));
        };
        let (cert, key) = (resolve(cert)?, resolve(key)?);
        let tls =
            crate::tls::client_config(Arc::clone(&self.roots), Some((cert.expose(), key.expose())))
                .map_err(|e| GrantError::Credential(e.to_string()))?;
        build(tls, self.connect_timeout)
            .map(Cow::Owned)
            .map_err(|e| GrantError::Credential(format!("client certificate: {e}")))
    }
}

/// The token client ignores `HTTP(S)_PROXY`: those are set for the ETL tools and
/// often point at tokenproxy itself.
fn build(
    tls: rustls::ClientConfig,
    connect_timeout: Duration,
) -> Result<reqwest::Client, reqwest::Error> {
    reqwest::Client::builder()
        .use_preconfigured_tls(tls)
        .no_proxy()
        .connect_timeout(connect_timeout)
        .build()
}

fn resolve(r: &SecretRef) -> Result<Secret, GrantError> {
    r.resolve()
        .map_err(|e| GrantError::Credential(format!("cannot read a configured secret: {e}")))
}

/// What is exchanged for tokens.
#[derive(Clone, Copy)]
pub enum Exchange<'a> {
    /// The configured grant; with the refresh token for `refresh_token`.
    Grant(Option<&'a Secret>),
    /// An authorization code (RFC 6749 §4.1.3) with its PKCE verifier (RFC 7636).
    Code {
        code: &'a str,
        redirect_uri: &'a str,
        verifier: &'a str,
    },
}

/// Asks the token endpoint at `url` for a new access token, with the configured
/// grant or an authorization code; `secret_in_basic` says how a client secret
/// travels (from the configuration, or from discovery). The answer is read until
/// `until` (see [`super::refresh::listen`]), whatever `cfg.timeout` says: how
/// long callers wait is theirs to bound.
pub async fn request(
    http: &TokenHttp,
    cfg: &TokenConfig,
    url: &Url,
    secret_in_basic: bool,
    exchange: Exchange<'_>,
    until: tokio::time::Instant,
) -> Result<TokenResponse, GrantError> {
    let client_id = cfg.client_id.as_ref().map(resolve).transpose()?;
    let client_id = client_id.as_ref().map(Secret::expose);
    let mut form = Form::default();
    let scope = form.grant(cfg, exchange, client_id, url)?;
    form.client_auth(cfg, client_id, url, secret_in_basic)?;
    form.fields.extend(scope.map(|s| ("scope", s)));
    form.fields
        .extend(cfg.params.iter().map(|(k, v)| (k.as_str(), v.as_str())));

    let client = http.client_for(cfg)?;
    let mut req = client.post(url.clone()).header(ACCEPT, "application/json");
    if let Some(b) = &form.basic {
        req = req.header(AUTHORIZATION, b.clone());
    }
    let mut header_values = Vec::new();
    for (name, value) in &cfg.headers {
        let value = resolve(value)?;
        let mut hv = http::HeaderValue::try_from(value.expose())
            .map_err(|_| GrantError::Unsent(format!("header {name} has an invalid value")))?;
        hv.set_sensitive(true);
        req = req.header(name, hv);
        header_values.push(value);
    }
    let mut secrets = form.secrets(exchange);
    secrets.extend(header_values.iter().map(Secret::expose));

    let req = req.form(&form.to_send());
    super::refresh::listen(until, answer(req))
        .await
        .unwrap_or_else(|| Err(GrantError::Transport("timed out: no answer".into())))
        .map_err(|e| e.masked(&secrets))
}

/// What one token request carries: the form's fields, the secrets resolved for it
/// (sent after the fields), and the client's credentials for a Basic header.
#[derive(Default)]
struct Form<'a> {
    fields: Vec<(&'a str, &'a str)>,
    resolved: Vec<(&'static str, Secret)>,
    basic: Option<http::HeaderValue>,
}

impl<'a> Form<'a> {
    /// The fields of the grant or the code exchange; the scope to send with them.
    fn grant(
        &mut self,
        cfg: &'a TokenConfig,
        exchange: Exchange<'a>,
        client_id: Option<&str>,
        url: &Url,
    ) -> Result<Option<&'a str>, GrantError> {
        let refresh_token = match exchange {
            Exchange::Grant(rt) => rt,
            Exchange::Code {
                code,
                redirect_uri,
                verifier,
            } => {
                self.fields.extend([
                    ("grant_type", "authorization_code"),
                    ("code", code),
                    ("redirect_uri", redirect_uri),
                    ("code_verifier", verifier),
                ]);
                return Ok(None);
            }
        };
        self.fields
            .push(("grant_type", cfg.grant.kind().grant_type()));
        let scope = cfg.scope.as_deref();
        match &cfg.grant {
            Grant::RefreshToken { .. } => {
                let rt = refresh_token.ok_or_else(|| GrantError::Terminal {
                    code: "no_refresh_token".into(),
                    description: Some("no refresh token is stored".into()),
                })?;
                self.fields.push(("refresh_token", rt.expose()));
                Ok(scope.filter(|_| cfg.scope_on_refresh))
            }
            Grant::ClientCredentials => Ok(scope),
            Grant::Password { username, password } => {
                self.resolved.push(("username", resolve(username)?));
                self.resolved.push(("password", resolve(password)?));
                Ok(scope)
            }
            Grant::JwtBearer(spec) => {
                let jwt = sign(spec, client_id, url, scope, false)?;
                self.resolved.push(("assertion", jwt));
                Ok(scope.filter(|_| !spec.scope_in_assertion))
            }
        }
    }

    /// How the client authenticates: in the form, a Basic header or an assertion.
    fn client_auth(
        &mut self,
        cfg: &'a TokenConfig,
        client_id: Option<&'a str>,
        url: &Url,
        secret_in_basic: bool,
    ) -> Result<(), GrantError> {
        match &cfg.client_auth {
            // A bearer assertion identifies the client by itself.
            ClientAuth::None if matches!(cfg.grant, Grant::JwtBearer(_)) => {}
            ClientAuth::None | ClientAuth::TlsClientAuth => {
                self.fields.extend(client_id.map(|id| ("client_id", id)));
            }
            ClientAuth::Post(secret) | ClientAuth::Basic(secret) => {
                let secret = resolve(secret)?;
                if secret_in_basic {
                    self.basic = Some(basic_auth(client_id.unwrap_or(""), secret.expose()));
                } else {
                    self.fields.extend(client_id.map(|id| ("client_id", id)));
                    self.resolved.push(("client_secret", secret));
                }
            }
            ClientAuth::PrivateKeyJwt(spec) => {
                let jwt = sign(spec, client_id, url, None, true)?;
                self.fields.extend(client_id.map(|id| ("client_id", id)));
                self.fields
                    .push(("client_assertion_type", CLIENT_ASSERTION_TYPE));
                self.resolved.push(("client_assertion", jwt));
            }
        }
        Ok(())
    }

    /// Everything secret the request carries but its configured headers, to mask
    /// in whatever the server says back.
    fn secrets<'s>(&'s self, exchange: Exchange<'s>) -> Vec<&'s str> {
        let mut secrets: Vec<&str> = self.resolved.iter().map(|(_, v)| v.expose()).collect();
        match exchange {
            Exchange::Grant(rt) => secrets.extend(rt.map(Secret::expose)),
            Exchange::Code { code, verifier, .. } => secrets.extend([code, verifier]),
        }
        secrets.extend(
            self.basic
                .as_ref()
                .and_then(|b| b.to_str().ok())
                .and_then(|b| b.strip_prefix("Basic ")),
        );
        secrets
    }

    /// The fields as sent: the configuration's first, the resolved secrets last.
    fn to_send(&self) -> Vec<(&str, &str)> {
        let resolved = self.resolved.iter().map(|(k, v)| (*k, v.expose()));
        self.fields.iter().copied().chain(resolved).collect()
    }
}

/// A JWT assertion signed now with the key of `spec` (RFC 7523).
fn sign(
    spec: &crate::config::Assertion,
    client_id: Option<&str>,
    url: &Url,
    scope: Option<&str>,
    for_client_auth: bool,
) -> Result<Secret, GrantError> {
    let signer = Signer::load(&spec.key).map_err(|e| GrantError::Credential(e.to_string()))?;
    signer
        .assertion(spec, client_id, url.as_str(), scope, for_client_auth)
        .map_err(|e| GrantError::Unsent(e.to_string()))
}

/// The answer to `req`, its body read up to [`MAX_RESPONSE`].
async fn answer(req: reqwest::RequestBuilder) -> Result<TokenResponse, GrantError> {
    let mut resp = req.send().await.map_err(failed)?;
    let status = resp.status();
    let retry_after = resp
        .headers()
        .get(RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(parse_retry_after);
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(failed)? {
        let room = MAX_RESPONSE - body.len();
        body.extend_from_slice(&chunk[..chunk.len().min(room)]);
        if body.len() >= MAX_RESPONSE {
            return Err(GrantError::Malformed {
                status: status.as_u16(),
                detail: format!("a body over {MAX_RESPONSE} bytes"),
            });
        }
    }
    response::parse(status, &body, retry_after, SystemTime::now())
}

/// A failed exchange: one that never connected left nothing at the provider.
fn failed(e: reqwest::Error) -> GrantError {
    if e.is_connect() {
        GrantError::Unsent(format!(
            "token endpoint unreachable: {}",
            transport_detail(&e)
        ))
    } else {
        GrantError::Transport(transport_detail(&e))
    }
}

/// RFC 6749 §2.3.1: id and secret are each form-urlencoded before base64.
pub fn basic_auth(id: &str, secret: &str) -> http::HeaderValue {
    let enc = |s: &str| form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
    let raw = format!("{}:{}", enc(id), enc(secret));
    let b64 = base64::engine::general_purpose::STANDARD.encode(raw);
    let mut value = http::HeaderValue::try_from(format!("Basic {b64}"))
        .unwrap_or_else(|_| http::HeaderValue::from_static("Basic"));
    value.set_sensitive(true);
    value
}

/// Seconds or an HTTP date (RFC 9110 §10.2.3).
fn parse_retry_after(text: &str) -> Option<Duration> {
    let text = text.trim();
    if let Ok(secs) = text.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = httpdate::parse_http_date(text).ok()?;
    at.duration_since(SystemTime::now()).ok()
}

/// The error chain of a failed request, without the URL's query (reqwest puts the
/// URL in its messages; token URLs carry no secrets, but keep the habit).
fn transport_detail(e: &reqwest::Error) -> String {
    let kind = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "connection failed"
    } else {
        "request failed"
    };
    match std::error::Error::source(e) {
        Some(cause) => format!("{kind}: {}", crate::error::chain(cause)),
        None => kind.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn basic_auth_form_encodes_each_part() {
        let v = basic_auth("id:with+plus", "sé cret&%");
        let b64 = v.to_str().unwrap().strip_prefix("Basic ").unwrap();
        let raw = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .unwrap();
        assert_eq!(
            String::from_utf8(raw).unwrap(),
            "id%3Awith%2Bplus:s%C3%A9+cret%26%25"
        );
        assert!(v.is_sensitive());
    }

    #[test]
    fn retry_after_seconds_and_dates() {
        assert_eq!(parse_retry_after("7"), Some(Duration::from_secs(7)));
        assert_eq!(parse_retry_after("Sun, 06 Nov 1994 08:49:37 GMT"), None); // in the past
        let soon = httpdate::fmt_http_date(SystemTime::now() + Duration::from_secs(120));
        let got = parse_retry_after(&soon).unwrap();
        assert!(
            got > Duration::from_secs(100) && got <= Duration::from_secs(120),
            "{got:?}"
        );
        assert_eq!(parse_retry_after("soon"), None);
    }
}
