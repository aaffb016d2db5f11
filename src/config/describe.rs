//! What `tokenproxy check` prints: the resolved configuration, each secret shown as
//! where it comes from (`env VAR`, `file PATH`, `literal [redacted]`), never its value.

use std::fmt::Write as _;

use super::{ClientAuth, Config, Grant, RouteUpstream, SigningKey, StoreConfig, TokenConfig};

impl Config {
    pub fn describe(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "{}: OK", self.file.display());
        let _ = writeln!(
            out,
            "listen: proxy {} admin {}",
            self.listen.proxy, self.listen.admin
        );
        if let Some(tls) = &self.listen.tls {
            let _ = writeln!(
                out,
                "listen: proxy over TLS, certificate from {}, key from {}, read again every {}",
                tls.cert,
                tls.key,
                humantime::format_duration(tls.check)
            );
        }
        match &self.callers {
            super::Callers::Open => {}
            super::Callers::One(key) => {
                let _ = writeln!(out, "callers: one key for every route, from {key}");
            }
            super::Callers::Named(callers) => {
                let _ = writeln!(out, "callers:");
                for c in callers {
                    let tokens: Vec<&str> = c
                        .tokens
                        .iter()
                        .map(|&t| self.tokens[t].name.as_str())
                        .collect();
                    let _ = writeln!(
                        out,
                        "  {}: key from {}, tokens {}",
                        c.name,
                        c.key,
                        tokens.join(", ")
                    );
                }
            }
        }
        match &self.store {
            StoreConfig::File { path } => {
                let _ = writeln!(out, "store: file {}", path.display());
            }
            StoreConfig::Postgres { url, lease } => {
                let _ = writeln!(
                    out,
                    "store: postgres, url from {url}, lease {}",
                    humantime::format_duration(*lease)
                );
            }
            StoreConfig::Redis { url, prefix, lease } => {
                let _ = writeln!(
                    out,
                    "store: redis, url from {url}, keys under `{prefix}`, lease {}",
                    humantime::format_duration(*lease)
                );
            }
        }
        if let Some((_, previous)) = &self.store_keys {
            let _ = writeln!(
                out,
                "store: tokens encrypted at rest (AES-256-GCM) with store.encryption_key, {} previous key(s) accepted",
                previous.len()
            );
        }
        match &self.intercept {
            None => {}
            Some(super::Intercept::Files { cert, key }) => {
                let _ = writeln!(
                    out,
                    "intercept: CONNECT to routed hosts, CA certificate from {cert}, key from {key}"
                );
            }
            Some(super::Intercept::Auto { dir }) => {
                let _ = writeln!(
                    out,
                    "intercept: CONNECT to routed hosts, CA in {} (created at the first start)",
                    dir.display()
                );
            }
        }
        let _ = writeln!(out, "tokens:");
        for t in &self.tokens {
            let _ = writeln!(out, "  {}:", t.name);
            for (k, v) in token_lines(t) {
                let _ = writeln!(out, "    {k}: {v}");
            }
        }
        let _ = writeln!(out, "routes:");
        for r in &self.routes {
            let token = &self.tokens[r.token];
            let upstream = match &r.upstream {
                RouteUpstream::Static(u) => u.base_url.clone(),
                RouteUpstream::Dynamic { index, .. } => {
                    let (field, path) = &token.dynamic_upstreams[*index];
                    format!("{{token.{field}}}{path}")
                }
            };
            let retry: Vec<u16> = r.retry_on.iter().map(|s| s.as_u16()).collect();
            let headers: Vec<&str> = r.headers.iter().map(|(n, _)| n.as_str()).collect();
            let _ = writeln!(
                out,
                "  {}: prefix {} host {} -> {upstream} with token {} as \"{}\", retry_on {retry:?}{}",
                r.name,
                r.prefix.as_deref().unwrap_or("(none)"),
                r.host.as_deref().unwrap_or("(none)"),
                token.name,
                token.injects[r.inject],
                if headers.is_empty() {
                    String::new()
                } else {
                    format!(", adds headers {headers:?}")
                },
            );
            let limits: Vec<String> = r
                .rate
                .limits
                .iter()
                .map(|l| format!("{}/{}", l.count, humantime::format_duration(l.period)))
                .collect();
            let _ = writeln!(
                out,
                "    rate limits: {}, learned from answers; quota per {}; a request waits up to {} for room ({} at most waiting)",
                if limits.is_empty() {
                    "none written".to_owned()
                } else {
                    limits.join(", ")
                },
                match r.rate.key {
                    super::QuotaKey::Route => "route".to_owned(),
                    super::QuotaKey::PathSegment(n) => format!("path segment {n}"),
                },
                humantime::format_duration(r.rate.max_wait),
                r.rate.max_waiting
            );
        }
        for w in &self.warnings {
            let _ = writeln!(out, "warning: {w}");
        }
        out
    }
}

fn token_lines(t: &TokenConfig) -> Vec<(&'static str, String)> {
    let d = |d: std::time::Duration| humantime::format_duration(d).to_string();
    let mut lines = Vec::new();
    if let Some(p) = t.preset {
        lines.push(("preset", p.name.to_owned()));
    }
    lines.push(("grant", t.grant.as_str().to_owned()));
    lines.push(("token endpoint", t.endpoint.to_string()));
    if let Some(id) = &t.client_id {
        lines.push(("client_id", id.to_string()));
    }
    let auth = match &t.client_auth {
        ClientAuth::None => "none".to_owned(),
        ClientAuth::Post(s) => format!("post, client_secret {s}"),
        ClientAuth::Basic(s) => format!("basic, client_secret {s}"),
        ClientAuth::PrivateKeyJwt(a) => format!("private_key_jwt, {}", key(&a.key)),
        ClientAuth::TlsClientAuth => "tls_client_auth".to_owned(),
    };
    lines.push(("client_auth", auth));
    if let Some((cert, k)) = &t.client_cert {
        lines.push(("client certificate", format!("{cert}, key {k}")));
    }
    match &t.grant {
        Grant::RefreshToken { initial } => lines.push((
            "refresh_token",
            initial.as_ref().map_or(
                "from the store (seed one with `tokenproxy seed`)".into(),
                |s| format!("{s} (until the store holds one)"),
            ),
        )),
        Grant::Password { username, password } => {
            lines.push(("username / password", format!("{username} / {password}")))
        }
        Grant::JwtBearer(a) => lines.push((
            "assertion",
            format!(
                "{}, subject {}, audience {}, lifetime {}",
                key(&a.key),
                a.subject.as_deref().unwrap_or("(none)"),
                a.audience.as_deref().unwrap_or("the token URL"),
                d(a.lifetime),
            ),
        )),
        Grant::ClientCredentials => {}
    }
    if let Some(s) = &t.scope {
        lines.push((
            "scope",
            format!(
                "{s}{}",
                if t.scope_on_refresh {
                    ""
                } else {
                    " (not sent on refresh)"
                }
            ),
        ));
    }
    if !t.params.is_empty() {
        let keys: Vec<&str> = t.params.iter().map(|(k, _)| k.as_str()).collect();
        lines.push(("extra form fields", keys.join(", ")));
    }
    if !t.headers.is_empty() {
        let h: Vec<String> = t
            .headers
            .iter()
            .map(|(n, s)| format!("{n} ({s})"))
            .collect();
        lines.push(("token request headers", h.join(", ")));
    }
    lines.push((
        "timing",
        format!(
            "refresh_before {}, min_interval {}, default_lifetime {}, timeout {}",
            d(t.refresh_before),
            d(t.min_interval),
            d(t.default_lifetime),
            d(t.timeout)
        ),
    ));
    if t.delivery.vend {
        lines.push(("vending", format!("GET /tokenproxy/v1/tokens/{}", t.name)));
    }
    for sink in &t.delivery.sinks {
        lines.push((
            "sink",
            format!(
                "{} ({}, mode {:04o})",
                sink.path.display(),
                sink.format.as_str(),
                sink.mode
            ),
        ));
    }
    lines
}

fn key(k: &SigningKey) -> String {
    match k {
        SigningKey::Pem { key, key_id } => format!(
            "private_key {key}{}",
            key_id
                .as_ref()
                .map(|id| format!(" (kid {id})"))
                .unwrap_or_default()
        ),
        SigningKey::ServiceAccount(s) => format!("service_account {s}"),
    }
}
