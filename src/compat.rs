//! Django Channels drop-in: deliver what `channels_redis` publishes.
//!
//! A Django project that already calls
//! `channel_layer.group_send("market.AAPL", {"type": "market.tick", ...})`
//! keeps that code when its browsers move to wsgate: with
//! `compat.channels_redis = true`, every node also listens to the channel
//! layer's group channels and hands each message to its local members, as if
//! it had been published through wsgate. The Django side changes only its
//! `CHANNEL_LAYERS` backend to `channels_redis.pubsub.RedisPubSubChannelLayer`
//! on the same Redis as wsgate (`redis.url`).
//!
//! # What `channels_redis` puts on the wire (version 4.3.0)
//!
//! - `RedisPubSubChannelLayer.group_send(group, message)`
//!   (`channels_redis/pubsub.py`, `group_send` and
//!   `_get_group_channel_name`) does
//!   `PUBLISH <prefix>__group__<group> <serialized message>`, with `prefix`
//!   the layer's `prefix` option (default `"asgi"`, here
//!   `compat.channels_prefix`). With several `hosts` the layer picks one
//!   host per group by a CRC32 ring (`utils._consistent_hash`); wsgate
//!   listens on `redis.url` only, so the layer must be given that one host.
//! - The serialized message is `msgpack.packb(message)`
//!   (`channels_redis/serializers.py`, `MsgPackSerializer`, the default
//!   `serializer_format`): a MessagePack map, `str` as MessagePack str,
//!   `bytes` as bin, tuples and lists as arrays. The pub/sub layer adds no
//!   framing: the random prefix of `BaseMessageSerializer` is 0 bytes there
//!   (only the core layer sets one), and with `symmetric_encryption_keys`
//!   the body is a Fernet token, which wsgate cannot read and drops.
//! - The default `RedisChannelLayer` (`channels_redis/core.py`) does not use
//!   pub/sub at all: its `group_send` pushes into a sorted set per consumer
//!   channel listed in the group's key, so there is nothing to listen to;
//!   hence the pub/sub layer.
//!
//! # What a node delivers
//!
//! The message, decoded from MessagePack and re-encoded as JSON, is the
//! `data` of an ordinary `message` frame of the group: the whole map
//! without its `type` key, or, with `compat.payload_key` set, only the
//! value under that key (a message without it is dropped). Map keys that
//! are integers, booleans or nil become strings, as Python's `json.dumps`
//! writes them. What JSON cannot hold (bin, ext, NaN and infinities, a
//! string that is not UTF-8, an array or map as a key), a body that is not
//! one MessagePack map with nothing after it, a body over 1 MiB (the API's
//! limit) and a group name that is not a wsgate group name (section 3 of
//! the protocol) are dropped, logged without the payload; nothing in a
//! message can stop the listener.
//!
//! # One pattern subscription per node
//!
//! Each node holds `PSUBSCRIBE <prefix>__group__*` on its own subscriber
//! connection, rather than one subscription per group with local members
//! as the broker does. A node delivers only to its local members (the hub
//! finds none for a group nobody here joined), so every member gets each
//! message exactly once, and the node needs no second per-group
//! subscription state kept in step with joins and leaves. The price is
//! that every node reads every `group_send` of the prefix, which is what
//! each Daphne or uvicorn process of the channel layer already does for the
//! groups its consumers joined, and decoding a message is cheap next to
//! delivering it. The node does not re-publish (that would multiply each
//! message by the number of nodes); it delivers locally, through the same
//! hub path as a message from the broker.
//!
//! Outages: the subscriber uses the shared reconnect policy
//! ([`crate::redis_client`]); after each reconnection the supervisor task
//! subscribes the pattern again (fred's own replay sends an empty
//! `SUBSCRIBE` here, see [`crate::broker::redis`]), and a connection that
//! stops answering its periodic PING is reopened. Messages published while
//! the link is down are lost, as they are for the channel layer's own
//! consumers. Messages are not recorded in history (they carry no offset).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use fred::clients::SubscriberClient;
use fred::prelude::{ClientLike, EventInterface, PubsubInterface, Value};
use fred::types::{ConnectHandle, Message};
use serde_json::value::RawValue;
use tokio::sync::broadcast::{self, error::RecvError};
use tokio::task::JoinHandle;
use tokio::time::MissedTickBehavior;

use crate::config::Config;
use crate::protocol::{Publication, is_valid_group};
use crate::redis_client::{self, RedisSetupError, Subscription, subscribe_confirmed};

/// Largest message body accepted (the API's request body limit).
pub const MAX_MESSAGE_BYTES: usize = 1 << 20;
/// Deepest nesting of MessagePack values accepted.
const MAX_DEPTH: usize = 128;
/// Messages buffered between fred's reader and the dispatcher.
const MESSAGE_BUFFER: usize = 16_384;
/// At most one warning per this interval; the rest go to debug.
const WARN_EVERY_MS: u64 = 60_000;

/// Hands a publication to this node's local members; returns how many
/// connections took it (the hub's `deliver`).
pub type Deliver = Arc<dyn Fn(&Publication) -> usize + Send + Sync>;

/// Why a message from the channel layer was not delivered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DropReason {
    #[error("the group name is not a valid wsgate group name")]
    Group,
    #[error("the body is over the size limit")]
    TooLarge,
    #[error("the body is not MessagePack")]
    NotMsgpack,
    #[error("bytes follow the MessagePack value")]
    TrailingBytes,
    #[error("the message is not a MessagePack map")]
    NotAMap,
    #[error("the message has no value under compat.payload_key")]
    NoPayloadKey,
    #[error("the message holds a value JSON cannot represent: {0}")]
    NotJson(&'static str),
}

/// The group of a channel-layer group channel (`<prefix>__group__<group>`),
/// given `channel_prefix` = `<prefix>__group__`.
pub fn group_of<'a>(channel: &'a str, channel_prefix: &str) -> Option<&'a str> {
    channel.strip_prefix(channel_prefix)
}

/// The channel name prefix of the layer's group channels.
pub fn group_channel_prefix(layer_prefix: &str) -> String {
    format!("{layer_prefix}__group__")
}

/// The `PSUBSCRIBE` pattern matching every group channel of `layer_prefix`
/// (glob characters in the prefix are escaped).
pub fn group_pattern(layer_prefix: &str) -> String {
    let mut pattern = String::with_capacity(layer_prefix.len() + 11);
    for c in group_channel_prefix(layer_prefix).chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            pattern.push('\\');
        }
        pattern.push(c);
    }
    pattern.push('*');
    pattern
}

/// Decodes one `group_send` body (MessagePack) into the JSON delivered as
/// `data`: the map without `type`, or its `payload_key` value when
/// `payload_key` is not empty.
pub fn decode_message(body: &[u8], payload_key: &str) -> Result<Box<RawValue>, DropReason> {
    if body.len() > MAX_MESSAGE_BYTES {
        return Err(DropReason::TooLarge);
    }
    let mut reader = body;
    let value = rmpv::decode::read_value_with_max_depth(&mut reader, MAX_DEPTH)
        .map_err(|_| DropReason::NotMsgpack)?;
    if !reader.is_empty() {
        return Err(DropReason::TrailingBytes);
    }
    let rmpv::Value::Map(entries) = value else {
        return Err(DropReason::NotAMap);
    };
    let mut map = json_map(entries)?;
    let data = if payload_key.is_empty() {
        map.remove("type");
        serde_json::Value::Object(map)
    } else {
        map.remove(payload_key).ok_or(DropReason::NoPayloadKey)?
    };
    serde_json::value::to_raw_value(&data).map_err(|_| DropReason::NotJson("unserializable"))
}

fn json_map(
    entries: Vec<(rmpv::Value, rmpv::Value)>,
) -> Result<serde_json::Map<String, serde_json::Value>, DropReason> {
    let mut map = serde_json::Map::new();
    for (key, value) in entries {
        map.insert(json_key(key)?, to_json(value)?);
    }
    Ok(map)
}

/// A map key as Python's `json.dumps` writes it.
fn json_key(key: rmpv::Value) -> Result<String, DropReason> {
    Ok(match key {
        rmpv::Value::String(s) => s
            .into_str()
            .ok_or(DropReason::NotJson("a string that is not UTF-8"))?,
        rmpv::Value::Integer(i) => i.to_string(),
        rmpv::Value::Boolean(b) => b.to_string(),
        rmpv::Value::Nil => "null".to_string(),
        rmpv::Value::F32(f) => float(f64::from(f))?.to_string(),
        rmpv::Value::F64(f) => float(f)?.to_string(),
        _ => return Err(DropReason::NotJson("a key that is not a string or number")),
    })
}

fn float(f: f64) -> Result<serde_json::Number, DropReason> {
    serde_json::Number::from_f64(f).ok_or(DropReason::NotJson("NaN or infinity"))
}

fn to_json(value: rmpv::Value) -> Result<serde_json::Value, DropReason> {
    use serde_json::Value as J;
    Ok(match value {
        rmpv::Value::Nil => J::Null,
        rmpv::Value::Boolean(b) => J::Bool(b),
        rmpv::Value::Integer(i) => match (i.as_u64(), i.as_i64()) {
            (Some(u), _) => J::from(u),
            (None, Some(s)) => J::from(s),
            (None, None) => return Err(DropReason::NotJson("an integer out of range")),
        },
        rmpv::Value::F32(f) => J::Number(float(f64::from(f))?),
        rmpv::Value::F64(f) => J::Number(float(f)?),
        rmpv::Value::String(s) => J::String(
            s.into_str()
                .ok_or(DropReason::NotJson("a string that is not UTF-8"))?,
        ),
        rmpv::Value::Binary(_) => return Err(DropReason::NotJson("binary data")),
        rmpv::Value::Array(items) => J::Array(
            items
                .into_iter()
                .map(to_json)
                .collect::<Result<Vec<_>, _>>()?,
        ),
        rmpv::Value::Map(entries) => J::Object(json_map(entries)?),
        rmpv::Value::Ext(..) => return Err(DropReason::NotJson("a MessagePack extension")),
    })
}

/// Counters of what the listener received (for debugging; no metric).
#[derive(Debug, Default)]
struct Stats {
    delivered: AtomicU64,
    dropped: AtomicU64,
    lost: AtomicU64,
}

struct Inner {
    channel_prefix: String,
    pattern: String,
    payload_key: String,
    command_timeout: Duration,
    subscriber: SubscriberClient,
    deliver: Deliver,
    stats: Stats,
    /// Unix ms of the last warning about a dropped message.
    warned_ms: AtomicU64,
}

impl Inner {
    fn on_message(&self, message: &Message) {
        let channel: &str = &message.channel;
        let Some(group) = group_of(channel, &self.channel_prefix) else {
            // Only the pattern's channels arrive here; be safe anyway.
            return;
        };
        if !is_valid_group(group) {
            return self.dropped(DropReason::Group, group.len());
        }
        let Some(body) = message.value.as_bytes() else {
            return self.dropped(DropReason::NotMsgpack, group.len());
        };
        let data = match decode_message(body, &self.payload_key) {
            Ok(data) => data,
            Err(reason) => return self.dropped_in(reason, group),
        };
        let publication = Publication {
            group: group.to_string(),
            data,
            position: None,
            ts: None,
            trace: None,
            seq: None,
        };
        let span = tracing::info_span!(
            "deliver",
            group = %publication.group,
            source = "channels_redis",
            recipients = tracing::field::Empty,
        );
        let _enter = span.enter();
        let n = (self.deliver)(&publication);
        span.record("recipients", n);
        self.stats.delivered.fetch_add(1, Ordering::Relaxed);
    }

    /// A drop where the group name itself is not fit to log.
    fn dropped(&self, reason: DropReason, group_len: usize) {
        self.stats.dropped.fetch_add(1, Ordering::Relaxed);
        if self.should_warn() {
            tracing::warn!(%reason, group_len, "dropped a channels_redis group_send message");
        } else {
            tracing::debug!(%reason, group_len, "dropped a channels_redis group_send message");
        }
    }

    fn dropped_in(&self, reason: DropReason, group: &str) {
        self.stats.dropped.fetch_add(1, Ordering::Relaxed);
        if self.should_warn() {
            tracing::warn!(%reason, group, "dropped a channels_redis group_send message");
        } else {
            tracing::debug!(%reason, group, "dropped a channels_redis group_send message");
        }
    }

    fn should_warn(&self) -> bool {
        let now = crate::clock::unix_ms();
        let last = self.warned_ms.load(Ordering::Relaxed);
        (last == 0 || now.saturating_sub(last) >= WARN_EVERY_MS)
            && self
                .warned_ms
                .compare_exchange(last, now.max(1), Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
    }

    /// Subscribes the pattern and returns what Redis made of it: fred
    /// answers a `PSUBSCRIBE` when it writes it, and Redis's refusal
    /// (`NOPERM`, a Redis user without the pattern) left the listener deaf
    /// while the next health-check `PING`, taking the refusal as its
    /// answer, reported Redis as not answering.
    async fn subscribe(&self) -> Result<Subscription, fred::error::Error> {
        subscribe_confirmed(
            &self.subscriber,
            self.subscriber.psubscribe(self.pattern.as_str()),
        )
        .await
    }

    /// Whether the connection answers a PING within 3 command timeouts.
    async fn answers_ping(&self) -> bool {
        let options = fred::types::config::Options {
            timeout: Some(self.command_timeout * 3),
            ..Default::default()
        };
        self.subscriber
            .with_options(&options)
            .ping::<Value>(None)
            .await
            .is_ok()
    }
}

/// The listener for `channels_redis` group messages. Start it with
/// [`ChannelsBridge::start`]; stop it with [`ChannelsBridge::shutdown`].
pub struct ChannelsBridge {
    inner: Arc<Inner>,
    tasks: std::sync::Mutex<Vec<JoinHandle<()>>>,
    connection: std::sync::Mutex<Option<ConnectHandle>>,
    closed: AtomicBool,
}

impl ChannelsBridge {
    /// Connects a subscriber to `redis.url` and subscribes the group
    /// pattern of `compat.channels_prefix`; returns once the subscription
    /// is in place, so a `group_send` made afterwards is delivered.
    pub async fn start(
        config: &Config,
        deliver: Deliver,
    ) -> Result<ChannelsBridge, RedisSetupError> {
        let redis = &config.redis;
        let subscriber = redis_client::subscriber(redis, MESSAGE_BUFFER)?;
        // Listen before connecting so that no event is missed.
        let messages = subscriber.message_rx();
        let mut reconnects = subscriber.reconnect_rx();
        let within = redis.command_timeout.max(Duration::from_secs(1)) * 3;
        let connection = redis_client::connect(&subscriber, within).await?;
        let layer_prefix = &config.compat.channels_prefix;
        let inner = Arc::new(Inner {
            channel_prefix: group_channel_prefix(layer_prefix),
            pattern: group_pattern(layer_prefix),
            payload_key: config.compat.payload_key.clone(),
            command_timeout: redis.command_timeout,
            subscriber,
            deliver,
            stats: Stats::default(),
            warned_ms: AtomicU64::new(0),
        });
        let bridge = ChannelsBridge {
            inner: inner.clone(),
            tasks: std::sync::Mutex::new(Vec::new()),
            connection: std::sync::Mutex::new(Some(connection)),
            closed: AtomicBool::new(false),
        };
        let refused = match inner.subscribe().await {
            Ok(Subscription::Held) => None,
            Ok(Subscription::Refused(why)) => Some(format!(
                "the Redis user may not subscribe to the channel layer's groups ({why}); \
                 grant it the pattern, e.g. ACL SETUSER <user> &{}",
                inner.pattern
            )),
            Err(e) => Some(e.details().to_string()),
        };
        if let Some(why) = refused {
            bridge.shutdown().await;
            return Err(RedisSetupError::Connect(why));
        }
        // The first connection's event is behind us.
        while reconnects.try_recv().is_ok() {}
        let every = redis.heartbeat.max(Duration::from_millis(100));
        bridge.lock_tasks().extend([
            tokio::spawn(dispatch(inner.clone(), messages)),
            tokio::spawn(supervise(inner.clone(), reconnects, every)),
        ]);
        tracing::info!(
            prefix = %layer_prefix,
            "listening to channels_redis group_send (compat.channels_redis)"
        );
        Ok(bridge)
    }

    fn lock_tasks(&self) -> std::sync::MutexGuard<'_, Vec<JoinHandle<()>>> {
        self.tasks.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Stops listening and closes the connection; bounded, safe to call twice.
    pub async fn shutdown(&self) {
        if self.closed.swap(true, Ordering::AcqRel) {
            return;
        }
        let tasks: Vec<JoinHandle<()>> = self.lock_tasks().drain(..).collect();
        for task in &tasks {
            task.abort();
        }
        for task in tasks {
            let _ = task.await;
        }
        let bound = Duration::from_secs(2);
        let _ = tokio::time::timeout(bound, self.inner.subscriber.quit()).await;
        let connection = self
            .connection
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(mut connection) = connection
            && tokio::time::timeout(bound, &mut connection).await.is_err()
        {
            connection.abort();
        }
    }
}

impl Drop for ChannelsBridge {
    fn drop(&mut self) {
        for task in self.lock_tasks().drain(..) {
            task.abort();
        }
        if !self.closed.load(Ordering::Acquire)
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            let inner = self.inner.clone();
            runtime.spawn(async move {
                let _ = inner.subscriber.quit().await;
            });
        }
    }
}

async fn dispatch(inner: Arc<Inner>, mut messages: broadcast::Receiver<Message>) {
    loop {
        match messages.recv().await {
            Ok(message) => inner.on_message(&message),
            Err(RecvError::Lagged(n)) => {
                inner.stats.lost.fetch_add(n, Ordering::Relaxed);
                tracing::warn!(
                    lost = n,
                    "channels_redis messages lost: the listener fell behind"
                );
            }
            Err(RecvError::Closed) => break,
        }
    }
}

/// Resubscribes the pattern after every reconnection, and reopens a
/// connection that stops answering PING (an idle subscriber writes
/// nothing, so nothing else would notice).
async fn supervise(
    inner: Arc<Inner>,
    mut reconnects: broadcast::Receiver<fred::types::config::Server>,
    every: Duration,
) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut resubscribe = false;
    loop {
        tokio::select! {
            r = reconnects.recv() => match r {
                Ok(_) | Err(RecvError::Lagged(_)) => resubscribe = true,
                Err(RecvError::Closed) => break,
            },
            _ = tick.tick() => {}
        }
        if !inner.subscriber.is_connected() {
            resubscribe = true;
            continue;
        }
        if resubscribe {
            match inner.subscribe().await {
                Ok(Subscription::Held) => {
                    resubscribe = false;
                    tracing::info!("Redis reconnected; channels_redis pattern resubscribed");
                }
                Ok(Subscription::Refused(why)) => {
                    tracing::warn!(why, "Redis refused the channels_redis pattern; retrying");
                    continue;
                }
                Err(e) => {
                    tracing::debug!(error = %e, "channels_redis resubscription failed; retrying");
                    continue;
                }
            }
        }
        if !inner.answers_ping().await && inner.subscriber.is_connected() {
            tracing::warn!("Redis stopped answering the channels_redis listener; reconnecting");
            resubscribe = true;
            let forced = tokio::time::timeout(
                Duration::from_secs(5),
                inner.subscriber.force_reconnection(),
            )
            .await;
            if let Ok(Err(e)) = forced {
                tracing::debug!(error = %e, "forced reconnection failed");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pack(v: &rmpv::Value) -> Vec<u8> {
        let mut out = Vec::new();
        rmpv::encode::write_value(&mut out, v).unwrap();
        out
    }

    fn map(entries: Vec<(rmpv::Value, rmpv::Value)>) -> rmpv::Value {
        rmpv::Value::Map(entries)
    }

    fn s(x: &str) -> rmpv::Value {
        rmpv::Value::from(x)
    }

    fn json(raw: Result<Box<RawValue>, DropReason>) -> serde_json::Value {
        serde_json::from_str(raw.unwrap().get()).unwrap()
    }

    #[test]
    fn names() {
        assert_eq!(group_channel_prefix("asgi"), "asgi__group__");
        assert_eq!(group_pattern("asgi"), "asgi__group__*");
        assert_eq!(group_pattern("a*b?[c]\\"), "a\\*b\\?\\[c\\]\\\\__group__*");
        assert_eq!(
            group_of("asgi__group__market.A", "asgi__group__"),
            Some("market.A")
        );
        assert_eq!(group_of("asgispecific.x", "asgi__group__"), None);
    }

    #[test]
    fn whole_message_without_type() {
        let body = pack(&map(vec![
            (s("type"), s("market.tick")),
            (s("price"), rmpv::Value::F64(1.5)),
            (s("n"), rmpv::Value::from(-3)),
            (s("big"), rmpv::Value::from(u64::MAX)),
            (rmpv::Value::from(7), rmpv::Value::Nil),
            (rmpv::Value::Boolean(true), rmpv::Value::Array(vec![s("x")])),
        ]));
        let got = json(decode_message(&body, ""));
        assert_eq!(
            got,
            serde_json::json!({"price": 1.5, "n": -3, "big": u64::MAX, "7": null, "true": ["x"]})
        );
    }

    #[test]
    fn payload_key() {
        let body = pack(&map(vec![
            (s("type"), s("t")),
            (s("payload"), map(vec![(s("p"), rmpv::Value::from(1))])),
        ]));
        assert_eq!(
            json(decode_message(&body, "payload")),
            serde_json::json!({"p": 1})
        );
        assert_eq!(
            decode_message(&body, "other").unwrap_err(),
            DropReason::NoPayloadKey
        );
    }

    #[test]
    fn refused() {
        let ok = pack(&map(vec![(s("a"), rmpv::Value::from(1))]));
        let mut trailing = ok.clone();
        trailing.push(0xc0);
        assert_eq!(
            decode_message(&trailing, "").unwrap_err(),
            DropReason::TrailingBytes
        );
        assert_eq!(
            decode_message(&ok[..ok.len() - 1], "").unwrap_err(),
            DropReason::NotMsgpack
        );
        // 0xc1 is never used; rmpv reads it as nil, which is no map either.
        assert!(decode_message(&[0xc1], "").is_err());
        assert_eq!(decode_message(b"", "").unwrap_err(), DropReason::NotMsgpack);
        assert_eq!(
            decode_message(&pack(&rmpv::Value::Array(vec![])), "").unwrap_err(),
            DropReason::NotAMap
        );
        let cases = [
            rmpv::Value::Binary(vec![1, 2]),
            rmpv::Value::F64(f64::NAN),
            rmpv::Value::F32(f32::INFINITY),
            rmpv::Value::Ext(1, vec![0]),
        ];
        for value in cases {
            let body = pack(&map(vec![(s("a"), value)]));
            assert!(matches!(
                decode_message(&body, "").unwrap_err(),
                DropReason::NotJson(_)
            ));
        }
        let body = pack(&map(vec![(rmpv::Value::Array(vec![]), rmpv::Value::Nil)]));
        assert!(matches!(
            decode_message(&body, ""),
            Err(DropReason::NotJson(_))
        ));
        // A str that is not UTF-8.
        let body = [0x81, 0xa1, b'a', 0xa2, 0xff, 0xfe];
        assert!(matches!(
            decode_message(&body, ""),
            Err(DropReason::NotJson(_))
        ));
        // A map claiming 2^32-1 entries in 5 bytes allocates nothing big.
        assert_eq!(
            decode_message(&[0xdf, 0xff, 0xff, 0xff, 0xff], "").unwrap_err(),
            DropReason::NotMsgpack
        );
        // Nesting deeper than MAX_DEPTH.
        let mut deep = vec![0x81, 0xa1, b'a'];
        deep.extend(std::iter::repeat_n(0x91, 10_000));
        deep.push(0xc0);
        assert_eq!(
            decode_message(&deep, "").unwrap_err(),
            DropReason::NotMsgpack
        );
        let huge = vec![0u8; MAX_MESSAGE_BYTES + 1];
        assert_eq!(decode_message(&huge, "").unwrap_err(), DropReason::TooLarge);
    }
}
