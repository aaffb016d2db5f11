//! `tokenproxy login` for a token: the authorization endpoint, where the browser
//! comes back, and the parameters it is sent with.

use super::Validator;
use crate::config::preset::Preset;
use crate::config::raw::RawToken;
use crate::config::{ConfigError, GrantKind, Login};

impl Validator<'_> {
    pub(super) fn login(
        &self,
        key: &impl Fn(&str) -> String,
        grant: GrantKind,
        raw: &RawToken,
        preset: Option<&Preset>,
    ) -> Result<Option<Login>, ConfigError> {
        let authorize_url = match (&raw.authorize_url, preset) {
            (Some(u), _) => Some(self.https_url(
                &key("authorize_url"),
                u,
                "write the provider's authorization endpoint URL",
            )?),
            (None, Some(p)) if grant == GrantKind::RefreshToken => match p
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
        if authorize_url.is_some() && grant != GrantKind::RefreshToken {
            return Err(self.err(key("authorize_url"), "login obtains a refresh token, and this token does not use grant = \"refresh_token\"", "remove authorize_url, or use grant = \"refresh_token\""));
        }
        // The preset's parameters, each replaced by one written with the same name.
        let mut params: Vec<(String, String)> = preset
            .map(|p| {
                p.authorize_params
                    .iter()
                    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                    .collect()
            })
            .unwrap_or_default();
        for (k, v) in &raw.authorize_params {
            params.retain(|(name, _)| name != k);
            params.push((k.clone(), v.clone()));
        }
        Ok(authorize_url.map(|authorize_url| Login {
            authorize_url,
            redirect_uri,
            params,
        }))
    }
}
