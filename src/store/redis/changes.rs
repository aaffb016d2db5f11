//! Pick-up: a subscription to the store's channel, passing on the names of
//! tokens another instance wrote.

use super::*;

/// Pauses between attempts to reach the server again.
const RECONNECT_MIN: Duration = Duration::from_millis(250);
pub(super) const RECONNECT_MAX: Duration = Duration::from_millis(500);

/// Forwards the names published on `channel` to `changes`, reconnecting with
/// backoff (250 ms doubling to 500 ms, so that a restarted server is heard from at
/// once) and announcing `*` after each (re)subscription.
pub(super) async fn listen(
    client: redis::Client,
    channel: String,
    changes: tokio::sync::broadcast::Sender<String>,
) {
    use futures_util::StreamExt;
    let mut backoff = RECONNECT_MIN;
    loop {
        let subscribed = async {
            let mut pubsub = client.get_async_pubsub().await?;
            pubsub.subscribe(&channel).await?;
            Ok::<_, redis::RedisError>(pubsub)
        };
        match tokio::time::timeout(COMMAND_TIMEOUT, subscribed).await {
            Ok(Ok(mut pubsub)) => {
                backoff = RECONNECT_MIN;
                // Whatever changed while no one was listening.
                let _ = changes.send("*".into());
                let mut messages = pubsub.on_message();
                while let Some(message) = messages.next().await {
                    if let Ok(name) = message.get_payload::<String>() {
                        let _ = changes.send(name);
                    }
                }
                tracing::debug!("store notifications: connection ended; reconnecting");
            }
            Ok(Err(e)) => {
                tracing::debug!(error = %error_text(&e), retry_in_s = backoff.as_secs(), "store notifications: cannot connect");
            }
            Err(_) => {
                tracing::debug!(
                    retry_in_s = backoff.as_secs(),
                    "store notifications: no answer"
                );
            }
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(RECONNECT_MAX);
    }
}
