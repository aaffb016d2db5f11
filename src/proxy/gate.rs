//! Who may use the proxy listener: no key (a loopback listener), one key for
//! every route (`[listen] client_key`), or a key per caller that admits it to the
//! routes and vending of the tokens it lists (`[[callers]]`).
//!
//! A key arrives as `Proxy-Authorization: Bearer KEY`, as the password of
//! `Basic` (what clients send for a proxy URL with credentials), or bare in the
//! header the operator chose. It is compared in constant time with every
//! caller's key, removed from the request, and never logged: the caller's name
//! is what requests are labelled with.

use std::sync::Arc;

use http::HeaderName;
use http::header::HeaderMap;

use crate::config::{Callers, KeyHeader};
use crate::error::ProxyError;
use crate::secret::{Secret, SecretRef};

/// The callers of one configuration, with their keys resolved.
pub struct Gate {
    header: HeaderName,
    bearer: bool,
    /// Empty: anyone who can connect.
    callers: Vec<Member>,
}

/// One caller: its name (empty for the one `client_key`), its key, and the
/// tokens it may use (`None`: every token).
pub struct Member {
    pub name: Arc<str>,
    pub key: Secret,
    pub tokens: Option<Vec<usize>>,
}

/// Who a request came from: the index of its caller, `None` on an open listener.
pub type Who = Option<usize>;

impl Gate {
    pub fn new(header: HeaderName, bearer: bool, callers: Vec<Member>) -> Gate {
        Gate {
            header,
            bearer,
            callers,
        }
    }

    /// The callers of a configuration, with their keys read now; two callers with
    /// one key are refused (a key must say who is calling). Errors name the key.
    pub fn of(header: &KeyHeader, callers: &Callers) -> Result<Gate, (String, String)> {
        let resolve =
            |key: String, secret: &SecretRef| secret.resolve().map_err(|e| (key, e.to_string()));
        let members = match callers {
            Callers::Open => Vec::new(),
            Callers::One(key) => vec![Member {
                name: Arc::from(""),
                key: resolve("listen.client_key".into(), key)?,
                tokens: None,
            }],
            Callers::Named(named) => {
                let mut members: Vec<Member> = Vec::with_capacity(named.len());
                for (i, c) in named.iter().enumerate() {
                    let key = resolve(format!("callers[{i}].key"), &c.key)?;
                    if let Some(other) = members.iter().find(|m| m.key.expose() == key.expose()) {
                        return Err((
                            format!("callers[{i}].key"),
                            format!(
                                "is the key of caller `{}` too; a key must say who is calling",
                                other.name
                            ),
                        ));
                    }
                    members.push(Member {
                        name: Arc::from(c.name.as_str()),
                        key,
                        tokens: Some(c.tokens.clone()),
                    });
                }
                members
            }
        };
        Ok(Gate::new(header.header.clone(), header.bearer, members))
    }

    pub fn header(&self) -> &HeaderName {
        &self.header
    }

    /// Takes the key out of `headers` and says whose it is; `407` for a missing
    /// or unknown key.
    pub fn identify(&self, headers: &mut HeaderMap) -> Result<Who, ProxyError> {
        if self.callers.is_empty() {
            return Ok(None);
        }
        let presented = headers.remove(&self.header);
        let value = presented.as_ref().map(|v| v.as_bytes()).unwrap_or_default();
        let basic = self
            .bearer
            .then(|| value.strip_prefix(b"Basic "))
            .flatten()
            .and_then(|b| {
                base64::Engine::decode(&base64::engine::general_purpose::STANDARD, b.trim_ascii())
                    .ok()
            });
        let value = match &basic {
            Some(pair) => pair
                .iter()
                .position(|&b| b == b':')
                .map_or(&[][..], |i| &pair[i + 1..]),
            None if self.bearer => value.strip_prefix(b"Bearer ").unwrap_or_default(),
            None => value,
        };
        // Every key is compared, so the time taken does not say which matched.
        let mut found = None;
        for (i, caller) in self.callers.iter().enumerate() {
            let same: bool =
                subtle::ConstantTimeEq::ct_eq(value, caller.key.expose().as_bytes()).into();
            if same && !value.is_empty() {
                found = Some(i);
            }
        }
        found.map(Some).ok_or(ProxyError::ProxyAuth)
    }

    /// A request inside a tunnel: its `CONNECT` presented the key of caller
    /// `name`; a copy of the key inside goes nowhere.
    pub fn tunneled(&self, headers: &mut HeaderMap, name: Option<&str>) -> Result<Who, ProxyError> {
        if !self.callers.is_empty() {
            headers.remove(&self.header);
        }
        self.by_name(name)
    }

    /// A caller named in a tunnel's `CONNECT`, looked up again in this
    /// configuration (a reload may have removed it).
    pub fn by_name(&self, name: Option<&str>) -> Result<Who, ProxyError> {
        match name {
            _ if self.callers.is_empty() => Ok(None),
            None => Err(ProxyError::ProxyAuth),
            Some(name) => self
                .callers
                .iter()
                .position(|c| &*c.name == name)
                .map(Some)
                .ok_or(ProxyError::ProxyAuth),
        }
    }

    /// Whether `who` may use token `token`; `403` if not.
    pub fn allow(&self, who: Who, token: usize) -> Result<(), ProxyError> {
        let allowed = match who.and_then(|i| self.callers.get(i)) {
            None => self.callers.is_empty(),
            Some(c) => c.tokens.as_ref().is_none_or(|t| t.contains(&token)),
        };
        if allowed {
            Ok(())
        } else {
            Err(ProxyError::CallerNotAllowed)
        }
    }

    /// The name requests of `who` are labelled with (empty without one).
    pub fn name(&self, who: Who) -> &Arc<str> {
        static NONE: std::sync::OnceLock<Arc<str>> = std::sync::OnceLock::new();
        match who.and_then(|i| self.callers.get(i)) {
            Some(c) => &c.name,
            None => NONE.get_or_init(|| Arc::from("")),
        }
    }

    /// The callers' names, in order (for their metrics).
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.callers.iter().map(|c| &*c.name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gate() -> Gate {
        let member = |name: &str, key: &str, tokens: Option<Vec<usize>>| Member {
            name: Arc::from(name),
            key: Secret::new(key.to_owned()),
            tokens,
        };
        Gate::new(
            http::header::PROXY_AUTHORIZATION,
            true,
            vec![
                member("adf", "key-of-adf-0123456789", Some(vec![0])),
                member("matillion", "key-of-matillion-0123", Some(vec![1])),
            ],
        )
    }

    fn headers(value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(http::header::PROXY_AUTHORIZATION, value.parse().unwrap());
        h
    }

    #[test]
    fn each_key_names_its_caller_and_is_removed() {
        let gate = gate();
        let mut h = headers("Bearer key-of-matillion-0123");
        assert_eq!(gate.identify(&mut h).unwrap(), Some(1));
        assert!(h.is_empty());
        let basic = base64::Engine::encode(
            &base64::engine::general_purpose::STANDARD,
            "tokenproxy:key-of-adf-0123456789",
        );
        assert_eq!(
            gate.identify(&mut headers(&format!("Basic {basic}")))
                .unwrap(),
            Some(0)
        );
        for wrong in ["Bearer nope", "Bearer ", "key-of-adf-0123456789", ""] {
            let e = gate.identify(&mut headers(wrong)).unwrap_err();
            assert_eq!(e.code(), "proxy_auth_required", "{wrong}");
        }
        assert!(gate.identify(&mut HeaderMap::new()).is_err());
    }

    #[test]
    fn a_caller_uses_only_its_tokens() {
        let gate = gate();
        assert!(gate.allow(Some(0), 0).is_ok());
        assert_eq!(
            gate.allow(Some(0), 1).unwrap_err().code(),
            "caller_not_allowed"
        );
        assert!(gate.allow(None, 0).is_err());
        let open = Gate::new(http::header::PROXY_AUTHORIZATION, true, Vec::new());
        assert_eq!(open.identify(&mut HeaderMap::new()).unwrap(), None);
        assert!(open.allow(None, 3).is_ok());
        assert_eq!(&**gate.name(Some(1)), "matillion");
        assert_eq!(&**open.name(None), "");
        assert_eq!(gate.by_name(Some("adf")).unwrap(), Some(0));
        assert!(gate.by_name(Some("gone")).is_err());
    }
}
