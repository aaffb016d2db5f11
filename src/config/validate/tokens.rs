//! `[tokens.NAME]`: where a token comes from and how the client proves itself.
//! What each token request carries besides is in `request`, how a person logs in
//! for one in `login`, where it goes besides requests in `delivery`.

use std::time::Duration;

use super::{Validator, choose};
use crate::config::preset::{self, Preset};
use crate::config::raw::RawToken;
use crate::config::{
    Assertion, ClientAuth, ClientAuthKind, ConfigError, Endpoint, Grant, GrantKind, SecretRef,
    SigningKey, TokenConfig,
};

impl Validator<'_> {
    pub(super) fn token(
        &mut self,
        name: String,
        raw: RawToken,
    ) -> Result<TokenConfig, ConfigError> {
        let key = |k: &str| format!("tokens.{name}.{k}");
        self.token_name(&name)?;
        let preset = self.preset(&key("preset"), raw.preset.as_deref())?;
        let grant_kind = match (&raw.grant, preset) {
            (Some(g), _) => choose(g, &GrantKind::ALL, GrantKind::as_str)
                .map_err(|p| self.err(key("grant"), p, "choose the grant your provider issues tokens with"))?,
            (None, Some(p)) => p.grant,
            (None, None) => return Err(self.err(key("grant"), "is missing", "set grant = \"refresh_token\" (or client_credentials, password, jwt_bearer), or a preset")),
        };
        let endpoint = self.endpoint(&key, &raw, preset)?;
        self.token_secrets(&key, &name, &raw)?;
        let signing_key = self.signing_key(&key, &raw)?;
        let assertion = |k: &SigningKey| assertion(&raw, preset, k.clone());
        let grant = self.grant(&key, grant_kind, &raw, signing_key.as_ref().map(assertion))?;
        let (auth_kind, client_auth) = self.client_auth(
            &key,
            grant_kind,
            &raw,
            preset,
            signing_key.as_ref().map(assertion),
        )?;
        let client_cert = self.client_cert(&key, auth_kind, &raw)?;
        let headers = self.token_headers(&key("headers"), &raw.headers)?;
        let params = self.params(&key("params"), &raw)?;
        let login = self.login(&key, grant_kind, &raw, preset)?;
        let default =
            |v: Option<Duration>, preset_value: fn(&Preset) -> Duration, fallback: Duration| {
                v.or(preset.map(preset_value)).unwrap_or(fallback)
            };
        Ok(TokenConfig {
            delivery: self.delivery(&key, &raw)?,
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

    fn token_name(&self, name: &str) -> Result<(), ConfigError> {
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
        Ok(())
    }

    fn preset(
        &self,
        key: &str,
        name: Option<&str>,
    ) -> Result<Option<&'static Preset>, ConfigError> {
        let Some(p) = name else { return Ok(None) };
        preset::find(p).map(Some).ok_or_else(|| {
            self.err(
                key,
                format!("`{p}` is not a preset"),
                format!("use one of {}", preset::names().join(", ")),
            )
        })
    }

    /// The token endpoint: written, discovered from an issuer, or the preset's.
    fn endpoint(
        &self,
        key: &impl Fn(&str) -> String,
        raw: &RawToken,
        preset: Option<&Preset>,
    ) -> Result<Endpoint, ConfigError> {
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
                        let k = if e.contains("tenant") {
                            "tenant"
                        } else {
                            "region"
                        };
                        self.err(key(k), e, "see the preset table in the README")
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
        Ok(endpoint)
    }

    /// Every secret the token names must be readable now, except the refresh
    /// token: it seeds the store and is read only while the store holds none, so a
    /// restart after the seed variable was removed must work.
    fn token_secrets(
        &mut self,
        key: &impl Fn(&str) -> String,
        name: &str,
        raw: &RawToken,
    ) -> Result<(), ConfigError> {
        if let Some(id) = &raw.client_id {
            // A client id identifies, it does not authenticate: a literal is fine.
            self.secret(&key("client_id"), id, true)?;
        }
        if let Some(rt) = &raw.refresh_token {
            if rt.is_literal() {
                self.warn(format_args!(
                    "`{}` is a literal secret; prefer {{ env = \"VAR\" }} or {{ file = \"PATH\" }}",
                    key("refresh_token")
                ));
            } else if let Err(e) = rt.resolve() {
                self.warn(format_args!(
                    "`{}`: {e}; it is needed only while the store holds no refresh token for `{name}`",
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
        Ok(())
    }

    /// The key assertions are signed with, and the checks on what goes with it.
    fn signing_key(
        &self,
        key: &impl Fn(&str) -> String,
        raw: &RawToken,
    ) -> Result<Option<SigningKey>, ConfigError> {
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
        Ok(signing_key)
    }

    fn grant(
        &self,
        key: &impl Fn(&str) -> String,
        kind: GrantKind,
        raw: &RawToken,
        assertion: Option<Assertion>,
    ) -> Result<Grant, ConfigError> {
        let grant = match kind {
            GrantKind::RefreshToken => Grant::RefreshToken { initial: raw.refresh_token.clone() },
            GrantKind::ClientCredentials => Grant::ClientCredentials,
            GrantKind::Password => match (&raw.username, &raw.password) {
                (Some(u), Some(p)) => Grant::Password { username: u.clone(), password: p.clone() },
                _ => return Err(self.err(key("username"), "grant = \"password\" needs username and password", "add username and password = { env = \"VAR\" }")),
            },
            GrantKind::JwtBearer => match assertion {
                Some(a) => Grant::JwtBearer(a),
                None => return Err(self.err(key("private_key"), "grant = \"jwt_bearer\" needs a key to sign assertions with", "add private_key = { file = \"key.pem\" } or service_account = { file = \"key.json\" }")),
            },
        };
        if kind != GrantKind::RefreshToken && raw.refresh_token.is_some() {
            return Err(self.err(
                key("refresh_token"),
                format!("is not used by grant = \"{}\"", kind.as_str()),
                "remove it, or use grant = \"refresh_token\"",
            ));
        }
        if kind != GrantKind::Password && (raw.username.is_some() || raw.password.is_some()) {
            return Err(self.err(
                key("username"),
                "username and password are used only by grant = \"password\"",
                "remove them, or use grant = \"password\"",
            ));
        }
        Ok(grant)
    }

    /// How the client authenticates at the token endpoint: written, the
    /// preset's, or what the credentials given imply.
    fn client_auth(
        &self,
        key: &impl Fn(&str) -> String,
        grant: GrantKind,
        raw: &RawToken,
        preset: Option<&Preset>,
        assertion: Option<Assertion>,
    ) -> Result<(ClientAuthKind, ClientAuth), ConfigError> {
        let kind = match (&raw.client_auth, preset) {
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
            (None, None) if grant == GrantKind::JwtBearer => ClientAuthKind::None,
            (None, None) if raw.private_key.is_some() => ClientAuthKind::PrivateKeyJwt,
            (None, None) if raw.client_cert.is_some() => ClientAuthKind::TlsClientAuth,
            (None, None) => ClientAuthKind::Post,
        };
        let need_secret = |what: &str| -> Result<SecretRef, ConfigError> {
            raw.client_secret.clone().ok_or_else(|| {
                self.err(
                    key("client_secret"),
                    format!("is required for client_auth = \"{what}\""),
                    "add client_secret = { env = \"VAR\" }, or choose another client_auth",
                )
            })
        };
        let auth = match kind {
            ClientAuthKind::Post if raw.client_secret.is_none() => ClientAuth::None,
            ClientAuthKind::Post => ClientAuth::Post(need_secret("post")?),
            ClientAuthKind::Basic => ClientAuth::Basic(need_secret("basic")?),
            ClientAuthKind::None => ClientAuth::None,
            ClientAuthKind::PrivateKeyJwt => match assertion {
                Some(a) => ClientAuth::PrivateKeyJwt(a),
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
        if matches!(auth, ClientAuth::None) && raw.client_secret.is_some() {
            return Err(self.err(
                key("client_secret"),
                "is set but client_auth = \"none\" never sends it",
                "remove client_secret, or use client_auth = \"post\" or \"basic\"",
            ));
        }
        if grant == GrantKind::ClientCredentials && matches!(auth, ClientAuth::None) {
            return Err(self.err(
                key("client_secret"),
                "grant = \"client_credentials\" needs client authentication",
                "add client_secret, or use private_key_jwt or tls_client_auth",
            ));
        }
        Ok((kind, auth))
    }

    fn client_cert(
        &self,
        key: &impl Fn(&str) -> String,
        auth: ClientAuthKind,
        raw: &RawToken,
    ) -> Result<Option<(SecretRef, SecretRef)>, ConfigError> {
        match (&raw.client_cert, &raw.client_cert_key) {
            (Some(c), Some(k)) => Ok(Some((c.clone(), k.clone()))),
            (None, None) if auth == ClientAuthKind::TlsClientAuth => Err(self.err(
                key("client_cert"),
                "client_auth = \"tls_client_auth\" needs client_cert and client_cert_key",
                "add both, as PEM files: { file = \"client.pem\" }",
            )),
            (None, None) => Ok(None),
            _ => Err(self.err(
                key("client_cert_key"),
                "client_cert and client_cert_key go together",
                "set both, or neither",
            )),
        }
    }
}

/// A signed assertion's claims, from the token's keys and its preset.
fn assertion(raw: &RawToken, preset: Option<&Preset>, key: SigningKey) -> Assertion {
    Assertion {
        key,
        issuer: raw.jwt_issuer.clone(),
        subject: raw.jwt_subject.clone(),
        audience: raw.jwt_audience.clone(),
        lifetime: raw.jwt_lifetime.unwrap_or(Duration::from_secs(300)),
        scope_in_assertion: raw
            .scope_in_assertion
            .unwrap_or(preset.is_some_and(|p| p.scope_in_assertion)),
    }
}
