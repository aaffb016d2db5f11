//! Phase 1 of a request: the checks that precede routing (method, target,
//! `Host`, the caller key, upgrades, the declared length), then its route.

use http::header::{HOST, HeaderMap};
use http::{Uri, Version};

use super::route::{Miss, Target};
use super::{Proxy, Trace};
use crate::error::ProxyError;
use crate::tunnel::Tunneled;

impl Proxy {
    /// Phase 1: the request checks that precede routing (method, target, `Host`,
    /// caller key, upgrade, declared length), then the route.
    pub(super) fn admit(
        &self,
        parts: &mut http::request::Parts,
        trace: &mut Trace,
    ) -> Result<Admitted, ProxyError> {
        // TRACE (and IIS's TRACK) echo the request, injected token included, back
        // to the caller: refused whatever their case (methods are case-sensitive,
        // but a server upstream may not be).
        let m = parts.method.as_str();
        if m.eq_ignore_ascii_case("TRACE") || m.eq_ignore_ascii_case("TRACK") {
            return Err(ProxyError::proxy_method(&parts.method));
        }
        let tunneled = parts.extensions.remove::<Tunneled>();
        check_target(&parts.uri)?;
        check_host(&parts.headers, parts.version)?;
        trace.who = match &tunneled {
            None => self.gate.identify(&mut parts.headers)?,
            // The tunnel's CONNECT presented the key; a copy inside goes nowhere.
            Some(t) => self
                .gate
                .tunneled(&mut parts.headers, t.caller.as_deref())?,
        };
        if tunneled.is_none() && self.own_path(&parts.uri, parts.version) {
            return Ok(Admitted::Own);
        }
        if wants_upgrade(&parts.headers) {
            return Err(ProxyError::Upgrade);
        }
        let declared = parts
            .headers
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|len| self.too_large(len)) {
            return Err(ProxyError::TooLarge);
        }
        let target = match &tunneled {
            Some(t) => self.route_tunneled(&mut parts.uri, &parts.headers, t)?,
            None => self.route(&parts.uri, &parts.headers, parts.version)?,
        };
        Ok(Admitted::Route { target, declared })
    }

    /// Whether the request is for tokenproxy itself (token vending): an
    /// origin-form path under `/tokenproxy/`, or in HTTP/2 one whose authority is
    /// no route's host.
    fn own_path(&self, uri: &Uri, version: Version) -> bool {
        uri.path().starts_with(crate::config::OWN_PATHS)
            && (uri.scheme().is_none()
                || (version == Version::HTTP_2 && self.router.absolute(uri, "http").is_err()))
    }

    pub(super) fn too_large(&self, len: u64) -> bool {
        self.settings.max_request_body.is_some_and(|max| len > max)
    }

    fn route(
        &self,
        uri: &Uri,
        headers: &HeaderMap,
        version: Version,
    ) -> Result<Target, ProxyError> {
        let host = headers.get(HOST).and_then(|h| h.to_str().ok());
        let result = if version == Version::HTTP_2 {
            // HTTP/2 always carries :authority; it names a route host or the proxy itself.
            self.router.absolute(uri, "http").or_else(|_| {
                let authority = uri.authority().map(|a| a.as_str()).or(host);
                self.router.origin(uri, authority)
            })
        } else if uri.scheme().is_some() {
            self.router.absolute(uri, "http")
        } else {
            self.router.origin(uri, host)
        };
        result.map_err(miss)
    }

    /// Routes a request read inside a tunnel: it must name the tunnel's host (or
    /// none), and it is then the absolute-form request `https://HOST/...` (or
    /// `http://HOST/...` for plain HTTP inside), which `uri` becomes.
    fn route_tunneled(
        &self,
        uri: &mut Uri,
        headers: &HeaderMap,
        tunnel: &Tunneled,
    ) -> Result<Target, ProxyError> {
        let named = match uri.authority() {
            Some(a) => Some(a.clone()),
            None => headers
                .get(HOST)
                .and_then(|h| h.to_str().ok())
                .and_then(|h| h.parse::<http::uri::Authority>().ok()),
        };
        let (scheme, default_port) = if tunnel.tls {
            (http::uri::Scheme::HTTPS, 443)
        } else {
            (http::uri::Scheme::HTTP, 80)
        };
        if let Some(a) = named
            && crate::config::normalise_host(a.host(), a.port_u16(), default_port)
                != tunnel.authority.as_str()
        {
            return Err(ProxyError::Misdirected);
        }
        let path = uri.path_and_query().map_or("/", |p| p.as_str());
        *uri = Uri::builder()
            .scheme(scheme.clone())
            .authority(tunnel.authority.clone())
            .path_and_query(path)
            .build()
            .map_err(|_| ProxyError::BadPath)?;
        self.router.absolute(uri, scheme.as_str()).map_err(miss)
    }
}

fn miss(miss: Miss) -> ProxyError {
    match miss {
        Miss::NoRoute => ProxyError::NoRoute,
        Miss::BadPath => ProxyError::BadPath,
    }
}

/// What phase 1 found: the route, and the length the client declared; or a
/// request for tokenproxy itself.
pub(super) enum Admitted {
    Route {
        target: Target,
        declared: Option<u64>,
    },
    Own,
}

/// The request target's own authority (absolute-form, HTTP/2's `:authority`) and
/// scheme: no user info (it could be reflected into a rewritten `Location`), a port
/// of 1–65535 digits, and only `http` or `https`.
fn check_target(uri: &Uri) -> Result<(), ProxyError> {
    if let Some(scheme) = uri.scheme_str()
        && !scheme.eq_ignore_ascii_case("http")
        && !scheme.eq_ignore_ascii_case("https")
    {
        return Err(ProxyError::BadScheme);
    }
    match uri.authority() {
        Some(a) if a.as_str().contains('@') || !port_ok(a.as_str()) => Err(ProxyError::BadHost),
        _ => Ok(()),
    }
}

/// Exactly one `Host` (none only before HTTP/1.1, or in HTTP/2, which carries
/// `:authority`), and one that is an authority: a second `Host` or one with other
/// characters could steer routing, or be reflected into rewritten `Location`
/// headers.
fn check_host(headers: &HeaderMap, version: Version) -> Result<(), ProxyError> {
    let mut hosts = headers.get_all(HOST).iter();
    let (Some(host), None) = (hosts.next(), hosts.next()) else {
        return match headers.contains_key(HOST) || version == Version::HTTP_11 {
            true => Err(ProxyError::BadHost),
            false => Ok(()),
        };
    };
    let valid = host.to_str().ok().is_some_and(|h| {
        !h.is_empty()
            && !h.contains('@')
            && h.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b".-_:[]".contains(&b))
            && port_ok(h)
            && (plain_host(h) || h.parse::<http::uri::Authority>().is_ok())
    });
    if valid {
        Ok(())
    } else {
        Err(ProxyError::BadHost)
    }
}

/// An authority's port, when it has one, is 1–65535 in digits (`host:abc`,
/// `host:99999`, `host:0` and `host:` are not).
pub(super) fn port_ok(authority: &str) -> bool {
    let after_host = match authority.rfind(']') {
        Some(end) => &authority[end + 1..],
        None => authority,
    };
    match after_host.rsplit_once(':') {
        None => true,
        Some((_, port)) => {
            !port.is_empty()
                && port.len() <= 5
                && port.bytes().all(|b| b.is_ascii_digit())
                && port.parse::<u16>().is_ok_and(|p| p != 0)
        }
    }
}

/// `name` or `name:port` with a name of letters, digits, `.`, `-`, `_` and a port
/// that fits 16 bits: an authority for certain, told without parsing one (which
/// copies it).
fn plain_host(h: &str) -> bool {
    let (name, port) = match h.split_once(':') {
        Some((name, port)) => (name, Some(port)),
        None => (h, None),
    };
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b".-_".contains(&b))
        && port.is_none_or(|p| !p.is_empty() && p.len() <= 5 && p.parse::<u16>().is_ok())
}

/// A protocol upgrade other than `h2c` (which is ignored: the connection simply
/// stays HTTP/1.1, as clients that offer it expect).
fn wants_upgrade(headers: &HeaderMap) -> bool {
    headers.get_all(http::header::UPGRADE).iter().any(|v| {
        v.to_str()
            .map_or(true, |v| !v.trim().eq_ignore_ascii_case("h2c"))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_plain_host_is_always_an_authority() {
        for h in [
            "api.example.com",
            "a",
            "x_y",
            "-a-",
            "a..b",
            "127.0.0.1",
            "a:1",
            "a:65535",
            "a:0",
            "a:00080",
            "A.B.C:8080",
        ] {
            assert!(plain_host(h), "{h}");
            assert!(h.parse::<http::uri::Authority>().is_ok(), "{h}");
        }
        // Left to the full parse.
        for h in [
            "", ":80", "a:", "a:65536", "a:123456", "a:b", "a:1:2", "[::1]", "[::1]:80", "a b",
        ] {
            assert!(!plain_host(h), "{h}");
        }
    }
}
