//! Where a token goes besides requests: `vend` and `[[tokens.NAME.sinks]]`.

use std::path::Component;

use super::{Validator, choose};
use crate::config::raw::RawToken;
use crate::config::{ConfigError, Delivery, Sink, SinkFormat, StoreConfig, TokenConfig};

/// The permission bits a sink may have: read by others at most.
const SINK_MODE_MAX: u32 = 0o644;

impl Validator<'_> {
    pub(super) fn delivery(
        &self,
        key: &impl Fn(&str) -> String,
        raw: &RawToken,
    ) -> Result<Delivery, ConfigError> {
        let mut sinks = Vec::with_capacity(raw.sinks.len());
        for (i, sink) in raw.sinks.iter().enumerate() {
            let key = |k: &str| key(&format!("sinks[{i}].{k}"));
            let path = &sink.path;
            let plain = path.file_name().is_some()
                && !path
                    .components()
                    .any(|c| matches!(c, Component::ParentDir | Component::CurDir));
            if !plain {
                return Err(self.err(
                    key("path"),
                    format!("`{}` is not a file path", path.display()),
                    "write the file's path, such as \"/run/tokenproxy/exact.token\" (no `..`)",
                ));
            }
            let format = match &sink.format {
                None => SinkFormat::Token,
                Some(f) => choose(f, &SinkFormat::ALL, SinkFormat::as_str).map_err(|p| {
                    self.err(
                        key("format"),
                        p,
                        "token (the token alone), header (\"Authorization: Bearer …\") or json",
                    )
                })?,
            };
            let mode = match &sink.mode {
                None => 0o600,
                Some(text) => u32::from_str_radix(text.trim_start_matches("0o"), 8)
                    .ok()
                    .filter(|m| m & !SINK_MODE_MAX == 0 && m & 0o400 != 0)
                    .ok_or_else(|| {
                        self.err(
                            key("mode"),
                            format!("`{text}` is not a mode a token file may have"),
                            "use \"0600\" (this user), \"0640\" (and its group) or \"0644\"; a token file is never writable or executable by others",
                        )
                    })?,
            };
            sinks.push(Sink {
                path: path.clone(),
                format,
                mode,
            });
        }
        Ok(Delivery {
            vend: raw.vend,
            sinks,
        })
    }

    /// No two sinks share a file, and none is in the state directory (which the
    /// file store owns).
    pub(super) fn sinks_apart(
        &self,
        tokens: &[TokenConfig],
        store: &StoreConfig,
    ) -> Result<(), ConfigError> {
        let mut seen: Vec<&std::path::Path> = Vec::new();
        for t in tokens {
            for (i, sink) in t.delivery.sinks.iter().enumerate() {
                let key = format!("tokens.{}.sinks[{i}].path", t.name);
                if seen.contains(&sink.path.as_path()) {
                    return Err(self.err(
                        key,
                        format!("`{}` is the file of two sinks", sink.path.display()),
                        "give each sink its own file",
                    ));
                }
                if let StoreConfig::File { path } = store
                    && sink.path.parent().is_some_and(|p| same_dir(p, path))
                {
                    return Err(self.err(
                        key,
                        format!(
                            "`{}` is in the state directory, whose files the store owns",
                            sink.path.display()
                        ),
                        "write sinks to a directory of their own, such as /run/tokenproxy",
                    ));
                }
                seen.push(&sink.path);
            }
        }
        Ok(())
    }
}

fn same_dir(a: &std::path::Path, b: &std::path::Path) -> bool {
    let canonical = |p: &std::path::Path| p.canonicalize().unwrap_or_else(|_| p.to_path_buf());
    a == b || canonical(a) == canonical(b)
}
