//! tokenproxy: a sidecar forward proxy that injects OAuth 2.0 bearer tokens.
//!
//! The map of the house, from the bottom up (a module uses only those above it
//! in this list, never one below; `tests/architecture.rs` holds it to that):
//! - `secret`, `clock`: secret values that never print and where they live;
//!   times as stored (Unix milliseconds) and shown (RFC 3339);
//! - `certs`: the proxy listener's own certificate, read and checked;
//! - `config`: the TOML schema and its validation into types that cannot be wrong;
//! - `tls`: the trust store shared by the upstream client and the token client;
//! - `metrics`: every Prometheus metric, in a registry handed to the others;
//! - `store`: durable token records (`TokenStore`: the embedded file store, the
//!   shared PostgreSQL and Redis stores, encryption at rest), each written under its
//!   lock and fenced by generation;
//! - `token`: token sources, the lock-free current token, single-flight refresh,
//!   the refresh scheduler, token endpoint requests and response parsing;
//! - `body`: the body types requests and responses travel in;
//! - `error`: the errors tokenproxy answers with, mapped in one place;
//! - `tunnel`: the hand-off of a `CONNECT` tunnel from the proxy to the server;
//! - `intercept`: the local CA and the leaf certificates for TLS inside tunnels;
//! - `server`: listeners, accept loop, graceful drain, tunnels opened;
//! - `proxy`: routing, header rules, forwarding, retry after a refresh, upstream
//!   connection pools, link rewriting;
//! - `reload`: how a reload is asked for and what it answers;
//! - `admin`: health, readiness, status, metrics, manual refresh and reload;
//! - `instance`: `start` opens what lives as long as the process and shuts it
//!   down in the reverse order; its `wiring` builds what a configuration runs
//!   (token sources, upstream connections, handlers, listeners) at start and at
//!   every reload alike;
//! - `bootstrap`: `tokenproxy seed` and `tokenproxy login`, on the store alone;
//! - `control`: `tokenproxy token status|refresh` and `tokenproxy health`, clients
//!   of the admin listener;
//! - `logging`: log lines to stderr in batches, from a thread of their own;
//! - `login`: the authorization code flow with PKCE;
//! - `demo`: a local token server and API for `tokenproxy demo` and the tests;
//! - `fuzzing`: the untrusted-input parsers, exposed for `fuzz/` and property tests.

#![forbid(unsafe_code)]
// A std::sync guard held across an await blocks every task that wants the lock on
// that runtime thread; clippy.toml bans the calls that wait.
#![deny(clippy::await_holding_lock, clippy::await_holding_refcell_ref)]

pub mod admin;
pub mod body;
pub mod bootstrap;
pub mod certs;
pub mod clock;
pub mod config;
pub mod control;
pub mod demo;
pub mod error;
#[doc(hidden)]
pub mod fuzzing;
pub mod instance;
pub mod intercept;
pub mod logging;
pub mod login;
pub mod metrics;
pub mod proxy;
pub mod quota;
pub mod reload;
pub mod secret;
pub mod server;
pub mod store;
pub mod tls;
pub mod token;
pub mod tunnel;

pub use bootstrap::{BootstrapError, login, seed};
pub use instance::{Running, StartError, probe_store, start};

/// Makes a panic one log line in the configured format (the default hook writes
/// free text to stderr). Where a panic is caught (a request, a refresh) it is also
/// answered and counted in `tokenproxy_panics_total`. The hook is process-wide, so
/// the binary installs it once at start.
pub fn log_panics() {
    std::panic::set_hook(Box::new(|info| {
        let message = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "(no message)".to_owned());
        let location = info
            .location()
            .map(|l| format!("{}:{}", l.file(), l.line()))
            .unwrap_or_default();
        tracing::error!(
            panic = %message,
            location = %location,
            thread = std::thread::current().name().unwrap_or("-"),
            "panic: a defect in tokenproxy; please report it with this line"
        );
    }));
}
