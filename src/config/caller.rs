//! Who may use the proxy listener, and where tokens go besides requests:
//! `[[callers]]`, the listener's TLS, and each token's vending and sink files.

use std::path::PathBuf;

use http::HeaderName;

use crate::secret::SecretRef;

/// Where callers present their key: `Proxy-Authorization` (by default, as
/// `Bearer KEY` or a `Basic` password) or a header of the operator's choosing (the
/// bare key).
#[derive(Debug, Clone, PartialEq)]
pub struct KeyHeader {
    pub header: HeaderName,
    /// `Bearer <key>` (for `Proxy-Authorization`) rather than the bare key.
    pub bearer: bool,
}

/// Who may use the proxy listener.
#[derive(Debug, Clone, PartialEq)]
pub enum Callers {
    /// Anyone who can connect (a loopback or Unix-socket listener).
    Open,
    /// One key for everyone, every route (`[listen] client_key`).
    One(SecretRef),
    /// `[[callers]]`: each key admits its caller to its tokens' routes.
    Named(Vec<Caller>),
}

/// One `[[callers]]` entry.
#[derive(Debug, Clone, PartialEq)]
pub struct Caller {
    /// Labels `requests_total`, the request log and vending.
    pub name: String,
    pub key: SecretRef,
    /// Indexes into `Config::tokens`.
    pub tokens: Vec<usize>,
}

/// The proxy listener's certificate chain and key (PEM), read at each start and
/// reload.
#[derive(Debug, Clone, PartialEq)]
pub struct ListenTls {
    pub cert: SecretRef,
    pub key: SecretRef,
    /// How often the files are read again while running (a renewed pair is
    /// served from then on).
    pub check: std::time::Duration,
}

/// Where a token goes besides the requests it is injected into.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Delivery {
    /// `GET /tokenproxy/v1/tokens/NAME` answers callers that list the token.
    pub vend: bool,
    pub sinks: Vec<Sink>,
}

/// A file that holds the current access token while it is valid.
#[derive(Debug, Clone, PartialEq)]
pub struct Sink {
    pub path: PathBuf,
    pub format: SinkFormat,
    /// Permission bits of the file (default 0600).
    pub mode: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SinkFormat {
    /// The access token alone, no newline.
    Token,
    /// `Authorization: Bearer TOKEN` and a newline.
    Header,
    /// `{"token_type","access_token","expires_at","expires_in"}`, as vending answers.
    Json,
}

impl SinkFormat {
    pub const ALL: [SinkFormat; 3] = [SinkFormat::Token, SinkFormat::Header, SinkFormat::Json];

    pub fn as_str(self) -> &'static str {
        match self {
            SinkFormat::Token => "token",
            SinkFormat::Header => "header",
            SinkFormat::Json => "json",
        }
    }
}
