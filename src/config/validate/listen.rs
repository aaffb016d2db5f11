//! `[listen]`: the two addresses, and the keys that guard them.

use http::HeaderName;

use super::Validator;
use crate::config::raw::RawListen;
use crate::config::{ClientKey, ConfigError, Listen, ListenAddr};

impl Validator<'_> {
    pub(super) fn listen(&mut self, raw: RawListen) -> Result<Listen, ConfigError> {
        let proxy = self.proxy_addr(&raw.proxy)?;
        let client_key = self.client_key(&raw)?;
        if let Some(key) = &raw.admin_key {
            self.secret("listen.admin_key", key, false)?;
        }
        let listen = Listen {
            proxy,
            admin: self.addr("listen.admin", &raw.admin)?,
            client_key,
            admin_key: raw.admin_key,
        };
        self.warn_if_exposed(&listen);
        if listen.proxy == ListenAddr::Tcp(listen.admin) && listen.admin.port() != 0 {
            return Err(self.err(
                "listen.admin",
                "is the same address as listen.proxy",
                "give the admin endpoints their own port",
            ));
        }
        Ok(listen)
    }

    fn proxy_addr(&self, text: &str) -> Result<ListenAddr, ConfigError> {
        match text.strip_prefix("unix:") {
            Some(path) if path.starts_with('/') => Ok(ListenAddr::Unix(path.into())),
            Some(_) => Err(self.err(
                "listen.proxy",
                "a Unix socket needs an absolute path",
                "write it as \"unix:/run/tokenproxy/proxy.sock\"",
            )),
            None => Ok(ListenAddr::Tcp(self.addr("listen.proxy", text)?)),
        }
    }

    fn client_key(&mut self, raw: &RawListen) -> Result<Option<ClientKey>, ConfigError> {
        let Some(key) = &raw.client_key else {
            return Ok(None);
        };
        self.secret("listen.client_key", key, false)?;
        let header = raw
            .client_key_header
            .as_deref()
            .unwrap_or("Proxy-Authorization");
        let name = HeaderName::from_bytes(header.as_bytes()).map_err(|_| {
            self.err(
                "listen.client_key_header",
                format!("`{header}` is not a header name"),
                "use a name such as \"X-Proxy-Key\"",
            )
        })?;
        if name == http::header::AUTHORIZATION {
            return Err(self.err(
                "listen.client_key_header",
                "Authorization belongs to the upstream API",
                "use Proxy-Authorization (the default) or a header of your own",
            ));
        }
        Ok(Some(ClientKey {
            bearer: name == http::header::PROXY_AUTHORIZATION,
            header: name,
            key: key.clone(),
        }))
    }

    /// A listener reachable beyond this host without its key works, and is
    /// worth a warning.
    fn warn_if_exposed(&mut self, listen: &Listen) {
        if !listen.admin.ip().is_loopback() && listen.admin_key.is_none() {
            self.warn(format_args!(
                "`listen.admin` = {} is reachable beyond this host and [listen] has no admin_key: its GET endpoints (probes, /metrics) answer anyone, and POST /reload and /tokens/NAME/refresh answer 403 admin_key_required; set listen.admin_key to use them",
                listen.admin
            ));
        }
        if let ListenAddr::Tcp(addr) = &listen.proxy
            && !addr.ip().is_loopback()
            && listen.client_key.is_none()
        {
            self.warn(format_args!(
                "`listen.proxy` = {addr} is reachable beyond this host and [listen] has no client_key: anyone who can connect uses your tokens; set listen.client_key, or listen on 127.0.0.1 or a Unix socket"
            ));
        }
    }
}
