//! Secret values that never print, and references to where a secret lives.
//!
//! A [`Secret`] is an owned string whose `Debug` and `Display` print `[redacted]`;
//! the raw value is reachable only through [`Secret::expose`], so every place that
//! handles a token or a client secret in clear text says so in the code.
//!
//! A [`SecretRef`] is what the configuration holds: a literal, an environment
//! variable or a file. It is resolved each time the secret is used, so a rotated
//! Kubernetes Secret (a file that changes under a running process) takes effect
//! without a restart. This module does not cache resolved values.

use std::fmt;
use std::path::PathBuf;

use serde::de::{self, MapAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A string that must never reach logs, metrics, status output or error bodies.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Box<str>);

impl Secret {
    pub fn new(value: impl Into<Box<str>>) -> Self {
        Secret(value.into())
    }

    /// The clear-text value. Call sites are the only places a secret is handled raw.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

/// Stored token records hold secrets in clear text: the store is their home.
impl Serialize for Secret {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(Secret::new)
    }
}

/// `text` with every occurrence of each secret replaced by `[redacted]`: as is,
/// form-urlencoded and percent-encoded (how a server echoing a request shows it).
/// Values shorter than 4 characters are not masked: they would mask ordinary text,
/// and no real credential is that short.
pub fn mask(text: &str, secrets: &[&str]) -> String {
    let mut out = text.to_owned();
    for secret in secrets.iter().filter(|s| s.len() >= 4) {
        let form: String = form_urlencoded::byte_serialize(secret.as_bytes()).collect();
        let percent =
            percent_encoding::utf8_percent_encode(secret, percent_encoding::NON_ALPHANUMERIC)
                .to_string();
        for variant in [secret.to_string(), form, percent] {
            if out.contains(&variant) {
                out = out.replace(&variant, "[redacted]");
            }
        }
    }
    out
}

/// Where a configured secret comes from.
#[derive(Clone, PartialEq, Eq)]
pub enum SecretRef {
    Literal(Secret),
    Env(String),
    File(PathBuf),
}

#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("environment variable {0} is not set; export it or point the key at a file")]
    EnvMissing(String),
    #[error("cannot read secret file {path}: {source}")]
    File {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0} is empty")]
    Empty(String),
    #[error(
        "secret file {0} is not a regular file (a FIFO, a device or a directory); point the key at a file holding the secret"
    )]
    NotRegular(PathBuf),
    #[error(
        "secret file {0} is larger than {MAX_SECRET_FILE} bytes; a secret is a short value: check the path"
    )]
    TooLarge(PathBuf),
}

/// The largest secret file read (a PEM chain or a service account key is a few KiB).
pub const MAX_SECRET_FILE: u64 = 64 * 1024;

/// Reads a secret file: only a regular file (a link to one is fine: Kubernetes
/// mounts Secrets as links), never more than [`MAX_SECRET_FILE`] bytes, and
/// without blocking on a FIFO.
fn read_secret_file(path: &std::path::Path) -> Result<String, SecretError> {
    read_regular(path, MAX_SECRET_FILE).map_err(|e| match e {
        Unreadable::Io(source) => SecretError::File {
            path: path.into(),
            source,
        },
        Unreadable::NotRegular => SecretError::NotRegular(path.into()),
        Unreadable::TooLarge => SecretError::TooLarge(path.into()),
    })
}

/// Why [`read_regular`] read nothing.
#[derive(Debug)]
pub enum Unreadable {
    Io(std::io::Error),
    /// A FIFO, a device, a directory, a socket.
    NotRegular,
    TooLarge,
}

/// Reads the text of `path`, which must be a regular file (after links) of at most
/// `max` bytes. Opened without blocking, so a FIFO put in its place cannot hang
/// the caller, and read no further than `max` + 1 bytes, so `/dev/zero` or a
/// file that grows cannot exhaust memory.
pub fn read_regular(path: &std::path::Path, max: u64) -> Result<String, Unreadable> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(rustix::fs::OFlags::NONBLOCK.bits() as i32)
        .open(path)
        .map_err(Unreadable::Io)?;
    let meta = file.metadata().map_err(Unreadable::Io)?;
    if !meta.is_file() {
        return Err(Unreadable::NotRegular);
    }
    if meta.len() > max {
        return Err(Unreadable::TooLarge);
    }
    let mut text = String::new();
    file.take(max + 1)
        .read_to_string(&mut text)
        .map_err(Unreadable::Io)?;
    if text.len() as u64 > max {
        return Err(Unreadable::TooLarge);
    }
    Ok(text)
}

impl SecretRef {
    /// Reads the secret now. File contents lose trailing whitespace (a newline
    /// written by `echo` is not part of the secret).
    pub fn resolve(&self) -> Result<Secret, SecretError> {
        let value = match self {
            SecretRef::Literal(s) => return Ok(s.clone()),
            SecretRef::Env(var) => {
                std::env::var(var).map_err(|_| SecretError::EnvMissing(var.clone()))?
            }
            SecretRef::File(path) => read_secret_file(path)?.trim_end().to_owned(),
        };
        if value.is_empty() {
            return Err(SecretError::Empty(self.to_string()));
        }
        Ok(Secret::new(value))
    }

    pub fn is_literal(&self) -> bool {
        matches!(self, SecretRef::Literal(_))
    }
}

/// Names the source, never the value: `literal [redacted]`, `env VAR`, `file PATH`.
impl fmt::Display for SecretRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SecretRef::Literal(_) => f.write_str("literal [redacted]"),
            SecretRef::Env(var) => write!(f, "env {var}"),
            SecretRef::File(path) => write!(f, "file {}", path.display()),
        }
    }
}

impl fmt::Debug for SecretRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// Accepts `"literal"`, `{ env = "VAR" }` or `{ file = "PATH" }`, with an error
/// that shows all three forms when the value is anything else.
impl<'de> Deserialize<'de> for SecretRef {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct RefVisitor;
        const FORMS: &str = "a string, { env = \"VAR\" } or { file = \"PATH\" }";

        impl<'de> Visitor<'de> for RefVisitor {
            type Value = SecretRef;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(FORMS)
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<SecretRef, E> {
                Ok(SecretRef::Literal(Secret::new(v)))
            }

            fn visit_map<M: MapAccess<'de>>(self, mut map: M) -> Result<SecretRef, M::Error> {
                let Some(key) = map.next_key::<String>()? else {
                    return Err(de::Error::custom(format!("empty table; expected {FORMS}")));
                };
                let value: String = map.next_value()?;
                let result = match key.as_str() {
                    "env" => SecretRef::Env(value),
                    "file" => SecretRef::File(PathBuf::from(value)),
                    other => {
                        return Err(de::Error::custom(format!(
                            "unknown secret source `{other}`; expected {FORMS}"
                        )));
                    }
                };
                if map.next_key::<String>()?.is_some() {
                    return Err(de::Error::custom(format!(
                        "a secret has exactly one source; expected {FORMS}"
                    )));
                }
                Ok(result)
            }
        }

        d.deserialize_any(RefVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Deserialize)]
    struct Holder {
        s: SecretRef,
    }

    fn parse(text: &str) -> Result<SecretRef, toml::de::Error> {
        toml::from_str::<Holder>(text).map(|h| h.s)
    }

    #[test]
    fn secrets_never_print() {
        let s = Secret::new("hunter2");
        assert_eq!(format!("{s} {s:?}"), "[redacted] [redacted]");
        let r = parse(r#"s = "hunter2""#).unwrap();
        assert!(!format!("{r} {r:?}").contains("hunter2"));
    }

    #[test]
    fn parses_the_three_forms() {
        assert!(parse(r#"s = "x""#).unwrap().is_literal());
        assert_eq!(
            parse(r#"s = { env = "A" }"#).unwrap(),
            SecretRef::Env("A".into())
        );
        assert_eq!(
            parse(r#"s = { file = "/p" }"#).unwrap(),
            SecretRef::File("/p".into())
        );
        let err = parse(r#"s = { vault = "x" }"#).unwrap_err().to_string();
        assert!(err.contains("unknown secret source `vault`"), "{err}");
        let err = parse(r#"s = { env = "A", file = "B" }"#)
            .unwrap_err()
            .to_string();
        assert!(err.contains("exactly one source"), "{err}");
        assert!(parse("s = 3").is_err());
    }

    #[test]
    fn file_secret_is_reread_and_trimmed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s");
        std::fs::write(&path, "one\n").unwrap();
        let r = SecretRef::File(path.clone());
        assert_eq!(r.resolve().unwrap().expose(), "one");
        std::fs::write(&path, "two").unwrap();
        assert_eq!(r.resolve().unwrap().expose(), "two");
        std::fs::write(&path, "\n").unwrap();
        assert!(matches!(r.resolve(), Err(SecretError::Empty(_))));
    }

    #[test]
    fn mask_hides_plain_and_encoded_forms() {
        let text = "got rt=abc+/def&secret=s3cr%2Ft and abc+/def again, id";
        let masked = mask(text, &["abc+/def", "s3cr/t", "id"]);
        assert_eq!(
            masked,
            "got rt=[redacted]&secret=[redacted] and [redacted] again, id"
        );
    }

    #[test]
    fn only_small_regular_files_are_read() {
        let dir = tempfile::tempdir().unwrap();
        let big = dir.path().join("big");
        std::fs::write(&big, vec![b'x'; MAX_SECRET_FILE as usize + 1]).unwrap();
        let link = dir.path().join("link");
        std::os::unix::fs::symlink("/dev/zero", &link).unwrap();
        let fifo = dir.path().join("fifo");
        assert!(
            std::process::Command::new("mkfifo")
                .arg(&fifo)
                .status()
                .unwrap()
                .success()
        );
        for (path, expect) in [
            (big, "larger than"),
            (PathBuf::from("/dev/zero"), "not a regular file"),
            (link, "not a regular file"),
            (fifo, "not a regular file"),
            (dir.path().to_path_buf(), "not a regular file"),
        ] {
            let err = SecretRef::File(path.clone())
                .resolve()
                .unwrap_err()
                .to_string();
            assert!(err.contains(expect), "{}: {err}", path.display());
        }
        let ok = dir.path().join("ok");
        std::fs::write(&ok, "s3cret\n").unwrap();
        let linked = dir.path().join("linked");
        std::os::unix::fs::symlink(&ok, &linked).unwrap();
        assert_eq!(
            SecretRef::File(linked).resolve().unwrap().expose(),
            "s3cret"
        );
    }

    #[test]
    fn missing_env_names_the_variable() {
        let r = SecretRef::Env("TOKENPROXY_TEST_SURELY_UNSET".into());
        let err = r.resolve().unwrap_err().to_string();
        assert!(err.contains("TOKENPROXY_TEST_SURELY_UNSET"), "{err}");
    }
}
