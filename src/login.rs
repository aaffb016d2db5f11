//! `tokenproxy login NAME`: the authorization code flow with PKCE (RFC 7636), once,
//! by a person, to start a refresh-token chain.
//!
//! It listens on the loopback `redirect_uri`, prints the authorization URL (and opens
//! a browser when asked), waits for the provider to redirect back, checks `state`,
//! exchanges the code with the token's client authentication, and stores the tokens
//! as a refresh would. With `--manual` (headless servers, or a redirect URI that is
//! not on this machine) it reads the final redirect URL, or the bare code, from
//! standard input instead. Nothing is stored unless the exchange succeeds.

use std::time::Duration;

use base64::Engine;
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use reqwest::Url;
use ring::rand::SecureRandom;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

use crate::config::{Login, TokenConfig, is_loopback};
use crate::store::StoredToken;
use crate::token::{SeedError, TokenSource};

#[derive(Debug, thiserror::Error)]
pub enum LoginError {
    #[error("token `{0}` has no authorize_url: add it (or a preset that has one) to log in")]
    NoAuthorizeUrl(String),
    #[error("redirect_uri {0} is not on this machine; use --manual and paste the final URL")]
    RemoteRedirect(String),
    #[error("cannot listen on {addr} for the redirect: {source}")]
    Listen {
        addr: String,
        source: std::io::Error,
    },
    #[error("no redirect arrived within {0:?}; run login again (or --manual)")]
    Timeout(Duration),
    #[error("the provider refused the authorization: {0}")]
    Denied(String),
    #[error("the redirect's state does not match this login; nothing was stored (run login again)")]
    StateMismatch,
    #[error("the redirect carries no code")]
    NoCode,
    #[error("reading standard input: {0}")]
    Stdin(std::io::Error),
    #[error(transparent)]
    Store(#[from] SeedError),
    #[error("the system's random number generator failed; nothing was sent or stored")]
    Random,
}

pub struct LoginOptions {
    pub open_browser: bool,
    pub manual: bool,
    pub timeout: Duration,
}

/// What came back from the authorization server.
struct Callback {
    code: Option<String>,
    state: Option<String>,
    error: Option<String>,
}

impl Callback {
    fn from_query(query: &str) -> Callback {
        let mut cb = Callback {
            code: None,
            state: None,
            error: None,
        };
        let mut description = None;
        for (k, v) in form_urlencoded::parse(query.as_bytes()) {
            match k.as_ref() {
                "code" => cb.code = Some(v.into_owned()),
                "state" => cb.state = Some(v.into_owned()),
                "error" => cb.error = Some(v.into_owned()),
                "error_description" => description = Some(v.into_owned()),
                _ => {}
            }
        }
        if let (Some(e), Some(d)) = (&mut cb.error, description) {
            *e = format!("{e} ({d})");
        }
        cb
    }
}

/// `bytes` random bytes, base64url. A failing RNG fails the login: a PKCE verifier
/// or a state of zeros would be guessable.
fn random_b64(bytes: usize) -> Result<String, LoginError> {
    random_b64_from(bytes, |buf| ring::rand::SystemRandom::new().fill(buf))
}

fn random_b64_from(
    bytes: usize,
    fill: impl FnOnce(&mut [u8]) -> Result<(), ring::error::Unspecified>,
) -> Result<String, LoginError> {
    let mut buf = vec![0u8; bytes];
    fill(&mut buf).map_err(|_| LoginError::Random)?;
    Ok(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(buf))
}

/// The URL a person opens: RFC 6749 §4.1.1 with PKCE S256.
fn authorization_url(
    login: &Login,
    cfg: &TokenConfig,
    client_id: &str,
    redirect: &str,
    state: &str,
    challenge: &str,
) -> Url {
    let mut url = login.authorize_url.clone();
    {
        let mut q = url.query_pairs_mut();
        q.append_pair("response_type", "code")
            .append_pair("client_id", client_id)
            .append_pair("redirect_uri", redirect)
            .append_pair("state", state)
            .append_pair("code_challenge", challenge)
            .append_pair("code_challenge_method", "S256");
        if let Some(scope) = &cfg.scope {
            q.append_pair("scope", scope);
        }
        for (k, v) in &login.params {
            q.append_pair(k, v);
        }
    }
    url
}

/// Runs the flow for `source` and returns what was stored.
pub async fn run(source: &TokenSource, opts: &LoginOptions) -> Result<StoredToken, LoginError> {
    let cfg = &source.config;
    let login = cfg
        .login
        .as_ref()
        .ok_or_else(|| LoginError::NoAuthorizeUrl(cfg.name.clone()))?;
    let client_id = cfg
        .client_id
        .as_ref()
        .and_then(|c| c.resolve().ok())
        .map(|c| c.expose().to_owned())
        .unwrap_or_default();
    let verifier = random_b64(32)?;
    let challenge = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(ring::digest::digest(
        &ring::digest::SHA256,
        verifier.as_bytes(),
    ));
    let state = random_b64(16)?;

    let mut redirect = login.redirect_uri.clone();
    let (mut calls, listener) = if opts.manual {
        (None, None)
    } else {
        let host = redirect.host_str().unwrap_or("");
        if redirect.scheme() != "http" || !is_loopback(host) {
            return Err(LoginError::RemoteRedirect(redirect.to_string()));
        }
        let addr = format!(
            "{}:{}",
            host.trim_start_matches('[').trim_end_matches(']'),
            redirect.port().unwrap_or(80)
        );
        let listener = tokio::net::TcpListener::bind(&addr)
            .await
            .map_err(|source| LoginError::Listen {
                addr: addr.clone(),
                source,
            })?;
        let bound = listener
            .local_addr()
            .map_err(|source| LoginError::Listen { addr, source })?;
        let _ = redirect.set_port(Some(bound.port()));
        let (tx, rx) = mpsc::channel(4);
        let task = tokio::spawn(serve_callback(listener, redirect.path().to_owned(), tx));
        (Some(rx), Some((task, bound)))
    };
    let redirect_text = redirect.to_string();
    let url = authorization_url(login, cfg, &client_id, &redirect_text, &state, &challenge);
    let mut stdout = tokio::io::stdout();
    let _ = stdout
        .write_all(
            format!("Open this URL in a browser and authorise the app:\n\n  {url}\n\n").as_bytes(),
        )
        .await;
    if opts.manual {
        let _ = stdout
            .write_all(b"Then paste the address the browser was sent to (or just the code) and press Enter:\n")
            .await;
    } else if let Some((_, addr)) = &listener {
        let _ = stdout
            .write_all(
                format!("Waiting for the redirect to {redirect_text} (on {addr})...\n").as_bytes(),
            )
            .await;
    }
    let _ = stdout.flush().await;
    if opts.open_browser && !opts.manual {
        open_browser(url.as_str());
    }

    let wait = async {
        match &mut calls {
            Some(rx) => rx.recv().await.ok_or(LoginError::NoCode),
            None => read_manual().await,
        }
    };
    let callback = tokio::time::timeout(opts.timeout, wait)
        .await
        .map_err(|_| LoginError::Timeout(opts.timeout))?;
    if let Some((task, _)) = listener {
        task.abort();
    }
    let callback = callback?;
    if let Some(error) = callback.error {
        return Err(LoginError::Denied(error));
    }
    // A pasted bare code carries no state; a redirect always does.
    if (callback.state.is_some() || !opts.manual)
        && callback.state.as_deref() != Some(state.as_str())
    {
        return Err(LoginError::StateMismatch);
    }
    let code = callback.code.ok_or(LoginError::NoCode)?;
    Ok(source
        .exchange_code(&code, &redirect_text, &verifier)
        .await?)
}

async fn read_manual() -> Result<Callback, LoginError> {
    let mut line = String::new();
    tokio::io::BufReader::new(tokio::io::stdin())
        .read_line(&mut line)
        .await
        .map_err(LoginError::Stdin)?;
    let line = line.trim();
    Ok(match line.parse::<Url>() {
        Ok(url) => Callback::from_query(url.query().unwrap_or("")),
        Err(_) if line.contains("code=") => Callback::from_query(line.trim_start_matches('?')),
        Err(_) => Callback {
            code: (!line.is_empty()).then(|| line.to_owned()),
            state: None,
            error: None,
        },
    })
}

/// Answers on the redirect path until one callback has come; anything else is 404
/// (browsers also ask for /favicon.ico).
async fn serve_callback(
    listener: tokio::net::TcpListener,
    path: String,
    tx: mpsc::Sender<Callback>,
) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let (tx, path) = (tx.clone(), path.clone());
        tokio::spawn(async move {
            let service = service_fn(move |req: Request<Incoming>| {
                let (tx, path) = (tx.clone(), path.clone());
                async move {
                    if req.uri().path() != path {
                        return Ok::<_, std::convert::Infallible>(page(
                            StatusCode::NOT_FOUND,
                            "Not the login callback.",
                        ));
                    }
                    let cb = Callback::from_query(req.uri().query().unwrap_or(""));
                    let text = if cb.error.is_some() {
                        "The authorization was refused. You can close this window; tokenproxy login says why."
                    } else {
                        "tokenproxy received the authorization. You can close this window and return to the terminal."
                    };
                    let _ = tx.send(cb).await;
                    Ok(page(StatusCode::OK, text))
                }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

fn page(status: StatusCode, text: &str) -> Response<Full<Bytes>> {
    let html = format!(
        "<!doctype html><meta charset=\"utf-8\"><title>tokenproxy login</title><p>{text}</p>"
    );
    let mut r = Response::new(Full::new(Bytes::from(html)));
    *r.status_mut() = status;
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/html; charset=utf-8"),
    );
    r
}

/// Best effort: `xdg-open` (Linux) or `open` (macOS); the URL is printed anyway.
fn open_browser(url: &str) {
    for opener in ["xdg-open", "open"] {
        let started = std::process::Command::new(opener)
            .arg(url)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn();
        if started.is_ok() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn callbacks_are_read_from_queries() {
        let cb = Callback::from_query("code=abc&state=xyz");
        assert_eq!(
            (cb.code.as_deref(), cb.state.as_deref(), cb.error),
            (Some("abc"), Some("xyz"), None)
        );
        let cb = Callback::from_query("error=access_denied&error_description=User+said+no&state=s");
        assert_eq!(cb.error.as_deref(), Some("access_denied (User said no)"));
    }

    #[test]
    fn pkce_values_are_long_and_url_safe() {
        let v = random_b64(32).unwrap();
        assert_eq!(v.len(), 43);
        assert!(
            v.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        );
        assert_ne!(v, random_b64(32).unwrap());
        let failed = random_b64_from(32, |_| Err(ring::error::Unspecified));
        assert!(matches!(failed, Err(LoginError::Random)));
    }
}
