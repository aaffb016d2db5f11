//! What each token request carries besides the grant: headers, and extra form
//! fields (`audience`, `resource`, `params`).

use std::collections::BTreeMap;

use http::HeaderName;

use super::Validator;
use crate::config::ConfigError;
use crate::config::raw::RawToken;
use crate::secret::SecretRef;

/// Form fields tokenproxy writes itself; `params` may not set them.
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

impl Validator<'_> {
    pub(super) fn token_headers(
        &mut self,
        key: &str,
        raw: &BTreeMap<String, SecretRef>,
    ) -> Result<Vec<(HeaderName, SecretRef)>, ConfigError> {
        let mut headers = Vec::with_capacity(raw.len());
        for (h, value) in raw {
            let header = HeaderName::from_bytes(h.as_bytes()).map_err(|_| {
                self.err(
                    key,
                    format!("`{h}` is not a valid header name"),
                    "use a name such as \"X-Api-Key\"",
                )
            })?;
            let k = format!("{key}.{h}");
            self.secret(&k, value, false)?;
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
            headers.push((header, value.clone()));
        }
        Ok(headers)
    }

    pub(super) fn params(
        &self,
        key: &str,
        raw: &RawToken,
    ) -> Result<Vec<(String, String)>, ConfigError> {
        let mut params = Vec::new();
        for (k, v) in [("audience", &raw.audience), ("resource", &raw.resource)] {
            if let Some(v) = v {
                params.push((k.to_owned(), v.clone()));
            }
        }
        for (p, v) in &raw.params {
            if OWN.contains(&p.as_str()) || params.iter().any(|(k, _)| k == p) {
                return Err(self.err(
                    key,
                    format!("`{p}` is set by tokenproxy itself or by another key"),
                    "remove it from params",
                ));
            }
            params.push((p.clone(), v.clone()));
        }
        Ok(params)
    }
}
