//! `[[routes]]`: which requests go where, with which token and header rules.

use std::collections::BTreeMap;

use http::uri::Authority;
use http::{HeaderName, HeaderValue, StatusCode};

use super::Validator;
use crate::config::raw::{RawRewriteLinks, RawRoute};
use crate::config::{
    ConfigError, Inject, RewriteLinks, Route, RouteUpstream, TokenConfig, Upstream, normalise_host,
};
use crate::secret::SecretRef;

impl Validator<'_> {
    pub(super) fn routes(
        &mut self,
        raw: Vec<RawRoute>,
        tokens: &mut [TokenConfig],
    ) -> Result<Vec<Route>, ConfigError> {
        if raw.is_empty() {
            return Err(self.err(
                "routes",
                "no [[routes]] are configured",
                "add a [[routes]] table with prefix, upstream and token",
            ));
        }
        let mut routes = Vec::with_capacity(raw.len());
        for (i, route) in raw.into_iter().enumerate() {
            let route = self.route(i, route, tokens)?;
            if let Some(prefix) = &route.prefix
                && prefix_taken(&routes, prefix)
            {
                return Err(self.err(
                    format!("routes[{i}].prefix"),
                    format!("`{prefix}` is used by two routes"),
                    "give each route its own prefix",
                ));
            }
            routes.push(route);
        }
        Ok(routes)
    }

    fn route(
        &mut self,
        i: usize,
        raw: RawRoute,
        tokens: &mut [TokenConfig],
    ) -> Result<Route, ConfigError> {
        let key = |k: &str| format!("routes[{i}].{k}");
        let token = self.route_token(&key("token"), &raw.token, tokens)?;
        let rate = self.rate_limits(&key, &raw, tokens[token].preset)?;
        let upstream = self.upstream(&key("upstream"), &raw.upstream, &mut tokens[token])?;
        let prefix = self.prefix(&key("prefix"), raw.prefix)?;
        let host = match (raw.host, &upstream) {
            (Some(h), _) => Some(self.host(&key("host"), &h)?),
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
        let inject = self.inject(&key("inject"), &template, &mut tokens[token])?;
        let retry_on = self.retry_on(&key("retry_on"), raw.retry_on)?;
        let headers = self.route_headers(&key("headers"), raw.headers)?;
        let name = raw.name.unwrap_or_else(|| match (&prefix, &host) {
            (Some(p), _) if p != "/" => p.trim_matches('/').to_owned(),
            (_, Some(h)) => h.clone(),
            _ => "root".to_owned(),
        });
        let rewrite_links = self.rewrite_links(&key("rewrite_links"), raw.rewrite_links)?;
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
            rate,
        })
    }

    /// The index of the token a route names.
    fn route_token(
        &self,
        key: &str,
        name: &str,
        tokens: &[TokenConfig],
    ) -> Result<usize, ConfigError> {
        tokens.iter().position(|t| t.name == name).ok_or_else(|| {
            let known: Vec<&str> = tokens.iter().map(|t| t.name.as_str()).collect();
            self.err(
                key,
                format!("names `{name}`, which is not a [tokens] table"),
                format!("use one of {known:?} or add [tokens.{name}]"),
            )
        })
    }

    fn prefix(&self, key: &str, prefix: Option<String>) -> Result<Option<String>, ConfigError> {
        match prefix {
            None => Ok(None),
            Some(p) if !p.starts_with('/') => Err(self.err(
                key,
                format!("`{p}` does not start with `/`"),
                format!("write it as \"/{p}\""),
            )),
            Some(p) if p.contains("..") || p.contains("//") || p.contains(['?', '#', '%']) => {
                Err(self.err(
                    key,
                    format!("`{p}` is not a plain path"),
                    "use a path such as \"/exact/\"",
                ))
            }
            Some(p) => {
                let p = if p.ends_with('/') { p } else { format!("{p}/") };
                if p.starts_with(crate::config::OWN_PATHS) {
                    return Err(self.err(
                        key,
                        format!(
                            "`{p}` is under {}, which tokenproxy answers itself (token vending)",
                            crate::config::OWN_PATHS
                        ),
                        "choose another prefix",
                    ));
                }
                Ok(Some(p))
            }
        }
    }

    fn host(&self, key: &str, text: &str) -> Result<String, ConfigError> {
        let a: Authority = text.parse().map_err(|_| {
            self.err(
                key,
                format!("`{text}` is not a host name"),
                "write a host such as \"api.example.com\"",
            )
        })?;
        Ok(normalise_host(a.host(), a.port_u16(), 80))
    }

    /// The index of the route's injection template among its token's (shared by
    /// routes that inject alike).
    fn inject(
        &self,
        key: &str,
        template: &str,
        token: &mut TokenConfig,
    ) -> Result<usize, ConfigError> {
        let inject = Inject::parse(template)
            .map_err(|p| self.err(key, p, "write it as \"Authorization: Bearer {token}\""))?;
        let injects = &mut token.injects;
        Ok(injects
            .iter()
            .position(|x| *x == inject)
            .unwrap_or_else(|| {
                injects.push(inject);
                injects.len() - 1
            }))
    }

    fn retry_on(&self, key: &str, codes: Vec<u16>) -> Result<Vec<StatusCode>, ConfigError> {
        codes
            .into_iter()
            .map(|code| match StatusCode::from_u16(code) {
                Ok(s) if s.is_client_error() || s.is_server_error() => Ok(s),
                _ => Err(self.err(
                    key,
                    format!("{code} is not an error status"),
                    "list statuses such as [401]",
                )),
            })
            .collect()
    }

    /// Headers the route adds to each upstream request, read now (sensitive:
    /// never logged).
    fn route_headers(
        &self,
        key: &str,
        raw: BTreeMap<String, SecretRef>,
    ) -> Result<Vec<(HeaderName, HeaderValue)>, ConfigError> {
        let mut headers = Vec::with_capacity(raw.len());
        for (h, value) in raw {
            let k = format!("{key}.{h}");
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
        Ok(headers)
    }

    fn rewrite_links(
        &self,
        key: &str,
        raw: Option<RawRewriteLinks>,
    ) -> Result<RewriteLinks, ConfigError> {
        Ok(match raw {
            None => RewriteLinks::Pagination,
            Some(RawRewriteLinks::Flag(true)) => RewriteLinks::All,
            Some(RawRewriteLinks::Flag(false)) => RewriteLinks::Off,
            Some(RawRewriteLinks::Mode(m)) => match m.as_str() {
                "pagination" => RewriteLinks::Pagination,
                "all" => RewriteLinks::All,
                "off" => RewriteLinks::Off,
                _ => {
                    return Err(self.err(
                        key,
                        format!("{m:?} is not a way to rewrite links"),
                        "write \"pagination\" (next-page links only, the default), \"all\" (every upstream URL in JSON/XML bodies) or \"off\"",
                    ));
                }
            },
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

/// Whether a route already claims `prefix`.
fn prefix_taken(routes: &[Route], prefix: &str) -> bool {
    routes.iter().any(|r| r.prefix.as_deref() == Some(prefix))
}
