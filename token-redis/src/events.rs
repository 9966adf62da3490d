//! Invalidations and updates between instances, over Redis pub/sub.
//!
//! `invalidate` deletes a rejected token and publishes a message on the
//! prefix's channel in the same script; a `put` that stores publishes an
//! "updated" message the same way. Every store runs one listener task
//! with its own pub/sub connection (to the server, or to any cluster node:
//! classic `PUBLISH` reaches every node of a cluster), which turns messages
//! into [`StoreEvent`]s for the engine: invalidations from *other* instances,
//! and updates from anyone (another cache sharing this store in the process
//! may be waiting for the key). The listener reconnects with backoff;
//! messages published while it is disconnected are lost: those tokens are
//! then dropped at their next refresh or 401, and waits end at their poll.
//!
//! Messages: `tcr1|<sender id>|<fingerprint, 64 hex>|<cache key>` for an
//! invalidation (the fingerprint is a SHA-256 of the token, never the token)
//! and `tcu1|<sender id>|<cache key>` for an update. Older listeners ignore
//! `tcu1` messages as malformed, so a fleet can be upgraded one instance at a
//! time.

use std::fmt::Write as _;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use futures_util::StreamExt as _;
use token_core::backend::{StoreEvent, TokenFingerprint};
use token_core::CacheKey;
use tokio::sync::broadcast;
use tokio::task::JoinHandle;

/// Events buffered per receiver before the slowest one lags.
const CHANNEL_CAPACITY: usize = 1024;
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(2);
const VERSION: &str = "tcr1";
/// The "updated" message's tag.
const UPDATED: &str = "tcu1";

/// The message for an invalidation by `sender`.
pub(crate) fn encode(sender: &str, fingerprint: &TokenFingerprint, key: &CacheKey) -> String {
    let mut out = String::with_capacity(4 + sender.len() + 64 + key.as_str().len() + 3);
    out.push_str(VERSION);
    out.push('|');
    out.push_str(sender);
    out.push('|');
    for b in fingerprint.as_bytes() {
        let _ = write!(out, "{b:02x}");
    }
    out.push('|');
    out.push_str(key.as_str());
    out
}

/// The message for a token `sender` stored under `key`.
pub(crate) fn encode_updated(sender: &str, key: &CacheKey) -> String {
    let mut out = String::with_capacity(4 + sender.len() + key.as_str().len() + 2);
    out.push_str(UPDATED);
    out.push('|');
    out.push_str(sender);
    out.push('|');
    out.push_str(key.as_str());
    out
}

/// Parses a message into its sender and event; `None` for anything else.
pub(crate) fn decode(payload: &[u8]) -> Option<(&str, StoreEvent)> {
    let text = std::str::from_utf8(payload).ok()?;
    if let Some(rest) = text.strip_prefix(UPDATED).and_then(|r| r.strip_prefix('|')) {
        let (sender, key) = rest.split_once('|')?;
        if sender.is_empty() || key.is_empty() {
            return None;
        }
        return Some((
            sender,
            StoreEvent::Updated {
                key: CacheKey::from_raw(key),
            },
        ));
    }
    let mut parts = text.splitn(4, '|');
    if parts.next()? != VERSION {
        return None;
    }
    let sender = parts.next()?;
    let hex = parts.next()?;
    let key = parts.next()?;
    if hex.len() != 64 {
        return None;
    }
    let mut bytes = [0u8; 32];
    for (i, b) in bytes.iter_mut().enumerate() {
        *b = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some((
        sender,
        StoreEvent::Invalidated {
            key: CacheKey::from_raw(key),
            fingerprint: TokenFingerprint::from_bytes(bytes),
        },
    ))
}

/// The listener and the channel its events go to.
pub(crate) struct Events {
    tx: broadcast::Sender<StoreEvent>,
    task: Mutex<Option<JoinHandle<()>>>,
    clients: Vec<redis::Client>,
    channel: String,
    sender: String,
    connect_timeout: Duration,
}

impl Events {
    pub(crate) fn new(
        clients: Vec<redis::Client>,
        channel: String,
        sender: String,
        connect_timeout: Duration,
    ) -> Self {
        let (tx, _) = broadcast::channel(CHANNEL_CAPACITY);
        Self {
            tx,
            task: Mutex::new(None),
            clients,
            channel,
            sender,
            connect_timeout,
        }
    }

    /// Starts the listener if it is not running and a runtime is at hand.
    pub(crate) fn ensure_listening(&self) {
        let mut task = self.task.lock().unwrap_or_else(PoisonError::into_inner);
        if task.is_some() {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        *task = Some(runtime.spawn(listen(
            self.clients.clone(),
            self.channel.clone(),
            self.sender.clone(),
            self.tx.clone(),
            self.connect_timeout,
        )));
    }

    pub(crate) fn subscribe(&self) -> broadcast::Receiver<StoreEvent> {
        self.ensure_listening();
        self.tx.subscribe()
    }
}

impl Drop for Events {
    fn drop(&mut self) {
        if let Some(task) = self
            .task
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
        {
            task.abort();
        }
    }
}

async fn listen(
    clients: Vec<redis::Client>,
    channel: String,
    own: String,
    tx: broadcast::Sender<StoreEvent>,
    connect_timeout: Duration,
) {
    let mut backoff = BACKOFF_MIN;
    let mut next = 0usize;
    loop {
        let Some(client) = clients.get(next % clients.len().max(1)) else {
            return;
        };
        next = next.wrapping_add(1);
        let subscribed = tokio::time::timeout(connect_timeout * 2, async {
            let mut pubsub = client.get_async_pubsub().await?;
            pubsub.subscribe(&channel).await?;
            Ok::<_, redis::RedisError>(pubsub)
        })
        .await;
        match subscribed {
            Ok(Ok(pubsub)) => {
                tracing::debug!("listening for token invalidations from other instances");
                backoff = BACKOFF_MIN;
                let mut messages = pubsub.into_on_message();
                while let Some(msg) = messages.next().await {
                    match decode(msg.get_payload_bytes()) {
                        // Our own invalidations were applied where they were
                        // made; our own updates are passed on, for another
                        // cache on this store waiting for the same key.
                        Some((sender, StoreEvent::Invalidated { .. })) if sender == own => {}
                        Some((_, event)) => {
                            // No receiver yet is fine: nobody holds a token.
                            let _ = tx.send(event);
                        }
                        None => tracing::debug!("ignored a malformed event message"),
                    }
                }
                tracing::warn!("lost the Redis pub/sub connection; reconnecting");
            }
            Ok(Err(e)) => tracing::debug!(error = %e, "cannot subscribe to invalidations yet"),
            Err(_) => tracing::debug!("subscribing to invalidations timed out"),
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_round_trip_and_junk_is_ignored() {
        let key = CacheKey::from_raw("tc1|client|scope=a|b;");
        let fp = TokenFingerprint::from_bytes([7; 32]);
        let msg = encode("abc", &fp, &key);
        let (sender, event) = decode(msg.as_bytes()).unwrap();
        assert_eq!(sender, "abc");
        assert_eq!(
            event,
            StoreEvent::Invalidated {
                key: key.clone(),
                fingerprint: fp
            }
        );
        let msg = encode_updated("abc", &key);
        let (sender, event) = decode(msg.as_bytes()).unwrap();
        assert_eq!(sender, "abc");
        assert_eq!(event, StoreEvent::Updated { key });
        for junk in [
            "",
            "tcr1|a|zz|k",
            "tcr2|a|00|k",
            "tcr1|a",
            "tcu1|a",
            "tcu1||k",
            "tcu1|a|",
            "tcu2|a|k",
        ] {
            assert!(decode(junk.as_bytes()).is_none(), "{junk}");
        }
    }
}
