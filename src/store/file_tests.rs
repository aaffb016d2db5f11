//! Unit tests of `crate::store::file`.

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
    let mut held = store.lock("t", Duration::from_secs(1)).await.unwrap();
    held.save(&record(3), Some(0)).await.unwrap();
    drop(held);
    let back = store.load("t").await.unwrap().unwrap();
    assert_eq!(back.generation, 3);
    assert_eq!(back.refresh_token.unwrap().expose(), "rt");
    let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&dir), 0o700);
    assert_eq!(mode(&dir.join("t.json")), 0o600);
    // Only the record (and the lock file) remain: no temporary files left behind.
    let mut names: Vec<_> = fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .filter(|n| n != "t.lock")
        .collect();
    names.sort();
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

/// /tmp as the state directory gets the advice of a directory of its own in
/// it, never `chmod 700 /tmp` (or a chown of it).
#[test]
fn a_shared_directory_is_refused_with_advice_that_leaves_it_alone() {
    let e = FileStore::open(Path::new("/tmp")).err().expect("refused");
    let text = e.to_string();
    assert!(text.contains("shared directory"), "{text}");
    assert!(text.contains("/tmp/tokenproxy-state"), "{text}");
    assert!(!text.contains("chmod") && !text.contains("chown"), "{text}");
    let mode = fs::metadata("/tmp").unwrap().permissions().mode();
    assert_eq!(mode & 0o1777, 0o1777, "/tmp was left as it was");
}

#[tokio::test]
async fn corrupt_and_foreign_versions_are_refused_by_name() {
    let tmp = tempfile::tempdir().unwrap();
    let store = FileStore::open(tmp.path()).unwrap();
    for (text, expect) in [
        ("{\"generation\": 1", "not JSON"),
        ("{\"version\": 7}", "format version 7"),
        ("{}", "no format version"),
        (
            "{\"version\": 1, \"generation\": \"rt-SECRET\", \"issued_at_ms\": 1, \"expires_at_ms\": 2}",
            "field `generation` is not a whole number",
        ),
        (
            "{\"version\": 1, \"generation\": 1, \"issued_at_ms\": 1, \"expires_at_ms\": 2, \"refresh_token\": 7}",
            "field `refresh_token` is not a string",
        ),
        (
            "{\"version\": 1, \"generation\": 1, \"issued_at_ms\": 1, \"expires_at_ms\": 2, \"rt-SECRET-and-more-than-32-chars!\": 1}",
            "unexpected name",
        ),
    ] {
        fs::write(tmp.path().join("t.json"), text).unwrap();
        let err = store.load("t").await.unwrap_err();
        assert!(err.is_terminal());
        let msg = err.to_string();
        assert!(
            msg.contains(expect) && msg.contains("tokenproxy seed t"),
            "{msg}"
        );
        assert!(!msg.contains("SECRET"), "{msg}");
    }
}

#[tokio::test]
async fn writes_are_fenced_by_the_generation_seen() {
    let tmp = tempfile::tempdir().unwrap();
    let store = FileStore::open(tmp.path()).unwrap();
    let mut held = store.lock("t", Duration::from_secs(1)).await.unwrap();
    held.save(&record(1), Some(0)).await.unwrap();
    // A writer that saw generation 0 (its lease lapsed) cannot overwrite 1.
    let err = held.save(&record(2), Some(0)).await.unwrap_err();
    assert!(
        matches!(
            err,
            StoreError::Fenced {
                seen: 0,
                stored: 1,
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(held.load().await.unwrap().unwrap().generation, 1);
    held.save(&record(2), Some(1)).await.unwrap();
    // A person's seed replaces whatever is there, even a corrupt record.
    fs::write(tmp.path().join("t.json"), "{").unwrap();
    held.save(&record(9), None).await.unwrap();
    assert_eq!(held.load().await.unwrap().unwrap().generation, 9);
}

#[tokio::test]
async fn lock_excludes_other_holders_until_dropped() {
    let tmp = tempfile::tempdir().unwrap();
    let store = FileStore::open(tmp.path()).unwrap();
    let held = store.lock("t", Duration::from_secs(1)).await.unwrap();
    // A second open file description, as another process would have.
    let other = File::open(tmp.path().join("t.lock")).unwrap();
    assert!(matches!(
        other.try_lock(),
        Err(fs::TryLockError::WouldBlock)
    ));
    drop(held);
    other.try_lock().unwrap();
    // A holder that does not let go makes the next waiter give up, by name.
    let err = store
        .lock("t", Duration::from_millis(100))
        .await
        .err()
        .unwrap();
    assert!(err.to_string().contains("held the lock"), "{err}");
}

#[test]
fn ephemeral_mounts_are_recognised() {
    let mountinfo = "\
22 1 259:1 / / rw,relatime shared:1 - ext4 /dev/root rw
30 22 0:25 / /tmp rw,nosuid shared:12 - tmpfs tmpfs rw
41 22 259:1 /var/lib/kubelet/pods/1f/volumes/kubernetes.io~empty-dir/state /var/lib/tokenproxy rw - ext4 /dev/root rw
42 22 259:1 /var/lib/kubelet/pods/1f/volumes/kubernetes.io~csi/pvc-9/mount /var/lib/kept rw - ext4 /dev/sdb rw
43 22 0:40 / /srv/with\\040space rw - tmpfs tmpfs rw
";
    let at = |p: &str, container: bool| ephemeral_mount(mountinfo, Path::new(p), container);
    assert!(
        at("/var/lib/tokenproxy/state", false)
            .unwrap()
            .contains("emptyDir")
    );
    assert!(at("/tmp/x", false).unwrap().contains("tmpfs"));
    assert!(
        at("/srv/with space/state", false)
            .unwrap()
            .contains("tmpfs")
    );
    assert_eq!(at("/var/lib/kept/state", true), None);
    assert_eq!(at("/home/etl/state", false), None);
    // A container's root: only its writable overlay layer is lost with it.
    assert_eq!(at("/home/etl/state", true), None);
    let overlay = mountinfo.replace("- ext4 /dev/root", "- overlay overlay");
    let root = ephemeral_mount(&overlay, Path::new("/home/etl/state"), true);
    assert!(root.unwrap().contains("container"));
    // A mount whose path is only a string prefix does not hold the directory.
    assert_eq!(at("/tmpx/state", false), None);
}
