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

use crate::config::{Route, normalise_host};

/// A matched request: the route's index and the upstream URI to send to.
pub struct Target {
    pub route: usize,
    pub uri: Uri,
    /// What the client used as the route's base URL, for rewriting `Location`
    /// (`None` when it cannot be told).
    pub proxy_base: Option<String>,
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
            let rest = if let Some(rest) = path.strip_prefix(prefix) {
                rest
            } else if path.len() + 1 == prefix.len() && prefix.starts_with(path) {
                ""
            } else {
                continue;
            };
            let proxy_base = host.map(|h| format!("http://{h}{prefix}"));
            return Ok(Target {
                route: i,
                uri: upstream_uri(route, rest, uri.query())?,
                proxy_base,
            });
        }
        Err(Miss::NoRoute)
    }

    /// Matches an absolute-form request.
    pub fn absolute(&self, uri: &Uri) -> Result<Target, Miss> {
        let authority = uri.authority().ok_or(Miss::NoRoute)?;
        if authority.as_str().contains('@') {
            return Err(Miss::BadPath);
        }
        let default = if uri.scheme_str() == Some("https") {
            443
        } else {
            80
        };
        let host = normalise_host(authority.host(), authority.port_u16(), default);
        let path = uri.path();
        let mut best: Option<(usize, &str)> = None;
        for (i, route) in self.routes.iter().enumerate() {
            if route.host != host {
                continue;
            }
            let base = &route.upstream.base_path;
            let rest = if let Some(rest) = path.strip_prefix(base.as_str()) {
                rest
            } else if path.len() + 1 == base.len() && base.starts_with(path) {
                ""
            } else {
                continue;
            };
            if best.is_none_or(|(b, _)| self.routes[b].upstream.base_path.len() < base.len()) {
                best = Some((i, rest));
            }
        }
        let (i, rest) = best.ok_or(Miss::NoRoute)?;
        let route = &self.routes[i];
        Ok(Target {
            route: i,
            uri: upstream_uri(route, rest, uri.query())?,
            proxy_base: Some(format!("http://{}{}", authority, route.upstream.base_path)),
        })
    }
}

fn upstream_uri(route: &Route, rest: &str, query: Option<&str>) -> Result<Uri, Miss> {
    if climbs(rest) {
        return Err(Miss::BadPath);
    }
    let up = &route.upstream;
    let mut pq =
        String::with_capacity(up.base_path.len() + rest.len() + query.map_or(0, |q| q.len() + 1));
    pq.push_str(&up.base_path);
    pq.push_str(rest);
    if let Some(q) = query {
        pq.push('?');
        pq.push_str(q);
    }
    let pq = PathAndQuery::try_from(pq).map_err(|_| Miss::BadPath)?;
    Uri::builder()
        .scheme(up.scheme.clone())
        .authority(up.authority.clone())
        .path_and_query(pq)
        .build()
        .map_err(|_| Miss::BadPath)
}

/// Whether a path has a `.` or `..` segment once percent-decoded (with `\` read as
/// `/`, as some servers do).
fn climbs(path: &str) -> bool {
    if !path.contains('.') && !path.contains('%') {
        return false;
    }
    let decoded = percent_encoding::percent_decode_str(path).decode_utf8_lossy();
    decoded
        .split(['/', '\\'])
        .any(|segment| segment == ".." || segment == ".")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

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

    fn origin(r: &Router, path: &str) -> Result<(usize, String), Miss> {
        let uri: Uri = path.parse().unwrap();
        r.origin(&uri, Some("localhost:8080"))
            .map(|t| (t.route, t.uri.to_string()))
    }

    fn absolute(r: &Router, url: &str) -> Result<(usize, String), Miss> {
        r.absolute(&url.parse().unwrap())
            .map(|t| (t.route, t.uri.to_string()))
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
        ] {
            assert_eq!(origin(&r, p), Err(Miss::BadPath), "{p}");
        }
        assert!(origin(&r, "/ex/file.v1..json").is_ok());
    }
}
