//! The embedded store: one JSON file per token in a private directory.
//!
//! Files are `NAME.json`, mode 0600, in a directory of mode 0700 that this process
//! owns. A write goes to a temporary file with an unpredictable name, created
//! exclusively, that is fsynced, renamed over the record and followed by an fsync of
//! the directory, so a crash leaves either the old record or the new one.
//! `NAME.lock` carries an advisory `flock` that serialises refreshes across
//! processes on one host; `NAME.intent.json` says a refresh token is about to be
//! spent.
//!
//! Nothing in the directory is trusted to be what its name says: every file is
//! opened without following links (`O_NOFOLLOW`) and without blocking (a FIFO would
//! hang), and must be a regular file. The directory itself must not be a link, must
//! belong to this process's user and be writable by nobody else; its parents must
//! belong to root or to this user. Blocking file work runs on tokio's blocking pool,
//! each operation with a deadline.
//!
//! Length: the file store's lock, atomic write and record checks make sense only
//! together.

use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use super::{Held, Intent, IntentRead, RECORD_VERSION, StoreError, StoredToken, TokenStore};

/// Longest wait for one read or write of a record.
const OP_TIMEOUT: Duration = Duration::from_secs(10);
/// Records and intents are small; anything larger is not ours.
const MAX_RECORD: u64 = 1024 * 1024;
/// Temporary files older than this, left by a crash, are removed at open.
const STALE_TMP: Duration = Duration::from_secs(600);

pub struct FileStore {
    dir: PathBuf,
}

impl FileStore {
    /// Creates the directory (0700) if needed, checks who owns it and its parents,
    /// and tightens its mode if others may read it.
    pub fn open(dir: &Path) -> Result<FileStore, StoreError> {
        let io = |source| StoreError::Io {
            path: dir.into(),
            source,
        };
        if fs::symlink_metadata(dir).is_err() {
            DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(io)?;
        }
        check_directory(dir)?;
        let mode = fs::symlink_metadata(dir).map_err(io)?.mode();
        if mode & 0o077 != 0 {
            fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).map_err(io)?;
        }
        remove_stale_temporaries(dir);
        Ok(FileStore { dir: dir.into() })
    }

    /// Checks an existing directory as `open` would, changing nothing.
    pub fn check(dir: &Path) -> Result<(), StoreError> {
        check_directory(dir)
    }

    fn path(&self, token: &str, suffix: &str) -> PathBuf {
        self.dir.join(format!("{token}{suffix}"))
    }

    /// Writes `value` as JSON to `path`, durably (for intents; records are written
    /// under the lock, through [`Held`]).
    async fn write_json(
        &self,
        path: PathBuf,
        value: &impl serde::Serialize,
    ) -> Result<(), StoreError> {
        let bytes = serde_json::to_vec_pretty(value).map_err(|e| StoreError::Io {
            path: path.clone(),
            source: std::io::Error::other(e),
        })?;
        let (dir, p) = (self.dir.clone(), path.clone());
        blocking("write", &path, move || write_atomic(&dir, &p, &bytes)).await
    }
}

fn unsafe_dir(path: &Path, problem: String, fix: String) -> StoreError {
    StoreError::Unsafe {
        path: path.into(),
        problem,
        fix,
    }
}

/// Refuses a state directory that someone else could swap or fill with links.
fn check_directory(dir: &Path) -> Result<(), StoreError> {
    let euid = rustix::process::geteuid().as_raw();
    let io = |source| StoreError::Io {
        path: dir.into(),
        source,
    };
    let meta = fs::symlink_metadata(dir).map_err(io)?;
    if meta.file_type().is_symlink() {
        return Err(unsafe_dir(
            dir,
            "the state directory is a symbolic link".into(),
            "set store.path to the directory the link points to".into(),
        ));
    }
    if !meta.is_dir() {
        return Err(unsafe_dir(
            dir,
            "the state path is not a directory".into(),
            "set store.path to a directory (it is created if missing)".into(),
        ));
    }
    // A shared directory such as /tmp (others may write, sticky bit): never to be
    // chowned or chmodded; the state gets a directory of its own inside it.
    if meta.mode() & 0o1000 != 0 && meta.mode() & 0o002 != 0 {
        return Err(unsafe_dir(
            dir,
            "the state directory is a shared directory (writable by everyone, sticky bit, like /tmp): others could read or plant files there".into(),
            format!(
                "set store.path to a directory of its own, such as {} (tokenproxy creates it, mode 0700)",
                dir.join("tokenproxy-state").display()
            ),
        ));
    }
    if meta.uid() != euid {
        return Err(unsafe_dir(
            dir,
            format!(
                "the state directory belongs to uid {}, not to this process (uid {euid}); whoever owns it can read and replace the tokens",
                meta.uid()
            ),
            format!(
                "chown {euid} {} (and chmod 700), or set store.path to a directory of this user",
                dir.display()
            ),
        ));
    }
    if meta.mode() & 0o022 != 0 {
        return Err(unsafe_dir(
            dir,
            format!(
                "the state directory is writable by others (mode {:o}); they could plant links to read or overwrite the tokens",
                meta.mode() & 0o7777
            ),
            format!("chmod 700 {}", dir.display()),
        ));
    }
    let parent = dir
        .canonicalize()
        .map_err(io)?
        .parent()
        .map(Path::to_path_buf);
    let mut ancestor = parent;
    while let Some(a) = ancestor {
        let meta = fs::metadata(&a).map_err(|source| StoreError::Io {
            path: a.clone(),
            source,
        })?;
        if meta.uid() != 0 && meta.uid() != euid {
            return Err(unsafe_dir(
                dir,
                format!(
                    "its parent {} belongs to uid {}, who could replace the state directory",
                    a.display(),
                    meta.uid()
                ),
                "put the state directory under a directory owned by root or by this user".into(),
            ));
        }
        let sticky = meta.mode() & 0o1000 != 0;
        if meta.mode() & 0o022 != 0 && !sticky {
            tracing::warn!(
                path = %a.display(),
                state = %dir.display(),
                "a parent of the state directory is writable by others without the sticky bit; whoever can write there could replace the state directory. Mount it only into this container, or choose another path"
            );
        }
        ancestor = a.parent().map(Path::to_path_buf);
    }
    Ok(())
}

/// What makes the filesystem under `dir` lose its files with the process's pod,
/// container or machine, in words (`None`: nothing known). Read from
/// `/proc/self/mountinfo`: the mount that holds `dir` is a tmpfs, a Kubernetes
/// `emptyDir`, or a container's own root filesystem.
pub fn ephemeral(dir: &Path) -> Option<&'static str> {
    let mountinfo = fs::read_to_string("/proc/self/mountinfo").ok()?;
    let dir = dir.canonicalize().ok()?;
    let in_container = Path::new("/.dockerenv").exists()
        || Path::new("/run/.containerenv").exists()
        || std::env::var_os("KUBERNETES_SERVICE_HOST").is_some();
    ephemeral_mount(&mountinfo, &dir, in_container)
}

fn ephemeral_mount(mountinfo: &str, dir: &Path, in_container: bool) -> Option<&'static str> {
    // Fields: id parent major:minor root mount-point options [optional...] - fstype source ...
    let unescape = |s: &str| {
        s.replace("\\040", " ")
            .replace("\\011", "\t")
            .replace("\\134", "\\")
    };
    let (root, point, fstype) = mountinfo
        .lines()
        .filter_map(|line| {
            let (head, tail) = line.split_once(" - ")?;
            let mut f = head.split(' ');
            let root = unescape(f.nth(3)?);
            let point = PathBuf::from(unescape(f.next()?));
            let fstype = tail.split(' ').next()?.to_owned();
            dir.starts_with(&point).then_some((root, point, fstype))
        })
        // The last mount on the longest matching point is the one in effect.
        .fold(
            None,
            |best: Option<(String, PathBuf, String)>, m| match &best {
                Some(b) if b.1.as_os_str().len() > m.1.as_os_str().len() => best,
                _ => Some(m),
            },
        )?;
    if root.contains("kubernetes.io~empty-dir") {
        Some("a Kubernetes emptyDir, deleted with the pod")
    } else if fstype == "tmpfs" || fstype == "ramfs" {
        Some("a tmpfs, kept in memory and lost at the next restart of the pod or machine")
    } else if in_container
        && point == Path::new("/")
        && matches!(fstype.as_str(), "overlay" | "fuse-overlayfs" | "aufs")
    {
        Some("the container's own filesystem, lost when the container is replaced")
    } else {
        None
    }
}

/// Temporary files a crash left behind (they hold tokens); only old ones, since
/// another instance may be writing one now.
fn remove_stale_temporaries(dir: &Path) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let is_tmp = name.to_str().is_some_and(|n| n.contains(".tmp."));
        let old = entry
            .metadata()
            .ok()
            .and_then(|m| m.modified().ok())
            .and_then(|t| SystemTime::now().duration_since(t).ok())
            .is_some_and(|age| age > STALE_TMP);
        if is_tmp && old {
            let _ = fs::remove_file(entry.path());
        }
    }
}

/// Opens a file in the state directory without following a link or blocking on a
/// FIFO; it must be a regular file.
fn open_plain(path: &Path, options: &mut OpenOptions) -> std::io::Result<File> {
    use rustix::fs::OFlags;
    let flags = (OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC).bits() as i32;
    let file = options.custom_flags(flags).open(path).map_err(|e| {
        if e.raw_os_error() == Some(rustix::io::Errno::LOOP.raw_os_error()) {
            std::io::Error::other(
                "is a symbolic link; tokenproxy does not follow links in its state directory (remove it)",
            )
        } else {
            e
        }
    })?;
    if !file.metadata()?.is_file() {
        return Err(std::io::Error::other(
            "is not a regular file (remove it; tokenproxy writes a new one)",
        ));
    }
    Ok(file)
}

/// Runs blocking file work with a deadline. A hung call keeps its thread, but the
/// caller gets an answer.
async fn blocking<T: Send + 'static>(
    op: &'static str,
    path: &Path,
    f: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    match tokio::time::timeout(OP_TIMEOUT, tokio::task::spawn_blocking(f)).await {
        Ok(Ok(result)) => result,
        Ok(Err(e)) => Err(StoreError::Io {
            path: path.into(),
            source: std::io::Error::other(e),
        }),
        Err(_) => Err(StoreError::Timeout {
            path: path.into(),
            op,
            after: OP_TIMEOUT,
        }),
    }
}

/// The bytes of a file, or `None` if there is none.
fn read_small(path: &Path) -> Result<Option<Vec<u8>>, StoreError> {
    let io = |source| StoreError::Io {
        path: path.into(),
        source,
    };
    let file = match open_plain(path, OpenOptions::new().read(true)) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io(e)),
    };
    let mut bytes = Vec::new();
    file.take(MAX_RECORD).read_to_end(&mut bytes).map_err(io)?;
    Ok(Some(bytes))
}

fn read_record(path: &Path, token: &str) -> Result<Option<StoredToken>, StoreError> {
    let Some(bytes) = read_small(path)? else {
        return Ok(None);
    };
    let corrupt = |detail: String| StoreError::Corrupt {
        path: path.into(),
        token: token.into(),
        detail,
    };
    // Check the version before the shape, so an old or new format says so plainly.
    let value: serde_json::Value =
        serde_json::from_slice(&bytes).map_err(|e| corrupt(format!("not JSON: {e}")))?;
    match value.get("version").and_then(|v| v.as_u64()) {
        Some(v) if v == u64::from(RECORD_VERSION) => {}
        Some(v) => {
            return Err(corrupt(format!(
                "format version {v}, this tokenproxy reads version {RECORD_VERSION}"
            )));
        }
        None => return Err(corrupt("no format version".into())),
    }
    // serde_json's messages quote wrong-typed values, which may be tokens: name the
    // field instead.
    if let Some(detail) = super::shape_error(&value) {
        return Err(corrupt(detail));
    }
    serde_json::from_value(value)
        .map(Some)
        .map_err(|_| corrupt("not the shape of a token record".into()))
}

/// Replaces `path` with `bytes` durably: a new temporary file (exclusive, not
/// following links, an unguessable name), fsync, rename, fsync of the directory.
fn write_atomic(dir: &Path, path: &Path, bytes: &[u8]) -> Result<(), StoreError> {
    let io = |source| StoreError::Io {
        path: path.into(),
        source,
    };
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("record");
    let tmp = dir.join(format!("{name}.tmp.{:016x}", fastrand::u64(..)));
    let result = (|| {
        let mut file = open_plain(
            &tmp,
            OpenOptions::new().write(true).create_new(true).mode(0o600),
        )?;
        file.write_all(bytes)?;
        file.sync_all()?;
        // rename replaces a link named like the record, never its target.
        fs::rename(&tmp, path)?;
        File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result.map_err(io)
}

/// The flock on `NAME.lock`, and the record it guards.
struct FileHeld {
    dir: PathBuf,
    record: PathBuf,
    token: String,
    /// Closing the file releases the flock.
    _lock: File,
}

#[async_trait::async_trait]
impl Held for FileHeld {
    async fn load(&mut self) -> Result<Option<StoredToken>, StoreError> {
        let (path, token) = (self.record.clone(), self.token.clone());
        blocking("read", &self.record, move || read_record(&path, &token)).await
    }

    async fn save(&mut self, record: &StoredToken, seen: Option<u64>) -> Result<(), StoreError> {
        let bytes = serde_json::to_vec_pretty(record).map_err(|e| StoreError::Io {
            path: self.record.clone(),
            source: std::io::Error::other(e),
        })?;
        let (dir, path, token) = (self.dir.clone(), self.record.clone(), self.token.clone());
        blocking("write", &self.record, move || {
            // Under the flock only a process that ignores it could have written.
            if let Some(seen) = seen {
                let stored = read_record(&path, &token)?.map_or(0, |r| r.generation);
                if stored != seen {
                    return Err(StoreError::Fenced {
                        token,
                        seen,
                        stored,
                    });
                }
            }
            write_atomic(&dir, &path, &bytes)
        })
        .await
    }

    async fn renew(&mut self) -> Result<Option<tokio::time::Instant>, StoreError> {
        Ok(None)
    }

    async fn release(self: Box<Self>) {}
}

#[async_trait::async_trait]
impl TokenStore for FileStore {
    fn kind(&self) -> &'static str {
        "file"
    }

    async fn load(&self, token: &str) -> Result<Option<StoredToken>, StoreError> {
        let path = self.path(token, ".json");
        let token = token.to_owned();
        let p = path.clone();
        blocking("read", &path, move || read_record(&p, &token)).await
    }

    async fn lock(&self, token: &str, wait: Duration) -> Result<Box<dyn Held>, StoreError> {
        let path = self.path(token, ".lock");
        let p = path.clone();
        let file = blocking("lock", &path, move || {
            open_plain(
                &p,
                OpenOptions::new()
                    .read(true)
                    .write(true)
                    .create(true)
                    .truncate(false)
                    .mode(0o600),
            )
            .map_err(|source| StoreError::Io { path: p, source })
        })
        .await?;
        // flock with LOCK_NB does not block, so it is tried from here, with pauses.
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            match file.try_lock() {
                Ok(()) => {
                    return Ok(Box::new(FileHeld {
                        dir: self.dir.clone(),
                        record: self.path(token, ".json"),
                        token: token.to_owned(),
                        _lock: file,
                    }));
                }
                Err(fs::TryLockError::WouldBlock) => {}
                Err(fs::TryLockError::Error(source)) => {
                    return Err(StoreError::Io { path, source });
                }
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(StoreError::LockTimeout { path, waited: wait });
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn write(&self, token: &str, record: &StoredToken, seen: u64) -> Result<(), StoreError> {
        let mut held = self.lock(token, OP_TIMEOUT).await?;
        held.save(record, Some(seen)).await
    }

    /// Read, compared and written under the token's `flock`, which every caller
    /// holds: on one host, the lock never lapses.
    async fn swap_intent(
        &self,
        token: &str,
        expected: Option<&Intent>,
        new: Option<&Intent>,
    ) -> Result<bool, StoreError> {
        let stored = self.load_intent(token).await?.intent;
        let matches = match (&stored, expected) {
            (None, None) => true,
            (Some(s), Some(e)) => s.same(e),
            _ => false,
        };
        if !matches {
            return Ok(false);
        }
        let path = self.path(token, ".intent.json");
        match new {
            Some(intent) => {
                let intent = Intent {
                    at_ms: crate::clock::time_to_ms(SystemTime::now()),
                    ..intent.clone()
                };
                self.write_json(path, &intent).await?;
            }
            None => {
                let p = path.clone();
                blocking("write", &path, move || match fs::remove_file(&p) {
                    Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                        Err(StoreError::Io { path: p, source: e })
                    }
                    _ => Ok(()),
                })
                .await?;
            }
        }
        Ok(true)
    }

    async fn load_intent(&self, token: &str) -> Result<IntentRead, StoreError> {
        let path = self.path(token, ".intent.json");
        let p = path.clone();
        let intent = blocking("read", &path, move || {
            // An unreadable intent says nothing; it is only ever advice.
            Ok(read_small(&p)?.and_then(|b| serde_json::from_slice(&b).ok()))
        })
        .await?;
        Ok(IntentRead {
            intent,
            now_ms: crate::clock::time_to_ms(SystemTime::now()),
        })
    }
}

#[cfg(test)]
#[path = "file_tests.rs"]
mod tests;
