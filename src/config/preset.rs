//! Provider presets: the defaults a user would otherwise have to look up.
//!
//! A preset fills what the provider fixes (token URL template, grant, client
//! authentication, lifetimes and refresh margins, the injection format); every
//! value it sets can still be written explicitly in the token's table, and an
//! explicit value wins. Facts come from the providers' documentation.

use std::time::Duration;

use super::{ClientAuthKind, GrantKind};

#[derive(Debug, PartialEq)]
pub struct Preset {
    pub name: &'static str,
    /// May contain `{region}` or `{tenant}`.
    pub token_url: &'static str,
    /// Where a person authorises the app (`tokenproxy login`); same placeholders.
    pub authorize_url: Option<&'static str>,
    /// Extra authorization request parameters the provider needs for a refresh token.
    pub authorize_params: &'static [(&'static str, &'static str)],
    /// Allowed `region` values, the first being the default; empty when unused.
    pub regions: &'static [&'static str],
    pub needs_tenant: bool,
    pub grant: GrantKind,
    pub client_auth: ClientAuthKind,
    pub refresh_before: Duration,
    pub min_interval: Duration,
    pub default_lifetime: Duration,
    pub inject: &'static str,
    /// Google puts the scope in the JWT assertion, not in the form.
    pub scope_in_assertion: bool,
    /// Suggested route upstream, for documentation and `check` hints.
    pub upstream_hint: &'static str,
    /// The provider's documented rate limits: (calls, seconds).
    pub limits: &'static [(u64, u64)],
    /// Whose quota a request spends: the path segment (after the route's prefix,
    /// counted from 1) that names it, such as Exact Online's division; else the
    /// route's.
    pub quota_segment: Option<usize>,
}

const fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

const BEARER: &str = "Authorization: Bearer {token}";

pub const PRESETS: &[Preset] = &[
    Preset {
        name: "exact-online",
        token_url: "https://start.exactonline.{region}/api/oauth2/token",
        authorize_url: Some("https://start.exactonline.{region}/api/oauth2/auth"),
        authorize_params: &[],
        regions: &["nl", "be", "de", "co.uk", "com", "es", "fr"],
        needs_tenant: false,
        grant: GrantKind::RefreshToken,
        client_auth: ClientAuthKind::Post,
        // 600 s tokens; refreshes are refused until 570 s after the last issue.
        refresh_before: secs(30),
        min_interval: secs(570),
        default_lifetime: secs(600),
        inject: BEARER,
        scope_in_assertion: false,
        upstream_hint: "https://start.exactonline.nl/api/",
        // Per company (division, the path's second segment: v1/{division}/...):
        // 60 calls a minute and 5,000 a day.
        limits: &[(60, 60), (5000, 86_400)],
        quota_segment: Some(2),
    },
    Preset {
        name: "salesforce",
        token_url: "https://login.salesforce.com/services/oauth2/token",
        authorize_url: Some("https://login.salesforce.com/services/oauth2/authorize"),
        authorize_params: &[],
        regions: &[],
        needs_tenant: false,
        grant: GrantKind::RefreshToken,
        client_auth: ClientAuthKind::Post,
        // No expires_in in the response: the session policy decides; 401 refreshes.
        refresh_before: secs(60),
        min_interval: Duration::ZERO,
        default_lifetime: secs(3600),
        inject: BEARER,
        scope_in_assertion: false,
        upstream_hint: "{token.instance_url}/services/data/",
        limits: &[],
        quota_segment: None,
    },
    Preset {
        name: "hubspot",
        token_url: "https://api.hubapi.com/oauth/v1/token",
        authorize_url: Some("https://app.hubspot.com/oauth/authorize"),
        authorize_params: &[],
        regions: &[],
        needs_tenant: false,
        grant: GrantKind::RefreshToken,
        client_auth: ClientAuthKind::Post,
        refresh_before: secs(60),
        min_interval: Duration::ZERO,
        default_lifetime: secs(1800),
        inject: BEARER,
        scope_in_assertion: false,
        upstream_hint: "https://api.hubapi.com/",
        limits: &[],
        quota_segment: None,
    },
    Preset {
        name: "xero",
        token_url: "https://identity.xero.com/connect/token",
        authorize_url: Some("https://login.xero.com/identity/connect/authorize"),
        authorize_params: &[],
        regions: &[],
        needs_tenant: false,
        grant: GrantKind::RefreshToken,
        client_auth: ClientAuthKind::Basic,
        refresh_before: secs(60),
        min_interval: Duration::ZERO,
        default_lifetime: secs(1800),
        inject: BEARER,
        scope_in_assertion: false,
        upstream_hint: "https://api.xero.com/api.xro/2.0/",
        limits: &[],
        quota_segment: None,
    },
    Preset {
        name: "quickbooks",
        token_url: "https://oauth.platform.intuit.com/oauth2/v1/tokens/bearer",
        authorize_url: Some("https://appcenter.intuit.com/connect/oauth2"),
        authorize_params: &[],
        regions: &[],
        needs_tenant: false,
        grant: GrantKind::RefreshToken,
        client_auth: ClientAuthKind::Basic,
        refresh_before: secs(300),
        min_interval: Duration::ZERO,
        default_lifetime: secs(3600),
        inject: BEARER,
        scope_in_assertion: false,
        upstream_hint: "https://quickbooks.api.intuit.com/v3/company/",
        limits: &[],
        quota_segment: None,
    },
    Preset {
        name: "microsoft-entra",
        token_url: "https://login.microsoftonline.com/{tenant}/oauth2/v2.0/token",
        authorize_url: Some("https://login.microsoftonline.com/{tenant}/oauth2/v2.0/authorize"),
        authorize_params: &[],
        regions: &[],
        needs_tenant: true,
        grant: GrantKind::ClientCredentials,
        client_auth: ClientAuthKind::Post,
        refresh_before: secs(300),
        min_interval: Duration::ZERO,
        default_lifetime: secs(3599),
        inject: BEARER,
        scope_in_assertion: false,
        upstream_hint: "https://graph.microsoft.com/",
        limits: &[],
        quota_segment: None,
    },
    Preset {
        name: "google-service-account",
        token_url: "https://oauth2.googleapis.com/token",
        authorize_url: None,
        authorize_params: &[],
        regions: &[],
        needs_tenant: false,
        grant: GrantKind::JwtBearer,
        client_auth: ClientAuthKind::None,
        refresh_before: secs(300),
        min_interval: Duration::ZERO,
        default_lifetime: secs(3600),
        inject: BEARER,
        scope_in_assertion: true,
        upstream_hint: "https://www.googleapis.com/",
        limits: &[],
        quota_segment: None,
    },
    Preset {
        name: "zoho",
        token_url: "https://accounts.zoho.{region}/oauth/v2/token",
        authorize_url: Some("https://accounts.zoho.{region}/oauth/v2/auth"),
        authorize_params: &[("access_type", "offline"), ("prompt", "consent")],
        regions: &["com", "eu", "in", "com.au", "jp", "com.cn", "ca"],
        needs_tenant: false,
        grant: GrantKind::RefreshToken,
        client_auth: ClientAuthKind::Post,
        refresh_before: secs(120),
        min_interval: Duration::ZERO,
        default_lifetime: secs(3600),
        inject: "Authorization: Zoho-oauthtoken {token}",
        scope_in_assertion: false,
        upstream_hint: "{token.api_domain}/crm/v6/",
        limits: &[],
        quota_segment: None,
    },
];

pub fn find(name: &str) -> Option<&'static Preset> {
    PRESETS.iter().find(|p| p.name == name)
}

pub fn names() -> Vec<&'static str> {
    PRESETS.iter().map(|p| p.name).collect()
}

impl Preset {
    /// The token URL with `{region}` and `{tenant}` filled in, or the name of the
    /// missing or invalid key.
    pub fn token_url(&self, region: Option<&str>, tenant: Option<&str>) -> Result<String, String> {
        self.fill(self.token_url, region, tenant)
    }

    /// The authorization URL, filled in the same way.
    pub fn authorize_url(
        &self,
        region: Option<&str>,
        tenant: Option<&str>,
    ) -> Option<Result<String, String>> {
        self.authorize_url.map(|u| self.fill(u, region, tenant))
    }

    fn fill(
        &self,
        template: &str,
        region: Option<&str>,
        tenant: Option<&str>,
    ) -> Result<String, String> {
        let mut url = template.to_owned();
        if !self.regions.is_empty() {
            let region = region.unwrap_or(self.regions[0]);
            if !self.regions.contains(&region) {
                return Err(format!(
                    "region `{region}` is not one of {:?}",
                    self.regions
                ));
            }
            // Zoho Canada lives on its own domain.
            if self.name == "zoho" && region == "ca" {
                return Ok(url.replace("accounts.zoho.{region}", "accounts.zohocloud.ca"));
            }
            url = url.replace("{region}", region);
        } else if region.is_some() {
            return Err(format!("preset {} takes no region", self.name));
        }
        if self.needs_tenant {
            let tenant = tenant.ok_or_else(|| {
                format!("preset {} needs tenant (a tenant id or domain)", self.name)
            })?;
            if tenant.is_empty()
                || !tenant
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b))
            {
                return Err(format!("tenant `{tenant}` is not a tenant id or domain"));
            }
            url = url.replace("{tenant}", tenant);
        } else if tenant.is_some() {
            return Err(format!("preset {} takes no tenant", self.name));
        }
        Ok(url)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_fill_region_and_tenant() {
        let exact = find("exact-online").unwrap();
        assert_eq!(
            exact.token_url(None, None).unwrap(),
            "https://start.exactonline.nl/api/oauth2/token"
        );
        assert_eq!(
            exact.token_url(Some("be"), None).unwrap(),
            "https://start.exactonline.be/api/oauth2/token"
        );
        assert!(
            exact
                .token_url(Some("xx"), None)
                .unwrap_err()
                .contains("xx")
        );
        let entra = find("microsoft-entra").unwrap();
        assert!(
            entra
                .token_url(None, None)
                .unwrap_err()
                .contains("needs tenant")
        );
        assert_eq!(
            entra
                .token_url(None, Some("contoso.onmicrosoft.com"))
                .unwrap(),
            "https://login.microsoftonline.com/contoso.onmicrosoft.com/oauth2/v2.0/token"
        );
        assert!(entra.token_url(None, Some("a/b")).is_err());
        let zoho = find("zoho").unwrap();
        assert_eq!(
            zoho.token_url(Some("eu"), None).unwrap(),
            "https://accounts.zoho.eu/oauth/v2/token"
        );
        assert_eq!(
            zoho.token_url(Some("ca"), None).unwrap(),
            "https://accounts.zohocloud.ca/oauth/v2/token"
        );
    }

    #[test]
    fn exact_refreshes_exactly_at_its_window() {
        let exact = find("exact-online").unwrap();
        assert_eq!(
            exact.default_lifetime - exact.refresh_before,
            exact.min_interval
        );
    }
}
