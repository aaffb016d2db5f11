//! Finding the token endpoint from an issuer (RFC 8414, OpenID Connect Discovery).
//!
//! The RFC 8414 location inserts the well-known path before the issuer's path
//! (`https://id.example.com/.well-known/oauth-authorization-server/tenant`); the
//! OpenID location appends it (`…/tenant/.well-known/openid-configuration`). The
//! metadata must name the same issuer, or it is refused: otherwise a redirect or a
//! misconfiguration could send the client's credentials to another server.

use reqwest::Url;

use super::response::GrantError;
use crate::config::{ClientAuthKind, is_loopback};

/// What tokenproxy takes from the metadata.
#[derive(Debug, Clone)]
pub struct Metadata {
    pub token_endpoint: Url,
    /// `token_endpoint_auth_methods_supported`; RFC 8414 §2: absent means
    /// `client_secret_basic` only.
    pub auth_methods: Vec<String>,
}

impl Metadata {
    /// The secret-based method to use when the configuration did not name one.
    pub fn prefers_basic(&self) -> bool {
        let has = |k: ClientAuthKind| self.auth_methods.iter().any(|m| m == k.metadata_name());
        has(ClientAuthKind::Basic) || !has(ClientAuthKind::Post)
    }
}

/// The candidate metadata URLs for `issuer`, RFC 8414 first.
pub fn locations(issuer: &Url) -> Vec<Url> {
    let path = issuer.path().trim_end_matches('/');
    let mut rfc8414 = issuer.clone();
    rfc8414.set_path(&format!("/.well-known/oauth-authorization-server{path}"));
    let mut oidc = issuer.clone();
    oidc.set_path(&format!("{path}/.well-known/openid-configuration"));
    for u in [&mut rfc8414, &mut oidc] {
        u.set_query(None);
        u.set_fragment(None);
    }
    vec![rfc8414, oidc]
}

/// Fetches the metadata; each request is bounded by `timeout` (a hung discovery
/// document must not hold a refresh forever).
pub async fn discover(
    http: &reqwest::Client,
    issuer: &Url,
    timeout: std::time::Duration,
) -> Result<Metadata, GrantError> {
    let mut last = String::new();
    for url in locations(issuer) {
        let resp = match http
            .get(url.clone())
            .timeout(timeout)
            .header(http::header::ACCEPT, "application/json")
            .send()
            .await
        {
            Ok(r) => r,
            Err(e) => {
                last = format!("{url}: {e}");
                continue;
            }
        };
        if !resp.status().is_success() {
            last = format!("{url} answered {}", resp.status());
            continue;
        }
        // The request's timeout covers reading the body too.
        let v: serde_json::Value = match resp
            .bytes()
            .await
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
        {
            Some(v) => v,
            None => {
                last = format!("{url} is not JSON");
                continue;
            }
        };
        return parse(issuer, &v).map_err(|detail| GrantError::Malformed {
            status: 200,
            detail: format!("discovery metadata at {url}: {detail}"),
        });
    }
    Err(GrantError::Unsent(format!(
        "token endpoint unreachable: discovery failed: {last}"
    )))
}

fn parse(issuer: &Url, v: &serde_json::Value) -> Result<Metadata, String> {
    let named = v["issuer"].as_str().ok_or("no issuer")?;
    if named.trim_end_matches('/') != issuer.as_str().trim_end_matches('/') {
        return Err(format!("it names issuer {named}, not {issuer}"));
    }
    let endpoint = v["token_endpoint"].as_str().ok_or("no token_endpoint")?;
    let token_endpoint: Url = endpoint
        .parse()
        .map_err(|_| format!("token_endpoint {endpoint} is not a URL"))?;
    let loopback = token_endpoint.host_str().is_some_and(is_loopback);
    if token_endpoint.scheme() != "https" && !(token_endpoint.scheme() == "http" && loopback) {
        return Err(format!("token_endpoint {endpoint} is not https"));
    }
    let auth_methods = match v
        .get("token_endpoint_auth_methods_supported")
        .and_then(|m| m.as_array())
    {
        Some(list) => list
            .iter()
            .filter_map(|m| m.as_str().map(str::to_owned))
            .collect(),
        None => vec!["client_secret_basic".to_owned()],
    };
    Ok(Metadata {
        token_endpoint,
        auth_methods,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn well_known_goes_before_the_issuer_path() {
        let urls = locations(&"https://id.example.com/tenant1/".parse().unwrap());
        assert_eq!(
            urls[0].as_str(),
            "https://id.example.com/.well-known/oauth-authorization-server/tenant1"
        );
        assert_eq!(
            urls[1].as_str(),
            "https://id.example.com/tenant1/.well-known/openid-configuration"
        );
        let urls = locations(&"https://id.example.com".parse().unwrap());
        assert_eq!(
            urls[0].as_str(),
            "https://id.example.com/.well-known/oauth-authorization-server"
        );
    }

    #[test]
    fn issuer_must_match_and_endpoint_must_be_https() {
        let issuer: Url = "https://id.example.com/t".parse().unwrap();
        let ok = json!({"issuer": "https://id.example.com/t", "token_endpoint": "https://id.example.com/t/token"});
        let m = parse(&issuer, &ok).unwrap();
        assert_eq!(m.token_endpoint.as_str(), "https://id.example.com/t/token");
        assert!(m.prefers_basic(), "absent methods mean client_secret_basic");
        let other = json!({"issuer": "https://evil.example.com/t", "token_endpoint": "https://evil.example.com/token"});
        assert!(parse(&issuer, &other).unwrap_err().contains("evil"));
        let plain = json!({"issuer": "https://id.example.com/t", "token_endpoint": "http://id.example.com/token"});
        assert!(parse(&issuer, &plain).unwrap_err().contains("not https"));
        let post = json!({"issuer": "https://id.example.com/t", "token_endpoint": "https://id.example.com/token",
                          "token_endpoint_auth_methods_supported": ["client_secret_post", "private_key_jwt"]});
        assert!(!parse(&issuer, &post).unwrap().prefers_basic());
    }
}
