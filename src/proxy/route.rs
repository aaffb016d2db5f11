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
mod tests {
    use super::*;

    #[test]
    fn same_host_agrees_with_normalise_host() {
        let routes = [
            "api.example.com",
            "api.example.com:8443",
            "127.0.0.1:8080",
            "[::1]",
            "[::1]:8080",
            "x",
        ];
        let requests = [
            "api.example.com",
            "API.Example.COM",
            "api.example.com.",
            "api.example.com:443",
            "api.example.com:80",
            "api.example.com:8443",
            "api.example.com:08443",
            "127.0.0.1:8080",
            "127.0.0.1",
            "[::1]",
            "[::1]:8080",
            "[::1]:443",
            "x",
            "x:1",
            "xx",
        ];
        for route in routes {
            for request in requests {
                let a: http::uri::Authority = request.parse().unwrap();
                for default in [80, 443] {
                    let want =
                        crate::config::normalise_host(a.host(), a.port_u16(), default) == route;
                    assert_eq!(
                        same_host(route, a.host(), a.port_u16(), default),
                        want,
                        "route {route}, request {request}, default {default}"
                    );
                }
            }
        }
    }

    #[test]
    fn host_and_port_read_as_http_reads_them() {
        for text in [
            "api.example.com",
            "api.example.com:8443",
            "api.example.com:",
            "api.example.com:99999",
            "127.0.0.1:80",
            "[::1]",
            "[::1]:8080",
            "[::1]:",
            "[fe80::1%25eth0]:443",
            "x:0",
        ] {
            let a: http::uri::Authority = text.parse().unwrap();
            assert_eq!(
                host_and_port(a.as_str()),
                (a.host(), a.port_u16()),
                "{text}"
            );
        }
    }

    #[test]
    fn paths_without_escapes_are_judged_as_the_decoded_ones() {
        for path in [
            "a/b.json", "a/./b", "a/../b", "a/..;x/b", "a\\..\\b", "..", ".", "a.b/c..d", "a;b/c",
        ] {
            let decoded = percent_encoding::percent_decode_str(path).collect::<Vec<u8>>();
            assert_eq!(climbs(path), climbs_decoded(&decoded), "{path}");
        }
        assert!(climbs("a/%2e%2e/b"));
        assert!(climbs("a/%252e%252e/b"));
        assert!(!climbs("a/b%20c.json"));
    }

    #[test]
    fn climbing_paths_are_refused_and_others_pass() {
        for path in [
            "a/./b",
            "a/../b",
            "a/..;x/b",
            "a\\..\\b",
            "..",
            ".",
            "a/.",
            "a/..",
            "./a",
            "a//b",
            "/a",
            "a/%2e%2e/b",
            "a/%2F/b",
            "a%5c..%5cb",
            "a/%00",
            "a/%ff",
            "a/.;x/b",
        ] {
            assert!(climbs(path), "{path} should be refused");
        }
        for path in [
            "",
            "a",
            "a/b.json",
            "a.b/c..d",
            "a;b/c",
            "a/b/",
            "...",
            "a/.../b",
            "a/..x/b",
            "a/x../b",
            "a/b%20c.json",
            "a\\b",
        ] {
            assert!(!climbs(path), "{path} should pass");
        }
    }
    use crate::config::{Config, RouteUpstream};

    fn router() -> Router {
        let text = r#"
            [tokens.t]
            grant = "client_credentials"
            token_url = "https://id.example.com/token"
            client_id = "id"
            client_secret = "s"
            [[routes]]
            prefix = "/ex/"
            upstream = "https://api.example.com/api/"
            token = "t"
            [[routes]]
            prefix = "/ex/v2"
            upstream = "https://v2.example.com/"
            token = "t"
            [[routes]]
            prefix = "/other/"
            host = "proxied.example.com"
            upstream = "https://api.example.com/other"
            token = "t"
        "#;
        Router::new(Config::parse(text, "t.toml".as_ref()).unwrap().routes)
    }

    fn resolve(r: &Router, t: Result<Target, Miss>, uri: &Uri) -> Result<(usize, String), Miss> {
        let t = t?;
        let RouteUpstream::Static(up) = &r.routes()[t.route].upstream else {
            panic!("static")
        };
        upstream_uri(up, t.rest(uri), uri.query(), None).map(|u| (t.route, u.to_string()))
    }

    fn origin(r: &Router, path: &str) -> Result<(usize, String), Miss> {
        let uri: Uri = path.parse().unwrap();
        resolve(r, r.origin(&uri, Some("localhost:8080")), &uri)
    }

    fn absolute(r: &Router, url: &str) -> Result<(usize, String), Miss> {
        let uri: Uri = url.parse().unwrap();
        resolve(r, r.absolute(&uri, "http"), &uri)
    }

    #[test]
    fn longest_prefix_wins_and_query_is_kept() {
        let r = router();
        assert_eq!(
            origin(&r, "/ex/v1/x?$top=5").unwrap(),
            (0, "https://api.example.com/api/v1/x?$top=5".into())
        );
        assert_eq!(
            origin(&r, "/ex/v2/y").unwrap(),
            (1, "https://v2.example.com/y".into())
        );
        assert_eq!(
            origin(&r, "/ex").unwrap(),
            (0, "https://api.example.com/api/".into())
        );
        assert_eq!(origin(&r, "/exfoo/x"), Err(Miss::NoRoute));
        assert_eq!(origin(&r, "/"), Err(Miss::NoRoute));
    }

    #[test]
    fn absolute_form_matches_host_and_base_path() {
        let r = router();
        assert_eq!(
            absolute(&r, "http://api.example.com/api/v1/x").unwrap(),
            (0, "https://api.example.com/api/v1/x".into())
        );
        assert_eq!(
            absolute(&r, "http://API.Example.com./api/z").unwrap(),
            (0, "https://api.example.com/api/z".into())
        );
        assert_eq!(
            absolute(&r, "http://api.example.com/other/z"),
            Err(Miss::NoRoute)
        );
        assert_eq!(
            absolute(&r, "http://proxied.example.com/other/z")
                .unwrap()
                .0,
            2
        );
        // Same host, path outside every route's base.
        assert_eq!(
            absolute(&r, "http://api.example.com/admin/"),
            Err(Miss::NoRoute)
        );
        assert_eq!(
            absolute(&r, "http://169.254.169.254/latest/meta-data"),
            Err(Miss::NoRoute)
        );
        assert_eq!(
            absolute(&r, "http://api.example.com:8443/api/x"),
            Err(Miss::NoRoute)
        );
        assert_eq!(
            absolute(&r, "http://user@api.example.com/api/x"),
            Err(Miss::BadPath)
        );
    }

    #[test]
    fn climbing_out_of_a_route_is_refused() {
        let r = router();
        for p in [
            "/ex/../other/",
            "/ex/a/%2e%2e/b",
            "/ex/.%2E/x",
            "/ex/a/..%2fb/..",
            "/ex/a%5c..%5cb",
            "/ex/./x",
            "/ex//evil.example.com/x",
            // Tomcat path parameters on a dot segment, plain and encoded.
            "/ex/..;/other",
            "/ex/a/..;jsessionid=1/b",
            "/ex/%2e%2e%3b/x",
            // NUL, plain-encoded and inside a dot segment.
            "/ex/.%00./x",
            "/ex/a%00b",
            // Double encoding and overlong UTF-8 for `.`.
            "/ex/%252e%252e/x",
            "/ex/%c0%ae%c0%ae/x",
        ] {
            assert_eq!(origin(&r, p), Err(Miss::BadPath), "{p}");
        }
        assert!(origin(&r, "/ex/file.v1..json").is_ok());
        assert!(origin(&r, "/ex/a;v=1/b%20c").is_ok());
    }

    #[test]
    fn query_credential_replaces_the_clients_parameter() {
        let up = Upstream::parse("https://api.example.com/v1/").unwrap();
        let cred = Some(("access_token", "access_token=abc%21"));
        let uri = upstream_uri(&up, "items", Some("access_token=client&page=2"), cred).unwrap();
        assert_eq!(
            uri.to_string(),
            "https://api.example.com/v1/items?page=2&access_token=abc%21"
        );
        let uri = upstream_uri(&up, "items", None, cred).unwrap();
        assert_eq!(
            uri.to_string(),
            "https://api.example.com/v1/items?access_token=abc%21"
        );
    }
}
