//! Several commands sent in order, one request each, instead of a fred
//! pipeline.
//!
//! Why: fred marks a command whose caller stopped waiting (its timeout) so
//! that it is never written afterwards, but it does not mark a pipeline's
//! commands. After a lost connection fred still reports "connected" through
//! its first reconnection delay; a pipeline sent then waits in fred's queue,
//! outlives its caller's timeout and is written once Redis is back. A
//! publish answered "unavailable" (so the caller retries) was delivered that
//! way, after the messages published since; an idempotency claim would be
//! taken late and turn the caller's retry into a "duplicate" never
//! published.
//!
//! Separate requests still share the wire: fred writes commands that arrive
//! together back to back and flushes once (auto-pipelining), and one
//! connection keeps them in the order they were sent.
//!
//! Only a command's own timeout (`redis.command_timeout`, set on every
//! client) marks it: a caller must not wrap these futures in a shorter
//! timeout of its own, since a dropped future leaves its command queued.

use std::future::{Future, poll_fn};
use std::pin::Pin;
use std::task::Poll;

use futures_util::future::{BoxFuture, maybe_done};

/// Sends `commands` in the order given and waits for every reply; one
/// result per command, in the same order.
pub(super) async fn in_order<'a, T>(
    commands: Vec<BoxFuture<'a, Result<T, fred::error::Error>>>,
) -> Vec<Result<T, fred::error::Error>> {
    let mut commands: Vec<_> = commands.into_iter().map(maybe_done).collect();
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
    let mut results = Vec::with_capacity(commands.len());
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
    results
}
