//! The token sources of the configuration in force: kept across a reload when
//! their configuration is the same, replaced when it changed, each with its
//! refresh scheduler and the task that writes its sink files.

use std::sync::Arc;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::fixed::Fixed;
use crate::config::{Sink, TokenConfig};
use crate::token::{self, TokenSource};

/// A token source with the scheduler task that refreshes it, and the task that
/// writes its sink files.
pub(super) struct Token {
    pub(super) source: Arc<TokenSource>,
    pub(super) stop: CancellationToken,
    pub(super) task: JoinHandle<()>,
    sinks: Vec<Sink>,
    /// A child of `stop`.
    sink_stop: CancellationToken,
    pub(super) sink_task: Option<JoinHandle<()>>,
}

impl Token {
    /// Follows the token into `sinks` (a new task when they changed, which first
    /// waits for the one it replaces, or `previous`, to remove its files).
    fn set_sinks(&mut self, fixed: &Fixed, sinks: Vec<Sink>, previous: Option<JoinHandle<()>>) {
        if self.sink_task.is_some() && self.sinks == sinks {
            return;
        }
        self.sink_stop.cancel();
        self.sink_stop = self.stop.child_token();
        let previous = self.sink_task.take().or(previous);
        self.sink_task = match sinks.is_empty() {
            true => previous,
            false => Some(token::sink::spawn(
                Arc::clone(&self.source),
                sinks.clone(),
                Arc::clone(&fixed.metrics),
                self.sink_stop.clone(),
                previous,
            )),
        };
        self.sinks = sinks;
    }
}

/// Keeps each token whose configuration is unchanged (its source, state and
/// generation), starts a new source for each new or changed one, stops the
/// schedulers of the changed and removed ones. What changed, in words.
pub(super) fn replace_tokens(
    fixed: &Fixed,
    configs: Vec<TokenConfig>,
    tokens: &mut Vec<Token>,
    retired: &mut Vec<JoinHandle<()>>,
) -> Vec<String> {
    let mut old = std::mem::take(tokens);
    let (mut added, mut renewed) = (Vec::new(), Vec::new());
    for t in configs {
        let name = t.name.clone();
        let sinks = t.delivery.sinks.clone();
        let (mut token, previous_sinks) = match old.iter().position(|o| o.source.name() == name) {
            Some(i) if old[i].source.config.same_source(&t) => (old.remove(i), None),
            Some(i) => {
                let previous = old.remove(i);
                previous.stop.cancel();
                retired.push(previous.task);
                renewed.push(name);
                (spawn_token(fixed, t, true), previous.sink_task)
            }
            None => {
                added.push(name);
                (spawn_token(fixed, t, false), None)
            }
        };
        token.set_sinks(fixed, sinks, previous_sinks);
        tokens.push(token);
    }
    let removed: Vec<String> = old
        .into_iter()
        .map(|t| {
            t.stop.cancel();
            retired.push(t.task);
            retired.extend(t.sink_task);
            t.source.name().to_owned()
        })
        .collect();
    [("added", added), ("changed", renewed), ("removed", removed)]
        .into_iter()
        .filter(|(_, names)| !names.is_empty())
        .map(|(what, names)| format!("tokens {what}: {}", names.join(", ")))
        .collect()
}

fn spawn_token(fixed: &Fixed, config: TokenConfig, renew: bool) -> Token {
    fixed.metrics.declare_token(&config.name);
    let source = TokenSource::new(
        config,
        Arc::clone(&fixed.store),
        fixed.http.clone(),
        Arc::clone(&fixed.metrics),
    );
    let stop = fixed.shutdown.child_token();
    let task = tokio::spawn(token::run_scheduler(
        Arc::clone(&source),
        stop.clone(),
        renew,
    ));
    Token {
        source,
        sink_stop: stop.child_token(),
        stop,
        task,
        sinks: Vec::new(),
        sink_task: None,
    }
}
