//! History on Redis: offsets, epochs and the kept publications of a group.
//!
//! Why Lua: an offset must be assigned, stored and published in one atomic
//! step, or two nodes publishing to one group at once could publish offset
//! 6 before offset 5, and a client that saw 6 would skip 5 on recovery.
//! Redis runs a script alone, so the script's `PUBLISH` order is the offset
//! order on every node.
//!
//! Per history group, two keys in the slot of the group's channel (so the
//! script's keys and its `SPUBLISH` live on one shard of a Redis Cluster):
//! - `{<channel>}:meta`, a hash: `e` the epoch, `o` the last offset; it
//!   expires `history.meta_ttl` after the last publication;
//! - `{<channel>}:history`, a stream of the last `history.size` envelopes
//!   (with their offset and epoch), entry id `0-<offset>`; it expires
//!   `history.ttl` after the last publication.
//!
//! A lost meta hash (expired, flushed, failed over without it) starts a new
//! epoch and drops the stream, so a client holding an old position is told
//! `recovered: false` rather than being served offsets that started again.
//!
//! Publishing lives here too (`Inner::publish`), because the script is what
//! publishes a history group's messages: plain publishes and script calls
//! are sent in the caller's order.
//!
//! A backend's raw `PUBLISH` to a history group bypasses the script: it is
//! delivered live, without an offset, and is not kept.

use std::sync::LazyLock;

use async_trait::async_trait;
use fred::clients::SubscriberClient;
use fred::prelude::{Client, LuaInterface, PubsubInterface, Value};
use fred::types::scripts::Script;
use futures_util::future::BoxFuture;

use super::{Inner, RedisBroker, requests, snapshot, unavailable};
use crate::broker::{BrokerError, History, HistoryPolicy, Recovery, UNPUBLISHED_EPOCH, new_epoch};
use crate::protocol::{self, Position, Publication};

const PUBLISH_LUA: &str = r#"
local epoch = redis.call('HGET', KEYS[2], 'e')
if not epoch then
  epoch = ARGV[6]
  redis.call('HSET', KEYS[2], 'e', epoch, 'o', 0)
  redis.call('DEL', KEYS[1])
end
local offset = redis.call('HINCRBY', KEYS[2], 'o', 1)
redis.call('PEXPIRE', KEYS[2], ARGV[5])
local o = string.format('%d', offset)
local envelope = ARGV[2] .. ',"offset":' .. o .. ',"epoch":"' .. epoch .. '"}'
redis.call('XADD', KEYS[1], 'MAXLEN', ARGV[3], '0-' .. o, 'd', envelope)
redis.call('PEXPIRE', KEYS[1], ARGV[4])
redis.call(ARGV[7], ARGV[1], envelope)
return {o, epoch}
"#;

const READ_LUA: &str = r#"
local epoch = redis.call('HGET', KEYS[2], 'e')
if not epoch then
  return {ARGV[1], '0'}
end
local offset = tonumber(redis.call('HGET', KEYS[2], 'o'))
local out = {epoch, string.format('%d', offset)}
if ARGV[3] ~= '' and (ARGV[4] == epoch or (ARGV[4] == ARGV[1] and ARGV[3] == '0')) then
  local since = tonumber(ARGV[3])
  if since < offset then
    local first = '0-' .. string.format('%d', since + 1)
    local entries = redis.call('XRANGE', KEYS[1], first, '+', 'COUNT', ARGV[5])
    for _, entry in ipairs(entries) do
      out[#out + 1] = entry[2][2]
    end
  end
end
return out
"#;

/// Assigns the next offset, keeps the envelope and publishes it.
pub(super) static PUBLISH: LazyLock<Script> = LazyLock::new(|| Script::from_lua(PUBLISH_LUA));
/// Reads the position (offset 0 of [`UNPUBLISHED_EPOCH`] when the group has
/// none: nothing is written) and what follows `since`.
pub(super) static READ: LazyLock<Script> = LazyLock::new(|| Script::from_lua(READ_LUA));

/// Plain publications to several channels (ARGV: channel, envelope, ...) in
/// one command: one request that fred drops once its caller gave up, and
/// one reply instead of one per message.
///
/// Sent with `EVAL`, not `EVALSHA`: Redis never answers `NOSCRIPT` to it.
/// A lost script (Redis restarted) would otherwise be loaded and run again
/// after the call's later commands had run, and a lone publication to the
/// same group (a plain `PUBLISH`) would overtake the run. Redis keeps the
/// compiled script by its digest, so `EVAL` costs a SHA-1 of these bytes.
const PUBLISH_MANY: &str = r#"
for i = 1, #ARGV, 2 do
  redis.call('PUBLISH', ARGV[i], ARGV[i + 1])
end
return 0
"#;

/// Most publications in one [`PUBLISH_MANY`]: Redis runs a script without
/// serving anyone else, so a large API batch is cut into several (each
/// about 100 us of Redis time).
const MAX_RUN: usize = 100;

/// A key in the same cluster slot as `channel`: its hash tag if it has
/// one, else the whole channel name as the tag.
pub(super) fn slot_key(channel: &str, suffix: &str) -> String {
    let tagged = channel
        .find('{')
        .and_then(|open| channel[open + 1..].find('}').map(|close| close > 0))
        .unwrap_or(false);
    if tagged {
        format!("{channel}:{suffix}")
    } else {
        format!("{{{channel}}}:{suffix}")
    }
}

/// The script keys of a group: `[stream, meta]`.
pub(super) fn keys(channel: &str) -> Vec<String> {
    vec![slot_key(channel, "history"), slot_key(channel, "meta")]
}

fn millis(d: std::time::Duration) -> String {
    d.as_millis().max(1).to_string()
}

/// Arguments of [`PUBLISH`] for one publication.
pub(super) fn publish_args(
    policy: &HistoryPolicy,
    channel: &str,
    publication: &Publication,
    sharded: bool,
) -> Vec<String> {
    let mut envelope = protocol::encode_envelope(publication);
    // The script appends `,"offset":..,"epoch":..}`.
    envelope.pop();
    vec![
        channel.to_string(),
        envelope,
        policy.size.to_string(),
        millis(policy.ttl),
        millis(policy.meta_ttl),
        new_epoch(),
        if sharded { "SPUBLISH" } else { "PUBLISH" }.to_string(),
    ]
}

/// Arguments of [`READ`].
pub(super) fn read_args(policy: &HistoryPolicy, since: Option<&Position>) -> Vec<String> {
    vec![
        UNPUBLISHED_EPOCH.to_string(),
        millis(policy.meta_ttl),
        since.map(|s| s.offset.to_string()).unwrap_or_default(),
        since.map(|s| s.epoch.clone()).unwrap_or_default(),
        policy.size.to_string(),
    ]
}

/// The position [`PUBLISH`] answered.
pub(super) fn parse_position(reply: Vec<String>) -> Option<Position> {
    match <[String; 2]>::try_from(reply) {
        Ok([offset, epoch]) => Some(Position {
            offset: offset.parse().ok()?,
            epoch,
        }),
        Err(_) => None,
    }
}

/// The recovery [`READ`] answered: `[epoch, offset, envelope...]`. An entry
/// that does not decode counts as missing (so `recovered` turns false).
pub(super) fn parse_read(
    group: &str,
    since: Option<&Position>,
    reply: Vec<String>,
) -> Option<Recovery> {
    let mut items = reply.into_iter();
    let epoch = items.next()?;
    let offset = items.next()?.parse().ok()?;
    let after: Vec<Publication> = items
        .filter_map(|envelope| protocol::decode_envelope(group, envelope.as_bytes()).ok())
        .collect();
    Some(Recovery::decide(
        since,
        Position { offset, epoch },
        after,
        UNPUBLISHED_EPOCH,
    ))
}

impl Inner {
    /// Publishes in order (see `super::requests` for why not a fred
    /// pipeline): history groups through [`PUBLISH`], which assigns their
    /// offsets (see the module docs), snapshot groups through `snapshot`'s
    /// script (which keeps the latest), and each run of other publications
    /// in one command on a standalone Redis ([`PUBLISH_MANY`]) or one
    /// `SPUBLISH` each on Redis Cluster (their channels live on different
    /// shards). A script Redis lost (restart, SCRIPT FLUSH) is loaded again.
    /// All of it on the subscriber connection (RESP3), so Redis answers each
    /// command and sends the node its own copy in one write (see the module
    /// docs of `broker::redis`).
    pub(super) async fn publish(
        &self,
        publications: Vec<Publication>,
    ) -> Result<Vec<Option<Position>>, BrokerError> {
        if publications.is_empty() {
            return Ok(Vec::new());
        }
        let inner = self;
        inner.check_link()?;
        if let [p] = publications.as_slice()
            && inner.route(&p.group) == Route::Plain
        {
            // The API's single publish: one `PUBLISH`, without the batch's
            // boxed commands and lists (what `Batch` would send for it).
            let channel = inner.group_channel(&p.group);
            let envelope = protocol::encode_envelope(p);
            inner
                .subscriber
                .publish::<Value, _, _>(channel, envelope)
                .await
                .map_err(unavailable)?;
            return Ok(vec![None]);
        }
        let mut batch = Batch::new(&inner.subscriber, &inner.client, publications.len());
        for p in &publications {
            let channel = inner.group_channel(&p.group);
            match inner.route(&p.group) {
                Route::History => {
                    let args = publish_args(&inner.history, &channel, p, inner.sharded);
                    batch.script(&PUBLISH, keys(&channel), args, Reply::Offset);
                }
                Route::Snapshot => {
                    let args = snapshot::publish_args(&inner.snapshots, &channel, p, inner.sharded);
                    batch.script(
                        &snapshot::PUBLISH,
                        snapshot::keys(&channel),
                        args,
                        Reply::None,
                    );
                }
                Route::Sharded => {
                    let envelope = protocol::encode_envelope(p);
                    batch.push(
                        Box::pin(batch.client.spublish(channel, envelope)),
                        Reply::Plain(1),
                    );
                }
                Route::Plain => batch.plain(channel, protocol::encode_envelope(p)),
            }
        }
        let (commands, replies) = batch.finish();
        let results = requests::in_order(commands).await;
        let mut positions = Vec::with_capacity(publications.len());
        for (result, reply) in results.into_iter().zip(replies) {
            let value = result.map_err(unavailable)?;
            match reply {
                Reply::Plain(n) => positions.extend(std::iter::repeat_n(None, n)),
                // A snapshot group: no offset to answer.
                Reply::None => positions.push(None),
                Reply::Offset => {
                    let position = value
                        .convert::<Vec<String>>()
                        .ok()
                        .and_then(parse_position)
                        .ok_or_else(|| {
                            BrokerError::Unavailable("unexpected history reply".into())
                        })?;
                    positions.push(Some(position));
                }
            }
        }
        Ok(positions)
    }
}

/// How a group's publications are sent, decided in one place for
/// [`Inner::publish`]'s batch and its single-publication shortcut.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Route {
    /// Through the history script, which assigns the offset.
    History,
    /// Through the snapshot script, which keeps the latest.
    Snapshot,
    /// One `SPUBLISH` each (Redis Cluster).
    Sharded,
    /// `PUBLISH`, runs of them in one `PUBLISH_MANY`.
    Plain,
}

impl Inner {
    fn route(&self, group: &str) -> Route {
        if self.history.applies(group) {
            Route::History
        } else if self.snapshots.applies(group) {
            Route::Snapshot
        } else if self.sharded {
            Route::Sharded
        } else {
            Route::Plain
        }
    }
}

/// What a publish command answers for: `n` plain publications, one with an
/// offset, one without.
enum Reply {
    Plain(usize),
    Offset,
    None,
}

type Command<'a> = BoxFuture<'a, Result<Value, fred::error::Error>>;

/// The commands of one publish call, in order, gathering runs of plain
/// publications (channel, envelope pairs) into one [`PUBLISH_MANY`].
struct Batch<'a> {
    /// The subscriber connection, which publishes (see [`Inner::publish`]).
    client: &'a SubscriberClient,
    /// The command client, which loads a script Redis does not have.
    loader: &'a Client,
    commands: Vec<Command<'a>>,
    replies: Vec<Reply>,
    run: Vec<String>,
}

impl<'a> Batch<'a> {
    fn new(client: &'a SubscriberClient, loader: &'a Client, capacity: usize) -> Batch<'a> {
        Batch {
            client,
            loader,
            commands: Vec::with_capacity(capacity),
            replies: Vec::with_capacity(capacity),
            run: Vec::new(),
        }
    }

    fn plain(&mut self, channel: String, envelope: String) {
        if self.run.len() == 2 * MAX_RUN {
            self.end_run();
        }
        self.run.push(channel);
        self.run.push(envelope);
    }

    fn script(
        &mut self,
        script: &'static Script,
        keys: Vec<String>,
        args: Vec<String>,
        reply: Reply,
    ) {
        let (client, loader) = (self.client, self.loader);
        self.push(
            Box::pin(requests::evalsha_reloading(
                script, client, loader, keys, args,
            )),
            reply,
        );
    }

    fn push(&mut self, command: Command<'a>, reply: Reply) {
        self.end_run();
        self.commands.push(command);
        self.replies.push(reply);
    }

    /// The run so far as one command: a lone publication as `PUBLISH`.
    fn end_run(&mut self) {
        let run = std::mem::take(&mut self.run);
        let n = run.len() / 2;
        let command: Command<'a> = match <[String; 2]>::try_from(run) {
            Ok([channel, envelope]) => Box::pin(self.client.publish(channel, envelope)),
            Err(run) if run.is_empty() => return,
            Err(run) => Box::pin(self.client.eval(PUBLISH_MANY, Vec::<String>::new(), run)),
        };
        self.commands.push(command);
        self.replies.push(Reply::Plain(n));
    }

    fn finish(mut self) -> (Vec<Command<'a>>, Vec<Reply>) {
        self.end_run();
        (self.commands, self.replies)
    }
}

#[async_trait]
impl History for RedisBroker {
    async fn history(
        &self,
        group: &str,
        since: Option<&Position>,
    ) -> Result<Recovery, BrokerError> {
        let inner = &self.inner;
        inner.check_link()?;
        let channel = inner.group_channel(group);
        let reply: Vec<String> = READ
            .evalsha_with_reload(
                &inner.client,
                keys(&channel),
                read_args(&inner.history, since),
            )
            .await
            .map_err(unavailable)?;
        parse_read(group, since, reply)
            .ok_or_else(|| BrokerError::Unavailable("unexpected history reply".into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_share_the_channel_slot() {
        assert_eq!(
            keys("wsgate:group:g"),
            vec!["{wsgate:group:g}:history", "{wsgate:group:g}:meta"]
        );
        // A prefix with a hash tag already decides the slot.
        assert_eq!(
            keys("{ws}:group:g"),
            vec!["{ws}:group:g:history", "{ws}:group:g:meta"]
        );
        // `{}` is no tag.
        assert_eq!(keys("{}x")[0], "{{}x}:history");
    }

    #[test]
    fn position_reply() {
        assert_eq!(
            parse_position(vec!["7".into(), "e1".into()]),
            Some(Position {
                offset: 7,
                epoch: "e1".into()
            })
        );
        assert_eq!(parse_position(vec!["x".into(), "e1".into()]), None);
        assert_eq!(parse_position(vec!["1".into()]), None);
    }
}
