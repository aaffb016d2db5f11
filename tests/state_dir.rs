//! The file store trusts nothing in its directory and no directory it does not own:
//! links are not followed, temporary files cannot be predicted, a FIFO does not
//! hang anything, and a foreign or shared directory is refused at start.

mod support;

use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use support::*;

/// Runs `tokenproxy run` expecting it to refuse to start; returns its stderr.
/// Blocking, on the test's own thread.
#[allow(clippy::disallowed_methods)]
fn refused_start(config_path: &Path) -> String {
    let mut child = Command::new(binary())
        .args(["run", "-c"])
        .arg(config_path)
        .env("DEMO_CLIENT_SECRET", "demo-secret")
        .env("DEMO_REFRESH_TOKEN", "demo-refresh-0")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    for _ in 0..200 {
        if let Some(status) = child.try_wait().unwrap() {
            let mut err = String::new();
            std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
            assert_eq!(status.code(), Some(1), "{err}");
            return err;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    panic!("tokenproxy started on an unsafe state directory");
}

fn write_config(w: &World, state: &Path) -> std::path::PathBuf {
    let config = w.config("", "").replace(
        &w.state_dir().display().to_string(),
        &state.display().to_string(),
    );
    let path = w.dir.path().join("state-test.toml");
    std::fs::write(&path, config).unwrap();
    path
}

async fn unsafe_state_directories_are_refused_with_the_fix() {
    let w = World::default().await;
    let root = w.dir.path();

    // A link as the state directory.
    let real = root.join("real");
    std::fs::create_dir(&real).unwrap();
    let link = root.join("linked-state");
    symlink(&real, &link).unwrap();
    let err = refused_start(&write_config(&w, &link));
    assert!(
        err.contains("symbolic link") && err.contains("fix:"),
        "{err}"
    );

    // A shared directory (1777, like /tmp): refused, with a directory of its own
    // inside it as the fix, never a chmod of the shared one.
    let shared = root.join("shared");
    std::fs::create_dir(&shared).unwrap();
    std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o1777)).unwrap();
    let err = refused_start(&write_config(&w, &shared));
    assert!(
        err.contains("shared directory") && err.contains("shared/tokenproxy-state"),
        "{err}"
    );
    assert!(!err.contains("chmod"), "{err}");
    let mode = std::fs::metadata(&shared).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode, 0o1777, "left as it was");

    // World-writable without the sticky bit (0777): refused rather than silently
    // tightened.
    let open = root.join("open");
    std::fs::create_dir(&open).unwrap();
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
    let err = refused_start(&write_config(&w, &open));
    assert!(
        err.contains("writable by others") && err.contains("chmod 700"),
        "{err}"
    );
    let mode = std::fs::metadata(&open).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode, 0o777, "left as it was");
}

/// Owned by another user, or under a parent another user owns: refused, naming
/// the owner (only root can make such directories, hence `Needs::Root`).
async fn foreign_state_directories_are_refused() {
    let w = World::default().await;
    let root = w.dir.path();
    let foreign = root.join("foreign");
    std::fs::create_dir(&foreign).unwrap();
    std::os::unix::fs::chown(&foreign, Some(65534), Some(65534)).unwrap();
    let err = refused_start(&write_config(&w, &foreign));
    assert!(
        err.contains("belongs to uid 65534") && err.contains("chown"),
        "{err}"
    );

    let parent = root.join("their-home");
    std::fs::create_dir(&parent).unwrap();
    std::os::unix::fs::chown(&parent, Some(65534), Some(65534)).unwrap();
    let err = refused_start(&write_config(&w, &parent.join("state")));
    assert!(err.contains("its parent") && err.contains("65534"), "{err}");
}

/// Links planted in the directory are never followed: a record that is a link is
/// refused (not read), a write replaces a link named like the record (the target
/// is untouched), and a dangling lock link does not create its target.
async fn planted_links_are_not_followed() {
    let w = World::default().await;
    let state = w.state_dir();
    std::fs::create_dir_all(&state).unwrap();
    std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o700)).unwrap();
    let victim = w.dir.path().join("victim");
    std::fs::write(&victim, "do not touch").unwrap();
    let target = w.dir.path().join("created-by-lock");
    symlink(&victim, state.join("demo.json")).unwrap();
    symlink(&target, state.join("demo.lock")).unwrap();
    // Links named like temporary files of every process id nearby.
    for pid in 1..2000 {
        let _ = symlink(&victim, state.join(format!("demo.json.tmp{pid}")));
    }
    let p = w.spawn(&w.config("", ""));
    p.wait_ready(503, Duration::from_secs(10)).await;
    let status = get(&p.admin_url("/status")).await.1;
    assert!(status.contains("symbolic link"), "{status}");
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "do not touch");
    assert!(!target.exists(), "the lock link created its target");
    drop(p);

    // Once the links are gone, the store works and writes real files.
    std::fs::remove_file(state.join("demo.json")).unwrap();
    std::fs::remove_file(state.join("demo.lock")).unwrap();
    let p = w.spawn(&w.config("", ""));
    assert_eq!(get(&p.url("/demo/x")).await.0, 200);
    let meta = std::fs::symlink_metadata(state.join("demo.json")).unwrap();
    assert!(meta.is_file());
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "do not touch");
    drop(p);
}

/// A FIFO in place of the record neither hangs requests nor shutdown.
async fn a_fifo_in_place_of_the_record_hangs_nothing() {
    let w = World::default().await;
    let state = w.state_dir();
    std::fs::create_dir_all(&state).unwrap();
    std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o700)).unwrap();
    assert!(
        Command::new("mkfifo")
            .arg(state.join("demo.json"))
            .status()
            .unwrap()
            .success()
    );
    let p = w.spawn(&w.config("", ""));
    let r = client()
        .get(p.url("/demo/x"))
        .timeout(Duration::from_secs(20))
        .send()
        .await
        .expect("answered");
    assert_eq!(r.status(), 503);
    let status = get(&p.admin_url("/status")).await.1;
    assert!(status.contains("not a regular file"), "{status}");
    let started = std::time::Instant::now();
    let exit = tokio::task::spawn_blocking(move || p.stop()).await.unwrap();
    assert!(exit.success());
    assert!(started.elapsed() < Duration::from_secs(10));
}

/// Secret files: only small regular files are read, by `check` and while running.
async fn secret_files_are_bounded_and_regular() {
    let w = World::default().await;
    let secret = w.dir.path().join("client_secret");
    std::fs::write(&secret, "demo-secret\n").unwrap();
    let config = w.config("", "").replace(
        "client_secret = { env = \"DEMO_CLIENT_SECRET\" }",
        &format!("client_secret = {{ file = \"{}\" }}", secret.display()),
    );
    // check refuses /dev/zero at once instead of reading a gigabyte.
    let zero = w.dir.path().join("zero.toml");
    std::fs::write(
        &zero,
        config.replace(&secret.display().to_string(), "/dev/zero"),
    )
    .unwrap();
    let out = Command::new(binary())
        .args(["check", "-c"])
        .arg(&zero)
        .env("DEMO_REFRESH_TOKEN", "x")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a regular file"));

    let p = w.spawn(&config);
    assert_eq!(get(&p.url("/demo/x")).await.0, 200);
    // The secret is swapped for a link to /dev/zero under the running proxy.
    std::fs::remove_file(&secret).unwrap();
    symlink("/dev/zero", &secret).unwrap();
    let r = force_refresh(&p, "demo").await;
    assert_eq!(r.status(), 502);
    assert!(r.text().await.unwrap().contains("not a regular file"));
    assert!(p.peak_rss_kib() < 200 * 1024, "{} KiB", p.peak_rss_kib());
}

const KEY_A: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";
const KEY_B: &str = "f0e0d0c0b0a090807060504030201000f0e0d0c0b0a090807060504030201000";

/// With an encryption key the record on disk holds no token; a rotated key still
/// reads it; without the right key the token stops with an error naming the key.
async fn tokens_are_encrypted_at_rest_with_a_rotatable_key() {
    let w = World::default().await;
    let keyed = |top: &str| {
        w.config("", "").replace(
            &format!("[store]\npath = \"{}\"", w.state_dir().display()),
            &format!("[store]\npath = \"{}\"\n{top}", w.state_dir().display()),
        )
    };
    let first = keyed("encryption_key = { env = \"TP_KEY\" }");
    let p = w.spawn_with(&first, &[("TP_KEY", KEY_A)]);
    assert_eq!(get(&p.url("/demo/x")).await.0, 200);
    drop(p);
    let raw = std::fs::read_to_string(w.state_dir().join("demo.json")).unwrap();
    assert!(raw.contains("enc:v1:"), "{raw}");
    for token in w.provider.all_tokens() {
        assert!(!raw.contains(&token), "the record holds {token} in clear");
    }
    // Rotated: B encrypts, A still opens the stored record (no refresh needed).
    let rotated = keyed(
        "encryption_key = { env = \"TP_KEY\" }\nprevious_encryption_keys = [{ env = \"TP_OLD\" }]",
    );
    let requests = w.provider.token_requests();
    let p = w.spawn_with(&rotated, &[("TP_KEY", KEY_B), ("TP_OLD", KEY_A)]);
    assert_eq!(get(&p.url("/demo/y")).await.0, 200);
    assert_eq!(
        w.provider.token_requests(),
        requests,
        "the stored token was read"
    );
    drop(p);
    // Without the key that encrypted it: stopped by name, nothing garbled sent.
    let p = w.spawn(&w.config("", ""));
    let status = p
        .wait_token("demo", "needs_login", Duration::from_secs(10))
        .await;
    assert_eq!(get(&p.admin_url("/readyz")).await.0, 503);
    assert!(
        status["last_error"]
            .as_str()
            .unwrap()
            .contains("store.encryption_key"),
        "{status}"
    );
}

/// A state directory on a disk starts without the ephemeral-volume warning.
async fn a_state_directory_on_a_disk_is_not_warned_about() {
    let w = World::default().await;
    let p = w.spawn(&w.config("", ""));
    p.wait_log("tokenproxy listening").await;
    assert!(
        !p.log().contains("a refresh token that rotates"),
        "{}",
        p.log()
    );
}

/// A state directory that does not outlive the machine or pod (here a tmpfs,
/// `/dev/shm`) loses a rotated refresh token: the start says so, and where.
async fn an_ephemeral_state_directory_is_warned_about_at_start() {
    let w = World::default().await;
    let dir = tempfile::tempdir_in("/dev/shm").unwrap();
    let config = write_config(&w, &dir.path().join("state"));
    let p = w.spawn(&std::fs::read_to_string(config).unwrap());
    let log = p.wait_log("a refresh token that rotates").await;
    assert!(log.contains("a tmpfs"), "{log}");
    assert!(log.contains("[\"demo\"]"), "{log}");
}

use support::harness::Needs;

harness!(
    Needs::Nothing => unsafe_state_directories_are_refused_with_the_fix,
    Needs::Root => foreign_state_directories_are_refused,
    Needs::Nothing => planted_links_are_not_followed,
    Needs::Nothing => a_fifo_in_place_of_the_record_hangs_nothing,
    Needs::Nothing => secret_files_are_bounded_and_regular,
    Needs::Nothing => tokens_are_encrypted_at_rest_with_a_rotatable_key,
    Needs::Nothing => a_state_directory_on_a_disk_is_not_warned_about,
    Needs::Tmpfs => an_ephemeral_state_directory_is_warned_about_at_start,
);
