//! The embedded store: one JSON file per token in a private directory.
//!
//! Files are `NAME.json`, mode 0600, in a directory of mode 0700. A write goes to a
//! temporary file that is fsynced, renamed over the record and followed by an fsync of
//! the directory, so a crash leaves either the old record or the new one. `NAME.lock`
//! carries an advisory `flock` that serialises refreshes across processes on one host.
//! Blocking file work runs on tokio's blocking pool.

use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use super::{RECORD_VERSION, StoreError, StoreLock, StoredToken, TokenStore};

pub struct FileStore {
    dir: PathBuf,
}

impl FileStore {
    /// Creates the directory (0700) if needed and tightens its mode if it is wider.
    pub fn open(dir: &Path) -> Result<FileStore, StoreError> {
        let io = |source| StoreError::Io {
            path: dir.into(),
            source,
        };
        DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(io)?;
        let mode = fs::metadata(dir).map_err(io)?.permissions().mode();
        if mode & 0o077 != 0 {
            fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).map_err(io)?;
        }
        Ok(FileStore { dir: dir.into() })
    }

    fn record_path(&self, token: &str) -> PathBuf {
        self.dir.join(format!("{token}.json"))
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    tokio::task::spawn_blocking(f).await.unwrap_or_else(|e| {
        Err(StoreError::Io {
            path: PathBuf::new(),
            source: std::io::Error::other(e),
        })
    })
}

fn read_record(path: &Path, token: &str) -> Result<Option<StoredToken>, StoreError> {
    let bytes = match fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(StoreError::Io {
                path: path.into(),
                source,
            });
        }
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
    // serde_json's errors name fields and positions, never values.
    serde_json::from_value(value)
        .map(Some)
        .map_err(|e| corrupt(e.to_string()))
}

fn write_record(dir: &Path, path: &Path, record: &StoredToken) -> Result<(), StoreError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| StoreError::Io { path, source }
    };
    let bytes =
        serde_json::to_vec_pretty(record).map_err(|e| io(path)(std::io::Error::other(e)))?;
    let tmp = path.with_extension(format!("json.tmp{}", std::process::id()));
    let result = (|| {
        let mut file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        file.write_all(&bytes)?;
        file.sync_all()?;
        fs::rename(&tmp, path)?;
        File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result.map_err(io(path))
}

#[async_trait::async_trait]
impl TokenStore for FileStore {
    fn kind(&self) -> &'static str {
        "file"
    }

    async fn load(&self, token: &str) -> Result<Option<StoredToken>, StoreError> {
        let path = self.record_path(token);
        let token = token.to_owned();
        blocking(move || read_record(&path, &token)).await
    }

    async fn save(&self, token: &str, record: &StoredToken) -> Result<(), StoreError> {
        let (dir, path, record) = (self.dir.clone(), self.record_path(token), record.clone());
        blocking(move || write_record(&dir, &path, &record)).await
    }

    async fn lock(&self, token: &str) -> Result<StoreLock, StoreError> {
        let path = self.dir.join(format!("{token}.lock"));
        blocking(move || {
            let io = |source| StoreError::Io {
                path: path.clone(),
                source,
            };
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .mode(0o600)
                .open(&path)
                .map_err(io)?;
            file.lock().map_err(io)?;
            Ok(StoreLock {
                _guard: Box::new(file),
            })
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secret::Secret;

    fn record(generation: u64) -> StoredToken {
        StoredToken {
            version: RECORD_VERSION,
            generation,
            access_token: Some(Secret::new("at")),
            refresh_token: Some(Secret::new("rt")),
            issued_at_ms: 1,
            expires_at_ms: 2,
            extra: Default::default(),
        }
    }

    #[tokio::test]
    async fn round_trip_with_private_modes() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("state");
        let store = FileStore::open(&dir).unwrap();
        assert!(store.load("t").await.unwrap().is_none());
        store.save("t", &record(3)).await.unwrap();
        let back = store.load("t").await.unwrap().unwrap();
        assert_eq!(back.generation, 3);
        assert_eq!(back.refresh_token.unwrap().expose(), "rt");
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(&dir.join("t.json")), 0o600);
        // Only the record remains: no temporary files left behind.
        let names: Vec<_> = fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("t.json")]);
    }

    #[tokio::test]
    async fn wide_directory_is_tightened() {
        let tmp = tempfile::tempdir().unwrap();
        fs::set_permissions(tmp.path(), fs::Permissions::from_mode(0o755)).unwrap();
        FileStore::open(tmp.path()).unwrap();
        let mode = fs::metadata(tmp.path()).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
    }

    #[tokio::test]
    async fn corrupt_and_foreign_versions_are_refused_by_name() {
        let tmp = tempfile::tempdir().unwrap();
        let store = FileStore::open(tmp.path()).unwrap();
        for (text, expect) in [
            ("{\"generation\": 1", "not JSON"),
            ("{\"version\": 7}", "format version 7"),
            ("{}", "no format version"),
            ("{\"version\": 1, \"generation\": \"x\"}", "invalid type"),
        ] {
            fs::write(tmp.path().join("t.json"), text).unwrap();
            let err = store.load("t").await.unwrap_err();
            assert!(err.is_terminal());
            let msg = err.to_string();
            assert!(
                msg.contains(expect) && msg.contains("tokenproxy seed t"),
                "{msg}"
            );
        }
    }

    #[tokio::test]
    async fn lock_excludes_other_holders_until_dropped() {
        let tmp = tempfile::tempdir().unwrap();
        let store = FileStore::open(tmp.path()).unwrap();
        let held = store.lock("t").await.unwrap();
        // A second open file description, as another process would have.
        let other = File::open(tmp.path().join("t.lock")).unwrap();
        assert!(matches!(
            other.try_lock(),
            Err(fs::TryLockError::WouldBlock)
        ));
        drop(held);
        other.try_lock().unwrap();
    }
}
