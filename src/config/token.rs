//! A token as configured: its grant, endpoint and client authentication.

use std::fmt;
use std::time::Duration;

use http::HeaderName;

use super::route::Inject;
use super::{Delivery, InDoubt, Preset};
use crate::secret::SecretRef;

/// The grants, without their data (for presets and labels).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GrantKind {
    RefreshToken,
    ClientCredentials,
    Password,
    JwtBearer,
}

impl GrantKind {
    pub const ALL: [GrantKind; 4] = [
        GrantKind::RefreshToken,
        GrantKind::ClientCredentials,
        GrantKind::Password,
        GrantKind::JwtBearer,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            GrantKind::RefreshToken => "refresh_token",
            GrantKind::ClientCredentials => "client_credentials",
            GrantKind::Password => "password",
            GrantKind::JwtBearer => "jwt_bearer",
        }
    }

    /// The `grant_type` form value.
    pub fn grant_type(self) -> &'static str {
        match self {
            GrantKind::JwtBearer => "urn:ietf:params:oauth:grant-type:jwt-bearer",
            other => other.as_str(),
        }
    }
}

/// How a token source obtains access tokens, with what each grant needs.
#[derive(Debug, PartialEq)]
pub enum Grant {
    /// `initial` is used only while the store holds no refresh token.
    RefreshToken {
        initial: Option<SecretRef>,
    },
    ClientCredentials,
    Password {
        username: SecretRef,
        password: SecretRef,
    },
    /// RFC 7523: a signed assertion for every request.
    JwtBearer(Assertion),
}

impl Grant {
    pub fn kind(&self) -> GrantKind {
        match self {
            Grant::RefreshToken { .. } => GrantKind::RefreshToken,
            Grant::ClientCredentials => GrantKind::ClientCredentials,
            Grant::Password { .. } => GrantKind::Password,
            Grant::JwtBearer(_) => GrantKind::JwtBearer,
        }
    }

    pub fn as_str(&self) -> &'static str {
        self.kind().as_str()
    }
}

/// Where the signing key and its claims come from.
#[derive(Debug, Clone, PartialEq)]
pub enum SigningKey {
    /// A PEM private key (PKCS#8, or PKCS#1 RSA, or SEC1 EC) and an optional `kid`.
    Pem {
        key: SecretRef,
        key_id: Option<String>,
    },
    /// A Google service account key file: `client_email`, `private_key`, `private_key_id`.
    ServiceAccount(SecretRef),
}

/// The claims of a JWT assertion (RFC 7523 §3). `None` means the default: issuer
/// the client id (or the service account's email), audience the token URL.
#[derive(Debug, Clone, PartialEq)]
pub struct Assertion {
    pub key: SigningKey,
    pub issuer: Option<String>,
    pub subject: Option<String>,
    pub audience: Option<String>,
    pub lifetime: Duration,
    /// Put `scope` in the claims (Google) instead of the form.
    pub scope_in_assertion: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientAuthKind {
    /// Public client, or a grant that authenticates by itself (JWT bearer).
    None,
    Post,
    Basic,
    PrivateKeyJwt,
    TlsClientAuth,
}

impl ClientAuthKind {
    pub const ALL: [ClientAuthKind; 5] = [
        ClientAuthKind::None,
        ClientAuthKind::Post,
        ClientAuthKind::Basic,
        ClientAuthKind::PrivateKeyJwt,
        ClientAuthKind::TlsClientAuth,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ClientAuthKind::None => "none",
            ClientAuthKind::Post => "post",
            ClientAuthKind::Basic => "basic",
            ClientAuthKind::PrivateKeyJwt => "private_key_jwt",
            ClientAuthKind::TlsClientAuth => "tls_client_auth",
        }
    }

    /// The RFC 8414 `token_endpoint_auth_methods_supported` name.
    pub fn metadata_name(self) -> &'static str {
        match self {
            ClientAuthKind::None => "none",
            ClientAuthKind::Post => "client_secret_post",
            ClientAuthKind::Basic => "client_secret_basic",
            ClientAuthKind::PrivateKeyJwt => "private_key_jwt",
            ClientAuthKind::TlsClientAuth => "tls_client_auth",
        }
    }
}

/// How the client authenticates at the token endpoint, with what it needs.
#[derive(Debug, PartialEq)]
pub enum ClientAuth {
    /// `client_id` in the form (when there is one), nothing else.
    None,
    /// `client_id` and `client_secret` in the form body.
    Post(SecretRef),
    /// HTTP Basic with the form-urlencoded id and secret (RFC 6749 §2.3.1).
    Basic(SecretRef),
    /// A signed `client_assertion` (RFC 7523 §2.2).
    PrivateKeyJwt(Assertion),
    /// The client certificate of the TLS connection (RFC 8705 §2.1).
    TlsClientAuth,
}

/// Where the token endpoint is.
#[derive(Debug, Clone, PartialEq)]
pub enum Endpoint {
    Url(reqwest::Url),
    /// Found through RFC 8414 / OpenID discovery on first use.
    Issuer(reqwest::Url),
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Endpoint::Url(u) => write!(f, "{u}"),
            Endpoint::Issuer(u) => write!(f, "(discovered from issuer {u})"),
        }
    }
}

#[derive(Debug, PartialEq)]
pub struct TokenConfig {
    pub name: String,
    pub preset: Option<&'static Preset>,
    pub grant: Grant,
    pub endpoint: Endpoint,
    /// Absent only for a service account key, which carries its own identity.
    pub client_id: Option<SecretRef>,
    pub client_auth: ClientAuth,
    /// Whether `client_auth` was written (discovery may choose it otherwise).
    pub client_auth_explicit: bool,
    /// Certificate chain and key (PEM) for mutual TLS to the token endpoint.
    pub client_cert: Option<(SecretRef, SecretRef)>,
    /// For `tokenproxy login` (authorization code with PKCE).
    pub login: Option<Login>,
    pub scope: Option<String>,
    pub scope_on_refresh: bool,
    /// Extra form fields (`audience`, `resource` and `params`), in order.
    pub params: Vec<(String, String)>,
    pub headers: Vec<(HeaderName, SecretRef)>,
    pub refresh_before: Duration,
    pub min_interval: Duration,
    pub default_lifetime: Duration,
    pub timeout: Duration,
    pub in_doubt: InDoubt,
    /// The distinct injection templates of the routes that use this token; a token's
    /// state carries one pre-built credential per template, in this order.
    pub injects: Vec<Inject>,
    /// The token-response fields that routes take their upstream from
    /// (`{token.instance_url}`), with the path after them; in this order.
    pub dynamic_upstreams: Vec<(String, String)>,
    /// Vending and sink files: not part of how the token is obtained, so a
    /// reload that changes only these keeps the token's source.
    pub delivery: Delivery,
}

impl TokenConfig {
    /// Whether `other` obtains its tokens as this one does (all but delivery). Every
    /// field is named, so that a new one must be placed on one side or the other.
    pub fn same_source(&self, other: &TokenConfig) -> bool {
        let TokenConfig {
            name,
            preset,
            grant,
            endpoint,
            client_id,
            client_auth,
            client_auth_explicit,
            client_cert,
            login,
            scope,
            scope_on_refresh,
            params,
            headers,
            refresh_before,
            min_interval,
            default_lifetime,
            timeout,
            in_doubt,
            injects,
            dynamic_upstreams,
            delivery: _,
        } = self;
        name == &other.name
            && preset == &other.preset
            && grant == &other.grant
            && endpoint == &other.endpoint
            && client_id == &other.client_id
            && client_auth == &other.client_auth
            && client_auth_explicit == &other.client_auth_explicit
            && client_cert == &other.client_cert
            && login == &other.login
            && scope == &other.scope
            && scope_on_refresh == &other.scope_on_refresh
            && params == &other.params
            && headers == &other.headers
            && refresh_before == &other.refresh_before
            && min_interval == &other.min_interval
            && default_lifetime == &other.default_lifetime
            && timeout == &other.timeout
            && in_doubt == &other.in_doubt
            && injects == &other.injects
            && dynamic_upstreams == &other.dynamic_upstreams
    }
}

/// Where `tokenproxy login` sends the browser, and where it comes back.
#[derive(Debug, Clone, PartialEq)]
pub struct Login {
    pub authorize_url: reqwest::Url,
    /// Default `http://127.0.0.1:8765/callback`; port 0 picks a free port.
    pub redirect_uri: reqwest::Url,
    pub params: Vec<(String, String)>,
}
