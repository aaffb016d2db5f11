//! `CONNECT`: a tunnel to a routed host, handed to the server to open
//! (`crate::tunnel`), or refused and closed.

use http::{Request, Response};
use hyper::body::Incoming;

use super::admit::port_ok;
use super::{Proxy, Trace};
use crate::body::ProxyBody;
use crate::error::ProxyError;
use crate::tunnel::{Handoff, TunnelSlot};

impl Proxy {
    /// `CONNECT` to a routed host: a tunnel whose TLS tokenproxy terminates (with
    /// `[intercept]`), or in which the client speaks plain HTTP (undici and Node's
    /// `NODE_USE_ENV_PROXY` tunnel `http://` URLs too: `CONNECT host:80`); the
    /// first byte inside tells which. Refused with nothing opened otherwise.
    pub(super) fn connect(
        &self,
        mut req: Request<Incoming>,
        trace: &mut Trace,
    ) -> Result<Response<ProxyBody>, ProxyError> {
        // RFC 9110 §9.3.6: the target is host:port, both there.
        let authority = req.uri().authority().cloned().ok_or(ProxyError::BadHost)?;
        let Some(port) = authority.port_u16().filter(|_| port_ok(authority.as_str())) else {
            return Err(ProxyError::BadHost);
        };
        // Plain HTTP needs no CA: a tunnel to port 80 is served without [intercept].
        if self.interceptor.is_none() && port != 80 {
            tracing::info!(host = %authority, "CONNECT refused: no [intercept] configured");
            return Err(ProxyError::Connect);
        }
        // The server offers tunnels on HTTP/1.1 connections only.
        let Some(slot) = req.extensions_mut().remove::<TunnelSlot>() else {
            return Err(ProxyError::Connect);
        };
        let host = authority.host();
        if !crate::config::is_dns_host(host) || authority.as_str().contains('@') {
            tracing::info!(host = %authority, "CONNECT refused: not a routed host name");
            return Err(ProxyError::Connect);
        }
        // A route's host is its scheme's default port: 443 inside TLS, 80 in plain HTTP.
        let tls_key = crate::config::normalise_host(host, Some(port), 443);
        let plain_key = crate::config::normalise_host(host, Some(port), 80);
        let routes = self.router.routes();
        let by_host = |key: &str| routes.iter().position(|r| r.host.as_deref() == Some(key));
        // Plain HTTP inside names the host as the route does (`host` for port 80, or
        // for port 443 when the client sends HTTP where TLS was expected).
        let (route, plain_key) = by_host(&tls_key)
            .map(|r| (r, tls_key.clone()))
            .or_else(|| by_host(&plain_key).map(|r| (r, plain_key)))
            .ok_or_else(|| {
                tracing::info!(host = %tls_key, "CONNECT refused: no route names this host");
                ProxyError::Connect
            })?;
        trace.route = Some(route);
        trace.who = self.gate.identify(req.headers_mut())?;
        self.gate.allow(trace.who, routes[route].token)?;
        let caller = trace
            .who
            .map(|_| std::sync::Arc::clone(self.gate.name(trace.who)));
        let name = crate::config::dns_name(&tls_key).to_owned();
        let tls = match &self.interceptor {
            None => None,
            Some(interceptor) if !interceptor.permits(&name) => {
                tracing::warn!(
                    host = %name,
                    "CONNECT refused: the interception CA's name constraints do not cover this routed host; recreate the CA with `tokenproxy ca init --force`"
                );
                return Err(ProxyError::ConnectOutsideCa);
            }
            Some(interceptor) => {
                let config = interceptor.tls_config(&name).map_err(|e| {
                    tracing::error!(host = %name, error = %e, "cannot sign an interception certificate");
                    ProxyError::Internal
                })?;
                let authority = tls_key.parse().map_err(|_| ProxyError::Connect)?;
                Some((authority, config))
            }
        };
        slot.open(Handoff {
            upgrade: hyper::upgrade::on(&mut req),
            route: routes[route].name.clone(),
            host: name,
            plain: plain_key.parse().map_err(|_| ProxyError::Connect)?,
            tls,
            caller,
        });
        Ok(Response::new(ProxyBody::full(bytes::Bytes::new())))
    }
}
