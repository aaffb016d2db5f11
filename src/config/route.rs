//! A route as configured: what it matches, where it sends, and how the token
//! travels.

use std::fmt;
use std::time::Duration;

use http::uri::{Authority, Scheme};
use http::{HeaderName, HeaderValue, StatusCode};

use super::{is_loopback, normalise_host};

/// How a token travels to the upstream: a header from a template such as
/// `Authorization: Bearer {token}`, or a query parameter (`?access_token={token}`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Inject {
    Header {
        name: HeaderName,
        before: String,
        after: String,
        /// The template as written, for `check` output.
        text: String,
    },
    Query {
        /// Already form-urlencoded.
        param: String,
    },
}

/// A token made ready for one injection template. Its `Debug` shows the shape,
/// never the token.
#[derive(Clone)]
pub enum Credential {
    /// Marked sensitive, so HTTP/2 never indexes it and debug output hides it.
    Header(HeaderName, HeaderValue),
    /// `param=value`, form-urlencoded.
    Query(String),
}

impl fmt::Debug for Credential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Credential::Header(name, _) => write!(f, "Header({name}: [redacted])"),
            Credential::Query(_) => f.write_str("Query([redacted])"),
        }
    }
}

impl Inject {
    pub fn parse(template: &str) -> Result<Inject, String> {
        let template = template.trim();
        if let Some(query) = template.strip_prefix('?') {
            let (param, value) = query
                .split_once('=')
                .ok_or_else(|| format!("`{template}` has no `=`: write ?access_token={{token}}"))?;
            if value != "{token}" || param.is_empty() {
                return Err(format!(
                    "`{template}`: a query parameter carries the bare token, as ?access_token={{token}}"
                ));
            }
            let param = form_urlencoded::byte_serialize(param.as_bytes()).collect();
            return Ok(Inject::Query { param });
        }
        let (name, value) = template
            .split_once(':')
            .ok_or_else(|| format!("`{template}` has no `Header-Name:` part"))?;
        let name_ = HeaderName::from_bytes(name.trim().as_bytes())
            .map_err(|_| format!("`{}` is not a valid header name", name.trim()))?;
        let value = value.trim();
        let (before, after) = value
            .split_once("{token}")
            .ok_or_else(|| format!("`{template}` does not contain {{token}}"))?;
        if after.contains("{token}") {
            return Err(format!("`{template}` contains {{token}} twice"));
        }
        let inject = Inject::Header {
            text: format!("{}: {value}", name.trim()),
            name: name_,
            before: before.into(),
            after: after.into(),
        };
        inject
            .credential("token")
            .ok_or_else(|| format!("`{template}` makes an invalid header value"))?;
        Ok(inject)
    }

    /// The credential for `token`, or `None` when the token cannot travel this way.
    pub fn credential(&self, token: &str) -> Option<Credential> {
        match self {
            Inject::Header {
                name,
                before,
                after,
                ..
            } => {
                let mut text = String::with_capacity(before.len() + token.len() + after.len());
                text.push_str(before);
                text.push_str(token);
                text.push_str(after);
                let mut value = HeaderValue::try_from(text).ok()?;
                value.set_sensitive(true);
                Some(Credential::Header(name.clone(), value))
            }
            Inject::Query { param } => {
                let value: String = form_urlencoded::byte_serialize(token.as_bytes()).collect();
                Some(Credential::Query(format!("{param}={value}")))
            }
        }
    }
}

impl fmt::Display for Inject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Inject::Header { text, .. } => f.write_str(text),
            Inject::Query { param } => write!(f, "?{param}={{token}}"),
        }
    }
}

#[derive(Debug)]
pub struct Route {
    /// Bounded label for logs and metrics.
    pub name: String,
    /// Origin-form path prefix, always starting and ending with `/`.
    pub prefix: Option<String>,
    /// Lower-case host (with port if not the default) for absolute-form requests.
    pub host: Option<String>,
    pub upstream: RouteUpstream,
    /// Index into [`Config::tokens`].
    pub token: usize,
    /// Index into that token's [`TokenConfig::injects`].
    pub inject: usize,
    pub retry_on: Vec<StatusCode>,
    /// Static headers for every upstream request, resolved at start.
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// Which upstream URLs in JSON/XML bodies and `Link` headers become proxy URLs.
    pub rewrite_links: RewriteLinks,
    /// Whether the prefix is removed from the path sent upstream; when not, the
    /// upstream's base path is `/` and the request path goes as it is.
    pub strip_prefix: bool,
    /// How the upstream's rate limits are kept to.
    pub rate: RateLimits,
}

/// A route's rate-limit policy: static limits (besides what the API says), how
/// long a request may wait for room, how many may wait, and whose quota a
/// request spends.
#[derive(Debug, Clone, PartialEq)]
pub struct RateLimits {
    pub limits: Vec<Limit>,
    pub max_wait: Duration,
    pub max_waiting: usize,
    pub key: QuotaKey,
}

/// `count` requests per `period`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limit {
    pub count: u64,
    pub period: Duration,
}

/// Whose quota a request spends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuotaKey {
    /// The route's, one for all its requests.
    Route,
    /// The path segment after the route's prefix, counted from 1 (Exact Online's
    /// division: `v1/{division}/...` is 2).
    PathSegment(usize),
}

impl QuotaKey {
    /// The key of a request whose path after the prefix is `rest`.
    pub fn of<'a>(&self, rest: &'a str) -> &'a str {
        match self {
            QuotaKey::Route => "",
            QuotaKey::PathSegment(n) => rest
                .trim_start_matches('/')
                .split('/')
                .nth(n.saturating_sub(1))
                .unwrap_or(""),
        }
    }
}

/// A route's `rewrite_links`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RewriteLinks {
    /// Nothing is rewritten.
    Off,
    /// Next-page links only (JSON paging keys, XML `<link rel="next">`, `Link`).
    #[default]
    Pagination,
    /// Every occurrence of the upstream base URL in JSON/XML bodies and `Link`.
    All,
}

#[derive(Debug, Clone)]
pub enum RouteUpstream {
    Static(Upstream),
    /// Resolved from each token response (Salesforce `instance_url`, Zoho
    /// `api_domain`): `index` into the token's [`TokenConfig::dynamic_upstreams`].
    Dynamic {
        index: usize,
        base_path: String,
    },
}

impl RouteUpstream {
    /// The path every upstream URL of the route starts with; ends with `/`.
    pub fn base_path(&self) -> &str {
        match self {
            RouteUpstream::Static(u) => &u.base_path,
            RouteUpstream::Dynamic { base_path, .. } => base_path,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Upstream {
    pub scheme: Scheme,
    pub authority: Authority,
    /// Always ends with `/`.
    pub base_path: String,
    /// `scheme://authority/base_path`, for recognising upstream URLs in `Location`.
    pub base_url: String,
}

impl Upstream {
    /// Parses an absolute `https://` URL (plain `http://` only on loopback) without
    /// query or user info.
    pub fn parse(text: &str) -> Result<Upstream, String> {
        let uri: http::Uri = text.parse().map_err(|_| format!("`{text}` is not a URL"))?;
        let (Some(scheme), Some(authority)) = (uri.scheme(), uri.authority()) else {
            return Err(format!("`{text}` is not an absolute URL"));
        };
        if *scheme != Scheme::HTTPS && !(*scheme == Scheme::HTTP && is_loopback(authority.host())) {
            return Err(format!(
                "`{text}` is not https (http:// is accepted only for 127.0.0.1/localhost)"
            ));
        }
        if uri.query().is_some() || authority.as_str().contains('@') {
            return Err(format!("`{text}` carries a query or user info"));
        }
        let mut base_path = uri.path().to_owned();
        if !base_path.ends_with('/') {
            base_path.push('/');
        }
        Ok(Upstream {
            base_url: format!("{scheme}://{authority}{base_path}"),
            scheme: scheme.clone(),
            authority: authority.clone(),
            base_path,
        })
    }

    /// The host key absolute-form requests are matched against.
    pub fn host_key(&self) -> String {
        let default = if self.scheme == Scheme::HTTPS {
            443
        } else {
            80
        };
        normalise_host(self.authority.host(), self.authority.port_u16(), default)
    }
}
