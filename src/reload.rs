//! Asking for a reload: `SIGHUP` and `POST /reload` send a request through a
//! [`ReloadHandle`]; the instance (`crate::instance`) re-reads the configuration
//! file and puts it in force, or changes nothing and says why ([`ReloadError`]).
//! The outcome of the last one is kept for `/status`.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use tokio::sync::{mpsc, oneshot};

use crate::config::{ConfigError, ListenAddr};

/// What a reload changed, a phrase per change ("tokens added: a", "3 routes").
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Reloaded(pub Vec<String>);

impl std::fmt::Display for Reloaded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0.join("; "))
    }
}

/// Why a configuration could not be put in force, at start or at a reload;
/// nothing changed.
#[derive(Clone, Debug, thiserror::Error)]
pub enum ApplyError {
    #[error("cannot listen on {addr} ({what}): {source}; is another process using it?")]
    Bind {
        addr: ListenAddr,
        what: &'static str,
        source: Arc<std::io::Error>,
    },
    #[error("{key}: {problem}")]
    ClientKey { key: String, problem: String },
    #[error("{key}: {problem}")]
    Tls { key: &'static str, problem: String },
    /// A sink's directory cannot be used; the text names the key and the fix.
    #[error("{0}")]
    Sink(String),
}

/// Why a reload changed nothing.
#[derive(Clone, Debug, thiserror::Error)]
pub enum ReloadError {
    #[error(transparent)]
    Config(Arc<ConfigError>),
    #[error("reading the configuration failed: {0}")]
    Read(String),
    #[error(
        "{}: {} changed; a reload cannot change it, restart tokenproxy to apply",
        file.display(),
        keys.join(", ")
    )]
    Frozen {
        file: PathBuf,
        keys: Vec<&'static str>,
    },
    #[error(transparent)]
    Apply(#[from] ApplyError),
    #[error("tokenproxy is stopping")]
    Stopping,
}

pub type Outcome = Result<Reloaded, ReloadError>;

/// A reload asked for, and where its outcome goes.
pub type Request = oneshot::Sender<Outcome>;

/// The outcome of the last reload, for `/status`.
#[derive(Default)]
pub struct ReloadStatus {
    last: Mutex<Option<(SystemTime, Outcome)>>,
}

impl ReloadStatus {
    pub fn record(&self, outcome: &Outcome) {
        *self.last.lock().unwrap_or_else(|e| e.into_inner()) =
            Some((SystemTime::now(), outcome.clone()));
    }
}

/// How the admin listener and the signal handler ask for a reload.
#[derive(Clone)]
pub struct ReloadHandle {
    requests: mpsc::Sender<Request>,
    status: Arc<ReloadStatus>,
}

impl ReloadHandle {
    /// A handle, the status it reads, and the requests it sends.
    pub fn new() -> (ReloadHandle, Arc<ReloadStatus>, mpsc::Receiver<Request>) {
        let (requests, rx) = mpsc::channel(4);
        let status = Arc::new(ReloadStatus::default());
        let handle = ReloadHandle {
            requests,
            status: Arc::clone(&status),
        };
        (handle, status, rx)
    }

    /// Reloads the configuration file: what changed, or why nothing did.
    pub async fn reload(&self) -> Outcome {
        let (tx, rx) = oneshot::channel();
        self.requests
            .send(tx)
            .await
            .map_err(|_| ReloadError::Stopping)?;
        rx.await.unwrap_or(Err(ReloadError::Stopping))
    }

    /// `/status`'s `reload` field: `null` before the first reload.
    pub fn status(&self) -> serde_json::Value {
        let last = self.status.last.lock().unwrap_or_else(|e| e.into_inner());
        match &*last {
            None => serde_json::Value::Null,
            Some((at, outcome)) => serde_json::json!({
                "at": crate::clock::rfc3339(*at),
                "result": if outcome.is_ok() { "success" } else { "error" },
                "summary": outcome.as_ref().ok().map(ToString::to_string),
                "error": outcome.as_ref().err().map(ToString::to_string),
            }),
        }
    }
}
