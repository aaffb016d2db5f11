//! Which route a request belongs to, and where upstream it goes.
//!
//! Origin-form requests (`GET /exact/v1/x`) match the longest route `prefix`; the
//! rest of the path is appended to the route's upstream base. Absolute-form requests
//! (`GET http://api.example.com/v1/x`, from a client using `HTTP_PROXY`) match a
//! route whose `host` is the request's host and whose upstream base path contains
//! the request path. Anything else matches nothing: tokenproxy is never an open
//! proxy. Paths that climb out of a route (`..`, also percent-encoded) are refused.

use http::Uri;
use http::uri::PathAndQuery;

use crate::config::{Route, Upstream};

/// A matched request.
#[derive(Debug)]
pub struct Target {
    pub route: usize,
    /// Where in the request path the part after the route's base starts.
    pub rest_at: usize,
    /// What the client used as the route's base URL, for rewriting `Location`
    /// (`None` when it cannot be told).
    pub proxy_base: Option<String>,
}

impl Target {
    pub fn rest<'a>(&self, uri: &'a Uri) -> &'a str {
        uri.path().get(self.rest_at..).unwrap_or("")
    }
}

#[derive(Debug, PartialEq, Eq)]
pub enum Miss {
    NoRoute,
    BadPath,
}

pub struct Router {
    routes: Vec<Route>,
    /// Route indices with a prefix, longest prefix first.
    by_prefix: Vec<usize>,
}

/// Where `path` continues after `base` (which ends with `/`), also when the path is
/// the base without its final slash.
fn after(path: &str, base: &str) -> Option<usize> {
    if path.starts_with(base) {
        Some(base.len())
    } else if path.len() + 1 == base.len() && base.starts_with(path) {
        Some(path.len())
    } else {
        None
    }
}

impl Router {
    pub fn new(routes: Vec<Route>) -> Router {
        let mut by_prefix: Vec<usize> = (0..routes.len())
            .filter(|&i| routes[i].prefix.is_some())
            .collect();
        by_prefix
            .sort_by_key(|&i| std::cmp::Reverse(routes[i].prefix.as_ref().map_or(0, String::len)));
        Router { routes, by_prefix }
    }

    pub fn routes(&self) -> &[Route] {
        &self.routes
    }

    /// Matches an origin-form request. `host` is the client's `Host`, for `proxy_base`.
    pub fn origin(&self, uri: &Uri, host: Option<&str>) -> Result<Target, Miss> {
        let path = uri.path();
        for &i in &self.by_prefix {
            let route = &self.routes[i];
            let prefix = route.prefix.as_deref().unwrap_or("/");
            let Some(rest_at) = after(path, prefix) else {
                continue;
            };
            // Without stripping, the whole path goes upstream (after its leading `/`,
            // which the upstream base `/` supplies), and links map onto the root.
            let (rest_at, base) = if route.strip_prefix {
                (rest_at, prefix)
            } else {
                (1, "/")
            };
            return checked(
                Target {
                    route: i,
                    rest_at,
                    proxy_base: host.map(|h| concat(&["http://", h, base])),
                },
                uri,
            );
        }
        Err(Miss::NoRoute)
    }

    /// Matches an absolute-form request (or one read inside an intercepted
    /// tunnel, made absolute). `client_scheme` is what the client's own URLs use:
    /// `http` through `HTTP_PROXY`, `https` inside a tunnel.
    pub fn absolute(&self, uri: &Uri, client_scheme: &str) -> Result<Target, Miss> {
        let authority = uri.authority().ok_or(Miss::NoRoute)?;
        if authority.as_str().contains('@') {
            return Err(Miss::BadPath);
        }
        let default = if uri.scheme_str() == Some("https") {
            443
        } else {
            80
        };
        let (host, port) = host_and_port(authority.as_str());
        let path = uri.path();
        let mut best: Option<(usize, usize)> = None;
        for (i, route) in self.routes.iter().enumerate() {
            if !route
                .host
                .as_deref()
                .is_some_and(|h| same_host(h, host, port, default))
            {
                continue;
            }
            let Some(rest_at) = after(path, route.upstream.base_path()) else {
                continue;
            };
            if best.is_none_or(|(b, _)| self.routes[b].upstream.base_path().len() < rest_at) {
                best = Some((i, rest_at));
            }
        }
        let (i, rest_at) = best.ok_or(Miss::NoRoute)?;
        let base = self.routes[i].upstream.base_path();
        checked(
            Target {
                route: i,
                rest_at,
                proxy_base: Some(concat(&[client_scheme, "://", authority.as_str(), base])),
            },
            uri,
        )
    }
}

/// An authority's host (with brackets for IPv6) and port, as `Authority::host` and
/// `Authority::port_u16` read them, in one pass (those two cost ~700 instructions
/// per request, searching the string twice with general patterns). The authority
/// has no user info (refused before).
fn host_and_port(authority: &str) -> (&str, Option<u16>) {
    let split = if authority.starts_with('[') {
        authority.find(']').map(|i| i + 1)
    } else {
        authority.find(':')
    };
    match split {
        Some(i) => {
            let (host, rest) = authority.split_at(i);
            (host, rest.strip_prefix(':').and_then(|p| p.parse().ok()))
        }
        None => (authority, None),
    }
}

/// Whether a route's `host` (normalised: lower case, no trailing dot, a port only
/// when not the default) names `host:port`; what [`crate::config::normalise_host`] would make of
/// the request's authority, compared without building it.
fn same_host(route_host: &str, host: &str, port: Option<u16>, default: u16) -> bool {
    let host = host.trim_end_matches('.');
    let (name, route_port) = match port.filter(|&p| p != default) {
        Some(p) => match route_host.rsplit_once(':') {
            Some((name, rp)) if !rp.is_empty() && rp.bytes().all(|b| b.is_ascii_digit()) => {
                (name, rp.parse::<u16>().ok() == Some(p))
            }
            _ => return false,
        },
        None => (route_host, true),
    };
    route_port && name.eq_ignore_ascii_case(host)
}

/// The pieces in one string, allocated once (`format!` costs ten times as many
/// instructions here, on every request).
fn concat(pieces: &[&str]) -> String {
    let mut s = String::with_capacity(pieces.iter().map(|p| p.len()).sum());
    pieces.iter().for_each(|p| s.push_str(p));
    s
}

fn checked(target: Target, uri: &Uri) -> Result<Target, Miss> {
    if climbs(target.rest(uri)) {
        return Err(Miss::BadPath);
    }
    Ok(target)
}

/// The upstream URL: base path, the rest of the client's path, the client's query
/// and, for query-parameter injection, the credential (replacing any parameter of
/// the same name the client sent).
pub fn upstream_uri(
    up: &Upstream,
    rest: &str,
    query: Option<&str>,
    credential: Option<(&str, &str)>,
) -> Result<Uri, Miss> {
    let mut pq = String::with_capacity(
        up.base_path.len()
            + rest.len()
            + query.map_or(0, |q| q.len() + 1)
            + credential.map_or(0, |c| c.1.len() + 1),
    );
    pq.push_str(&up.base_path);
    pq.push_str(rest);
    let mut sep = '?';
    if let Some(q) = query {
        for pair in q.split('&').filter(|p| !p.is_empty()) {
            let key = pair.split('=').next().unwrap_or("");
            if credential.is_some_and(|(param, _)| param == key) {
                continue;
            }
            pq.push(sep);
            pq.push_str(pair);
            sep = '&';
        }
    }
    if let Some((_, pair)) = credential {
        pq.push(sep);
        pq.push_str(pair);
    }
    let pq = PathAndQuery::try_from(pq).map_err(|_| Miss::BadPath)?;
    Uri::builder()
        .scheme(up.scheme.clone())
        .authority(up.authority.clone())
        .path_and_query(pq)
        .build()
        .map_err(|_| Miss::BadPath)
}

/// Whether a path could mean another path to some server: an empty segment, a
/// `.` or `..` segment once percent-decoded (also decoded twice, with `\\` read as
/// `/`, and with `;parameters` removed as Tomcat does: `..;`), NUL in any encoding,
/// or percent-encoding that is not UTF-8 (overlong forms of `.` and `/`).
fn climbs(path: &str) -> bool {
    // An empty segment: some servers fold `//`, so the upstream would see another path.
    // Byte scans: `str::contains` with a string or a set of chars builds a
    // searcher first, which costs more than reading a path of a few dozen bytes.
    let bytes = path.as_bytes();
    if bytes.first() == Some(&b'/') || bytes.windows(2).any(|w| w == b"//") {
        return true;
    }
    if !bytes
        .iter()
        .any(|b| matches!(b, b'.' | b'%' | b';' | b'\\'))
    {
        return false;
    }
    if !path.contains('%') {
        // Decoding changes nothing: read the path as it is, without copying it
        // (and it is UTF-8 already).
        return climbs_text(path.as_bytes());
    }
    let once = percent_encoding::percent_decode_str(path).collect::<Vec<u8>>();
    let twice = percent_encoding::percent_decode(&once).collect::<Vec<u8>>();
    climbs_decoded(&once) || climbs_decoded(&twice)
}

/// A decoded path that is not UTF-8, or that [`climbs_text`] refuses.
fn climbs_decoded(decoded: &[u8]) -> bool {
    std::str::from_utf8(decoded).is_err() || climbs_text(decoded)
}

/// A path with a NUL, a `.` or `..` segment (`\\` read as `/`, a `;` parameter
/// ignored), or an empty segment where the path holds a `//`.
fn climbs_text(path: &[u8]) -> bool {
    path.contains(&0)
        || path.split(|&b| b == b'/' || b == b'\\').any(|segment| {
            let segment = segment.split(|&b| b == b';').next().unwrap_or_default();
            segment == b".."
                || segment == b"."
                || (segment.is_empty() && path.windows(2).any(|w| w == b"//"))
        })
}

#[cfg(test)]
#[path = "route_tests.rs"]
mod tests;
