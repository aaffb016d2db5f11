//! `[intercept]`: where the CA that signs for routed hosts comes from.

use super::Validator;
use crate::config::raw::RawIntercept;
use crate::config::{ConfigError, Intercept, Route, StoreConfig, is_dns_host};

impl Validator<'_> {
    pub(super) fn intercept(
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
            self.warn(
                "[intercept] is set but no route has a `host` that is a DNS name: every CONNECT is refused; add host = \"api.example.com\" to the routes to intercept",
            );
        }
        Ok(intercept)
    }
}
