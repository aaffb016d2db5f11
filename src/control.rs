//! Talking to a running instance: `tokenproxy token status|refresh NAME`, and
//! `tokenproxy health` (for a container's health check: the image has no shell or
//! curl to write one with).
//!
//! A plain HTTP/1.1 request to the admin listener named in the configuration, and
//! a one-line human summary of the answer (or the JSON itself). It changes nothing
//! by itself; a refresh goes through the instance's own single-flight path.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use serde_json::Value;

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error(
        "cannot reach the admin endpoint at {addr}: {detail}; is tokenproxy running with this configuration?"
    )]
    Unreachable { addr: SocketAddr, detail: String },
    #[error("no token named `{0}` is configured")]
    UnknownToken(String),
    #[error("the admin endpoint answered {0} with an unexpected body")]
    BadAnswer(StatusCode),
    #[error("the admin endpoint refused: {message}")]
    Refused { message: String },
    #[error("cannot read listen.admin_key: {0}")]
    Key(crate::secret::SecretError),
}

/// What a `token` command printed, and whether it reports success.
pub struct Report {
    pub text: String,
    pub ok: bool,
}

/// `status` or `refresh` token `name` at the admin listener `admin`, with the admin
/// key where one is configured (a refresh needs it).
pub async fn token(
    admin: SocketAddr,
    key: Option<&crate::secret::SecretRef>,
    name: &str,
    refresh: bool,
    json: bool,
) -> Result<Report, ControlError> {
    let addr = reachable(admin);
    let (method, path) = if refresh {
        (Method::POST, format!("/tokens/{name}/refresh"))
    } else {
        (Method::GET, "/status".to_owned())
    };
    let key = match (refresh, key) {
        (true, Some(k)) => Some(k.resolve().map_err(ControlError::Key)?),
        _ => None,
    };
    let (status, body) = request(addr, method, &path, key.as_ref()).await?;
    let value: Value =
        serde_json::from_slice(&body).map_err(|_| ControlError::BadAnswer(status))?;
    if matches!(status.as_u16(), 401 | 403 | 429) {
        return Err(ControlError::Refused {
            message: value["message"].as_str().unwrap_or("").to_owned(),
        });
    }
    let token = if refresh {
        if status == StatusCode::NOT_FOUND {
            return Err(ControlError::UnknownToken(name.into()));
        }
        value
    } else {
        value["tokens"]
            .get(name)
            .cloned()
            .ok_or_else(|| ControlError::UnknownToken(name.into()))?
    };
    let ok = status.is_success() && token["state"] == "valid";
    let text = if json {
        serde_json::to_string_pretty(&token).unwrap_or_default()
    } else {
        summary(name, &token)
    };
    Ok(Report { text, ok })
}

/// Longest wait for a health answer: a health check must not hang its runner.
const HEALTH_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// Readiness (`/readyz`: every routed token valid) or, with `live`, liveness
/// (`/healthz`: the process serves) of the instance at `admin`; `ok` when it
/// answered 200.
pub async fn health(admin: SocketAddr, live: bool) -> Result<Report, ControlError> {
    let addr = reachable(admin);
    let path = if live { "/healthz" } else { "/readyz" };
    let (status, body) =
        tokio::time::timeout(HEALTH_TIMEOUT, request(addr, Method::GET, path, None))
            .await
            .map_err(|_| ControlError::Unreachable {
                addr,
                detail: format!("no answer within {} s", HEALTH_TIMEOUT.as_secs()),
            })??;
    let value: Value =
        serde_json::from_slice(&body).map_err(|_| ControlError::BadAnswer(status))?;
    let mut text = value["status"].as_str().unwrap_or("-").to_owned();
    for t in value["tokens"].as_array().into_iter().flatten() {
        text += &format!(
            "\n  {}: {}",
            t["token"].as_str().unwrap_or("-"),
            t["state"].as_str().unwrap_or("-")
        );
    }
    Ok(Report {
        text,
        ok: status == StatusCode::OK,
    })
}

/// `exact: valid until 2026-11-25T10:00:00Z, generation 14, last refresh … (proactive)`.
fn summary(name: &str, t: &Value) -> String {
    let s = |k: &str| t[k].as_str().unwrap_or("-").to_owned();
    let mut line = format!("{name}: {}", s("state"));
    if let Some(at) = t["expires_at"].as_str() {
        line += &format!(", expires {at}");
    }
    line += &format!(", generation {}", t["generation"]);
    if let Some(at) = t["last_refresh"]["at"].as_str() {
        line += &format!(
            ", last refresh {at} ({})",
            t["last_refresh"]["trigger"].as_str().unwrap_or("-")
        );
    }
    if t["unsaved"] == true {
        line += ", NOT YET STORED";
    }
    if let Some(err) = t["last_error"].as_str() {
        line += &format!("\n  last error: {err}");
    }
    line
}

/// An admin listener bound to every address is reached over loopback.
fn reachable(addr: SocketAddr) -> SocketAddr {
    match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => {
            SocketAddr::new(Ipv4Addr::LOCALHOST.into(), addr.port())
        }
        IpAddr::V6(ip) if ip.is_unspecified() => {
            SocketAddr::new(Ipv6Addr::LOCALHOST.into(), addr.port())
        }
        _ => addr,
    }
}

async fn request(
    addr: SocketAddr,
    method: Method,
    path: &str,
    key: Option<&crate::secret::Secret>,
) -> Result<(StatusCode, Bytes), ControlError> {
    let unreachable = |e: &dyn std::fmt::Display| ControlError::Unreachable {
        addr,
        detail: e.to_string(),
    };
    let stream = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| unreachable(&e))?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| unreachable(&e))?;
    tokio::spawn(conn);
    let mut req = Request::builder()
        .method(method)
        .uri(path)
        .header(http::header::HOST, addr.to_string());
    if let Some(key) = key {
        let mut value =
            http::HeaderValue::try_from(format!("Bearer {}", key.expose())).map_err(|_| {
                ControlError::Refused {
                    message: "listen.admin_key holds characters a header cannot carry".into(),
                }
            })?;
        value.set_sensitive(true);
        req = req.header(http::header::AUTHORIZATION, value);
    }
    let req = req
        .body(Empty::<Bytes>::new())
        .map_err(|e| unreachable(&e))?;
    let resp = sender
        .send_request(req)
        .await
        .map_err(|e| unreachable(&e))?;
    let status = resp.status();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| unreachable(&e))?
        .to_bytes();
    Ok((status, body))
}
