//! HTTPS interception: real clients with `HTTPS_PROXY` and an `https://` URL of a
//! public name (`api.hubapi.com`), whose route leads to a local https API. The
//! clients never resolve the name: they ask the proxy for a tunnel.

mod support;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use support::{ProviderOptions, Proxy, World, binary, client, get, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const HOST: &str = "api.hubapi.com";

/// A provider whose API speaks TLS (a private CA the proxy trusts through
/// `[tls] ca_file`), and a configuration routing `api.hubapi.com` to it.
struct Setup {
    w: World,
    config: PathBuf,
}

impl Setup {
    async fn new(options: ProviderOptions) -> Setup {
        Setup::with(options, "", "").await
    }

    /// `intercept`: the `[intercept]` table's body (`None` below means files in
    /// the world's directory, made with `ca init`); `extra`: more TOML at the end.
    async fn with(options: ProviderOptions, intercept: &str, extra: &str) -> Setup {
        let pki = support::pki::Pki::new();
        let w = World::new(ProviderOptions {
            tls: Some(pki.server("localhost", &[b"h2", b"http/1.1"], false)),
            ..options
        })
        .await;
        let upstream_ca = w.dir.path().join("upstream-ca.pem");
        std::fs::write(&upstream_ca, &pki.ca_pem).unwrap();
        let intercept = if intercept.is_empty() {
            format!(
                "ca_cert = {{ file = \"{0}/ca.pem\" }}\nca_key = {{ file = \"{0}/ca.key\" }}",
                w.dir.path().display()
            )
        } else {
            intercept.to_owned()
        };
        let top = format!(
            "[tls]\nca_file = \"{}\"\n\n[intercept]\n{intercept}\n",
            upstream_ca.display()
        );
        let text = format!(
            "{}\n[[routes]]\nhost = \"{HOST}\"\nupstream = \"{}\"\ntoken = \"demo\"\n{extra}",
            w.config(&top, ""),
            w.provider.api_url
        );
        let config = w.dir.path().join("tokenproxy.toml");
        std::fs::write(&config, text).unwrap();
        Setup { w, config }
    }

    fn ca(&self) -> PathBuf {
        self.w.dir.path().join("ca.pem")
    }

    fn ca_init(&self) -> std::process::Output {
        Command::new(binary())
            .args(["ca", "init", "-c"])
            .arg(&self.config)
            .env("DEMO_CLIENT_SECRET", "demo-secret")
            .env("DEMO_REFRESH_TOKEN", "unused")
            .env("CALLER_KEY", "k3y-for-callers")
            .output()
            .unwrap()
    }

    fn start(&self) -> Proxy {
        let out = self.ca_init();
        assert!(out.status.success(), "ca init: {out:?}");
        Proxy::start(&self.config, &[])
    }
}

fn proxy_url(p: &Proxy) -> String {
    format!("http://{}", p.addr)
}

/// Runs `curl` through the proxy; returns (exit code, stdout, stderr).
fn curl(p: &Proxy, args: &[&str]) -> (i32, String, String) {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "20", "-x", &proxy_url(p)])
        .args(args)
        .env_remove("HTTPS_PROXY")
        .env_remove("https_proxy")
        .output()
        .expect("curl is installed");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The value of the first metric line that starts with `name` and holds every
/// one of `labels`.
/// Runs a client program; its standard output, once it exited successfully.
fn run_client(cmd: &mut Command, p: &Proxy) -> String {
    let out = cmd.output().expect("the client is installed");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{stdout}{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        p.log()
    );
    stdout
}

async fn metric(p: &Proxy, name: &str, labels: &[&str]) -> f64 {
    let text = get(&p.admin_url("/metrics")).await.1;
    text.lines()
        .find(|l| l.starts_with(name) && labels.iter().all(|x| l.contains(x)))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

async fn curl_with_an_https_url_gets_the_api_with_the_token_over_http1_and_http2() {
    let s = Setup::new(ProviderOptions::default()).await;
    let p = s.start();
    let ca = s.ca();
    let ca = ca.to_str().unwrap();
    for version in ["--http1.1", "--http2"] {
        let (code, out, err) = curl(
            &p,
            &[
                version,
                "--cacert",
                ca,
                "-w",
                "\n%{http_code} %{http_version}",
                "-H",
                "Authorization: Bearer stale-token-in-the-tool",
                &format!("https://{HOST}/crm/v3/objects/contacts?limit=1"),
            ],
        );
        assert_eq!(code, 0, "{version}: {err}\n{}", p.log());
        let (body, status) = out.rsplit_once('\n').unwrap();
        let want = if version == "--http2" {
            "200 2"
        } else {
            "200 1.1"
        };
        assert_eq!(status, want, "{version}: {body}");
        let body = json(body);
        assert_eq!(body["path"], "/crm/v3/objects/contacts");
        assert_eq!(body["query"], "limit=1");
    }
    assert_eq!(s.w.provider.api_requests(), 2, "the API accepted both");
    // Links the API returns point at the URL the client used: https, the public name.
    let (code, out, err) = curl(
        &p,
        &[
            "--cacert",
            ca,
            &format!("https://{HOST}/pages?page=1&last=2&style=hubspot"),
        ],
    );
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains(&format!("https://{HOST}/pages?page=2")),
        "next link rewritten to the tunnel's URL: {out}"
    );
    assert!(!out.contains("localhost"), "{out}");
    let log = p.log();
    assert!(log.contains("signed an interception certificate"), "{log}");
    assert!(!log.contains("stale-token-in-the-tool"));
}

async fn python_requests_and_httpx_with_https_proxy_and_the_ca_bundle() {
    let s = Setup::new(ProviderOptions::default()).await;
    let p = s.start();
    let script = format!(
        r#"
import requests
r = requests.get("https://{HOST}/crm/v3/objects/contacts", params={{"limit": 2}}, timeout=20)
print(r.status_code)
print(r.json()["path"])
import httpx
r = httpx.get("https://{HOST}/v2/httpx", timeout=20)
print("httpx", r.status_code, r.json()["path"])
"#
    );
    let stdout = run_client(
        Command::new(support::harness::python())
            .args(["-c", &script])
            .env("HTTPS_PROXY", proxy_url(&p))
            .env("REQUESTS_CA_BUNDLE", s.ca())
            .env("SSL_CERT_FILE", s.ca())
            .env_remove("NO_PROXY")
            .env_remove("no_proxy"),
        &p,
    );
    assert_eq!(
        stdout,
        "200\n/crm/v3/objects/contacts\nhttpx 200 /v2/httpx\n"
    );
}

async fn node_https_through_a_connect_agent_trusting_the_ca_by_environment() {
    let s = Setup::new(ProviderOptions::default()).await;
    let p = s.start();
    // What proxy agents (https-proxy-agent, undici's ProxyAgent) do: CONNECT, then
    // TLS over the socket with the default trust, which NODE_EXTRA_CA_CERTS extends.
    let script = format!(
        r#"
const http = require('http'), https = require('https');
const proxy = new URL(process.env.HTTPS_PROXY);
const req = http.request({{ host: proxy.hostname, port: proxy.port, method: 'CONNECT', path: '{HOST}:443' }});
req.on('connect', (res, socket) => {{
  if (res.statusCode !== 200) {{ console.log('CONNECT ' + res.statusCode); process.exit(1); }}
  https.get({{ host: '{HOST}', path: '/v1/node?x=1', socket, agent: false, servername: '{HOST}' }}, (r) => {{
    let body = '';
    r.on('data', (d) => body += d);
    r.on('end', () => {{ console.log(r.statusCode + ' ' + JSON.parse(body).path); process.exit(0); }});
  }}).on('error', (e) => {{ console.log('error ' + e.message); process.exit(1); }});
}});
req.on('error', (e) => {{ console.log('proxy error ' + e.message); process.exit(1); }});
req.end();
"#
    );
    let stdout = run_client(
        Command::new("node")
            .args(["-e", &script])
            .env("HTTPS_PROXY", proxy_url(&p))
            .env("NODE_EXTRA_CA_CERTS", s.ca()),
        &p,
    );
    assert_eq!(stdout, "200 /v1/node\n");
}

/// CONNECT `target` on a raw connection; the response head.
async fn connect(proxy: SocketAddr, target: &str, extra: &str) -> (TcpStream, String) {
    let mut s = TcpStream::connect(proxy).await.unwrap();
    s.write_all(format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n{extra}\r\n").as_bytes())
        .await
        .unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if s.read(&mut byte).await.unwrap() == 0 {
            break;
        }
        head.push(byte[0]);
    }
    (s, String::from_utf8_lossy(&head).into_owned())
}

/// A TLS client trusting only `ca`, checking the name `name`.
fn tls_client(ca: &Path) -> tokio_rustls::TlsConnector {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    let config = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    tokio_rustls::TlsConnector::from(Arc::new(config))
}

/// A listener that counts the connections it accepts.
async fn canary() -> (SocketAddr, Arc<AtomicU64>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let count = Arc::new(AtomicU64::new(0));
    let c = Arc::clone(&count);
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            c.fetch_add(1, Ordering::SeqCst);
            drop(s);
        }
    });
    (addr, count)
}

async fn connect_to_anything_but_a_routed_host_is_refused_and_opens_nothing() {
    let s = Setup::new(ProviderOptions::default()).await;
    let p = s.start();
    let (canary, opened) = canary().await;
    let port = canary.port();
    for target in [
        format!("127.0.0.1:{port}"),
        format!("localhost:{port}"),
        format!("[::1]:{port}"),
        format!("{}", p.admin),
        "example.com:443".to_owned(),
        format!("{HOST}.evil.example:443"),
        format!("evil{HOST}:443"),
        "hubapi.com:443".to_owned(),
        format!("{HOST}:8443"),
        "8.8.8.8:443".to_owned(),
    ] {
        let (mut conn, head) = connect(p.addr, &target, "").await;
        assert!(head.starts_with("HTTP/1.1 405"), "{target}: {head}");
        assert!(
            head.contains("x-tokenproxy-error: connect_not_supported"),
            "{head}"
        );
        assert!(head.contains("connection: close"), "{target}: {head}");
        // The connection is closed after the refusal: nothing it sends is read.
        let mut rest = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(10), conn.read_to_end(&mut rest)).await;
        assert!(read.is_ok(), "{target}: the connection stayed open");
    }
    assert_eq!(opened.load(Ordering::SeqCst), 0, "nothing was opened");
    assert_eq!(s.w.provider.api_requests(), 0);
}

async fn without_intercept_a_routed_host_is_still_refused() {
    let w = World::default().await;
    let config = format!(
        "{}\n[[routes]]\nhost = \"{HOST}\"\nupstream = \"{}\"\ntoken = \"demo\"\n",
        w.config("", ""),
        w.provider.api_url
    );
    let p = w.spawn(&config);
    let (_, head) = connect(p.addr, &format!("{HOST}:443"), "").await;
    assert!(head.starts_with("HTTP/1.1 405"), "{head}");
    assert!(head.contains("connect_not_supported"), "{head}");
}

async fn the_leaf_is_valid_for_its_host_only() {
    let s = Setup::new(ProviderOptions::default()).await;
    let p = s.start();
    let tls = tls_client(&s.ca());
    let (conn, head) = connect(p.addr, &format!("{HOST}:443"), "").await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let name = ServerName::try_from(HOST).unwrap();
    let mut stream = tls.connect(name, conn).await.expect("trusted for its host");
    stream
        .write_all(
            format!("GET /v1/raw HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .unwrap();
    let mut resp = Vec::new();
    let _ = stream.read_to_end(&mut resp).await;
    let resp = String::from_utf8_lossy(&resp);
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");

    for other in ["www.hubapi.com", "google.com", "eu1.api.hubapi.com"] {
        let (conn, head) = connect(p.addr, &format!("{HOST}:443"), "").await;
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        let name = ServerName::try_from(other).unwrap();
        let Err(err) = tls.connect(name, conn).await else {
            panic!("{other}: accepted");
        };
        assert!(
            err.to_string().contains("not valid for name"),
            "{other}: {err}"
        );
    }
}

async fn a_request_for_another_host_inside_a_tunnel_is_misdirected() {
    let s = Setup::new(ProviderOptions::default()).await;
    let p = s.start();
    let (conn, _) = connect(p.addr, &format!("{HOST}:443"), "").await;
    let mut stream = tls_client(&s.ca())
        .connect(ServerName::try_from(HOST).unwrap(), conn)
        .await
        .unwrap();
    stream
        .write_all(b"GET /v1/x HTTP/1.1\r\nHost: other.example.com\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut resp = Vec::new();
    let _ = stream.read_to_end(&mut resp).await;
    let resp = String::from_utf8_lossy(&resp);
    assert!(resp.starts_with("HTTP/1.1 421"), "{resp}");
    assert!(resp.contains("misdirected_request"), "{resp}");
    assert_eq!(s.w.provider.api_requests(), 0);
}

/// Signs a leaf for `name` with the CA files of the setup, as someone holding the
/// CA key could.
fn leaf_signed_with_the_ca(s: &Setup, name: &str) -> Arc<rustls::ServerConfig> {
    let cert = std::fs::read_to_string(s.ca()).unwrap();
    let key = std::fs::read_to_string(s.w.dir.path().join("ca.key")).unwrap();
    let issuer =
        rcgen::Issuer::from_ca_cert_pem(&cert, rcgen::KeyPair::from_pem(&key).unwrap()).unwrap();
    let leaf_key = rcgen::KeyPair::generate().unwrap();
    let leaf = rcgen::CertificateParams::new(vec![name.to_owned()])
        .unwrap()
        .signed_by(&leaf_key, &issuer)
        .unwrap();
    let config = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(
            vec![leaf.der().clone()],
            PrivateKeyDer::from_pem_slice(leaf_key.serialize_pem().as_bytes()).unwrap(),
        )
        .unwrap();
    Arc::new(config)
}

/// Serves one TLS handshake per connection with `config`, answering 200.
async fn tls_server(config: Arc<rustls::ServerConfig>) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                if let Ok(mut tls) = acceptor.accept(s).await {
                    let mut buf = [0u8; 4096];
                    let _ = tls.read(&mut buf).await;
                    let _ = tls
                        .write_all(
                            b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok",
                        )
                        .await;
                    let _ = tls.shutdown().await;
                }
            });
        }
    });
    addr
}

async fn the_ca_key_cannot_mint_a_certificate_clients_accept_for_another_site() {
    let s = Setup::new(ProviderOptions::default()).await;
    assert!(s.ca_init().status.success());
    let _ = rustls::crypto::ring::default_provider().install_default();
    let ca = s.ca();
    let ca = ca.to_str().unwrap();
    let try_curl = |name: &str, addr: SocketAddr| {
        Command::new("curl")
            .args(["-sS", "--max-time", "10", "--noproxy", "*", "--cacert", ca])
            .args(["--resolve", &format!("{name}:{}:127.0.0.1", addr.port())])
            .arg(format!("https://{name}:{}/", addr.port()))
            .output()
            .unwrap()
    };
    // A leaf for a permitted name works: the test's signing is sound.
    let allowed = tls_server(leaf_signed_with_the_ca(&s, HOST)).await;
    let out = try_curl(HOST, allowed);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "ok");
    // The same CA signing for any other site: curl (OpenSSL) refuses it.
    for name in ["www.google.com", "login.microsoftonline.com", "hubapi.com"] {
        let server = tls_server(leaf_signed_with_the_ca(&s, name)).await;
        let out = try_curl(name, server);
        assert!(!out.status.success(), "{name} was accepted");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("subtree") || err.contains("name constraint"),
            "{name}: {err}"
        );
    }
    // And so does rustls (webpki).
    let server = tls_server(leaf_signed_with_the_ca(&s, "www.google.com")).await;
    let conn = TcpStream::connect(server).await.unwrap();
    let Err(err) = tls_client(&s.ca())
        .connect(ServerName::try_from("www.google.com").unwrap(), conn)
        .await
    else {
        panic!("accepted");
    };
    assert!(err.to_string().to_lowercase().contains("name"), "{err}");
}

async fn a_client_that_does_not_trust_the_ca_fails_and_it_is_counted() {
    let s = Setup::new(ProviderOptions::default()).await;
    let p = s.start();
    let (code, _, err) = curl(&p, &[&format!("https://{HOST}/v1/x")]);
    assert_eq!(code, 60, "curl refuses the certificate: {err}");
    let log = p.wait_log("does not trust the interception CA").await;
    assert!(log.contains("tokenproxy ca show"), "{log}");
    assert_eq!(
        metric(
            &p,
            "tokenproxy_errors_total{",
            &[
                "error=\"intercept_certificate_rejected\"",
                "route=\"api.hubapi.com\""
            ]
        )
        .await,
        1.0,
        "{}",
        get(&p.admin_url("/metrics")).await.1
    );
    assert_eq!(s.w.provider.api_requests(), 0);
}

async fn a_401_inside_the_tunnel_refreshes_once_and_resends_once() {
    let s = Setup::new(ProviderOptions::default()).await;
    let p = s.start();
    p.wait_token("demo", "valid", Duration::from_secs(20)).await;
    let before = s.w.provider.token_requests();
    s.w.provider.revoke_access();
    let ca = s.ca();
    let (code, out, err) = curl(
        &p,
        &[
            "--cacert",
            ca.to_str().unwrap(),
            "-w",
            "\n%{http_code}",
            "-d",
            "{\"name\":\"x\"}",
            &format!("https://{HOST}/crm/v3/objects/contacts"),
        ],
    );
    assert_eq!(code, 0, "{err}");
    assert!(out.ends_with("\n200"), "{out}");
    let body = json(out.rsplit_once('\n').unwrap().0);
    assert_eq!(body["method"], "POST");
    assert_eq!(body["body"], "{\"name\":\"x\"}", "the body was resent");
    assert_eq!(s.w.provider.token_requests(), before + 1, "one refresh");
    assert_eq!(s.w.provider.api_requests(), 2, "one resend");
}

async fn a_thousand_connects_to_one_host_sign_one_leaf() {
    let s = Setup::new(ProviderOptions::default()).await;
    let p = s.start();
    let tls = tls_client(&s.ca());
    let mut tasks = Vec::new();
    for i in 0..1000 {
        let (addr, tls) = (p.addr, tls.clone());
        tasks.push(tokio::spawn(async move {
            let (conn, head) = connect(addr, &format!("{HOST}:443"), "").await;
            assert!(head.starts_with("HTTP/1.1 200"), "{head}");
            // A sample of the tunnels completes a handshake and a request.
            if i % 50 == 0 {
                let mut tls = tls
                    .connect(ServerName::try_from(HOST).unwrap(), conn)
                    .await
                    .unwrap();
                tls.write_all(
                    format!("GET /v1/{i} HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n")
                        .as_bytes(),
                )
                .await
                .unwrap();
                let mut resp = Vec::new();
                let _ = tls.read_to_end(&mut resp).await;
                assert!(resp.starts_with(b"HTTP/1.1 200"));
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(
        metric(&p, "tokenproxy_intercept_leaf_certificates_total", &[]).await,
        1.0
    );
    assert_eq!(s.w.provider.api_requests(), 20);
}

async fn ca_auto_is_created_once_in_the_state_directory_and_kept() {
    let s = Setup::with(ProviderOptions::default(), "ca = \"auto\"", "").await;
    let p = Proxy::start(&s.config, &[]);
    let state = s.w.state_dir();
    let (cert, key) = (state.join("ca.pem"), state.join("ca.key"));
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&key).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let first = std::fs::read(&cert).unwrap();
    let (code, _, err) = curl(
        &p,
        &[
            "--cacert",
            cert.to_str().unwrap(),
            &format!("https://{HOST}/v1/auto"),
        ],
    );
    assert_eq!(code, 0, "{err}");
    drop(p);
    let p = Proxy::start(&s.config, &[]);
    assert_eq!(std::fs::read(&cert).unwrap(), first, "the CA was kept");
    let (code, _, err) = curl(
        &p,
        &[
            "--cacert",
            cert.to_str().unwrap(),
            &format!("https://{HOST}/v1/again"),
        ],
    );
    assert_eq!(code, 0, "{err}");
}

async fn ca_init_refuses_to_overwrite_and_ca_show_says_how_to_trust_it() {
    let s = Setup::new(ProviderOptions::default()).await;
    let out = s.ca_init();
    assert!(out.status.success(), "{out:?}");
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(said.contains("may sign for: api.hubapi.com"), "{said}");
    let first = std::fs::read(s.ca()).unwrap();
    let again = s.ca_init();
    assert_eq!(again.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&again.stderr).contains("--force"));
    assert_eq!(std::fs::read(s.ca()).unwrap(), first, "kept");
    let show = Command::new(binary())
        .args(["ca", "show", "-c"])
        .arg(&s.config)
        .env("DEMO_CLIENT_SECRET", "demo-secret")
        .env("DEMO_REFRESH_TOKEN", "unused")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&show.stdout);
    assert!(show.status.success(), "{show:?}");
    assert!(text.starts_with("-----BEGIN CERTIFICATE-----"), "{text}");
    for needle in [
        "NODE_EXTRA_CA_CERTS",
        "REQUESTS_CA_BUNDLE",
        "keytool",
        "--cacert",
        "sha256:",
    ] {
        assert!(text.contains(needle), "{needle}: {text}");
    }
    // check: a routed host the CA does not cover is named.
    let config = std::fs::read_to_string(&s.config).unwrap()
        + "\n[[routes]]\nhost = \"api.salesforce.com\"\nupstream = \"https://api.salesforce.com/\"\ntoken = \"demo\"\n";
    std::fs::write(&s.config, config).unwrap();
    let check = Command::new(binary())
        .args(["check", "-c"])
        .arg(&s.config)
        .env("DEMO_CLIENT_SECRET", "demo-secret")
        .env("DEMO_REFRESH_TOKEN", "unused")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&check.stdout);
    assert!(
        text.contains("outside the CA's name constraints") && text.contains("api.salesforce.com"),
        "{text}"
    );
    // And the running proxy refuses that host, by name.
    let p = Proxy::start(&s.config, &[]);
    let (_, head) = connect(p.addr, "api.salesforce.com:443", "").await;
    assert!(head.starts_with("HTTP/1.1 405"), "{head}");
    assert!(head.contains("intercept_not_permitted"), "{head}");
    let _ = client();
}

/// An unmodified vendor SDK whose URLs are hard-coded (`https://INSTANCE/services/
/// data/v59.0/...`), given no token at all, reads every page through the proxy.
async fn simple_salesforce_reads_all_pages_with_no_token_of_its_own() {
    let python = support::harness::python();
    let instance = "acme.my.salesforce.com";
    let extra =
        format!("\n[[routes]]\nhost = \"{instance}\"\nupstream = \"{{api}}\"\ntoken = \"demo\"\n");
    let s = Setup::with(ProviderOptions::default(), "", &extra).await;
    let text = std::fs::read_to_string(&s.config)
        .unwrap()
        .replace("{api}", &s.w.provider.api_url);
    std::fs::write(&s.config, text).unwrap();
    let p = s.start();
    let script = format!(
        r#"
from simple_salesforce import Salesforce
sf = Salesforce(instance="{instance}", session_id="no-token-here")
result = sf.query_all("SELECT Id, Name FROM Account")
print(result["totalSize"], len(result["records"]), result["done"])
"#
    );
    let stdout = run_client(
        Command::new(python)
            .args(["-c", &script])
            .env("HTTPS_PROXY", proxy_url(&p))
            .env("REQUESTS_CA_BUNDLE", s.ca())
            .env_remove("NO_PROXY")
            .env_remove("no_proxy"),
        &p,
    );
    assert_eq!(stdout, "30 30 True\n", "three pages of ten");
    assert_eq!(s.w.provider.api_requests(), 3);
    assert!(!p.log().contains("no-token-here"));
}

/// Java's HttpClient with a proxy and a truststore made by keytool, as
/// `tokenproxy ca show` says. Runs where a JDK is installed (`.ci/run` installs one).
async fn java_httpclient_with_a_keytool_truststore() {
    let s = Setup::new(ProviderOptions::default()).await;
    let p = s.start();
    let store = s.w.dir.path().join("tokenproxy.jks");
    let keytool = Command::new("keytool")
        .args([
            "-importcert",
            "-noprompt",
            "-alias",
            "tokenproxy",
            "-storepass",
            "changeit",
            "-file",
        ])
        .arg(s.ca())
        .arg("-keystore")
        .arg(&store)
        .output()
        .unwrap();
    assert!(keytool.status.success(), "{keytool:?}");
    let source = s.w.dir.path().join("Get.java");
    std::fs::write(
        &source,
        format!(
            r#"
import java.net.*;
import java.net.http.*;
public class Get {{
  public static void main(String[] args) throws Exception {{
    HttpClient client = HttpClient.newBuilder()
        .proxy(ProxySelector.of(new InetSocketAddress("127.0.0.1", {port})))
        .build();
    HttpResponse<String> r = client.send(
        HttpRequest.newBuilder(URI.create("https://{HOST}/crm/v3/objects/companies?limit=3")).build(),
        HttpResponse.BodyHandlers.ofString());
    System.out.println(r.statusCode() + " " + r.body().contains("\"path\":\"/crm/v3/objects/companies\""));
  }}
}}
"#,
            port = p.addr.port()
        ),
    )
    .unwrap();
    let stdout = run_client(
        Command::new("java")
            .arg(format!("-Djavax.net.ssl.trustStore={}", store.display()))
            .arg("-Djavax.net.ssl.trustStorePassword=changeit")
            .arg(&source),
        &p,
    );
    assert_eq!(stdout, "200 true\n");
}

/// With `[listen] client_key`, the CONNECT must present it; a proxy URL with the
/// key as its password (what `HTTPS_PROXY=http://user:KEY@...` sends) does.
async fn a_caller_key_guards_the_connect_and_may_come_as_the_proxy_password() {
    let s = Setup::new(ProviderOptions::default()).await;
    let text = std::fs::read_to_string(&s.config).unwrap().replace(
        "[listen]\n",
        "[listen]\nclient_key = { env = \"CALLER_KEY\" }\n",
    );
    std::fs::write(&s.config, text).unwrap();
    assert!(s.ca_init().status.success());
    let p = Proxy::start(&s.config, &[("CALLER_KEY", "k3y-for-callers")]);
    let (_, head) = connect(p.addr, &format!("{HOST}:443"), "").await;
    assert!(head.starts_with("HTTP/1.1 407"), "{head}");
    assert!(head.contains("connection: close"), "{head}");
    let ca = s.ca();
    let url = format!("https://{HOST}/v1/keyed");
    let with = |proxy: String| {
        Command::new("curl")
            .args([
                "-sS",
                "--max-time",
                "20",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
            ])
            .args(["-x", &proxy, "--cacert", ca.to_str().unwrap(), &url])
            .output()
            .unwrap()
    };
    let out = with(format!("http://tokenproxy:k3y-for-callers@{}", p.addr));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "200", "{out:?}");
    let out = with(format!("http://tokenproxy:wrong@{}", p.addr));
    assert!(!out.status.success(), "a wrong key opens no tunnel");
    assert_eq!(s.w.provider.api_requests(), 1);
}

/// With `[[callers]]`, the `CONNECT` names the caller: a caller that does not
/// list the host's token gets `403` and no tunnel; the requests inside a tunnel
/// are labelled with the caller whose key opened it.
async fn callers_are_kept_to_their_tokens_through_a_tunnel() {
    let extra = format!(
        "\n[tokens.other]\ngrant = \"client_credentials\"\ntoken_url = \"{token_url}\"\nclient_id = \"demo-client\"\nclient_secret = {{ env = \"DEMO_CLIENT_SECRET\" }}\n\n[[callers]]\nname = \"reader\"\nkey = \"reader-key-0123456789\"\ntokens = [\"demo\"]\n\n[[callers]]\nname = \"elsewhere\"\nkey = \"elsewhere-key-0123456789\"\ntokens = [\"other\"]\n",
        token_url = "https://localhost:1/never-asked"
    );
    let s = Setup::with(ProviderOptions::default(), "", &extra).await;
    let p = s.start();
    let (_, head) = connect(
        p.addr,
        &format!("{HOST}:443"),
        "Proxy-Authorization: Bearer elsewhere-key-0123456789\r\n",
    )
    .await;
    assert!(head.starts_with("HTTP/1.1 403"), "{head}");
    assert!(head.contains("caller_not_allowed"), "{head}");
    let out = Command::new("curl")
        .args([
            "-sS",
            "--max-time",
            "20",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
        ])
        .args(["-x", &format!("http://x:reader-key-0123456789@{}", p.addr)])
        .args(["--cacert", s.ca().to_str().unwrap()])
        .arg(format!("https://{HOST}/v1/inside"))
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "200", "{out:?}");
    let (_, metrics) = get(&p.admin_url("/metrics")).await;
    assert!(
        metrics.lines().any(
            |l| l.starts_with("tokenproxy_requests_total{caller=\"reader\"") && l.contains("2xx")
        ),
        "{metrics}"
    );
    assert_eq!(s.w.provider.api_requests(), 1);
}

/// A client coming back resumes its TLS session (no new signature), and the CA
/// key never shows in the log, `/status` or `/metrics`.
async fn sessions_resume_and_the_ca_key_is_never_shown() {
    let s = Setup::new(ProviderOptions::default()).await;
    let p = s.start();
    let tls = tls_client(&s.ca());
    let mut kinds = Vec::new();
    for i in 0..2 {
        let (conn, _) = connect(p.addr, &format!("{HOST}:443"), "").await;
        let mut stream = tls
            .connect(ServerName::try_from(HOST).unwrap(), conn)
            .await
            .unwrap();
        kinds.push(stream.get_ref().1.handshake_kind());
        stream
            .write_all(
                format!("GET /v1/{i} HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n")
                    .as_bytes(),
            )
            .await
            .unwrap();
        let mut resp = Vec::new();
        let _ = stream.read_to_end(&mut resp).await;
        assert!(resp.starts_with(b"HTTP/1.1 200"));
    }
    use rustls::HandshakeKind::{Full, Resumed};
    assert_eq!(kinds, [Some(Full), Some(Resumed)]);

    let key = std::fs::read_to_string(s.w.dir.path().join("ca.key")).unwrap();
    let body: String = key.lines().filter(|l| !l.starts_with("-----")).collect();
    let shown = format!(
        "{}{}{}",
        p.log(),
        get(&p.admin_url("/status")).await.1,
        get(&p.admin_url("/metrics")).await.1
    );
    for piece in body.as_bytes().chunks(16) {
        assert!(!shown.contains(std::str::from_utf8(piece).unwrap()));
    }
}

/// A tunnel whose client never sends anything is closed after the idle timeout,
/// a failed handshake counted by name; one whose client speaks plain HTTP inside
/// is served as HTTP, with the token (the first byte tells TLS from HTTP).
async fn a_silent_tunnel_is_closed_and_counted_a_plain_one_served() {
    let s = Setup::with(
        ProviderOptions::default(),
        "",
        "\n[proxy]\nidle_timeout = \"1s\"\n",
    )
    .await;
    let p = s.start();
    let (mut silent, head) = connect(p.addr, &format!("{HOST}:443"), "").await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let mut rest = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(20), silent.read_to_end(&mut rest)).await;
    assert!(read.is_ok(), "the silent tunnel was closed");
    p.wait_log("TLS handshake in a CONNECT tunnel failed").await;
    assert_eq!(
        metric(
            &p,
            "tokenproxy_errors_total{",
            &["error=\"intercept_handshake_failed\""]
        )
        .await,
        1.0
    );

    let (mut plain, _) = connect(p.addr, &format!("{HOST}:443"), "").await;
    plain
        .write_all(
            format!("GET /v1/x HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(20), plain.read_to_end(&mut answer))
        .await
        .expect("answered")
        .unwrap();
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains("\"authorized\":\"yes"), "{answer}");
    assert_eq!(s.w.provider.api_requests(), 1);
}

/// Plain HTTP inside `CONNECT`: clients that tunnel `http://` URLs too (curl
/// `-p`, undici's `EnvHttpProxyAgent`, Node's `NODE_USE_ENV_PROXY`) send `CONNECT
/// host:80` and HTTP inside. That needs no CA, so it is served without
/// `[intercept]` as well, with the same routes, token and rules; TLS to port 80
/// without `[intercept]` is closed, and `CONNECT` to 443 still refused.
async fn plain_http_inside_connect_is_served_without_intercept() {
    let w = World::default().await;
    let config = format!(
        "{}\n[[routes]]\nhost = \"{HOST}\"\nupstream = \"{}\"\ntoken = \"demo\"\n",
        w.config("", ""),
        w.provider.api_url
    );
    let p = w.spawn(&config);
    let (code, out, err) = curl(&p, &["-p", &format!("http://{HOST}/v1/tunneled?x=1")]);
    assert_eq!(code, 0, "{err}");
    let v = json(&out);
    assert_eq!(v["path"], "/v1/tunneled", "{out}");
    assert!(
        v["authorized"].as_str().unwrap().starts_with("yes"),
        "{out}"
    );
    // A path that climbs out of the route is refused inside as outside.
    let (mut t, head) = connect(p.addr, &format!("{HOST}:80"), "").await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    t.write_all(format!("GET /v1/%2e%2e/x HTTP/1.1\r\nHost: {HOST}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut buf = vec![0; 4096];
    let n = t.read(&mut buf).await.unwrap();
    let answer = String::from_utf8_lossy(&buf[..n]);
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    // Another host's name inside the tunnel is misdirected.
    t.write_all(b"GET /v1/x HTTP/1.1\r\nHost: elsewhere.example\r\n\r\n")
        .await
        .unwrap();
    let n = t.read(&mut buf).await.unwrap();
    let answer = String::from_utf8_lossy(&buf[..n]);
    assert!(answer.starts_with("HTTP/1.1 421"), "{answer}");
    // TLS where no CA can answer it: closed, counted.
    let (mut t, _) = connect(p.addr, &format!("{HOST}:80"), "").await;
    t.write_all(&[0x16, 0x03, 0x01, 0x00, 0x05, 1, 0, 0, 1, 0])
        .await
        .unwrap();
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(20), t.read_to_end(&mut rest)).await;
    assert!(rest.is_empty(), "{rest:?}");
    p.wait_log("no [intercept] to terminate it").await;
    // https still needs [intercept].
    let (_, head) = connect(p.addr, &format!("{HOST}:443"), "").await;
    assert!(head.starts_with("HTTP/1.1 405"), "{head}");
    assert_eq!(w.provider.api_requests(), 1);
}

/// Node with `HTTP_PROXY` and `http://` URLs, as the README recommends: undici's
/// `EnvHttpProxyAgent` and Node's own `NODE_USE_ENV_PROXY=1` fetch tunnel them
/// with `CONNECT`, and get the API with the token.
async fn node_undici_and_env_proxy_fetch_with_http_urls() {
    let (node, modules) = support::harness::modern_node();
    let w = World::default().await;
    let config = format!(
        "{}\n[[routes]]\nhost = \"{HOST}\"\nupstream = \"{}\"\ntoken = \"demo\"\n",
        w.config("", ""),
        w.provider.api_url
    );
    let p = w.spawn(&config);
    let undici = format!(
        r#"
const {{ EnvHttpProxyAgent, fetch }} = require('undici');
(async () => {{
  const r = await fetch('http://{HOST}/v1/undici?x=1', {{ dispatcher: new EnvHttpProxyAgent() }});
  const v = await r.json();
  console.log(r.status, v.path, v.authorized.startsWith('yes'));
}})().catch((e) => {{ console.error(e); process.exit(1); }});
"#
    );
    let stdout = run_client(
        Command::new(&node)
            .args(["-e", &undici])
            .env("NODE_PATH", &modules)
            .env("HTTP_PROXY", proxy_url(&p))
            .env_remove("NO_PROXY")
            .env_remove("no_proxy"),
        &p,
    );
    assert_eq!(stdout, "200 /v1/undici true\n");
    let builtin = format!(
        r#"
fetch('http://{HOST}/v1/builtin?x=1').then(async (r) => {{
  const v = await r.json();
  console.log(r.status, v.path, v.authorized.startsWith('yes'));
}}).catch((e) => {{ console.error(e); process.exit(1); }});
"#
    );
    let stdout = run_client(
        Command::new(&node)
            .args(["-e", &builtin])
            .env("NODE_USE_ENV_PROXY", "1")
            .env("HTTP_PROXY", proxy_url(&p))
            .env_remove("NO_PROXY")
            .env_remove("no_proxy"),
        &p,
    );
    assert_eq!(stdout, "200 /v1/builtin true\n");
    assert_eq!(w.provider.api_requests(), 2);
}

/// `[intercept]` cannot change on reload; a routed host added by a reload that the
/// CA does not cover is refused by name.
async fn reload_keeps_the_ca_and_refuses_hosts_outside_it() {
    let s = Setup::new(ProviderOptions::default()).await;
    let p = s.start();
    let original = std::fs::read_to_string(&s.config).unwrap();
    let ca = s.ca();
    let ca = ca.to_str().unwrap();
    std::fs::write(
        &s.config,
        original
            .replace(&format!("ca_cert = {{ file = \"{ca}\" }}"), "ca = \"auto\"")
            .replace(
                &format!(
                    "ca_key = {{ file = \"{}\" }}",
                    s.w.dir.path().join("ca.key").display()
                ),
                "",
            ),
    )
    .unwrap();
    let r = client().post(p.admin_url("/reload")).send().await.unwrap();
    assert_eq!(r.status(), 422);
    assert!(r.text().await.unwrap().contains("[intercept]"));

    std::fs::write(
        &s.config,
        format!(
            "{original}\n[[routes]]\nhost = \"api.other.example\"\nupstream = \"{}\"\ntoken = \"demo\"\n",
            s.w.provider.api_url
        ),
    )
    .unwrap();
    let r = client().post(p.admin_url("/reload")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    p.wait_log("do not cover this routed host").await;
    let (_, head) = connect(p.addr, "api.other.example:443", "").await;
    assert!(head.contains("intercept_not_permitted"), "{head}");
    let (code, _, err) = curl(&p, &["--cacert", ca, &format!("https://{HOST}/v1/still")]);
    assert_eq!(code, 0, "{err}");
}

/// The lines `tokenproxy ca show` prints run when pasted: its curl line, and its
/// Python lines (the bundle, the variables, the request), each against the running
/// proxy with the routed host, through a shell — with a space in the CA's path.
async fn ca_show_prints_commands_that_run_when_pasted() {
    let s = Setup::new(ProviderOptions::default()).await;
    let p = s.start();
    // The CA's path with a space, and the proxy's real address, in an operator's copy.
    let spaced = s.w.dir.path().join("my ca");
    std::fs::create_dir(&spaced).unwrap();
    std::fs::copy(s.ca(), spaced.join("ca.pem")).unwrap();
    let config = std::fs::read_to_string(&s.config)
        .unwrap()
        .replace(
            &format!("ca_cert = {{ file = \"{}\" }}", s.ca().display()),
            &format!(
                "ca_cert = {{ file = \"{}\" }}",
                spaced.join("ca.pem").display()
            ),
        )
        .replace(
            "proxy = \"127.0.0.1:0\"",
            &format!("proxy = \"{}\"", p.addr),
        );
    let copy = s.w.dir.path().join("operator.toml");
    std::fs::write(&copy, config).unwrap();
    let show = Command::new(binary())
        .args(["ca", "show", "-c"])
        .arg(&copy)
        .env("DEMO_CLIENT_SECRET", "demo-secret")
        .env("DEMO_REFRESH_TOKEN", "unused")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&show.stdout).into_owned();
    assert!(show.status.success(), "{show:?}");
    let line = |start: &str| -> String {
        text.lines()
            .map(str::trim_start)
            .find_map(|l| {
                l.find(start).map(|i| {
                    let l = &l[i..];
                    l.split("   #").next().unwrap_or(l).trim_end().to_owned()
                })
            })
            .unwrap_or_else(|| panic!("no `{start}` line in:\n{text}"))
    };
    let run = |script: String| {
        let out = Command::new("sh")
            .arg("-c")
            .arg(&script)
            .current_dir(s.w.dir.path())
            .env_remove("HTTP_PROXY")
            .env_remove("HTTPS_PROXY")
            .env_remove("http_proxy")
            .env_remove("https_proxy")
            .output()
            .unwrap();
        let said = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{script}\n{said}");
        said
    };
    let said = run(line("curl --proxy"));
    assert!(said.contains("\"path\":\"/\""), "{said}");
    // Python's export line is the one that names the bundle (curl's does not).
    let python_export = text
        .lines()
        .filter_map(|l| l.find("export HTTPS_PROXY").map(|i| &l[i..]))
        .find(|l| l.contains("REQUESTS_CA_BUNDLE"))
        .expect("python's export line");
    let script = format!(
        "{}\n{python_export}\n{}",
        line("cat /etc/ssl/certs/ca-certificates.crt"),
        line("python3 -c")
    );
    let said = run(script);
    assert_eq!(said.trim(), "200", "{said}");
    drop(p);
}

use support::harness::Needs;

harness!(
    Needs::Program("curl") => curl_with_an_https_url_gets_the_api_with_the_token_over_http1_and_http2,
    Needs::Python("requests, httpx") => python_requests_and_httpx_with_https_proxy_and_the_ca_bundle,
    Needs::Program("node") => node_https_through_a_connect_agent_trusting_the_ca_by_environment,
    Needs::Nothing => connect_to_anything_but_a_routed_host_is_refused_and_opens_nothing,
    Needs::Nothing => without_intercept_a_routed_host_is_still_refused,
    Needs::Nothing => the_leaf_is_valid_for_its_host_only,
    Needs::Nothing => a_request_for_another_host_inside_a_tunnel_is_misdirected,
    Needs::Program("curl") => the_ca_key_cannot_mint_a_certificate_clients_accept_for_another_site,
    Needs::Program("curl") => a_client_that_does_not_trust_the_ca_fails_and_it_is_counted,
    Needs::Program("curl") => a_401_inside_the_tunnel_refreshes_once_and_resends_once,
    Needs::Nothing => a_thousand_connects_to_one_host_sign_one_leaf,
    Needs::Program("curl") => ca_auto_is_created_once_in_the_state_directory_and_kept,
    Needs::Nothing => ca_init_refuses_to_overwrite_and_ca_show_says_how_to_trust_it,
    Needs::Python("requests, simple_salesforce") => simple_salesforce_reads_all_pages_with_no_token_of_its_own,
    Needs::Jdk => java_httpclient_with_a_keytool_truststore,
    Needs::Program("curl") => a_caller_key_guards_the_connect_and_may_come_as_the_proxy_password,
    Needs::Program("curl") => callers_are_kept_to_their_tokens_through_a_tunnel,
    Needs::Nothing => sessions_resume_and_the_ca_key_is_never_shown,
    Needs::Nothing => a_silent_tunnel_is_closed_and_counted_a_plain_one_served,
    Needs::Program("curl") => plain_http_inside_connect_is_served_without_intercept,
    Needs::ModernNode => node_undici_and_env_proxy_fetch_with_http_urls,
    Needs::Program("curl") => reload_keeps_the_ca_and_refuses_hosts_outside_it,
    Needs::Program("curl") => ca_show_prints_commands_that_run_when_pasted,
);
