//! The fake provider's pages besides the token endpoint: the authorization
//! endpoint (consent given or refused at once) and the discovery document.

use super::*;

impl Provider {
    /// The user's side of RFC 6749 §4.1.1, decided at once: a redirect back with a
    /// code (or `access_denied`), after checking what a real server checks.
    pub(super) fn authorize(&self, uri: &http::Uri) -> Response<FakeBody> {
        let q: std::collections::HashMap<String, String> =
            form_urlencoded::parse(uri.query().unwrap_or("").as_bytes())
                .into_owned()
                .collect();
        let mut s = self.lock();
        let bad = if q.get("response_type").map(String::as_str) != Some("code") {
            Some("response_type must be code")
        } else if q.get("client_id") != Some(&s.opts.client_id) {
            Some("unknown client_id")
        } else if q.get("code_challenge_method").map(String::as_str) != Some("S256")
            || !q.contains_key("code_challenge")
        {
            Some("PKCE S256 is required")
        } else if !q.contains_key("state") {
            Some("state is required")
        } else {
            None
        };
        let Some(redirect) = q.get("redirect_uri").filter(|_| bad.is_none()) else {
            drop(s);
            return self.error(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                bad.unwrap_or("redirect_uri is required"),
            );
        };
        let state = form_urlencoded::byte_serialize(q["state"].as_bytes()).collect::<String>();
        let location = if s.consent {
            let code = format!("code-{:016x}", fastrand::u64(..));
            s.codes.insert(
                code.clone(),
                (q["code_challenge"].clone(), redirect.clone()),
            );
            format!("{redirect}?code={code}&state={state}")
        } else {
            format!(
                "{redirect}?error=access_denied&error_description=The+user+denied+access&state={state}"
            )
        };
        let mut r = Response::new(FakeBody::full(""));
        *r.status_mut() = StatusCode::FOUND;
        if let Ok(v) = http::HeaderValue::try_from(location) {
            r.headers_mut().insert(http::header::LOCATION, v);
        }
        r
    }

    /// RFC 8414 metadata at the well-known location for the issuer.
    pub(super) fn metadata(&self, path: &str) -> Response<FakeBody> {
        if path != "/.well-known/oauth-authorization-server" {
            return json_resp(StatusCode::NOT_FOUND, json!({"error": "not_found"}));
        }
        let methods = match self.lock().opts.expect_auth {
            ExpectAuth::Basic => vec!["client_secret_basic"],
            ExpectAuth::Post => vec!["client_secret_post"],
            ExpectAuth::PrivateKeyJwt => vec!["private_key_jwt"],
            ExpectAuth::Secret => vec!["client_secret_basic", "client_secret_post"],
            ExpectAuth::Nothing => vec!["none"],
        };
        json_resp(
            StatusCode::OK,
            json!({
                "issuer": self.issuer,
                "token_endpoint": self.token_url,
                "token_endpoint_auth_methods_supported": methods,
                "grant_types_supported": ["refresh_token", "client_credentials", "password"],
            }),
        )
    }
}
