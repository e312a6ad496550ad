//! The latest publication of `groups.snapshot` groups, on Redis.
//!
//! One hash per group, `{<channel>}:latest` (in the slot of the group's
//! channel, like the history keys): `d` the envelope of the latest
//! publication, `o` its sequence and `e` the epoch of that sequence. It
//! expires `groups.snapshot_ttl` after the last publication; a lost or
//! expired hash starts a new epoch at sequence 1.
//!
//! Why a script rather than `SET` + `PUBLISH` in a pipeline: a pipeline is
//! not atomic, so two nodes publishing at once could leave the older
//! publication stored after the newer one was published; and the sequence
//! must be assigned, stored and published in one step so that its order is
//! the order of the channel on every node (see `super::history` for the
//! same argument about offsets). The cost over a plain publish is the
//! script's four hash commands on the group's shard, one round trip as
//! before (the script rides in the same batch of requests).
//!
//! A backend's raw `PUBLISH` to a snapshot group bypasses the script: it is
//! delivered live but not kept.

use std::sync::LazyLock;

use async_trait::async_trait;
use fred::prelude::HashesInterface;
use fred::types::scripts::Script;

use super::history::slot_key;
use super::{RedisBroker, unavailable};
use crate::broker::{BrokerError, SnapshotPolicy, Snapshots, new_epoch};
use crate::protocol::{self, Publication};

const PUBLISH_LUA: &str = r#"
local e = redis.call('HGET', KEYS[1], 'e')
local o = 1
if e then
  o = redis.call('HINCRBY', KEYS[1], 'o', 1)
else
  e = ARGV[4]
  redis.call('HSET', KEYS[1], 'e', e, 'o', 1)
end
local envelope = ARGV[2] .. ',"sq":' .. string.format('%d', o) .. ',"se":"' .. e .. '"}'
redis.call('HSET', KEYS[1], 'd', envelope)
redis.call('PEXPIRE', KEYS[1], ARGV[3])
redis.call(ARGV[5], ARGV[1], envelope)
return o
"#;

/// Numbers, keeps and publishes a snapshot group's publication.
pub(super) static PUBLISH: LazyLock<Script> = LazyLock::new(|| Script::from_lua(PUBLISH_LUA));

/// The hash that keeps a snapshot group's latest publication.
fn key(channel: &str) -> String {
    slot_key(channel, "latest")
}

/// The script keys of a snapshot group: `[latest]`.
pub(super) fn keys(channel: &str) -> Vec<String> {
    vec![key(channel)]
}

/// Arguments of [`PUBLISH`] for one publication.
pub(super) fn publish_args(
    policy: &SnapshotPolicy,
    channel: &str,
    publication: &Publication,
    sharded: bool,
) -> Vec<String> {
    let mut envelope = protocol::encode_envelope(publication);
    // The script appends `,"sq":..,"se":..}`.
    envelope.pop();
    vec![
        channel.to_string(),
        envelope,
        policy.ttl.as_millis().max(1).to_string(),
        new_epoch(),
        if sharded { "SPUBLISH" } else { "PUBLISH" }.to_string(),
    ]
}

#[async_trait]
impl Snapshots for RedisBroker {
    fn keeps_latest(&self, group: &str) -> bool {
        self.inner.snapshots.applies(group)
    }

    /// One `HGET` on the group's shard.
    async fn latest(&self, group: &str) -> Result<Option<Publication>, BrokerError> {
        let inner = &self.inner;
        if !inner.snapshots.applies(group) {
            return Ok(None);
        }
        inner.check_link()?;
        let channel = inner.group_channel(group);
        let envelope: Option<String> = inner
            .client
            .hget(key(&channel), "d")
            .await
            .map_err(unavailable)?;
        let Some(envelope) = envelope else {
            return Ok(None);
        };
        match protocol::decode_envelope(group, envelope.as_bytes()) {
            Ok(p) if p.seq.is_some() => Ok(Some(p)),
            _ => {
                // Not ours (written by something else under our prefix):
                // as if there were none.
                tracing::warn!(group, "kept snapshot is not a valid envelope");
                Ok(None)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_key_shares_the_channel_slot() {
        assert_eq!(keys("wsgate:group:g"), vec!["{wsgate:group:g}:latest"]);
    }
}
