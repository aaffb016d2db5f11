//! `[listen]`: the two addresses, the keys that guard them, the proxy listener's
//! TLS, and `[[callers]]`.

use http::HeaderName;

use super::Validator;
use crate::config::raw::{RawCaller, RawListen};
use crate::config::{
    Caller, Callers, ConfigError, KeyHeader, Listen, ListenAddr, ListenTls, TokenConfig,
};
use crate::secret::SecretRef;

impl Validator<'_> {
    pub(super) fn listen(&mut self, raw: &RawListen) -> Result<Listen, ConfigError> {
        let proxy = self.proxy_addr(&raw.proxy)?;
        if let Some(key) = &raw.admin_key {
            self.secret("listen.admin_key", key, false)?;
        }
        let listen = Listen {
            proxy,
            admin: self.addr("listen.admin", &raw.admin)?,
            key_header: self.key_header(raw)?,
            tls: self.listen_tls(raw)?,
            admin_key: raw.admin_key.clone(),
        };
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

    fn key_header(&self, raw: &RawListen) -> Result<KeyHeader, ConfigError> {
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
        Ok(KeyHeader {
            bearer: name == http::header::PROXY_AUTHORIZATION,
            header: name,
        })
    }

    /// Both files or neither; each must parse, and the key must be the
    /// certificate's.
    fn listen_tls(&mut self, raw: &RawListen) -> Result<Option<ListenTls>, ConfigError> {
        let (cert, key) = match (&raw.tls_cert, &raw.tls_key) {
            (None, None) => return Ok(None),
            (Some(cert), Some(key)) => (cert, key),
            (Some(_), None) | (None, Some(_)) => {
                return Err(self.err(
                    "listen.tls_cert",
                    "tls_cert and tls_key come together",
                    "set both listen.tls_cert and listen.tls_key (PEM files), or neither",
                ));
            }
        };
        self.secret("listen.tls_cert", cert, true)?;
        self.secret("listen.tls_key", key, false)?;
        if raw.tls_check < std::time::Duration::from_secs(1) {
            return Err(self.err(
                "listen.tls_check",
                "is shorter than a second",
                "write a duration such as \"60s\" (the default)",
            ));
        }
        let tls = ListenTls {
            cert: cert.clone(),
            key: key.clone(),
            check: raw.tls_check,
        };
        crate::certs::Served::load(&tls.cert, &tls.key).map_err(|e| {
            self.err(
                e.key(),
                e.to_string(),
                "give a PEM certificate chain (leaf first) and its PEM private key",
            )
        })?;
        Ok(Some(tls))
    }

    /// `client_key` (one key for all) or `[[callers]]` (a key per caller and its
    /// tokens), then whether the listener is exposed without TLS or keys.
    pub(super) fn callers(
        &mut self,
        listen: &Listen,
        raw_listen: &RawListen,
        raw: Vec<RawCaller>,
        tokens: &[TokenConfig],
    ) -> Result<Callers, ConfigError> {
        let callers = match (&raw_listen.client_key, raw.is_empty()) {
            (None, true) => Callers::Open,
            (Some(key), true) => {
                self.secret("listen.client_key", key, false)?;
                Callers::One(key.clone())
            }
            (Some(_), false) => {
                return Err(self.err(
                    "listen.client_key",
                    "is set along with [[callers]]",
                    "move the key into a [[callers]] entry with the tokens it may use, and remove listen.client_key",
                ));
            }
            (None, false) => {
                let mut named: Vec<Caller> = Vec::with_capacity(raw.len());
                for (i, c) in raw.into_iter().enumerate() {
                    let caller = self.caller(i, c, tokens)?;
                    if named.iter().any(|o| o.name == caller.name) {
                        return Err(self.err(
                            format!("callers[{i}].name"),
                            format!("`{}` names two callers", caller.name),
                            "give each caller its own name",
                        ));
                    }
                    named.push(caller);
                }
                Callers::Named(named)
            }
        };
        self.exposure(listen, raw_listen.insecure_listen, &callers)?;
        Ok(callers)
    }

    fn caller(
        &mut self,
        i: usize,
        raw: RawCaller,
        tokens: &[TokenConfig],
    ) -> Result<Caller, ConfigError> {
        let key = |k: &str| format!("callers[{i}].{k}");
        let name_ok = !raw.name.is_empty()
            && raw.name.len() <= 64
            && raw
                .name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b));
        if !name_ok {
            return Err(self.err(
                key("name"),
                format!("`{}` is not a caller name", raw.name),
                "use up to 64 letters, digits, `_`, `.` or `-` (it labels metrics and log lines)",
            ));
        }
        self.secret(&key("key"), &raw.key, false)?;
        check_key_length(&raw.key).map_err(|problem| {
            self.err(
                key("key"),
                problem,
                "use a random key of at least 16 characters, e.g. `openssl rand -hex 32`",
            )
        })?;
        let mut indexes = Vec::with_capacity(raw.tokens.len());
        for name in &raw.tokens {
            let Some(t) = tokens.iter().position(|t| &t.name == name) else {
                let known: Vec<&str> = tokens.iter().map(|t| t.name.as_str()).collect();
                return Err(self.err(
                    key("tokens"),
                    format!("no token is named `{name}`"),
                    format!("list tokens of [tokens.NAME]: {}", known.join(", ")),
                ));
            };
            if !indexes.contains(&t) {
                indexes.push(t);
            }
        }
        if indexes.is_empty() {
            return Err(self.err(
                key("tokens"),
                "is empty: the caller could use nothing",
                "list the tokens whose routes (and vending) this caller may use",
            ));
        }
        Ok(Caller {
            name: raw.name,
            key: raw.key,
            tokens: indexes,
        })
    }

    /// A proxy listener reachable beyond this host needs TLS and keys, or
    /// `insecure_listen = true`; it is warned about either way.
    fn exposure(
        &mut self,
        listen: &Listen,
        insecure_listen: bool,
        callers: &Callers,
    ) -> Result<(), ConfigError> {
        if !listen.admin.ip().is_loopback() && listen.admin_key.is_none() {
            self.warn(format_args!(
                "`listen.admin` = {} is reachable beyond this host and [listen] has no admin_key: its GET endpoints (probes, /metrics) answer anyone, and POST /reload and /tokens/NAME/refresh answer 403 admin_key_required; set listen.admin_key to use them",
                listen.admin
            ));
        }
        let ListenAddr::Tcp(addr) = &listen.proxy else {
            return Ok(());
        };
        if addr.ip().is_loopback() {
            return Ok(());
        }
        let missing = match (listen.tls.is_some(), *callers != Callers::Open) {
            (true, true) => return Ok(()),
            (false, true) => {
                "TLS (listen.tls_cert, listen.tls_key): keys and tokens cross the network in clear text"
            }
            (true, false) => {
                "keys (listen.client_key or [[callers]]): anyone who can connect uses your tokens"
            }
            (false, false) => {
                "TLS or keys: anyone who can connect uses your tokens, and the tokens cross the network in clear text"
            }
        };
        if !insecure_listen {
            return Err(self.err(
                "listen.proxy",
                format!("{addr} is reachable beyond this host without {missing}"),
                "listen on 127.0.0.1 or a Unix socket, or add what is missing; if the network is private on purpose (a container's published port bound to 127.0.0.1), set listen.insecure_listen = true",
            ));
        }
        self.warn(format_args!(
            "`listen.proxy` = {addr} is reachable beyond this host without {missing} (listen.insecure_listen = true)"
        ));
        Ok(())
    }
}

/// A caller key short enough to guess is refused: the key is all that stands
/// between the network and the tokens.
fn check_key_length(key: &SecretRef) -> Result<(), String> {
    match key.resolve() {
        Ok(k) if k.expose().trim().len() < 16 => Err(format!(
            "is {} characters long; a caller key needs at least 16",
            k.expose().trim().len()
        )),
        _ => Ok(()),
    }
}
