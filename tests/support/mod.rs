//! Shared helpers for the black-box tests: a local provider (token endpoint + API,
//! from `tokenproxy::demo`), a real `tokenproxy` binary started on ephemeral ports
//! against it, and a plain HTTP client.

#![allow(dead_code)]

pub mod harness;
pub mod pki;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::time::Duration;

#[allow(unused_imports)]
pub use tokenproxy::demo::{Mode, Provider, ProviderOptions};

/// A provider plus a private directory for configs and state.
pub struct World {
    pub provider: Provider,
    pub dir: tempfile::TempDir,
}

impl World {
    pub async fn new(opts: ProviderOptions) -> World {
        World {
            provider: Provider::start(opts).await.expect("start provider"),
            dir: tempfile::tempdir().expect("tempdir"),
        }
    }

    pub async fn default() -> World {
        World::new(ProviderOptions::default()).await
    }

    pub fn state_dir(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    /// A config for one refresh-token source `demo` and one route `/demo/` to the API.
    /// `token_extra` goes into `[tokens.demo]`, `top` before everything.
    pub fn config(&self, top: &str, token_extra: &str) -> String {
        format!(
            r#"
{top}
[listen]
proxy = "127.0.0.1:0"
admin = "127.0.0.1:0"

[store]
path = "{state}"

[tokens.demo]
grant = "refresh_token"
token_url = "{token_url}"
client_id = "demo-client"
client_secret = {{ env = "DEMO_CLIENT_SECRET" }}
refresh_token = {{ env = "DEMO_REFRESH_TOKEN" }}
{token_extra}

[[routes]]
prefix = "/demo/"
upstream = "{api_url}"
token = "demo"
"#,
            state = self.state_dir().display(),
            token_url = self.provider.token_url,
            api_url = self.provider.api_url,
        )
    }

    /// `config` as an operator's copy for `tokenproxy token`: the admin address
    /// of the running `p` in place of port 0.
    pub fn operator_config(&self, config: &str, p: &Proxy) -> PathBuf {
        let path = self
            .dir
            .path()
            .join(format!("operator-{}.toml", fastrand::u32(..)));
        let config = config.replace(
            "admin = \"127.0.0.1:0\"",
            &format!("admin = \"{}\"", p.admin),
        );
        std::fs::write(&path, config).expect("write config");
        path
    }

    /// Starts `tokenproxy run` with `config` (written to a file in the world's directory).
    pub fn spawn(&self, config: &str) -> Proxy {
        self.spawn_with(config, &[])
    }

    pub fn spawn_with(&self, config: &str, env: &[(&str, &str)]) -> Proxy {
        let path = self
            .dir
            .path()
            .join(format!("tokenproxy-{}.toml", fastrand::u32(..)));
        std::fs::write(&path, config).expect("write config");
        Proxy::start(&path, env)
    }
}

/// A running `tokenproxy run` process. Killed when dropped.
pub struct Proxy {
    child: Child,
    /// The TCP address (unspecified when the proxy listens on a Unix socket).
    pub addr: SocketAddr,
    pub socket: Option<PathBuf>,
    pub admin: SocketAddr,
    /// The configuration file it runs with (a test rewrites it to reload).
    pub config: PathBuf,
    log: Arc<Mutex<String>>,
    /// The thread copying stderr into `log`; it ends at the process's exit.
    reader: Option<std::thread::JoinHandle<()>>,
}

pub fn binary() -> &'static str {
    env!("CARGO_BIN_EXE_tokenproxy")
}

impl Proxy {
    pub fn start(config: &Path, env: &[(&str, &str)]) -> Proxy {
        Proxy::start_args(config, &[], env)
    }

    /// Starts with extra global arguments (such as `--log-format json`).
    pub fn start_args(config: &Path, args: &[&str], env: &[(&str, &str)]) -> Proxy {
        Proxy::start_cmd(Command::new(binary()), config, args, env)
    }

    /// Starts under a wrapper command (such as `prlimit --nofile=64:64 --`), which
    /// must exec the binary so that the process is the proxy itself.
    pub fn start_wrapped(config: &Path, wrapper: &[&str], env: &[(&str, &str)]) -> Proxy {
        let mut cmd = Command::new(wrapper[0]);
        cmd.args(&wrapper[1..]).arg(binary());
        Proxy::start_cmd(cmd, config, &[], env)
    }

    fn start_cmd(mut cmd: Command, config: &Path, args: &[&str], env: &[(&str, &str)]) -> Proxy {
        cmd.args(args)
            .arg("run")
            .arg("-c")
            .arg(config)
            .env("RUST_LOG", "info")
            .env("DEMO_CLIENT_SECRET", "demo-secret")
            .env("DEMO_REFRESH_TOKEN", "demo-refresh-0")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn tokenproxy");
        let stderr = child.stderr.take().expect("stderr");
        let log = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = mpsc::channel();
        let sink = Arc::clone(&log);
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if line.contains("tokenproxy listening") {
                    let _ = tx.send(line.clone());
                }
                let mut log = sink.lock().unwrap();
                log.push_str(&line);
                log.push('\n');
            }
        });
        let line = match rx.recv_timeout(Duration::from_secs(20)) {
            Ok(line) => line,
            Err(_) => {
                let _ = child.kill();
                panic!("tokenproxy did not start:\n{}", log.lock().unwrap());
            }
        };
        // Text logs say `proxy=ADDR`, JSON logs `"proxy":"ADDR"`.
        let text = |name: &str| -> String {
            let (start, len) = [format!("{name}="), format!("\"{name}\":\"")]
                .iter()
                .find_map(|k| line.find(k.as_str()).map(|i| (i, k.len())))
                .expect("address field");
            let rest = &line[start + len..];
            let end = rest.find([' ', '"']).unwrap_or(rest.len());
            rest[..end].to_owned()
        };
        let field = |name: &str| -> SocketAddr { text(name).parse().expect("socket address") };
        let proxy = text("proxy");
        let socket = proxy.strip_prefix("unix:").map(PathBuf::from);
        Proxy {
            addr: if socket.is_some() {
                SocketAddr::from(([0, 0, 0, 0], 0))
            } else {
                field("proxy")
            },
            socket,
            admin: field("admin"),
            config: config.to_owned(),
            child,
            log,
            reader: Some(reader),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{}", self.admin, path)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits until the log holds `needle` (lines are written by a thread of their
    /// own, so they can trail the response that caused them) and returns the log.
    pub async fn wait_log(&self, needle: &str) -> String {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let log = self.log();
            if log.contains(needle) {
                return log;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the log never said {needle:?}:\n{log}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Everything the process wrote to stderr so far.
    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.child.id().to_string())
            .status()
            .expect("kill")
            .success();
        assert!(ok, "kill -{sig} failed");
    }

    /// Sends SIGTERM and waits for the exit.
    pub fn stop(mut self) -> ExitStatus {
        self.signal("TERM");
        self.wait()
    }

    /// Stops the process gracefully and returns everything it ever logged (its log
    /// writer flushes at exit), for checks that something was never logged.
    pub fn stop_and_log(mut self) -> (ExitStatus, String) {
        self.signal("TERM");
        let status = self.wait();
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
        (status, self.log())
    }

    /// Waits for the exit (up to 15 s). Blocking: call it from `spawn_blocking` or
    /// a plain test.
    #[allow(clippy::disallowed_methods)]
    pub fn wait(&mut self) -> ExitStatus {
        for _ in 0..300 {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("tokenproxy did not exit:\n{}", self.log());
    }

    /// Peak resident memory of the process, in KiB.
    pub fn peak_rss_kib(&self) -> u64 {
        self.proc_status_kib("VmHWM:")
    }

    /// The resident set now, in KiB.
    pub fn rss_kib(&self) -> u64 {
        self.proc_status_kib("VmRSS:")
    }

    fn proc_status_kib(&self, field: &str) -> u64 {
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", self.pid())).expect("proc status");
        status
            .lines()
            .find_map(|l| l.strip_prefix(field))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or_else(|| panic!("{field} in /proc/PID/status"))
    }

    /// Polls `/readyz` until it answers `want` (a state change the test caused).
    /// Waits until token `name` is in `state` (`needs_login`, `refused`, …) in
    /// `/status`, at most `within`; its status then. `/readyz` alone cannot tell: it
    /// is 503 from the start, before the token's fate is known.
    pub async fn wait_token(&self, name: &str, state: &str, within: Duration) -> serde_json::Value {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let status = token_status(self, name).await;
            if status["state"] == state {
                return status;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "token {name} never became {state} (last {status}):\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub async fn wait_ready(&self, want: u16, within: Duration) {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let status = client()
                .get(self.admin_url("/readyz"))
                .send()
                .await
                .map(|r| r.status().as_u16());
            if status.as_ref().ok() == Some(&want) {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "readyz never became {want} (last {status:?}):\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A client builder that ignores proxy variables and does not follow redirects.
pub fn client_builder() -> reqwest::ClientBuilder {
    // reqwest is built without a bundled crypto provider (tokenproxy hands it its own
    // TLS configuration); the tests' clients use the process default.
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
}

pub fn client() -> reqwest::Client {
    client_builder().build().expect("client")
}

pub async fn get(url: &str) -> (u16, String) {
    let r = client().get(url).send().await.expect("request");
    let status = r.status().as_u16();
    (status, r.text().await.expect("body"))
}

pub fn json(text: &str) -> serde_json::Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

/// Sends `request` as written (clients normalise paths; attackers do not) and
/// returns the raw response head and body.
pub async fn raw(addr: SocketAddr, request: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    s.write_all(request.as_bytes()).await.expect("write");
    let mut buf = vec![0; 16 * 1024];
    let n = s.read(&mut buf).await.expect("read");
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

/// Sends `request` as written and reads until the server closes the connection.
pub async fn raw_all(addr: SocketAddr, request: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    s.write_all(request.as_bytes()).await.expect("write");
    let mut buf = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(20), s.read_to_end(&mut buf)).await;
    assert!(
        read.is_ok(),
        "the connection was not closed: {}",
        String::from_utf8_lossy(&buf)
    );
    String::from_utf8_lossy(&buf).into_owned()
}

impl World {
    /// A config with one token `p` (the TOML body of `[tokens.p]`) and the given
    /// `[[routes]]` tables; `{token_url}`, `{issuer}` and `{api}` (the API's base URL,
    /// without the final slash) are filled in.
    pub fn provider_config(&self, top: &str, token: &str, routes: &str) -> String {
        let fill = |t: &str| {
            t.replace("{token_url}", &self.provider.token_url)
                .replace("{issuer}", &self.provider.issuer)
                .replace("{api}", self.provider.api_url.trim_end_matches('/'))
        };
        format!(
            "{top}\n[listen]\nproxy = \"127.0.0.1:0\"\nadmin = \"127.0.0.1:0\"\n\n[store]\npath = \"{}\"\n\n[tokens.p]\n{}\n\n{}\n",
            self.state_dir().display(),
            fill(token),
            fill(routes)
        )
    }
}

/// The `/status` entry of token `name`.
pub async fn token_status(p: &Proxy, name: &str) -> serde_json::Value {
    json(&get(&p.admin_url("/status")).await.1)["tokens"][name].clone()
}

/// Runs the binary with `args` and the demo token's secrets (plus `env`), `input`
/// on its standard input (as a person types a token into `seed`).
pub fn run_with_stdin(args: &[&str], env: &[(&str, &str)], input: &str) -> std::process::Output {
    use std::io::Write;
    let mut child = Command::new(binary())
        .args(args)
        .env("DEMO_CLIENT_SECRET", "demo-secret")
        .env("DEMO_REFRESH_TOKEN", "unused")
        .envs(env.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

/// `POST /tokens/NAME/refresh` on the admin listener.
/// [`force_refresh`] once the backoff of an earlier failure allows it: a manual
/// refresh too soon is `429` with `Retry-After`, which this waits out.
pub async fn force_refresh_after_backoff(p: &Proxy, token: &str) -> reqwest::Response {
    loop {
        let r = force_refresh(p, token).await;
        if r.status() != 429 {
            return r;
        }
        let wait: u64 = r.headers()["retry-after"]
            .to_str()
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(1);
        tokio::time::sleep(Duration::from_secs(wait)).await;
    }
}

pub async fn force_refresh(p: &Proxy, token: &str) -> reqwest::Response {
    client()
        .post(p.admin_url(&format!("/tokens/{token}/refresh")))
        .send()
        .await
        .expect("admin request")
}

/// A 64 KiB tmpfs for a state directory, to fill up on demand (needs root: the
/// tests that use it declare `Needs::Root`). Unmounted when dropped.
pub struct SmallDisk {
    pub mount: PathBuf,
}

impl SmallDisk {
    pub fn mount(under: &Path) -> SmallDisk {
        let mount = under.join("small");
        std::fs::create_dir_all(&mount).unwrap();
        let mounted = Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=64k", "tmpfs"])
            .arg(&mount)
            .status()
            .is_ok_and(|s| s.success());
        assert!(mounted, "mount a small tmpfs at {}", mount.display());
        std::fs::create_dir_all(mount.join("state")).unwrap();
        SmallDisk { mount }
    }

    pub fn state(&self) -> PathBuf {
        self.mount.join("state")
    }

    /// Takes every free byte: no token record can be written.
    pub fn fill(&self) {
        let _ = std::fs::write(self.mount.join("filler"), vec![0u8; 64 * 1024]);
    }

    pub fn free(&self) {
        let _ = std::fs::remove_file(self.mount.join("filler"));
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.mount).status();
    }
}

/// A TCP balancer in front of `backends`: each connection goes to the next one in
/// turn (TLS passes through), as a Kubernetes Service spreads connections.
pub async fn round_robin(backends: Vec<SocketAddr>) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let mut next = 0;
        while let Ok((mut inbound, _)) = listener.accept().await {
            let backend = backends[next % backends.len()];
            next += 1;
            tokio::spawn(async move {
                if let Ok(mut outbound) = tokio::net::TcpStream::connect(backend).await {
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                }
            });
        }
    });
    addr
}
