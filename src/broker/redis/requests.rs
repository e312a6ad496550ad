//! Several commands sent in order, one request each, instead of a fred
//! pipeline. Every group of commands the broker sends together goes
//! through [`in_order`]; `client.pipeline()` is not used.
//!
//! Why, first: fred marks a command whose caller stopped waiting (its
//! timeout) so that it is never written afterwards, but it does not mark a
//! pipeline's commands. After a lost connection fred still reports
//! "connected" through its first reconnection delay; a pipeline sent then
//! waits in fred's queue, outlives its caller's timeout and is written once
//! Redis is back. A publish answered "unavailable" (so the caller retries)
//! was delivered that way, after the messages published since; an
//! idempotency claim would be taken late and turn the caller's retry into a
//! "duplicate" never published; a presence entry written after the leave
//! that followed it would show a session that is gone.
//!
//! Why, second: fred 10.1 writes a pipeline's commands one `writev` each.
//! It flushes after a command whenever its router queue is empty, and a
//! whole pipeline is one entry in that queue, so it is empty while the
//! pipeline's own commands are written (5 `SET`s in a pipeline: 5 `writev`,
//! under strace). Separate requests queued together are written back to
//! back with one flush: the queue still holds the next one while each is
//! written. A heartbeat refreshing 10,000 presence hashes was 10,000
//! writes every 2 s; see docs/performance.md, round thirteen.
//!
//! One connection keeps the commands in the order they were sent.
//!
//! Scripts the broker runs on its subscriber connection (publishes, a
//! group's first join and last leave) go through [`evalsha_reloading`]:
//! fred's `evalsha_with_reload` takes a `Client` only.
//!
//! Only a command's own timeout (`redis.command_timeout`, set on every
//! client) marks it: a caller must not wrap these futures in a shorter
//! timeout of its own, since a dropped future leaves its command queued.

use std::future::{Future, poll_fn};
use std::pin::Pin;
use std::task::Poll;

use fred::clients::{Client, SubscriberClient};
use fred::prelude::{FromValue, Value};
use fred::types::scripts::Script;
use fred::types::{MultipleKeys, MultipleValues};
use futures_util::future::{BoxFuture, MaybeDone, maybe_done};

/// Commands in flight at once: each takes a place in fred's queue
/// (`MAX_QUEUED_COMMANDS`, where a pipeline took one), so a long list (a
/// heartbeat over every local group) goes out a chunk at a time.
pub(super) const CHUNK: usize = 512;

/// One command's future, as [`in_order`] takes it.
pub(super) type Request<'a, T> = BoxFuture<'a, Result<T, fred::error::Error>>;

/// Sends `commands` in the order given and waits for every reply; one
/// result per command, in the same order.
pub(super) async fn in_order<'a, T>(
    commands: Vec<Request<'a, T>>,
) -> Vec<Result<T, fred::error::Error>> {
    let mut results = Vec::with_capacity(commands.len());
    let mut commands = commands.into_iter().peekable();
    while commands.peek().is_some() {
        let chunk: Vec<_> = commands.by_ref().take(CHUNK).map(maybe_done).collect();
        send_and_wait(chunk, &mut results).await;
    }
    results
}

/// [`in_order`], failing with the first error.
pub(super) async fn all_in_order<'a, T>(
    commands: Vec<Request<'a, T>>,
) -> Result<Vec<T>, fred::error::Error> {
    in_order(commands).await.into_iter().collect()
}

async fn send_and_wait<'a, T>(
    mut commands: Vec<MaybeDone<Request<'a, T>>>,
    results: &mut Vec<Result<T, fred::error::Error>>,
) {
    // fred sends a command when its future is first polled: once each, in
    // order, before waiting on any of them.
    poll_fn(|cx| {
        for command in &mut commands {
            let _ = Pin::new(command).poll(cx);
        }
        Poll::Ready(())
    })
    .await;
    // Then in turn: one connection answers in order, so waiting for each
    // costs nothing over waiting for all (and allocates nothing).
    for mut command in commands {
        (&mut command).await;
        // Always there once awaited; an error rather than a panic.
        results.push(Pin::new(&mut command).take_output().unwrap_or_else(|| {
            Err(fred::error::Error::new(
                fred::error::ErrorKind::Unknown,
                "a Redis reply went missing",
            ))
        }));
    }
}

/// Runs `script` on `client` and, if Redis does not have it (a restart, a
/// `SCRIPT FLUSH`), loads it with the command client `loader` (on every
/// primary of a cluster) and runs it again: fred's `evalsha_with_reload`
/// for a connection it does not take. Sent when first polled, like any
/// fred command, so a caller can queue it beside another.
pub(super) async fn evalsha_reloading<R: FromValue>(
    script: &Script,
    client: &SubscriberClient,
    loader: &Client,
    keys: Vec<String>,
    args: Vec<String>,
) -> Result<R, fred::error::Error> {
    let keys = MultipleKeys::from(keys);
    let args: MultipleValues = Value::Array(args.into_iter().map(Value::from).collect());
    match script.evalsha(client, keys.clone(), args.clone()).await {
        Err(e) if e.details().starts_with("NOSCRIPT") => {
            script.load(loader).await?;
            script.evalsha(client, keys, args).await
        }
        result => result,
    }
}
