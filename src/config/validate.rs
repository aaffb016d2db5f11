//! From the file as written to a [`Config`] that cannot be wrong.
//!
//! Each check names the key and the fix. Secrets are resolved once here, only to
//! prove they can be; their values are not kept.

use std::path::Path;
use std::time::Duration;

use http::uri::Authority;
use http::{HeaderName, HeaderValue, StatusCode};

use super::preset::{self, Preset};
use super::raw::{RawConfig, RawIntercept, RawRewriteLinks, RawRoute, RawToken};
use super::{
    Assertion, ClientAuth, ClientAuthKind, ClientKey, Config, ConfigError, Endpoint, Grant,
    GrantKind, Inject, Intercept, Listen, ListenAddr, Login, ProxySettings, RewriteLinks, Route,
    RouteUpstream, SigningKey, StoreConfig, Tls, TokenConfig, Upstream, is_dns_host, is_loopback,
    normalise_host,
};
use crate::secret::SecretRef;

/// A shared store's lock lease when none is written.
const DEFAULT_LEASE: Duration = Duration::from_secs(60);
/// How much longer than a token request the lease must be (a store write, a pause).
const LEASE_MARGIN: Duration = Duration::from_secs(10);

pub fn config(raw: RawConfig, file: &Path) -> Result<Config, ConfigError> {
    Validator {
        file,
        warnings: Vec::new(),
    }
    .config(raw)
}

struct Validator<'a> {
    file: &'a Path,
    warnings: Vec<String>,
}

/// Parses one of `names` (`as_str` of each value) or says which are allowed.
fn choose<T: Copy>(text: &str, all: &[T], name: impl Fn(T) -> &'static str) -> Result<T, String> {
    all.iter()
        .copied()
        .find(|v| name(*v) == text)
        .ok_or_else(|| {
            let names: Vec<&str> = all.iter().map(|v| name(*v)).collect();
            format!("`{text}` is not one of {}", names.join(", "))
        })
}

impl Validator<'_> {
    fn err(
        &self,
        key: impl Into<String>,
        problem: impl Into<String>,
        fix: impl Into<String>,
    ) -> ConfigError {
        ConfigError::Invalid {
            file: self.file.into(),
            key: key.into(),
            problem: problem.into(),
            fix: fix.into(),
        }
    }

    fn config(mut self, raw: RawConfig) -> Result<Config, ConfigError> {
        let proxy = match raw.listen.proxy.strip_prefix("unix:") {
            Some(path) if path.starts_with('/') => ListenAddr::Unix(path.into()),
            Some(_) => {
                return Err(self.err(
                    "listen.proxy",
                    "a Unix socket needs an absolute path",
                    "write it as \"unix:/run/tokenproxy/proxy.sock\"",
                ));
            }
            None => ListenAddr::Tcp(self.addr("listen.proxy", &raw.listen.proxy)?),
        };
        let client_key = match raw.listen.client_key {
            None => None,
            Some(key) => {
                self.secret("listen.client_key", &key, false)?;
                let header = raw
                    .listen
                    .client_key_header
                    .as_deref()
                    .unwrap_or("Proxy-Authorization");
                let name = HeaderName::from_bytes(header.as_bytes()).map_err(|_| {
                    self.err(
                        "listen.client_key_header",
                        format!("`{header}` is not a header name"),
                        "use a name such as \"X-Proxy-Key\"",
                    )
                })?;
                if name == http::header::AUTHORIZATION {
                    return Err(self.err(
                        "listen.client_key_header",
                        "Authorization belongs to the upstream API",
                        "use Proxy-Authorization (the default) or a header of your own",
                    ));
                }
                Some(ClientKey {
                    bearer: name == http::header::PROXY_AUTHORIZATION,
                    header: name,
                    key,
                })
            }
        };
        if let Some(key) = &raw.listen.admin_key {
            self.secret("listen.admin_key", key, false)?;
        }
        let listen = Listen {
            proxy,
            admin: self.addr("listen.admin", &raw.listen.admin)?,
            client_key,
            admin_key: raw.listen.admin_key,
        };
        if !listen.admin.ip().is_loopback() && listen.admin_key.is_none() {
            self.warnings.push(format!(
                "{}: `listen.admin` = {} is reachable beyond this host and [listen] has no admin_key: its GET endpoints (probes, /metrics) answer anyone, and POST /reload and /tokens/NAME/refresh answer 403 admin_key_required; set listen.admin_key to use them",
                self.file.display(),
                listen.admin
            ));
        }
        if let ListenAddr::Tcp(addr) = &listen.proxy
            && !addr.ip().is_loopback()
            && listen.client_key.is_none()
        {
            self.warnings.push(format!(
                "{}: `listen.proxy` = {addr} is reachable beyond this host and [listen] has no client_key: anyone who can connect uses your tokens; set listen.client_key, or listen on 127.0.0.1 or a Unix socket",
                self.file.display()
            ));
        }
        if listen.proxy == ListenAddr::Tcp(listen.admin) && listen.admin.port() != 0 {
            return Err(self.err(
                "listen.admin",
                "is the same address as listen.proxy",
                "give the admin endpoints their own port",
            ));
        }
        let shared_url = |v: &mut Self, kind: &str, example: &str| {
            let Some(url) = raw.store.url.clone() else {
                return Err(v.err(
                    "store.url",
                    format!("a {kind} store needs a URL"),
                    format!("add url = {{ env = \"TOKENPROXY_STORE_URL\" }} holding {example}"),
                ));
            };
            v.secret("store.url", &url, false)?;
            Ok(url)
        };
        if raw.store.prefix.is_some() && raw.store.kind != "redis" {
            return Err(self.err(
                "store.prefix",
                "prefix is for the redis store",
                "set kind = \"redis\", or remove it",
            ));
        }
        let lease = raw.store.lease.unwrap_or(DEFAULT_LEASE);
        let store = match raw.store.kind.as_str() {
            "file" => {
                if raw.store.url.is_some() || raw.store.lease.is_some() {
                    return Err(self.err(
                        "store.url",
                        "url and lease are for shared stores",
                        "set kind = \"postgres\" or \"redis\", or remove them",
                    ));
                }
                StoreConfig::File {
                    path: raw.store.path,
                }
            }
            "postgres" => StoreConfig::Postgres {
                url: shared_url(
                    &mut self,
                    "postgres",
                    "postgres://user:password@host:5432/database",
                )?,
                lease,
            },
            "redis" => {
                let prefix = raw.store.prefix.unwrap_or_else(|| "tokenproxy:".into());
                if prefix.is_empty()
                    || prefix.len() > 128
                    || prefix.chars().any(|c| c.is_whitespace() || c.is_control())
                {
                    return Err(self.err(
                        "store.prefix",
                        "must be 1 to 128 characters without spaces or control characters",
                        "use a prefix such as \"tokenproxy:\" or \"etl-prod:tokenproxy:\"",
                    ));
                }
                StoreConfig::Redis {
                    url: shared_url(
                        &mut self,
                        "redis",
                        "redis://:password@host:6379/0 (rediss:// for TLS)",
                    )?,
                    prefix,
                    lease,
                }
            }
            other => {
                return Err(self.err(
                    "store.kind",
                    format!("`{other}` is not a supported store"),
                    "use kind = \"file\", \"postgres\" or \"redis\"",
                ));
            }
        };
        let store_keys = match raw.store.encryption_key {
            None if raw.store.previous_encryption_keys.is_empty() => None,
            None => {
                return Err(self.err(
                    "store.previous_encryption_keys",
                    "previous keys without a current store.encryption_key",
                    "add encryption_key (the key that encrypts new writes)",
                ));
            }
            Some(key) => {
                let all = std::iter::once(("store.encryption_key".to_owned(), &key)).chain(
                    raw.store
                        .previous_encryption_keys
                        .iter()
                        .enumerate()
                        .map(|(i, k)| (format!("store.previous_encryption_keys[{i}]"), k)),
                );
                for (name, k) in all {
                    self.secret(&name, k, false)?;
                    let text = k
                        .resolve()
                        .map(|s| s.expose().to_owned())
                        .unwrap_or_default();
                    if let Err(e) = crate::store::Key::parse(&text) {
                        return Err(self.err(
                            name,
                            format!("not an AES-256 key: {e}"),
                            "write 32 random bytes as 64 hex digits: openssl rand -hex 32",
                        ));
                    }
                }
                Some((key, raw.store.previous_encryption_keys))
            }
        };
        if raw.proxy.replay_body_limit > 64 * 1024 * 1024 {
            return Err(self.err(
                "proxy.replay_body_limit",
                "is over 64 MiB",
                "keep replayed bodies small; larger bodies stream and are not retried",
            ));
        }
        let proxy = ProxySettings {
            connect_timeout: raw.proxy.connect_timeout,
            response_timeout: raw.proxy.response_timeout,
            pool_idle_timeout: raw.proxy.pool_idle_timeout,
            drain_timeout: raw.proxy.drain_timeout,
            replay_body_limit: raw.proxy.replay_body_limit,
            max_request_body: (raw.proxy.max_request_body > 0)
                .then_some(raw.proxy.max_request_body),
            idle_timeout: raw.proxy.idle_timeout,
            body_timeout: raw.proxy.body_timeout,
            max_connections: (raw.proxy.max_connections > 0).then_some(raw.proxy.max_connections),
            max_header_line: raw.proxy.max_header_line,
            max_header_size: raw.proxy.max_header_size,
            max_headers: raw.proxy.max_headers,
        };
        if !(1..=100).contains(&proxy.max_headers) {
            return Err(self.err(
                "proxy.max_headers",
                format!("{} is out of range", proxy.max_headers),
                "keep it within 1..100 (default 100, the HTTP library's own limit; real clients send fewer than 30)",
            ));
        }
        for (key, value) in [
            ("proxy.idle_timeout", proxy.idle_timeout),
            ("proxy.body_timeout", proxy.body_timeout),
            ("proxy.drain_timeout", proxy.drain_timeout),
        ] {
            if value.is_zero() {
                return Err(self.err(key, "is zero", "give it a duration such as \"60s\""));
            }
        }
        if !(1024..=1024 * 1024).contains(&proxy.max_header_line)
            || !(8 * 1024..=1024 * 1024).contains(&proxy.max_header_size)
            || proxy.max_header_line > proxy.max_header_size
        {
            return Err(self.err(
                "proxy.max_header_line",
                format!(
                    "max_header_line = {} and max_header_size = {} are out of range",
                    proxy.max_header_line, proxy.max_header_size
                ),
                "keep max_header_line within 1 KiB..1 MiB and max_header_size within 8 KiB..1 MiB, the line no larger than the head (defaults 8192 and 65536)",
            ));
        }
        if let Some(ca) = &raw.tls.ca_file
            && !ca.is_file()
        {
            return Err(self.err(
                "tls.ca_file",
                format!("{} is not a readable file", ca.display()),
                "point it at a PEM file of CA certificates",
            ));
        }

        let mut tokens = Vec::with_capacity(raw.tokens.len());
        for (name, token) in raw.tokens {
            tokens.push(self.token(name, token)?);
        }
        if raw.routes.is_empty() {
            return Err(self.err(
                "routes",
                "no [[routes]] are configured",
                "add a [[routes]] table with prefix, upstream and token",
            ));
        }
        let mut routes = Vec::with_capacity(raw.routes.len());
        for (i, route) in raw.routes.into_iter().enumerate() {
            let route = self.route(i, route, &mut tokens)?;
            if let Some(prefix) = &route.prefix
                && routes
                    .iter()
                    .any(|r: &Route| r.prefix.as_ref() == Some(prefix))
            {
                return Err(self.err(
                    format!("routes[{i}].prefix"),
                    format!("`{prefix}` is used by two routes"),
                    "give each route its own prefix",
                ));
            }
            routes.push(route);
        }
        let intercept = match raw.intercept {
            None => None,
            Some(i) => Some(self.intercept(i, &store, &routes)?),
        };
        if let Some(lease) = store.lease() {
            // A lock holder must finish its token request well inside its lease, or a
            // second instance could spend the same refresh token.
            for t in &tokens {
                if lease < t.timeout + LEASE_MARGIN {
                    return Err(self.err(
                        "store.lease",
                        format!(
                            "{} is not longer than tokens.{}.timeout ({}) plus {}",
                            humantime::format_duration(lease),
                            t.name,
                            humantime::format_duration(t.timeout),
                            humantime::format_duration(LEASE_MARGIN)
                        ),
                        "raise store.lease or lower the token's timeout",
                    ));
                }
            }
        }
        Ok(Config {
            file: self.file.into(),
            listen,
            tls: Tls {
                ca_file: raw.tls.ca_file,
            },
            store,
            store_keys,
            proxy,
            intercept,
            tokens,
            routes,
            warnings: self.warnings,
        })
    }

    fn addr(&self, key: &str, text: &str) -> Result<std::net::SocketAddr, ConfigError> {
        text.parse().map_err(|_| {
            self.err(
                key,
                format!("`{text}` is not an IP address and port"),
                "write it as \"127.0.0.1:8080\"",
            )
        })
    }

    /// Checks that `secret` resolves now; warns about a literal unless `public`.
    fn intercept(
        &mut self,
        raw: RawIntercept,
        store: &StoreConfig,
        routes: &[Route],
    ) -> Result<Intercept, ConfigError> {
        let intercept = match (raw.ca.as_deref(), raw.ca_cert, raw.ca_key) {
            (Some("auto"), None, None) => match store {
                StoreConfig::File { path } => Intercept::Auto { dir: path.clone() },
                _ => {
                    return Err(self.err(
                        "intercept.ca",
                        "ca = \"auto\" keeps the CA in the file store's directory, and this configuration uses a shared store",
                        "every replica must present the same CA: create one with `tokenproxy ca init`, give each replica the files, and set ca_cert and ca_key",
                    ));
                }
            },
            (Some("auto"), _, _) => {
                return Err(self.err(
                    "intercept.ca",
                    "ca = \"auto\" and ca_cert/ca_key are both set",
                    "keep either ca = \"auto\" or ca_cert and ca_key",
                ));
            }
            (Some(other), _, _) => {
                return Err(self.err(
                    "intercept.ca",
                    format!("`{other}` is not a CA source"),
                    "write ca = \"auto\", or set ca_cert and ca_key instead",
                ));
            }
            (None, Some(cert), Some(key)) => {
                if key.is_literal() {
                    return Err(self.err(
                        "intercept.ca_key",
                        "the CA key is written in the configuration",
                        "keep it in a file readable only by tokenproxy: ca_key = { file = \"/etc/tokenproxy/ca.key\" }",
                    ));
                }
                Intercept::Files { cert, key }
            }
            (None, _, _) => {
                return Err(self.err(
                    "intercept",
                    "[intercept] needs a CA",
                    "set ca = \"auto\", or ca_cert and ca_key (`tokenproxy ca init` creates them)",
                ));
            }
        };
        if !routes
            .iter()
            .any(|r| r.host.as_deref().is_some_and(is_dns_host))
        {
            self.warnings.push(format!(
                "{}: [intercept] is set but no route has a `host` that is a DNS name: every CONNECT is refused; add host = \"api.example.com\" to the routes to intercept",
                self.file.display()
            ));
        }
        Ok(intercept)
    }

    fn secret(&mut self, key: &str, secret: &SecretRef, public: bool) -> Result<(), ConfigError> {
        secret.resolve().map_err(|e| {
            self.err(
                key,
                e.to_string(),
                "set the variable or create the file, or point the key elsewhere",
            )
        })?;
        if secret.is_literal() && !public {
            self.warnings.push(format!(
                "{}: `{key}` is a literal secret; prefer {{ env = \"VAR\" }} or {{ file = \"PATH\" }}",
                self.file.display()
            ));
        }
        Ok(())
    }

    fn https_url(&self, key: &str, text: &str, fix: &str) -> Result<reqwest::Url, ConfigError> {
        let url: reqwest::Url = text
            .parse()
            .map_err(|e| self.err(key, format!("`{text}` is not a URL: {e}"), fix))?;
        let loopback = url.host_str().is_some_and(is_loopback);
        if url.scheme() != "https" && !(url.scheme() == "http" && loopback) {
            return Err(self.err(
                key,
                format!("`{text}` is not an https URL"),
                format!("{fix} (http:// is accepted only for 127.0.0.1/localhost)"),
            ));
        }
        Ok(url)
    }

    fn token(&mut self, name: String, raw: RawToken) -> Result<TokenConfig, ConfigError> {
        let key = |k: &str| format!("tokens.{name}.{k}");
        if name.is_empty()
            || !name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(self.err(
                format!("tokens.{name}"),
                "a token name may hold only letters, digits, `-` and `_`",
                "rename the table, e.g. [tokens.exact]",
            ));
        }
        let preset: Option<&'static Preset> = match &raw.preset {
            None => None,
            Some(p) => Some(preset::find(p).ok_or_else(|| {
                self.err(
                    key("preset"),
                    format!("`{p}` is not a preset"),
                    format!("use one of {}", preset::names().join(", ")),
                )
            })?),
        };

        let grant_kind = match (&raw.grant, preset) {
            (Some(g), _) => choose(g, &GrantKind::ALL, GrantKind::as_str)
                .map_err(|p| self.err(key("grant"), p, "choose the grant your provider issues tokens with"))?,
            (None, Some(p)) => p.grant,
            (None, None) => return Err(self.err(key("grant"), "is missing", "set grant = \"refresh_token\" (or client_credentials, password, jwt_bearer), or a preset")),
        };

        let endpoint = match (&raw.token_url, &raw.issuer, preset) {
            (Some(_), Some(_), _) => {
                return Err(self.err(
                    key("issuer"),
                    "is set together with token_url",
                    "keep one: token_url, or issuer for discovery",
                ));
            }
            (Some(u), None, _) => Endpoint::Url(self.https_url(
                &key("token_url"),
                u,
                "write the provider's full token endpoint URL",
            )?),
            (None, Some(i), _) => Endpoint::Issuer(self.https_url(
                &key("issuer"),
                i,
                "write the issuer URL the provider documents",
            )?),
            (None, None, Some(p)) => {
                let url = p
                    .token_url(raw.region.as_deref(), raw.tenant.as_deref())
                    .map_err(|e| {
                        self.err(
                            key(if e.contains("tenant") {
                                "tenant"
                            } else {
                                "region"
                            }),
                            e,
                            "see the preset table in the README",
                        )
                    })?;
                Endpoint::Url(self.https_url(&key("token_url"), &url, "check region and tenant")?)
            }
            (None, None, None) => {
                return Err(self.err(
                    key("token_url"),
                    "is missing",
                    "set token_url, issuer (discovery), or a preset",
                ));
            }
        };
        if preset.is_none() && (raw.region.is_some() || raw.tenant.is_some()) {
            return Err(self.err(
                key("region"),
                "region and tenant fill in a preset's token URL, and no preset is set",
                "set preset, or write token_url in full",
            ));
        }

        if let Some(id) = &raw.client_id {
            // A client id identifies, it does not authenticate: a literal is fine.
            self.secret(&key("client_id"), id, true)?;
        }
        // The configured refresh token seeds the store and is read only while the
        // store holds none: a restart after the seed variable was removed must work.
        if let Some(rt) = &raw.refresh_token {
            if rt.is_literal() {
                self.warnings.push(format!(
                    "{}: `{}` is a literal secret; prefer {{ env = \"VAR\" }} or {{ file = \"PATH\" }}",
                    self.file.display(),
                    key("refresh_token")
                ));
            } else if let Err(e) = rt.resolve() {
                self.warnings.push(format!(
                    "{}: `{}`: {e}; it is needed only while the store holds no refresh token for `{name}`",
                    self.file.display(),
                    key("refresh_token")
                ));
            }
        }
        for (k, s) in [
            ("client_secret", &raw.client_secret),
            ("username", &raw.username),
            ("password", &raw.password),
            ("private_key", &raw.private_key),
            ("service_account", &raw.service_account),
            ("client_cert", &raw.client_cert),
            ("client_cert_key", &raw.client_cert_key),
        ] {
            if let Some(s) = s {
                self.secret(&key(k), s, k == "username" || k == "client_cert")?;
            }
        }

        let signing_key = match (&raw.private_key, &raw.service_account) {
            (Some(_), Some(_)) => {
                return Err(self.err(
                    key("service_account"),
                    "is set together with private_key",
                    "keep one: the service account key file carries its own private key",
                ));
            }
            (Some(k), None) => Some(SigningKey::Pem {
                key: k.clone(),
                key_id: raw.key_id.clone(),
            }),
            (None, Some(sa)) => Some(SigningKey::ServiceAccount(sa.clone())),
            (None, None) => None,
        };
        if raw.key_id.is_some() && raw.private_key.is_none() {
            return Err(self.err(
                key("key_id"),
                "names the id of a private_key, and none is set",
                "add private_key, or remove key_id",
            ));
        }
        if raw.client_id.is_none() && raw.service_account.is_none() {
            return Err(self.err(
                key("client_id"),
                "is missing",
                "add client_id = { env = \"VAR\" } (the id the provider gave your app)",
            ));
        }
        let assertion = |key_: SigningKey| Assertion {
            key: key_,
            issuer: raw.jwt_issuer.clone(),
            subject: raw.jwt_subject.clone(),
            audience: raw.jwt_audience.clone(),
            lifetime: raw.jwt_lifetime.unwrap_or(Duration::from_secs(300)),
            scope_in_assertion: raw
                .scope_in_assertion
                .unwrap_or(preset.is_some_and(|p| p.scope_in_assertion)),
        };
        if raw
            .jwt_lifetime
            .is_some_and(|l| l > Duration::from_secs(3600) || l < Duration::from_secs(10))
        {
            return Err(self.err(
                key("jwt_lifetime"),
                "must be between 10s and 1h",
                "providers refuse assertions that live longer than an hour; use \"5m\"",
            ));
        }

        let grant = match grant_kind {
            GrantKind::RefreshToken => Grant::RefreshToken { initial: raw.refresh_token.clone() },
            GrantKind::ClientCredentials => Grant::ClientCredentials,
            GrantKind::Password => match (&raw.username, &raw.password) {
                (Some(u), Some(p)) => Grant::Password { username: u.clone(), password: p.clone() },
                _ => return Err(self.err(key("username"), "grant = \"password\" needs username and password", "add username and password = { env = \"VAR\" }")),
            },
            GrantKind::JwtBearer => match &signing_key {
                Some(k) => Grant::JwtBearer(assertion(k.clone())),
                None => return Err(self.err(key("private_key"), "grant = \"jwt_bearer\" needs a key to sign assertions with", "add private_key = { file = \"key.pem\" } or service_account = { file = \"key.json\" }")),
            },
        };
        if grant_kind != GrantKind::RefreshToken && raw.refresh_token.is_some() {
            return Err(self.err(
                key("refresh_token"),
                format!("is not used by grant = \"{}\"", grant_kind.as_str()),
                "remove it, or use grant = \"refresh_token\"",
            ));
        }
        if grant_kind != GrantKind::Password && (raw.username.is_some() || raw.password.is_some()) {
            return Err(self.err(
                key("username"),
                "username and password are used only by grant = \"password\"",
                "remove them, or use grant = \"password\"",
            ));
        }

        let auth_kind = match (&raw.client_auth, preset) {
            (Some(a), _) => {
                choose(a, &ClientAuthKind::ALL, ClientAuthKind::as_str).map_err(|p| {
                    self.err(
                        key("client_auth"),
                        p,
                        "use post, basic, private_key_jwt, tls_client_auth or none",
                    )
                })?
            }
            (None, Some(p)) => p.client_auth,
            (None, None) if raw.client_secret.is_some() => ClientAuthKind::Post,
            (None, None) if grant_kind == GrantKind::JwtBearer => ClientAuthKind::None,
            (None, None) if raw.private_key.is_some() => ClientAuthKind::PrivateKeyJwt,
            (None, None) if raw.client_cert.is_some() => ClientAuthKind::TlsClientAuth,
            (None, None) => ClientAuthKind::Post,
        };
        let need_secret = |v: &Validator, what: &str| {
            raw.client_secret.clone().ok_or_else(|| {
                v.err(
                    key("client_secret"),
                    format!("is required for client_auth = \"{what}\""),
                    "add client_secret = { env = \"VAR\" }, or choose another client_auth",
                )
            })
        };
        let client_auth = match auth_kind {
            ClientAuthKind::Post if raw.client_secret.is_none() => ClientAuth::None,
            ClientAuthKind::Post => ClientAuth::Post(need_secret(self, "post")?),
            ClientAuthKind::Basic => ClientAuth::Basic(need_secret(self, "basic")?),
            ClientAuthKind::None => ClientAuth::None,
            ClientAuthKind::PrivateKeyJwt => match &signing_key {
                Some(k) => ClientAuth::PrivateKeyJwt(assertion(k.clone())),
                None => {
                    return Err(self.err(
                        key("private_key"),
                        "client_auth = \"private_key_jwt\" needs a private key",
                        "add private_key = { file = \"key.pem\" }",
                    ));
                }
            },
            ClientAuthKind::TlsClientAuth => ClientAuth::TlsClientAuth,
        };
        if matches!(client_auth, ClientAuth::None) && raw.client_secret.is_some() {
            return Err(self.err(
                key("client_secret"),
                "is set but client_auth = \"none\" never sends it",
                "remove client_secret, or use client_auth = \"post\" or \"basic\"",
            ));
        }
        if grant_kind == GrantKind::ClientCredentials && matches!(client_auth, ClientAuth::None) {
            return Err(self.err(
                key("client_secret"),
                "grant = \"client_credentials\" needs client authentication",
                "add client_secret, or use private_key_jwt or tls_client_auth",
            ));
        }
        let client_cert = match (&raw.client_cert, &raw.client_cert_key) {
            (Some(c), Some(k)) => Some((c.clone(), k.clone())),
            (None, None) if auth_kind == ClientAuthKind::TlsClientAuth => {
                return Err(self.err(
                    key("client_cert"),
                    "client_auth = \"tls_client_auth\" needs client_cert and client_cert_key",
                    "add both, as PEM files: { file = \"client.pem\" }",
                ));
            }
            (None, None) => None,
            _ => {
                return Err(self.err(
                    key("client_cert_key"),
                    "client_cert and client_cert_key go together",
                    "set both, or neither",
                ));
            }
        };

        let mut headers = Vec::with_capacity(raw.headers.len());
        for (h, value) in raw.headers {
            let header = HeaderName::from_bytes(h.as_bytes()).map_err(|_| {
                self.err(
                    key("headers"),
                    format!("`{h}` is not a valid header name"),
                    "use a name such as \"X-Api-Key\"",
                )
            })?;
            let k = format!("{}.{h}", key("headers"));
            self.secret(&k, &value, false)?;
            // A value that a header cannot carry (an embedded newline, a control
            // character) would fail every token request, far from its cause.
            if let Ok(v) = value.resolve()
                && http::HeaderValue::try_from(v.expose()).is_err()
            {
                return Err(self.err(
                    &k,
                    "holds characters an HTTP header cannot carry (a line break inside it, or another control character)",
                    "remove the line break: only a final newline of a secret file is dropped",
                ));
            }
            headers.push((header, value));
        }
        const OWN: [&str; 9] = [
            "grant_type",
            "refresh_token",
            "client_id",
            "client_secret",
            "scope",
            "username",
            "password",
            "assertion",
            "client_assertion",
        ];
        let mut params = Vec::new();
        for (k, v) in [("audience", raw.audience), ("resource", raw.resource)] {
            if let Some(v) = v {
                params.push((k.to_owned(), v));
            }
        }
        for (p, v) in raw.params {
            if OWN.contains(&p.as_str()) || params.iter().any(|(k, _)| *k == p) {
                return Err(self.err(
                    key("params"),
                    format!("`{p}` is set by tokenproxy itself or by another key"),
                    "remove it from params",
                ));
            }
            params.push((p, v));
        }

        let authorize_url = match (&raw.authorize_url, preset) {
            (Some(u), _) => Some(self.https_url(
                &key("authorize_url"),
                u,
                "write the provider's authorization endpoint URL",
            )?),
            (None, Some(p)) if grant_kind == GrantKind::RefreshToken => match p
                .authorize_url(raw.region.as_deref(), raw.tenant.as_deref())
            {
                Some(Ok(u)) => {
                    Some(self.https_url(&key("authorize_url"), &u, "check region and tenant")?)
                }
                _ => None,
            },
            (None, _) => None,
        };
        let redirect_uri = raw
            .redirect_uri
            .as_deref()
            .unwrap_or("http://127.0.0.1:8765/callback");
        let redirect_uri: reqwest::Url = redirect_uri.parse().map_err(|e| {
            self.err(
                key("redirect_uri"),
                format!("`{redirect_uri}` is not a URL: {e}"),
                "register and write a URL such as http://127.0.0.1:8765/callback",
            )
        })?;
        if raw.redirect_uri.is_some() && authorize_url.is_none() {
            return Err(self.err(
                key("redirect_uri"),
                "is set, but there is no authorize_url to log in with",
                "add authorize_url (or a preset that has one)",
            ));
        }
        if authorize_url.is_some() && grant_kind != GrantKind::RefreshToken {
            return Err(self.err(key("authorize_url"), "login obtains a refresh token, and this token does not use grant = \"refresh_token\"", "remove authorize_url, or use grant = \"refresh_token\""));
        }
        let mut login_params: Vec<(String, String)> = preset
            .map(|p| {
                p.authorize_params
                    .iter()
                    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                    .collect()
            })
            .unwrap_or_default();
        for (k, v) in raw.authorize_params {
            login_params.retain(|(name, _)| *name != k);
            login_params.push((k, v));
        }
        let login = authorize_url.map(|authorize_url| Login {
            authorize_url,
            redirect_uri,
            params: login_params,
        });

        let default =
            |v: Option<Duration>, preset_value: fn(&Preset) -> Duration, fallback: Duration| {
                v.or(preset.map(preset_value)).unwrap_or(fallback)
            };
        Ok(TokenConfig {
            preset,
            grant,
            endpoint,
            client_id: raw.client_id,
            client_auth_explicit: raw.client_auth.is_some(),
            client_auth,
            client_cert,
            login,
            scope: raw.scope.filter(|s| !s.trim().is_empty()),
            scope_on_refresh: raw.scope_on_refresh.unwrap_or(true),
            params,
            headers,
            refresh_before: default(
                raw.refresh_before,
                |p| p.refresh_before,
                Duration::from_secs(60),
            ),
            min_interval: default(raw.min_interval, |p| p.min_interval, Duration::ZERO),
            default_lifetime: default(
                raw.default_lifetime,
                |p| p.default_lifetime,
                Duration::from_secs(3600),
            ),
            timeout: raw.timeout.unwrap_or(Duration::from_secs(30)),
            in_doubt: raw.in_doubt.unwrap_or_default(),
            injects: Vec::new(),
            dynamic_upstreams: Vec::new(),
            name,
        })
    }

    fn route(
        &mut self,
        i: usize,
        raw: RawRoute,
        tokens: &mut [TokenConfig],
    ) -> Result<Route, ConfigError> {
        let key = |k: &str| format!("routes[{i}].{k}");
        let token = tokens
            .iter()
            .position(|t| t.name == raw.token)
            .ok_or_else(|| {
                let known: Vec<&str> = tokens.iter().map(|t| t.name.as_str()).collect();
                self.err(
                    key("token"),
                    format!("names `{}`, which is not a [tokens] table", raw.token),
                    format!("use one of {known:?} or add [tokens.{}]", raw.token),
                )
            })?;
        let upstream = self.upstream(&key("upstream"), &raw.upstream, &mut tokens[token])?;
        let prefix = match raw.prefix {
            None => None,
            Some(p) if !p.starts_with('/') => {
                return Err(self.err(
                    key("prefix"),
                    format!("`{p}` does not start with `/`"),
                    format!("write it as \"/{p}\""),
                ));
            }
            Some(p) if p.contains("..") || p.contains("//") || p.contains(['?', '#', '%']) => {
                return Err(self.err(
                    key("prefix"),
                    format!("`{p}` is not a plain path"),
                    "use a path such as \"/exact/\"",
                ));
            }
            Some(p) if p.ends_with('/') => Some(p),
            Some(p) => Some(format!("{p}/")),
        };
        let host = match (raw.host, &upstream) {
            (Some(h), _) => {
                let a: Authority = h.parse().map_err(|_| {
                    self.err(
                        key("host"),
                        format!("`{h}` is not a host name"),
                        "write a host such as \"api.example.com\"",
                    )
                })?;
                Some(normalise_host(a.host(), a.port_u16(), 80))
            }
            (None, RouteUpstream::Static(u)) => Some(u.host_key()),
            (None, RouteUpstream::Dynamic { .. }) => None,
        };
        if prefix.is_none() && host.is_none() {
            return Err(self.err(key("prefix"), "the route can match no request: it has no prefix, and its upstream comes from the token so it has no host", "add prefix = \"/name/\" (or host)"));
        }
        let template = raw
            .inject
            .or_else(|| tokens[token].preset.map(|p| p.inject.to_owned()))
            .unwrap_or_else(|| "Authorization: Bearer {token}".to_owned());
        let inject = Inject::parse(&template).map_err(|p| {
            self.err(
                key("inject"),
                p,
                "write it as \"Authorization: Bearer {token}\"",
            )
        })?;
        let injects = &mut tokens[token].injects;
        let inject = injects
            .iter()
            .position(|x| *x == inject)
            .unwrap_or_else(|| {
                injects.push(inject);
                injects.len() - 1
            });
        let mut retry_on = Vec::with_capacity(raw.retry_on.len());
        for code in raw.retry_on {
            match StatusCode::from_u16(code) {
                Ok(s) if s.is_client_error() || s.is_server_error() => retry_on.push(s),
                _ => {
                    return Err(self.err(
                        key("retry_on"),
                        format!("{code} is not an error status"),
                        "list statuses such as [401]",
                    ));
                }
            }
        }
        let mut headers = Vec::with_capacity(raw.headers.len());
        for (h, value) in raw.headers {
            let k = format!("{}.{h}", key("headers"));
            let name = HeaderName::from_bytes(h.as_bytes()).map_err(|_| {
                self.err(
                    &k,
                    format!("`{h}` is not a valid header name"),
                    "use a name such as \"Xero-Tenant-Id\"",
                )
            })?;
            let secret = value
                .resolve()
                .map_err(|e| self.err(&k, e.to_string(), "set the variable or create the file"))?;
            let mut v = HeaderValue::try_from(secret.expose()).map_err(|_| {
                self.err(
                    &k,
                    "is not a valid header value",
                    "remove control characters",
                )
            })?;
            v.set_sensitive(true);
            headers.push((name, v));
        }
        let name = raw.name.unwrap_or_else(|| match (&prefix, &host) {
            (Some(p), _) if p != "/" => p.trim_matches('/').to_owned(),
            (_, Some(h)) => h.clone(),
            _ => "root".to_owned(),
        });
        let rewrite_links = match raw.rewrite_links {
            None => RewriteLinks::Pagination,
            Some(RawRewriteLinks::Flag(true)) => RewriteLinks::All,
            Some(RawRewriteLinks::Flag(false)) => RewriteLinks::Off,
            Some(RawRewriteLinks::Mode(m)) => match m.as_str() {
                "pagination" => RewriteLinks::Pagination,
                "all" => RewriteLinks::All,
                "off" => RewriteLinks::Off,
                _ => {
                    return Err(self.err(
                        key("rewrite_links"),
                        format!("{m:?} is not a way to rewrite links"),
                        "write \"pagination\" (next-page links only, the default), \"all\" (every upstream URL in JSON/XML bodies) or \"off\"",
                    ));
                }
            },
        };
        if !raw.strip_prefix && upstream.base_path() != "/" {
            return Err(self.err(
                key("strip_prefix"),
                "strip_prefix = false sends the request path as it is, so the upstream must have no path",
                "write the upstream as \"https://host/\" (or {token.instance_url}/)",
            ));
        }
        Ok(Route {
            name,
            prefix,
            host,
            upstream,
            token,
            inject,
            retry_on,
            headers,
            rewrite_links,
            strip_prefix: raw.strip_prefix,
        })
    }

    /// A fixed URL, or `{token.FIELD}/path` taken from each token response.
    fn upstream(
        &self,
        key: &str,
        text: &str,
        token: &mut TokenConfig,
    ) -> Result<RouteUpstream, ConfigError> {
        let fix = "write it as \"https://api.example.com/base/\" or \"{token.instance_url}/services/data/\"";
        let Some(rest) = text.strip_prefix("{token.") else {
            return Upstream::parse(text)
                .map(RouteUpstream::Static)
                .map_err(|p| self.err(key, p, fix));
        };
        let (field, path) = rest
            .split_once('}')
            .ok_or_else(|| self.err(key, format!("`{text}` does not close {{token."), fix))?;
        if field.is_empty()
            || !field
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_')
        {
            return Err(self.err(key, format!("`{field}` is not a response field name"), fix));
        }
        if !(path.is_empty() || path.starts_with('/'))
            || path.contains(['?', '#'])
            || path.contains("..")
        {
            return Err(self.err(
                key,
                format!("`{path}` after {{token.{field}}} must be a path starting with `/`"),
                fix,
            ));
        }
        let mut path = path.to_owned();
        if !path.ends_with('/') {
            path.push('/');
        }
        let entry = (field.to_owned(), path.clone());
        let dynamic = &mut token.dynamic_upstreams;
        let index = dynamic.iter().position(|d| *d == entry).unwrap_or_else(|| {
            dynamic.push(entry);
            dynamic.len() - 1
        });
        Ok(RouteUpstream::Dynamic {
            index,
            base_path: path,
        })
    }
}
