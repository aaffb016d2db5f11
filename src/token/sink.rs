//! Token files (`[[tokens.NAME.sinks]]`): the current access token, for tools that
//! read a token from a file (a shell script, a Python job), in the spirit of Vault
//! Agent's file sinks. Never the refresh token.
//!
//! Each new access token is written atomically: a temporary file with an
//! unpredictable name in the same directory, created exclusively with the sink's
//! mode, fsynced and renamed over the sink, then the directory fsynced; a reader
//! sees the old token or the new one, never half of one. When the token stops
//! being valid (it expired and no new one came) the file is removed, and so it is
//! when tokenproxy stops or a reload removes the sink: a file that nobody keeps
//! current would be read after it expired. A sink's directory is held to the
//! state directory's rules (this user's, writable by nobody else, not a link),
//! checked at start and reload before anything changes; a missing one is created
//! with the sink's read bits (mode 0640 gives a directory 0750).

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::TokenSource;
use crate::config::{Sink, SinkFormat};
use crate::metrics::Metrics;

/// The vending answer, also a `json` sink's content.
pub fn vended_json(access_token: &str, expires_at_ms: u64, now: SystemTime) -> String {
    let expires_at = crate::clock::ms_to_time(expires_at_ms);
    let expires_in = expires_at.duration_since(now).map_or(0, |d| d.as_secs());
    serde_json::json!({
        "token_type": "Bearer",
        "access_token": access_token,
        "expires_at": crate::clock::rfc3339(expires_at),
        "expires_in": expires_in,
    })
    .to_string()
}

/// Creates (if missing) and checks each sink's directory: an error names the sink's
/// path, the problem and the fix.
pub fn prepare(token: &str, sinks: &[Sink]) -> Result<(), String> {
    for (i, sink) in sinks.iter().enumerate() {
        let dir = directory(&sink.path);
        let read_bits = (sink.mode & 0o044) | ((sink.mode & 0o044) >> 2);
        let created = std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700 | read_bits)
            .create(dir);
        let problem = match created {
            Err(e) => Some((
                format!("cannot create {}: {e}", dir.display()),
                "create it, or point the sink elsewhere".to_owned(),
            )),
            Ok(()) => check_directory(dir),
        };
        if let Some((problem, fix)) = problem {
            return Err(format!(
                "tokens.{token}.sinks[{i}].path ({}): {problem}\n  fix: {fix}",
                sink.path.display()
            ));
        }
    }
    Ok(())
}

fn directory(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// The state directory's rules, for a sink's directory: a directory (not a link)
/// of this user that nobody else may write to.
fn check_directory(dir: &Path) -> Option<(String, String)> {
    let meta = match std::fs::symlink_metadata(dir) {
        Ok(m) => m,
        Err(e) => {
            return Some((
                format!("cannot read {}: {e}", dir.display()),
                "create the directory".into(),
            ));
        }
    };
    let euid = rustix::process::geteuid().as_raw();
    if meta.file_type().is_symlink() || !meta.is_dir() {
        Some((
            format!(
                "{} is not a directory (or is a symbolic link)",
                dir.display()
            ),
            "point the sink into a directory of its own".into(),
        ))
    } else if meta.uid() != euid {
        Some((
            format!(
                "{} belongs to uid {}, not to this process (uid {euid}); its owner could replace the token file",
                dir.display(),
                meta.uid()
            ),
            format!(
                "chown {euid} {}, or use a directory of this user",
                dir.display()
            ),
        ))
    } else if meta.mode() & 0o022 != 0 {
        Some((
            format!(
                "{} is writable by others (mode {:o}); they could replace the token file or plant a link",
                dir.display(),
                meta.mode() & 0o7777
            ),
            format!(
                "chmod go-w {}, or use a directory of its own (readers need only its read bits)",
                dir.display()
            ),
        ))
    } else {
        None
    }
}

/// Starts following `source` into its sinks, after `previous` (the task of the
/// sinks it replaces) has finished removing its files.
pub fn spawn(
    source: Arc<TokenSource>,
    sinks: Vec<Sink>,
    metrics: Arc<Metrics>,
    stop: CancellationToken,
    previous: Option<JoinHandle<()>>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        if let Some(previous) = previous {
            let _ = previous.await;
        }
        follow(&source, &sinks, &metrics, &stop).await;
        let _ = write_all(&source, &sinks, None, &metrics).await;
    })
}

/// Writes every new access token, removes the files when none is valid, until
/// `stop`.
async fn follow(source: &TokenSource, sinks: &[Sink], metrics: &Metrics, stop: &CancellationToken) {
    let mut changes = source.follow();
    // The generation in the files (`Some(None)`: none there); `None` before the
    // first write, so that a token that is not valid at start clears stale files.
    let mut written: Option<Option<u64>> = None;
    loop {
        changes.borrow_and_update();
        let state = source.current_full();
        let token = state
            .record
            .as_ref()
            .filter(|_| state.valid_for(Duration::ZERO))
            .and_then(|r| Some((r.generation, r.expires_at_ms, r.access_token.as_ref()?)));
        let wanted = token.as_ref().map(|(g, ..)| *g);
        if written != Some(wanted) {
            let content = token.map(|(_, expires, t)| (t.expose().to_owned(), expires));
            if write_all(source, sinks, content, metrics).await {
                written = Some(wanted);
            }
        }
        let expiry = state.valid_until.filter(|_| wanted.is_some());
        tokio::select! {
            _ = stop.cancelled() => return,
            r = changes.changed() => if r.is_err() { return },
            _ = sleep_until(expiry) => {}
            // A failed write is tried again.
            _ = tokio::time::sleep(Duration::from_secs(5)), if written != Some(wanted) => {}
        }
    }
}

async fn sleep_until(at: Option<std::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

/// Writes `content` (the access token and its expiry) to every sink, or removes
/// them all for `None`. Returns whether every sink succeeded.
async fn write_all(
    source: &TokenSource,
    sinks: &[Sink],
    content: Option<(String, u64)>,
    metrics: &Metrics,
) -> bool {
    let sinks = sinks.to_vec();
    let token = source.name();
    let name = token.to_owned();
    let header = header_template(&source.config.injects);
    let results = tokio::task::spawn_blocking(move || {
        sinks
            .iter()
            .map(|sink| {
                let result = match &content {
                    Some((t, expires)) => {
                        write_atomically(sink, &render(sink.format, &header, t, *expires))
                    }
                    None => match std::fs::remove_file(&sink.path) {
                        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
                        _ => Ok(()),
                    },
                };
                if let Err(e) = &result {
                    tracing::error!(token = %name, path = %sink.path.display(), error = %e, "cannot write the token sink");
                }
                result.is_ok()
            })
            .collect::<Vec<bool>>()
    })
    .await
    .unwrap_or_default();
    for ok in &results {
        metrics.sink_written(token, *ok);
    }
    results.iter().all(|ok| *ok)
}

/// The header a `header` sink writes: as the token's routes inject it (their first
/// header template, such as Zoho's `Authorization: Zoho-oauthtoken {token}`), else
/// `Authorization: Bearer {token}`. Name, text before the token, text after.
fn header_template(injects: &[crate::config::Inject]) -> (String, String, String) {
    injects
        .iter()
        .find_map(|i| match i {
            crate::config::Inject::Header {
                name,
                before,
                after,
                ..
            } => Some((name.as_str().to_owned(), before.clone(), after.clone())),
            crate::config::Inject::Query { .. } => None,
        })
        .unwrap_or_else(|| ("Authorization".into(), "Bearer ".into(), String::new()))
}

fn render(
    format: SinkFormat,
    (name, before, after): &(String, String, String),
    token: &str,
    expires_at_ms: u64,
) -> String {
    match format {
        SinkFormat::Token => token.to_owned(),
        SinkFormat::Header => format!("{}: {before}{token}{after}\n", header_name(name)),
        SinkFormat::Json => vended_json(token, expires_at_ms, SystemTime::now()) + "\n",
    }
}

/// `authorization` as `Authorization`: header names are stored lower-case, and
/// tools that read the file (curl -H @file) send them as written.
fn header_name(name: &str) -> String {
    name.split('-')
        .map(|part| {
            let mut chars = part.chars();
            match chars.next() {
                Some(first) => first.to_ascii_uppercase().to_string() + chars.as_str(),
                None => String::new(),
            }
        })
        .collect::<Vec<_>>()
        .join("-")
}

fn write_atomically(sink: &Sink, content: &str) -> std::io::Result<()> {
    let dir = directory(&sink.path);
    let file_name = sink
        .path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let temp = dir.join(format!(".{file_name}.{:016x}.tmp", fastrand::u64(..)));
    let written = (|| {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(sink.mode)
            .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
            .open(&temp)?;
        // The mode asked for, whatever the umask took away.
        file.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(sink.mode))?;
        file.write_all(content.as_bytes())?;
        file.sync_all()?;
        std::fs::rename(&temp, &sink.path)?;
        std::fs::File::open(dir)?.sync_all()
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&temp);
    }
    written
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn a_sink_is_written_whole_with_its_mode_and_in_its_format() {
        let dir = tempfile::tempdir().unwrap();
        let sinks_dir = dir.path().join("sinks");
        let sink = |name: &str, format, mode| Sink {
            path: sinks_dir.join(name),
            format,
            mode,
        };
        let sinks = [
            sink("t", SinkFormat::Token, 0o600),
            sink("h", SinkFormat::Header, 0o640),
            sink("j", SinkFormat::Json, 0o644),
        ];
        prepare("api", &sinks).unwrap();
        let meta = std::fs::metadata(&sinks_dir).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o700);
        for s in &sinks {
            let bearer = header_template(&[]);
            write_atomically(s, &render(s.format, &bearer, "tok-123", 4_102_444_800_000)).unwrap();
            let meta = std::fs::metadata(&s.path).unwrap();
            assert_eq!(meta.permissions().mode() & 0o777, s.mode);
        }
        assert_eq!(std::fs::read_to_string(&sinks[0].path).unwrap(), "tok-123");
        assert_eq!(
            std::fs::read_to_string(&sinks[1].path).unwrap(),
            "Authorization: Bearer tok-123\n"
        );
        let json: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&sinks[2].path).unwrap()).unwrap();
        assert_eq!(json["access_token"], "tok-123");
        assert_eq!(json["expires_at"], "2100-01-01T00:00:00Z");
        // Nothing is left behind but the sinks.
        assert_eq!(std::fs::read_dir(&sinks_dir).unwrap().count(), 3);
    }

    #[test]
    fn a_header_sink_writes_the_header_the_routes_inject() {
        let zoho = crate::config::Inject::Header {
            name: http::header::AUTHORIZATION,
            before: "Zoho-oauthtoken ".into(),
            after: String::new(),
            text: "Authorization: Zoho-oauthtoken {token}".into(),
        };
        let template = header_template(&[crate::config::Inject::Query { param: "t".into() }, zoho]);
        assert_eq!(
            render(SinkFormat::Header, &template, "tok", 0),
            "Authorization: Zoho-oauthtoken tok\n"
        );
        let custom = crate::config::Inject::Header {
            name: http::HeaderName::from_static("x-api-token"),
            before: String::new(),
            after: String::new(),
            text: "X-Api-Token: {token}".into(),
        };
        assert_eq!(
            render(SinkFormat::Header, &header_template(&[custom]), "tok", 0),
            "X-Api-Token: tok\n"
        );
    }

    #[test]
    fn an_unsafe_directory_is_refused_with_the_fix() {
        let dir = tempfile::tempdir().unwrap();
        let open = dir.path().join("open");
        std::fs::create_dir(&open).unwrap();
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
        let sink = Sink {
            path: open.join("t"),
            format: SinkFormat::Token,
            mode: 0o600,
        };
        let e = prepare("api", &[sink]).unwrap_err();
        assert!(
            e.contains("tokens.api.sinks[0].path")
                && e.contains("writable by others")
                && e.contains("fix: chmod go-w"),
            "{e}"
        );
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&open, &link).unwrap();
        let sink = Sink {
            path: link.join("t"),
            format: SinkFormat::Token,
            mode: 0o600,
        };
        let e = prepare("api", &[sink]).unwrap_err();
        assert!(e.contains("symbolic link"), "{e}");
    }
}
