//! Pick-up: every instance `LISTEN`s on a connection of its own and passes on the
//! names of tokens another instance wrote.

use super::*;

/// Pauses between attempts to reach the server again for notifications.
const RECONNECT_MIN: Duration = Duration::from_millis(250);
const RECONNECT_MAX: Duration = Duration::from_secs(2);

/// Forwards the names in `NOTIFY tokenproxy_tokens` to `changes`, reconnecting
/// with backoff (250 ms doubling to 2 s, so that a restarted server is heard from
/// within moments) and announcing `*` after each (re)connection.
pub(super) async fn listen(
    config: tokio_postgres::Config,
    tls: tokio_postgres_rustls::MakeRustlsConnect,
    changes: tokio::sync::broadcast::Sender<String>,
) {
    use futures_util::StreamExt;
    let mut backoff = RECONNECT_MIN;
    loop {
        match config.connect(tls.clone()).await {
            Ok((client, mut connection)) => {
                let forward = changes.clone();
                let driver = tokio::spawn(async move {
                    let mut messages =
                        futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
                    while let Some(Ok(message)) = messages.next().await {
                        if let tokio_postgres::AsyncMessage::Notification(n) = message {
                            let _ = forward.send(n.payload().to_owned());
                        }
                    }
                });
                if client
                    .batch_execute(&format!("LISTEN {CHANNEL}"))
                    .await
                    .is_ok()
                {
                    backoff = RECONNECT_MIN;
                    // Whatever changed while no one was listening.
                    let _ = changes.send("*".into());
                }
                let _ = driver.await;
                tracing::debug!("store notifications: connection ended; reconnecting");
            }
            Err(e) => {
                tracing::debug!(error = %error_text(&e), retry_in_s = backoff.as_secs(), "store notifications: cannot connect");
            }
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(RECONNECT_MAX);
    }
}
