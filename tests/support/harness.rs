//! The `main` of test binaries whose tests need something of the machine: a
//! PostgreSQL or Redis server, a Python with certain packages, a recent Node.js, a
//! JDK, promtool, root (to mount a small disk). A test whose need is not met here
//! is reported as **ignored**, and the reason is printed before the run; it is
//! never counted as passed. Under `CI=true` nothing is ignored: a missing need
//! fails its tests, since CI installs everything.
//!
//! PostgreSQL and Redis come from the environment when `.ci/services.sh` was
//! sourced (`TOKENPROXY_TEST_POSTGRES_URL`, `TOKENPROXY_PG_BIN`,
//! `TOKENPROXY_TEST_REDIS_URL`); otherwise, where `postgres`/`redis-server` are
//! installed, the binary starts throwaway servers of its own on free loopback
//! ports, in temporary directories, and stops them when the run ends (or when the
//! binary dies: each server is watched by a shell that stops it when the test
//! binary's pipe to it closes).

use std::collections::HashMap;
use std::future::Future;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::process::{Child, ChildStdin, Command, ExitCode, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// What a test needs of the machine.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Needs {
    Nothing,
    Postgres,
    Redis,
    /// A Python (`TOKENPROXY_TEST_PYTHON`, else `python3`) that imports these
    /// modules (comma-separated).
    Python(&'static str),
    /// Node.js >= 22.21 (`NODE_USE_ENV_PROXY`) and undici: `TOKENPROXY_TEST_NODE`
    /// and `TOKENPROXY_TEST_NODE_MODULES`.
    ModernNode,
    /// `javac` and `keytool`.
    Jdk,
    /// A program on `PATH` that answers `--version` (`curl`, `node`).
    Program(&'static str),
    /// `promtool` (Debian's `prometheus`).
    Promtool,
    /// Root: to mount a small filesystem, or to give a directory to another user.
    Root,
    /// `/dev/shm` on a tmpfs.
    Tmpfs,
}

/// Makes the test's future on the thread that runs it (which need not be `Send`).
pub type Run = Box<dyn FnOnce() -> Pin<Box<dyn Future<Output = ()>>> + Send>;

/// One test: its name, its need, and its body (run on a runtime of its own with
/// two worker threads, as `#[tokio::test(flavor = "multi_thread")]` would).
pub struct Test {
    pub name: String,
    pub needs: Needs,
    pub run: Run,
}

impl Test {
    pub fn new<F, Fut>(name: impl Into<String>, needs: Needs, f: F) -> Test
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = ()> + 'static,
    {
        Test {
            name: name.into(),
            needs,
            run: Box::new(move || Box::pin(f())),
        }
    }
}

/// `fn main` for a list of async test functions with what each needs:
/// `harness!(Needs::Nothing => a_test, Needs::Redis => another);`
#[macro_export]
macro_rules! harness {
    ($($needs:expr => $name:ident),* $(,)?) => {
        fn main() -> std::process::ExitCode {
            support::harness::main(vec![
                $(support::harness::Test::new(stringify!($name), $needs, $name),)*
            ])
        }
    };
}

fn in_ci() -> bool {
    std::env::var("CI").as_deref() == Ok("true")
}

/// Runs `tests` as libtest would, each unmet need ignoring its tests.
pub fn main(tests: Vec<Test>) -> ExitCode {
    let args = libtest_mimic::Arguments::from_args();
    let mut missing: HashMap<Needs, Option<String>> = HashMap::new();
    for t in &tests {
        missing.entry(t.needs).or_insert_with(|| unmet(t.needs));
    }
    let mut reasons: Vec<&String> = missing.values().flatten().collect();
    reasons.sort();
    for reason in reasons {
        println!("ignored here: {reason}");
    }
    let wants = |needs: Needs| {
        !args.list && tests.iter().any(|t| t.needs == needs) && missing[&needs].is_none()
    };
    if wants(Needs::Postgres) {
        let _ = SERVERS.postgres.set(Postgres::find_or_start());
    }
    if wants(Needs::Redis) {
        let _ = SERVERS.redis.set(Redis::find_or_start());
    }
    let trials = tests
        .into_iter()
        .map(|t| {
            let ignored = missing[&t.needs].is_some();
            let run = t.run;
            libtest_mimic::Trial::test(t.name, move || {
                let runtime = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .enable_all()
                    .build()
                    .expect("a runtime");
                runtime.block_on(run());
                Ok(())
            })
            .with_ignored_flag(ignored)
        })
        .collect();
    let conclusion = libtest_mimic::run(&args, trials);
    if let Some(Some(pg)) = SERVERS.postgres.get() {
        pg.stop();
    }
    if let Some(Some(redis)) = SERVERS.redis.get() {
        redis.stop();
    }
    conclusion.exit_code()
}

/// Why `needs` cannot be met on this machine (`None`: it can, or CI insists).
fn unmet(needs: Needs) -> Option<String> {
    if in_ci() {
        return None;
    }
    let runs = |cmd: &mut Command| {
        cmd.stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    match needs {
        Needs::Nothing => None,
        Needs::Postgres => (std::env::var_os("TOKENPROXY_TEST_POSTGRES_URL").is_none()
            && postgres_bin().is_none())
        .then(|| {
            "PostgreSQL store tests: no PostgreSQL server binaries (apt install postgresql; they start a throwaway server)".to_owned()
        }),
        Needs::Redis => (std::env::var_os("TOKENPROXY_TEST_REDIS_URL").is_none()
            && !runs(Command::new("redis-server").arg("--version")))
        .then(|| {
            "Redis store tests: no redis-server (apt install redis-server; they start a throwaway server)".to_owned()
        }),
        Needs::Python(modules) => {
            let python = python();
            let imports = format!("import {modules}");
            (!runs(Command::new(&python).args(["-c", &imports]))).then(|| {
                format!("tests of real Python clients: `{python}` cannot `{imports}` (set TOKENPROXY_TEST_PYTHON to a Python that can; .ci/run makes one)")
            })
        }
        Needs::ModernNode => (std::env::var_os("TOKENPROXY_TEST_NODE").is_none()
            || std::env::var_os("TOKENPROXY_TEST_NODE_MODULES").is_none())
        .then(|| {
            "Node tests: no TOKENPROXY_TEST_NODE and TOKENPROXY_TEST_NODE_MODULES (a Node.js >= 22.21 and a node_modules with undici; .ci/run installs both)".to_owned()
        }),
        Needs::Jdk => (!runs(Command::new("javac").arg("-version"))
            || !runs(Command::new("keytool").arg("-help")))
        .then(|| "Java client tests: no JDK (apt install default-jdk-headless)".to_owned()),
        Needs::Program(name) => (!runs(Command::new(name).arg("--version")))
            .then(|| format!("tests that run `{name}`: it is not installed (.ci/run installs it)")),
        Needs::Promtool => (!runs(Command::new("promtool").arg("--version")))
            .then(|| "metrics format check: no promtool (apt install prometheus)".to_owned()),
        Needs::Root => (rustix::process::geteuid().as_raw() != 0 || !runs(Command::new("mount").arg("--version")))
            .then(|| "tests that mount a small filesystem or chown a directory to another user: they need root".to_owned()),
        Needs::Tmpfs => (!std::fs::read_to_string("/proc/self/mountinfo")
            .unwrap_or_default()
            .lines()
            .any(|l| l.contains(" /dev/shm ") && l.contains(" - tmpfs ")))
        .then(|| "tmpfs test: /dev/shm is not a tmpfs here".to_owned()),
    }
}

/// The Python the client tests run.
pub fn python() -> String {
    std::env::var("TOKENPROXY_TEST_PYTHON").unwrap_or_else(|_| "python3".into())
}

/// Node.js and the `node_modules` directory beside it, for `Needs::ModernNode`.
pub fn modern_node() -> (String, String) {
    (
        std::env::var("TOKENPROXY_TEST_NODE").expect("TOKENPROXY_TEST_NODE (.ci/run sets it)"),
        std::env::var("TOKENPROXY_TEST_NODE_MODULES")
            .expect("TOKENPROXY_TEST_NODE_MODULES (.ci/run sets it)"),
    )
}

/// PostgreSQL's server programs: `TOKENPROXY_PG_BIN`, else the newest
/// `/usr/lib/postgresql/*/bin` (Debian), else `pg_config --bindir`.
fn postgres_bin() -> Option<PathBuf> {
    if let Ok(bin) = std::env::var("TOKENPROXY_PG_BIN") {
        return Some(bin.into());
    }
    let mut debian: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path().join("bin"))
        .filter(|b| b.join("initdb").exists())
        .collect();
    debian.sort_by_key(|b| {
        b.parent()
            .and_then(|v| v.file_name())
            .and_then(|v| v.to_str())
            .and_then(|v| v.parse::<u32>().ok())
    });
    if let Some(bin) = debian.pop() {
        return Some(bin);
    }
    let out = Command::new("pg_config").arg("--bindir").output().ok()?;
    let bin = PathBuf::from(String::from_utf8(out.stdout).ok()?.trim());
    bin.join("initdb").exists().then_some(bin)
}

struct Servers {
    postgres: OnceLock<Option<Postgres>>,
    redis: OnceLock<Option<Redis>>,
}

static SERVERS: Servers = Servers {
    postgres: OnceLock::new(),
    redis: OnceLock::new(),
};

/// The PostgreSQL server of this run: its URL (database `postgres`, user
/// `postgres`, no password) and its programs' directory.
pub fn postgres() -> (String, PathBuf) {
    let pg = SERVERS
        .postgres
        .get()
        .and_then(Option::as_ref)
        .expect("a PostgreSQL server: this test must be declared Needs::Postgres");
    (pg.url.clone(), pg.bin.clone())
}

/// The URL of this run's Redis server.
pub fn redis() -> String {
    let redis = SERVERS
        .redis
        .get()
        .and_then(Option::as_ref)
        .expect("a Redis server: this test must be declared Needs::Redis");
    redis.url.clone()
}

/// A free loopback port (the listener is closed at once; the server binds it).
#[allow(clippy::disallowed_methods)]
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

pub fn is_root() -> bool {
    rustix::process::geteuid().as_raw() == 0
}

/// A server process watched by a shell: closing the pipe to the shell (at the end
/// of the run, or when this process dies) makes it stop the server with `signal`.
struct Watched {
    child: std::sync::Mutex<Child>,
    stdin: std::sync::Mutex<Option<ChildStdin>>,
}

impl Watched {
    /// Runs `program args` (as the `postgres` user with `as_postgres`) under the
    /// watching shell, its output to `log`.
    fn spawn(
        program: &Path,
        args: &[String],
        log: &Path,
        signal: &str,
        as_postgres: bool,
    ) -> Watched {
        let script = format!(
            "\"$0\" \"$@\" </dev/null >>'{}' 2>&1 & pid=$!; read _; kill -{signal} $pid; wait $pid",
            log.display()
        );
        let mut cmd = if as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--", "sh", "-c"]);
            c
        } else {
            let mut c = Command::new("sh");
            c.arg("-c");
            c
        };
        let mut child = cmd
            .arg(script)
            .arg(program)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", program.display()));
        let stdin = child.stdin.take();
        Watched {
            child: std::sync::Mutex::new(child),
            stdin: std::sync::Mutex::new(stdin),
        }
    }

    fn stop(&self) {
        if let Some(mut stdin) = self.stdin.lock().unwrap().take() {
            let _ = stdin.write_all(b"stop\n");
        }
        // The shell exits once the server has.
        let mut child = self.child.lock().unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        while matches!(child.try_wait(), Ok(None)) && Instant::now() < deadline {
            #[allow(clippy::disallowed_methods)]
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Waits until `ready` holds, for a server that is starting.
fn wait_for(what: &str, log: &Path, mut ready: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !ready() {
        assert!(
            Instant::now() < deadline,
            "{what} did not start:\n{}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
        #[allow(clippy::disallowed_methods)]
        std::thread::sleep(Duration::from_millis(50));
    }
}

struct Postgres {
    url: String,
    bin: PathBuf,
    own: Option<(Watched, tempfile::TempDir)>,
}

impl Postgres {
    fn find_or_start() -> Option<Postgres> {
        if let Ok(url) = std::env::var("TOKENPROXY_TEST_POSTGRES_URL") {
            let bin = postgres_bin().expect("TOKENPROXY_PG_BIN with TOKENPROXY_TEST_POSTGRES_URL");
            return Some(Postgres {
                url,
                bin,
                own: None,
            });
        }
        let bin = postgres_bin()?;
        let dir = tempfile::tempdir().expect("a directory for PostgreSQL");
        let root = is_root();
        if root {
            // PostgreSQL refuses to run as root: the Debian package's user runs it.
            let ok = Command::new("chown")
                .arg("postgres:")
                .arg(dir.path())
                .status()
                .is_ok_and(|s| s.success());
            assert!(ok, "chown postgres: {}", dir.path().display());
        }
        let data = dir.path().join("data");
        let log = dir.path().join("log");
        let mut initdb = if root {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(bin.join("initdb"));
            c
        } else {
            Command::new(bin.join("initdb"))
        };
        let out = initdb
            .arg("-D")
            .arg(&data)
            .args(["-U", "postgres", "--auth=trust", "-E", "UTF8"])
            .output()
            .expect("initdb");
        assert!(
            out.status.success(),
            "initdb: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let port = free_port();
        let args: Vec<String> = [
            "-D",
            &data.display().to_string(),
            "-p",
            &port.to_string(),
            "-k",
            &dir.path().display().to_string(),
            "-c",
            "listen_addresses=127.0.0.1",
            "-c",
            "max_connections=300",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let server = Watched::spawn(&bin.join("postgres"), &args, &log, "INT", root);
        let ready = bin.join("pg_isready");
        wait_for("postgres", &log, || {
            Command::new(&ready)
                .args(["-q", "-h", "127.0.0.1", "-p", &port.to_string()])
                .status()
                .is_ok_and(|s| s.success())
        });
        Some(Postgres {
            url: format!("postgres://postgres@127.0.0.1:{port}/postgres"),
            bin,
            own: Some((server, dir)),
        })
    }

    fn stop(&self) {
        if let Some((server, _)) = &self.own {
            server.stop();
        }
    }
}

struct Redis {
    url: String,
    own: Option<(Watched, tempfile::TempDir)>,
}

impl Redis {
    fn find_or_start() -> Option<Redis> {
        if let Ok(url) = std::env::var("TOKENPROXY_TEST_REDIS_URL") {
            return Some(Redis { url, own: None });
        }
        let dir = tempfile::tempdir().expect("a directory for Redis");
        let log = dir.path().join("log");
        let port = free_port();
        // As a production server should be: every write synced before the answer.
        let args: Vec<String> = [
            "--bind",
            "127.0.0.1",
            "--port",
            &port.to_string(),
            "--dir",
            &dir.path().display().to_string(),
            "--appendonly",
            "yes",
            "--appendfsync",
            "always",
            "--save",
            "",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let server = Watched::spawn(Path::new("redis-server"), &args, &log, "TERM", false);
        wait_for("redis-server", &log, || {
            Command::new("redis-cli")
                .args(["-p", &port.to_string(), "ping"])
                .output()
                .is_ok_and(|o| o.stdout.starts_with(b"PONG"))
        });
        Some(Redis {
            url: format!("redis://127.0.0.1:{port}"),
            own: Some((server, dir)),
        })
    }

    fn stop(&self) {
        if let Some((server, _)) = &self.own {
            server.stop();
        }
    }
}
