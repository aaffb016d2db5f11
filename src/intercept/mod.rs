//! HTTPS interception of `CONNECT` to routed hosts.
//!
//! A client with `HTTPS_PROXY` asks for a tunnel (`CONNECT api.example.com:443`).
//! When the host is a route's `host`, the proxy answers `200`, and this module
//! terminates TLS inside the tunnel with a leaf certificate for that host, signed
//! by the local CA ([`ca`]); the requests inside are then proxied like
//! absolute-form requests for `https://host/...`. Every other `CONNECT` is refused
//! before anything is opened.
//!
//! Leaves are made on first use, one per host, and kept until half their life has
//! passed: the cache has one entry per routed host at most, and a storm of
//! tunnels to one host signs once (the signing happens under the cache's lock,
//! which is the single flight). Sessions resume (tickets and a session cache
//! shared by every host's configuration).
//!
//! Length: the interceptor (leaf cache, session resumption) and the `ca` commands
//! that manage its CA share the CA's loading and checks.

pub mod ca;

use std::collections::HashMap;
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use rustls::ServerConfig;
use rustls::server::{ProducesTickets, ServerSessionMemoryCache, StoresServerSessions};

use crate::config::Intercept;
use crate::metrics::Metrics;
pub use ca::{Ca, CaError};

/// Why interception could not be set up at start.
#[derive(Debug, thiserror::Error)]
pub enum InterceptError {
    #[error("intercept.{key}: {detail}")]
    Read { key: &'static str, detail: String },
    #[error("intercept: {path}: {source}")]
    Write { path: String, source: io::Error },
    #[error("intercept CA ({what}): {source}; {fix}")]
    Ca {
        what: String,
        source: CaError,
        fix: &'static str,
    },
    #[error("TLS for intercepted connections: {0}")]
    Tls(#[from] rustls::Error),
}

/// What `tokenproxy ca init` and `ca = "auto"` write: the certificate world-
/// readable (clients need it), the key readable by the owner only.
pub fn write_ca(
    cert_path: &Path,
    key_path: &Path,
    cert_pem: &str,
    key_pem: &str,
    replace: bool,
) -> Result<(), InterceptError> {
    let write = |path: &Path, text: &str, mode: u32| -> Result<(), InterceptError> {
        let err = |source| InterceptError::Write {
            path: path.display().to_string(),
            source,
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(err)?;
        }
        let temp = path.with_extension(format!("tmp.{:08x}", fastrand::u32(..)));
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&temp)
            .map_err(err)?;
        let written =
            io::Write::write_all(&mut file, text.as_bytes()).and_then(|()| file.sync_all());
        let placed = written.and_then(|()| {
            if replace {
                std::fs::rename(&temp, path)
            } else {
                // Fails if the file exists: never overwrite a CA clients trust.
                std::fs::hard_link(&temp, path)
            }
        });
        let _ = std::fs::remove_file(&temp);
        placed.map_err(err)
    };
    for path in [cert_path, key_path] {
        if !replace && path.exists() {
            return Err(InterceptError::Write {
                path: path.display().to_string(),
                source: io::Error::new(
                    io::ErrorKind::AlreadyExists,
                    "exists; clients may trust it (pass --force to replace it, then give clients the new certificate)",
                ),
            });
        }
    }
    write(key_path, key_pem, 0o600)?;
    write(cert_path, cert_pem, 0o644)
}

/// The hosts a CA made for this configuration is constrained to: the routes'
/// `host` names (without ports) that are DNS names.
pub fn routed_hosts(routes: &[crate::config::Route]) -> Vec<String> {
    let mut hosts: Vec<String> = routes
        .iter()
        .filter_map(|r| r.host.as_deref())
        .filter(|h| crate::config::is_dns_host(h))
        .map(|h| crate::config::dns_name(h).to_owned())
        .collect();
    hosts.sort();
    hosts.dedup();
    hosts
}

/// Reads the configured CA; with `ca = "auto"`, creates it first if it is not there.
pub fn load_ca(config: &Intercept, hosts: &[String]) -> Result<Ca, InterceptError> {
    let (cert_pem, key_pem, what) = match config {
        Intercept::Files { cert, key } => {
            let read = |key_name: &'static str, r: &crate::secret::SecretRef| {
                r.resolve().map_err(|e| InterceptError::Read {
                    key: key_name,
                    detail: format!("{e}; create the CA with `tokenproxy ca init`"),
                })
            };
            (
                read("ca_cert", cert)?,
                read("ca_key", key)?,
                cert.to_string(),
            )
        }
        Intercept::Auto { dir } => {
            let (cert_path, key_path) = (dir.join("ca.pem"), dir.join("ca.key"));
            if !cert_path.exists() && !key_path.exists() {
                let (cert, key) = ca::create(hosts).map_err(|source| InterceptError::Ca {
                    what: "ca = \"auto\"".into(),
                    source,
                    fix: "route a host, or remove [intercept]",
                })?;
                write_ca(&cert_path, &key_path, &cert, key.expose(), false)?;
                tracing::warn!(
                    cert = %cert_path.display(),
                    hosts = %hosts.join(","),
                    "created the interception CA; clients must trust this certificate (see `tokenproxy ca show`)"
                );
            }
            let read = |key: &'static str, path: &Path| {
                crate::secret::SecretRef::File(path.to_owned())
                    .resolve()
                    .map_err(|e| InterceptError::Read {
                        key,
                        detail: e.to_string(),
                    })
            };
            (
                read("ca", &cert_path)?,
                read("ca", &key_path)?,
                cert_path.display().to_string(),
            )
        }
    };
    Ca::load(cert_pem.expose(), key_pem.expose()).map_err(|source| InterceptError::Ca {
        what,
        source,
        fix: "point ca_cert and ca_key at a CA certificate and its key, or create them with `tokenproxy ca init`",
    })
}

/// Terminates TLS in tunnels, with leaves from the CA.
pub struct Interceptor {
    ca: Ca,
    /// Host → its TLS configuration and when to sign a new leaf.
    leaves: Mutex<HashMap<String, (Arc<ServerConfig>, SystemTime)>>,
    sessions: Arc<dyn StoresServerSessions>,
    tickets: Arc<dyn ProducesTickets>,
    metrics: Arc<Metrics>,
}

impl Interceptor {
    pub fn new(ca: Ca, metrics: Arc<Metrics>) -> Result<Interceptor, InterceptError> {
        Ok(Interceptor {
            ca,
            leaves: Mutex::new(HashMap::new()),
            sessions: ServerSessionMemoryCache::new(4096),
            tickets: rustls::crypto::ring::Ticketer::new()?,
            metrics,
        })
    }

    /// Warns about each routed host the CA may not sign for: tunnels to it are
    /// refused until the CA is made again.
    pub fn warn_uncovered(&self, routes: &[crate::config::Route]) {
        for host in routed_hosts(routes) {
            if !self.ca.permits(&host) {
                tracing::warn!(
                    host = %host,
                    "the interception CA's name constraints do not cover this routed host: CONNECT to it is refused; recreate the CA with `tokenproxy ca init --force` and give clients the new certificate"
                );
            }
        }
    }

    /// Whether the CA may sign for `host` (a DNS name without port).
    pub fn permits(&self, host: &str) -> bool {
        self.ca.permits(host)
    }

    /// The TLS configuration presenting a valid leaf for `host`; signs one when
    /// there is none or the one cached is past half its life.
    pub fn tls_config(&self, host: &str) -> Result<Arc<ServerConfig>, CaError> {
        self.tls_config_at(host, SystemTime::now())
    }

    fn tls_config_at(&self, host: &str, now: SystemTime) -> Result<Arc<ServerConfig>, CaError> {
        let mut leaves = self.leaves.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((config, renew_at)) = leaves.get(host)
            && now < *renew_at
        {
            return Ok(Arc::clone(config));
        }
        let leaf = self.ca.leaf(host)?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .and_then(|b| {
                b.with_no_client_auth()
                    .with_single_cert(leaf.chain, leaf.key)
            })
            .map_err(|e| CaError::Sign(e.to_string()))?;
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        config.session_storage = Arc::clone(&self.sessions);
        config.ticketer = Arc::clone(&self.tickets);
        let config = Arc::new(config);
        let half = leaf.not_after.duration_since(now).unwrap_or_default() / 2;
        leaves.insert(host.to_owned(), (Arc::clone(&config), now + half));
        self.metrics.intercept_leaf_signed();
        tracing::info!(host, valid_until = %crate::clock::rfc3339(leaf.not_after), "signed an interception certificate");
        Ok(config)
    }
}

/// Why `tokenproxy ca` cannot act on this configuration.
fn not_configured(what: &str) -> InterceptError {
    InterceptError::Read {
        key: "ca",
        detail: format!(
            "{what}: the configuration has no [intercept]; add one with ca_cert = {{ file = \"/etc/tokenproxy/ca.pem\" }} and ca_key = {{ file = \"/etc/tokenproxy/ca.key\" }} (or ca = \"auto\")"
        ),
    }
}

/// `tokenproxy ca init`: a new CA constrained to the routed hosts, written to
/// the configured files (never over existing ones unless `replace`).
pub fn init(config: &crate::config::Config, replace: bool) -> Result<String, InterceptError> {
    let intercept = config
        .intercept
        .as_ref()
        .ok_or_else(|| not_configured("ca init"))?;
    let (cert_path, key_path) = intercept.files().ok_or(InterceptError::Read {
        key: "ca_cert",
        detail:
            "ca init writes files: set ca_cert = { file = \"...\" } and ca_key = { file = \"...\" }"
                .into(),
    })?;
    let hosts = routed_hosts(&config.routes);
    let (cert, key) = ca::create(&hosts).map_err(|source| InterceptError::Ca {
        what: "ca init".into(),
        source,
        fix: "then run ca init again",
    })?;
    write_ca(&cert_path, &key_path, &cert, key.expose(), replace)?;
    Ok(format!(
        "created the interception CA
  certificate: {} (clients trust this file)
  key:         {} (mode 0600; a secret: whoever holds it can present certificates for the hosts below)
  may sign for: {} (and their subdomains; no other name, no IP address)
next: `tokenproxy ca show` prints how each client trusts it",
        cert_path.display(),
        key_path.display(),
        hosts.join(", ")
    ))
}

/// The CA certificate's PEM text as configured (without reading the key).
fn cert_pem(intercept: &Intercept) -> Result<(String, String), InterceptError> {
    let (source, where_) = match intercept {
        // A file is named by its path alone, so that commands quoting it run.
        Intercept::Files {
            cert: crate::secret::SecretRef::File(path),
            ..
        } => (
            crate::secret::SecretRef::File(path.clone()),
            path.display().to_string(),
        ),
        Intercept::Files { cert, .. } => (cert.clone(), cert.to_string()),
        Intercept::Auto { dir } => {
            let path = dir.join("ca.pem");
            (
                crate::secret::SecretRef::File(path.clone()),
                path.display().to_string(),
            )
        }
    };
    let pem = source.resolve().map_err(|e| InterceptError::Read {
        key: "ca_cert",
        detail: format!(
            "{e}; create the CA with `tokenproxy ca init`{}",
            if matches!(intercept, Intercept::Auto { .. }) {
                " or start tokenproxy once (ca = \"auto\")"
            } else {
                ""
            }
        ),
    })?;
    Ok((pem.expose().to_owned(), where_))
}

/// The configured CA certificate: its PEM text, where it is, what it says.
fn configured_info(intercept: &Intercept) -> Result<(String, String, ca::CaInfo), InterceptError> {
    let (pem, path) = cert_pem(intercept)?;
    let info = ca::CaInfo::parse(&pem).map_err(|source| InterceptError::Ca {
        what: path.clone(),
        source,
        fix: "create a new one with `tokenproxy ca init --force`",
    })?;
    Ok((pem, path, info))
}

/// `tokenproxy ca show`: the certificate, what it may sign for, and how clients
/// trust it.
pub fn show(config: &crate::config::Config) -> Result<String, InterceptError> {
    let intercept = config
        .intercept
        .as_ref()
        .ok_or_else(|| not_configured("ca show"))?;
    let (pem, path, info) = configured_info(intercept)?;
    let mut text = format!(
        "{pem}
file:         {path}
subject:      {}
sha256:       {}
valid until:  {}
may sign for: {}
",
        info.subject,
        info.fingerprint(),
        crate::clock::rfc3339(info.not_after),
        info.permitted
            .as_ref()
            .map_or("any name (no name constraints)".into(), |p| p.join(", ")),
    );
    for host in routed_hosts(&config.routes) {
        if !info.permits(&host) {
            text += &format!(
                "warning: routed host {host} is outside the constraints; CONNECT to it is refused (recreate with `tokenproxy ca init --force`)\n"
            );
        }
    }
    text += &trust_commands(config, &path);
    Ok(text)
}

/// How clients trust the CA, as lines that run when pasted into a POSIX shell: the
/// path quoted, the proxy's real address, a routed host to try.
fn trust_commands(config: &crate::config::Config, path: &str) -> String {
    let (proxy, host, port) = match &config.listen.proxy {
        crate::config::ListenAddr::Tcp(a) => {
            let host = match a.ip() {
                ip if ip.is_unspecified() => "127.0.0.1".to_owned(),
                std::net::IpAddr::V6(ip) => format!("[{ip}]"),
                ip => ip.to_string(),
            };
            (
                format!("http://{host}:{}", a.port()),
                host,
                a.port().to_string(),
            )
        }
        crate::config::ListenAddr::Unix(_) => (
            "http://HOST:PORT".to_owned(),
            "HOST".to_owned(),
            "PORT".to_owned(),
        ),
    };
    let ca = shell_quote(path);
    let site = routed_hosts(&config.routes)
        .into_iter()
        .next()
        .unwrap_or_else(|| "api.example.com".into());
    format!(
        "
Use it: point clients at {proxy} for https:// URLs (NO_PROXY for hosts that must not
go through tokenproxy) and make them trust {ca}. Each line runs as printed:
  curl           curl --proxy {proxy} --cacert {ca} https://{site}/
                 export HTTPS_PROXY={proxy} CURL_CA_BUNDLE={ca}
  Python         cat /etc/ssl/certs/ca-certificates.crt {ca} > tokenproxy-bundle.pem   # the system bundle (Debian's path) + the CA
  (requests,     export HTTPS_PROXY={proxy} REQUESTS_CA_BUNDLE=\"$PWD/tokenproxy-bundle.pem\" SSL_CERT_FILE=\"$PWD/tokenproxy-bundle.pem\"
  httpx, urllib) python3 -c 'import urllib.request; print(urllib.request.urlopen(\"https://{site}/\").status)'
  Node.js        export HTTPS_PROXY={proxy} NODE_USE_ENV_PROXY=1 NODE_EXTRA_CA_CERTS={ca}
  Java           keytool -importcert -noprompt -alias tokenproxy -file {ca} -keystore tokenproxy.jks -storepass changeit
                 java -Djavax.net.ssl.trustStore=tokenproxy.jks -Djavax.net.ssl.trustStorePassword=changeit -Dhttps.proxyHost={host} -Dhttps.proxyPort={port} -jar your-tool.jar
  Debian/Ubuntu  cp {ca} /usr/local/share/ca-certificates/tokenproxy.crt && update-ca-certificates
"
    )
}

/// `text` as one word for a POSIX shell: as is when it holds only safe characters,
/// else in single quotes.
fn shell_quote(text: &str) -> String {
    let safe = !text.is_empty()
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"/._-+:=@%,".contains(&b));
    match safe {
        true => text.to_owned(),
        false => format!("'{}'", text.replace('\'', "'\\''")),
    }
}

/// For `tokenproxy check`: whether the CA can be read and covers the routed hosts.
/// `Ok` with warnings in words; `Err` when interception could not start.
pub fn check(config: &crate::config::Config) -> Result<Option<String>, InterceptError> {
    let Some(intercept) = &config.intercept else {
        return Ok(None);
    };
    if let Intercept::Auto { dir } = intercept
        && !dir.join("ca.pem").exists()
    {
        return Ok(Some(format!(
            "{}: created at the first start, for {}",
            dir.join("ca.pem").display(),
            routed_hosts(&config.routes).join(", ")
        )));
    }
    let (_, path, info) = configured_info(intercept)?;
    let uncovered: Vec<String> = routed_hosts(&config.routes)
        .into_iter()
        .filter(|h| !info.permits(h))
        .collect();
    Ok(Some(if uncovered.is_empty() {
        format!(
            "{path}: usable, valid until {}",
            crate::clock::rfc3339(info.not_after)
        )
    } else {
        format!(
            "{path}: warning: routed hosts outside the CA's name constraints (CONNECT to them is refused): {}; recreate the CA with `tokenproxy ca init --force`",
            uncovered.join(", ")
        )
    }))
}

#[cfg(test)]
mod tests;
