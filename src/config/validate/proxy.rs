//! `[proxy]`: timeouts and limits; `[tls]`: the trust roots.

use super::Validator;
use crate::config::raw::{RawProxy, RawTls};
use crate::config::{ConfigError, ProxySettings, Tls};

impl Validator<'_> {
    pub(super) fn proxy(&self, raw: RawProxy) -> Result<ProxySettings, ConfigError> {
        if raw.replay_body_limit > 64 * 1024 * 1024 {
            return Err(self.err(
                "proxy.replay_body_limit",
                "is over 64 MiB",
                "keep replayed bodies small; larger bodies stream and are not retried",
            ));
        }
        let proxy = ProxySettings {
            connect_timeout: raw.connect_timeout,
            response_timeout: raw.response_timeout,
            pool_idle_timeout: raw.pool_idle_timeout,
            drain_timeout: raw.drain_timeout,
            replay_body_limit: raw.replay_body_limit,
            max_request_body: (raw.max_request_body > 0).then_some(raw.max_request_body),
            idle_timeout: raw.idle_timeout,
            body_timeout: raw.body_timeout,
            max_connections: (raw.max_connections > 0).then_some(raw.max_connections),
            max_header_line: raw.max_header_line,
            max_header_size: raw.max_header_size,
            max_headers: raw.max_headers,
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
        Ok(proxy)
    }

    pub(super) fn tls(&self, raw: RawTls) -> Result<Tls, ConfigError> {
        if let Some(ca) = &raw.ca_file
            && !ca.is_file()
        {
            return Err(self.err(
                "tls.ca_file",
                format!("{} is not a readable file", ca.display()),
                "point it at a PEM file of CA certificates",
            ));
        }
        Ok(Tls {
            ca_file: raw.ca_file,
        })
    }
}
