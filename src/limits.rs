//! Abuse limits at the edge: who the client is (behind trusted proxies), how
//! many sockets it and the node may hold, how many may sit unauthenticated,
//! and how fast it may fail authentication or send requests.
//!
//! The rate limits use `governor` (GCRA token buckets); the short memory of
//! blocked IPs is a bounded `moka` cache, so an attacker with many addresses
//! cannot grow it without bound.

use std::collections::HashMap;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::http::HeaderMap;
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, DefaultKeyedRateLimiter, Quota, RateLimiter};
use ipnet::IpNet;
use prometheus::IntGauge;

use crate::config::{LimitsConfig, ServerConfig, parse_cidr};
use crate::metrics::Rejection;

/// Finds the client's address: the peer's, unless the peer is a trusted
/// proxy, in which case the forwarding headers are read from the right,
/// skipping trusted hops, so a client cannot spoof its address by sending
/// its own header.
///
/// Which header: the one present, `Forwarded` (RFC 7239) or
/// `X-Forwarded-For`. When both are present they must name the same client;
/// if they do not, the peer's (the proxy's) address is the client's. No
/// fixed precedence is safe without knowing which header the proxy writes:
/// a proxy that writes only `X-Forwarded-For` passes a client's `Forwarded`
/// through, and the other way round, and the two cases look the same here.
/// A hop that is not an address (`unknown`, an obfuscated name, garbage)
/// ends the walk at the trusted hop to its right, never the one to its left.
#[derive(Debug, Default)]
pub struct TrustedProxies {
    nets: Vec<IpNet>,
    /// Set once we have warned about forwarding headers from an untrusted peer.
    warned: AtomicBool,
    /// Set once we have warned about contradicting forwarding headers.
    warned_conflict: AtomicBool,
}

/// Hops read from the right before giving up (a chain of trusted proxies
/// longer than this is not a deployment; the walk stops at a trusted hop).
const MAX_HOPS: usize = 32;

impl TrustedProxies {
    pub fn new(config: &ServerConfig) -> TrustedProxies {
        TrustedProxies {
            nets: config
                .trusted_proxies
                .iter()
                .filter_map(|c| parse_cidr(c))
                .collect(),
            warned: Default::default(),
            warned_conflict: Default::default(),
        }
    }

    fn trusted(&self, ip: &IpAddr) -> bool {
        self.nets.iter().any(|net| net.contains(ip))
    }

    pub fn client_ip(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        let peer = peer.to_canonical();
        let has_forwarded = headers.contains_key(FORWARDED);
        let has_xff = headers.contains_key(X_FORWARDED_FOR);
        if !self.trusted(&peer) {
            // A proxy we were not told about: every client behind it shares
            // its address for the per-IP limits, which one abuser can then
            // exhaust for all. Say so once.
            if (has_forwarded || has_xff) && !self.warned.swap(true, Ordering::Relaxed) {
                tracing::warn!(
                    %peer,
                    "forwarding headers from a peer not in server.trusted_proxies: per-IP limits \
                     apply to the proxy's address; list the load balancer there"
                );
            }
            return peer;
        }
        let forwarded = has_forwarded.then(|| self.walk(peer, forwarded_hops(headers)));
        let xff = has_xff.then(|| self.walk(peer, x_forwarded_for_hops(headers)));
        match (forwarded, xff) {
            (Some(a), Some(b)) if a != b => {
                if !self.warned_conflict.swap(true, Ordering::Relaxed) {
                    tracing::warn!(
                        %peer,
                        "Forwarded and X-Forwarded-For from a trusted proxy name different \
                         clients: the proxy's address is used for such requests; make the proxy \
                         remove the header it does not write"
                    );
                }
                peer
            }
            (Some(client), _) | (None, Some(client)) => client,
            (None, None) => peer,
        }
    }

    /// The client by `hops`, rightmost first: the first untrusted address,
    /// else the last trusted one (starting from `peer`).
    fn walk(&self, peer: IpAddr, hops: impl Iterator<Item = Option<IpAddr>>) -> IpAddr {
        let mut client = peer;
        for hop in hops.take(MAX_HOPS) {
            let Some(hop) = hop else {
                // Not an address: the trusted hop that wrote it is the client.
                break;
            };
            client = hop;
            if !self.trusted(&hop) {
                break;
            }
        }
        client
    }
}

const FORWARDED: &str = "forwarded";
const X_FORWARDED_FOR: &str = "x-forwarded-for";

/// The `for=` of each `Forwarded` element, rightmost first; `None` for an
/// element without an address (`unknown`, obfuscated, missing, malformed).
fn forwarded_hops(headers: &HeaderMap) -> impl Iterator<Item = Option<IpAddr>> + '_ {
    headers.get_all(FORWARDED).iter().rev().flat_map(|value| {
        let elements: Box<dyn Iterator<Item = Option<IpAddr>>> = match value.to_str() {
            Ok(v) => Box::new(rfc7239::parse(v).rev().map(|element| {
                let node = element.ok()?.forwarded_for?;
                node.ip().map(|ip| ip.to_canonical())
            })),
            Err(_) => Box::new(std::iter::once(None)),
        };
        elements
    })
}

/// The entries of `X-Forwarded-For`, rightmost first; `None` for one that
/// is not an address.
fn x_forwarded_for_hops(headers: &HeaderMap) -> impl Iterator<Item = Option<IpAddr>> + '_ {
    headers
        .get_all(X_FORWARDED_FOR)
        .iter()
        .rev()
        .flat_map(|value| {
            let entries: Box<dyn Iterator<Item = Option<IpAddr>>> = match value.to_str() {
                Ok(v) => Box::new(v.rsplit(',').map(|s| parse_hop(s.trim()))),
                Err(_) => Box::new(std::iter::once(None)),
            };
            entries
        })
}

/// `1.2.3.4`, `1.2.3.4:5678`, `2001:db8::1`, `[2001:db8::1]:5678`.
fn parse_hop(s: &str) -> Option<IpAddr> {
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Some(ip.to_canonical());
    }
    if let Ok(addr) = s.parse::<std::net::SocketAddr>() {
        return Some(addr.ip().to_canonical());
    }
    let ip = s.strip_prefix('[')?.strip_suffix(']')?;
    ip.parse::<IpAddr>().ok().map(|ip| ip.to_canonical())
}

// ---------------------------------------------------------------------------

/// Why an upgrade was refused before it happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// `limits.max_connections` reached.
    Full,
    /// `limits.max_connections_per_ip` reached.
    PerIp,
    /// `limits.max_pending` reached.
    Pending,
    /// `limits.max_pending_per_ip` reached.
    PendingPerIp,
}

impl Refusal {
    /// The metric's reason for this refusal.
    pub fn rejection(self) -> Rejection {
        match self {
            Refusal::Full => Rejection::Full,
            Refusal::PerIp => Rejection::IpLimit,
            Refusal::Pending => Rejection::PendingLimit,
            Refusal::PendingPerIp => Rejection::PendingIpLimit,
        }
    }
}

/// The key the per-IP limits count a client under: an IPv4 address whole,
/// an IPv6 address by its first `ipv6_prefix` bits (one /64 is usually one
/// subscriber, who can pick any address in it). IPv4-mapped IPv6 addresses
/// count as the IPv4 address.
pub fn limit_key(ip: IpAddr, ipv6_prefix: u8) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V4(v4) => IpAddr::V4(v4),
        IpAddr::V6(v6) => {
            let bits = u32::from(ipv6_prefix.clamp(1, 128));
            let mask = u128::MAX << (128 - bits);
            IpAddr::V6((u128::from(v6) & mask).into())
        }
    }
}

/// Open connections from which the few-addresses warning is considered.
pub const FEW_ADDRESSES_MIN_OPEN: usize = 50;
/// At most this many distinct client addresses among that many connections
/// is "every connection from a few addresses".
pub const FEW_ADDRESSES_MAX: usize = 2;

/// Whether `open` connections from `addresses` distinct client addresses
/// look like one undeclared proxy or load balancer in front of the node:
/// per-IP limits would then apply to all its clients at once.
pub fn few_addresses(open: usize, addresses: usize) -> bool {
    open >= FEW_ADDRESSES_MIN_OPEN && addresses <= FEW_ADDRESSES_MAX
}

#[derive(Default)]
struct Counts {
    total: usize,
    pending: usize,
    /// Per client key ([`limit_key`]): (open, pending). Entries go when
    /// both reach zero.
    per_ip: HashMap<IpAddr, (usize, usize)>,
}

/// Socket accounting for `limits.max_*`.
pub struct ConnectionLimits {
    max: usize,
    per_ip: usize,
    max_pending: usize,
    pending_per_ip: usize,
    ipv6_prefix: u8,
    counts: Mutex<Counts>,
    /// Distinct client keys among open connections (`wsgate_client_addresses`).
    addresses: IntGauge,
    /// Set once the few-addresses warning was logged.
    warned: AtomicBool,
}

impl ConnectionLimits {
    pub fn new(config: &LimitsConfig, addresses: IntGauge) -> Arc<ConnectionLimits> {
        Arc::new(ConnectionLimits {
            max: config.max_connections,
            per_ip: config.max_connections_per_ip,
            max_pending: config.max_pending,
            pending_per_ip: config.max_pending_per_ip,
            ipv6_prefix: config.ipv6_prefix,
            counts: Mutex::default(),
            addresses,
            warned: AtomicBool::new(false),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Counts> {
        self.counts.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Reserves a place for a new, pending socket from `ip`.
    pub fn try_open(self: &Arc<Self>, ip: IpAddr) -> Result<SessionSlot, Refusal> {
        let key = limit_key(ip, self.ipv6_prefix);
        let mut c = self.lock();
        let (ip_open, ip_pending) = c.per_ip.get(&key).copied().unwrap_or((0, 0));
        if c.total >= self.max {
            return Err(Refusal::Full);
        }
        if self.per_ip > 0 && ip_open >= self.per_ip {
            return Err(Refusal::PerIp);
        }
        if c.pending >= self.max_pending {
            return Err(Refusal::Pending);
        }
        if ip_pending >= self.pending_per_ip {
            return Err(Refusal::PendingPerIp);
        }
        c.total += 1;
        c.pending += 1;
        c.per_ip.insert(key, (ip_open + 1, ip_pending + 1));
        let (open, addresses) = (c.total, c.per_ip.len());
        self.addresses.set(addresses as i64);
        drop(c);
        if few_addresses(open, addresses) && !self.warned.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                open,
                addresses,
                "every connection comes from {addresses} client address(es): per-IP limits \
                 (limits.max_connections_per_ip, limits.max_pending_per_ip, \
                 limits.auth_failures_per_minute) apply to all of them at once, so one abuser \
                 locks everyone out. Behind an L7 proxy list it in server.trusted_proxies; \
                 behind a layer-4 load balancer turn on its PROXY protocol and \
                 server.proxy_protocol"
            );
        }
        Ok(SessionSlot {
            limits: self.clone(),
            ip,
            key,
            pending: true,
        })
    }

    pub fn open(&self) -> usize {
        self.lock().total
    }
}

/// A socket's reserved place, released on drop.
pub struct SessionSlot {
    limits: Arc<ConnectionLimits>,
    /// The client's address, as found.
    ip: IpAddr,
    /// What the per-IP counts are kept under.
    key: IpAddr,
    pending: bool,
}

impl SessionSlot {
    pub fn ip(&self) -> IpAddr {
        self.ip
    }

    /// The socket authenticated: it no longer counts as pending.
    pub fn authenticated(&mut self) {
        if std::mem::replace(&mut self.pending, false) {
            let mut c = self.limits.lock();
            c.pending -= 1;
            if let Some(e) = c.per_ip.get_mut(&self.key) {
                e.1 -= 1;
            }
        }
    }
}

impl Drop for SessionSlot {
    fn drop(&mut self) {
        let mut c = self.limits.lock();
        c.total -= 1;
        if self.pending {
            c.pending -= 1;
        }
        let pending = self.pending;
        if let Some(e) = c.per_ip.get_mut(&self.key) {
            e.0 -= 1;
            if pending {
                e.1 -= 1;
            }
            if *e == (0, 0) {
                c.per_ip.remove(&self.key);
            }
        }
        self.limits.addresses.set(c.per_ip.len() as i64);
    }
}

// ---------------------------------------------------------------------------

/// How many blocked IPs are remembered at most.
const MAX_BLOCKED: u64 = 100_000;

/// Failed authentications per IP: past `limits.auth_failures_per_minute`,
/// the IP is blocked until its bucket refills, and its attempts are closed
/// with 4029 before the cache or the database is asked.
pub struct AuthFailureLimiter {
    limiter: Option<DefaultKeyedRateLimiter<IpAddr>>,
    blocked: moka::sync::Cache<IpAddr, Instant>,
    /// Keyed by [`limit_key`], like the connection counts.
    ipv6_prefix: u8,
}

impl AuthFailureLimiter {
    pub fn new(config: &LimitsConfig) -> AuthFailureLimiter {
        AuthFailureLimiter {
            limiter: NonZeroU32::new(config.auth_failures_per_minute)
                .map(|n| RateLimiter::keyed(Quota::per_minute(n))),
            blocked: moka::sync::Cache::builder()
                .max_capacity(MAX_BLOCKED)
                .time_to_live(Duration::from_secs(60))
                .build(),
            ipv6_prefix: config.ipv6_prefix,
        }
    }

    pub fn is_blocked(&self, ip: IpAddr) -> bool {
        self.blocked
            .get(&limit_key(ip, self.ipv6_prefix))
            .is_some_and(|until| until > Instant::now())
    }

    /// Records a failure; returns true when it put the IP over its limit.
    pub fn record_failure(&self, ip: IpAddr) -> bool {
        let Some(limiter) = &self.limiter else {
            return false;
        };
        let ip = limit_key(ip, self.ipv6_prefix);
        match limiter.check_key(&ip) {
            Ok(()) => {
                // Forget quiet IPs now and then, so the state stays small.
                if limiter.len() > 10_000 {
                    limiter.retain_recent();
                }
                false
            }
            Err(not_until) => {
                let wait = not_until.wait_time_from(DefaultClock::default().now());
                self.blocked
                    .insert(ip, Instant::now() + wait.max(Duration::from_secs(1)));
                true
            }
        }
    }
}

/// One connection's request rate: over `limits.messages_per_second` a
/// request is refused (`rate_limited`); refusals themselves are limited to
/// the same rate, so a client that keeps sending at twice the limit is closed.
pub struct MessageLimiter {
    requests: DefaultDirectRateLimiter,
    refusals: DefaultDirectRateLimiter,
}

/// What to do with one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RateVerdict {
    Allow,
    Refuse,
    Close,
}

impl MessageLimiter {
    pub fn new(per_second: u32) -> Option<MessageLimiter> {
        let n = NonZeroU32::new(per_second)?;
        let quota = Quota::per_second(n);
        // One clock for every connection: building a clock per limiter costs
        // a CPUID calibration, measured at a quarter of the connect path.
        static CLOCK: std::sync::OnceLock<DefaultClock> = std::sync::OnceLock::new();
        let clock = CLOCK.get_or_init(DefaultClock::default);
        Some(MessageLimiter {
            requests: RateLimiter::direct_with_clock(quota, clock.clone()),
            refusals: RateLimiter::direct_with_clock(quota, clock.clone()),
        })
    }

    pub fn check(&self) -> RateVerdict {
        if self.requests.check().is_ok() {
            RateVerdict::Allow
        } else if self.refusals.check().is_ok() {
            RateVerdict::Refuse
        } else {
            RateVerdict::Close
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, v.parse().unwrap());
        }
        h
    }

    #[test]
    fn client_ip_behind_trusted_proxies() {
        let cfg = ServerConfig {
            trusted_proxies: vec!["10.0.0.0/8".into(), "192.168.1.1".into()],
            ..ServerConfig::default()
        };
        let tp = TrustedProxies::new(&cfg);
        let lb: IpAddr = "10.1.2.3".parse().unwrap();
        let outsider: IpAddr = "203.0.113.9".parse().unwrap();
        // Untrusted peers are taken as they are, whatever they claim.
        let spoof = headers(&[("x-forwarded-for", "1.1.1.1")]);
        assert_eq!(tp.client_ip(outsider, &spoof), outsider);
        // Behind the balancer: the rightmost untrusted hop.
        let h = headers(&[("x-forwarded-for", "1.1.1.1, 198.51.100.7, 10.9.9.9")]);
        assert_eq!(
            tp.client_ip(lb, &h),
            "198.51.100.7".parse::<IpAddr>().unwrap()
        );
        let h = headers(&[(
            "forwarded",
            "for=\"[2001:db8::5]:443\";proto=https, for=10.0.0.2",
        )]);
        assert_eq!(
            tp.client_ip(lb, &h),
            "2001:db8::5".parse::<IpAddr>().unwrap()
        );
        assert_eq!(tp.client_ip(lb, &HeaderMap::new()), lb);
        let h = headers(&[("x-forwarded-for", "garbage")]);
        assert_eq!(tp.client_ip(lb, &h), lb);
    }

    #[test]
    fn forwarding_headers_read_from_the_right_and_fail_closed() {
        let cfg = ServerConfig {
            trusted_proxies: vec!["10.0.0.0/8".into()],
            ..ServerConfig::default()
        };
        let tp = TrustedProxies::new(&cfg);
        let lb: IpAddr = "10.1.2.3".parse().unwrap();
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let at = |pairs: &[(&'static str, &str)]| tp.client_ip(lb, &headers(pairs));
        // Forwarded alone, several lines: later lines are further right.
        assert_eq!(
            at(&[
                ("forwarded", "for=6.6.6.6"),
                ("forwarded", "for=198.51.100.1;proto=https")
            ]),
            ip("198.51.100.1")
        );
        // Case-insensitive parameter, quoted v4 with port, trusted hops skipped.
        assert_eq!(
            at(&[("forwarded", "For=\"198.51.100.2:80\", for=10.0.0.9")]),
            ip("198.51.100.2")
        );
        // A hop that names no address stops the walk at the trusted hop.
        for bad in [
            "for=unknown",
            "for=_hidden",
            "proto=https",
            "for=2001:db8::1",
            "garbage",
        ] {
            let value = format!("for=6.6.6.6, {bad}");
            assert_eq!(at(&[("forwarded", value.as_str())]), lb, "{bad}");
        }
        assert_eq!(
            at(&[("forwarded", "for=6.6.6.6, for=unknown, for=10.0.0.7")]),
            ip("10.0.0.7"),
            "the last trusted hop before the unknown one"
        );
        assert_eq!(
            at(&[("x-forwarded-for", "6.6.6.6, , 10.0.0.7")]),
            ip("10.0.0.7")
        );
        // Both headers: they must agree.
        assert_eq!(
            at(&[
                ("forwarded", "for=198.51.100.3"),
                ("x-forwarded-for", "198.51.100.3")
            ]),
            ip("198.51.100.3")
        );
        assert_eq!(
            at(&[
                ("forwarded", "for=198.51.100.3"),
                ("x-forwarded-for", "6.6.6.6")
            ]),
            lb
        );
        assert_eq!(
            at(&[
                ("x-forwarded-for", "198.51.100.3"),
                ("forwarded", "for=6.6.6.6")
            ]),
            lb
        );
        // IPv4-mapped addresses are IPv4.
        assert_eq!(
            at(&[("x-forwarded-for", "[::ffff:198.51.100.4]:443")]),
            ip("198.51.100.4")
        );
        // A chain longer than MAX_HOPS of trusted hops ends on a trusted hop.
        let long = vec!["10.0.0.1"; MAX_HOPS + 5].join(", ");
        assert_eq!(
            at(&[("x-forwarded-for", &format!("6.6.6.6, {long}"))]),
            ip("10.0.0.1")
        );
    }

    #[test]
    fn ipv6_keyed_by_prefix() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert_eq!(
            limit_key(ip("2001:db8:1:2:3:4:5:6"), 64),
            ip("2001:db8:1:2::")
        );
        assert_eq!(
            limit_key(ip("2001:db8:1:2:3:4:5:6"), 48),
            ip("2001:db8:1::")
        );
        assert_eq!(
            limit_key(ip("2001:db8:1:2:3:4:5:6"), 128),
            ip("2001:db8:1:2:3:4:5:6")
        );
        assert_eq!(limit_key(ip("2001:db8::1"), 1), ip("::"));
        assert_eq!(limit_key(ip("198.51.100.7"), 64), ip("198.51.100.7"));
        assert_eq!(limit_key(ip("::ffff:198.51.100.7"), 64), ip("198.51.100.7"));
        // The auth-failure limiter keys the same way.
        let l = AuthFailureLimiter::new(&LimitsConfig {
            auth_failures_per_minute: 1,
            ..LimitsConfig::default()
        });
        assert!(!l.record_failure(ip("2001:db8:1:2::1")));
        assert!(l.record_failure(ip("2001:db8:1:2::2")));
        assert!(l.is_blocked(ip("2001:db8:1:2:ffff::3")));
        assert!(!l.is_blocked(ip("2001:db8:1:3::1")));
    }

    #[test]
    fn few_addresses_gauge_and_decision() {
        assert!(!few_addresses(FEW_ADDRESSES_MIN_OPEN - 1, 1));
        assert!(few_addresses(FEW_ADDRESSES_MIN_OPEN, FEW_ADDRESSES_MAX));
        assert!(!few_addresses(10_000, FEW_ADDRESSES_MAX + 1));
        let gauge = IntGauge::new("g", "g").unwrap();
        let limits = ConnectionLimits::new(&LimitsConfig::default(), gauge.clone());
        let a = limits.try_open("2001:db8::1".parse().unwrap()).unwrap();
        let b = limits.try_open("2001:db8::2".parse().unwrap()).unwrap();
        let c = limits.try_open("198.51.100.1".parse().unwrap()).unwrap();
        assert_eq!(gauge.get(), 2, "one /64 and one IPv4 address");
        drop((a, c));
        assert_eq!(gauge.get(), 1);
        drop(b);
        assert_eq!(gauge.get(), 0);
    }

    #[test]
    fn connection_counts() {
        let limits = ConnectionLimits::new(
            &LimitsConfig {
                max_connections: 3,
                max_connections_per_ip: 2,
                max_pending: 10,
                max_pending_per_ip: 1,
                ..LimitsConfig::default()
            },
            IntGauge::new("g", "g").unwrap(),
        );
        let a: IpAddr = "1.1.1.1".parse().unwrap();
        let b: IpAddr = "2.2.2.2".parse().unwrap();
        let mut s1 = limits.try_open(a).unwrap();
        assert_eq!(limits.try_open(a).err(), Some(Refusal::PendingPerIp));
        s1.authenticated();
        let mut s2 = limits.try_open(a).unwrap();
        s2.authenticated();
        assert_eq!(limits.try_open(a).err(), Some(Refusal::PerIp));
        let _s3 = limits.try_open(b).unwrap();
        assert_eq!(
            limits.try_open("3.3.3.3".parse().unwrap()).err(),
            Some(Refusal::Full)
        );
        drop(s1);
        assert!(limits.try_open(a).is_ok());
        drop(s2);
        assert_eq!(limits.open(), 1);
    }

    #[test]
    fn auth_failures_block_after_the_quota() {
        let l = AuthFailureLimiter::new(&LimitsConfig {
            auth_failures_per_minute: 3,
            ..LimitsConfig::default()
        });
        let ip: IpAddr = "1.1.1.1".parse().unwrap();
        assert!(!l.record_failure(ip));
        assert!(!l.record_failure(ip));
        assert!(!l.record_failure(ip));
        assert!(!l.is_blocked(ip));
        assert!(l.record_failure(ip));
        assert!(l.is_blocked(ip));
        assert!(!l.is_blocked("2.2.2.2".parse().unwrap()));
    }

    #[test]
    fn message_rate() {
        let l = MessageLimiter::new(5).unwrap();
        let verdicts: Vec<RateVerdict> = (0..20).map(|_| l.check()).collect();
        assert_eq!(
            verdicts
                .iter()
                .filter(|v| **v == RateVerdict::Allow)
                .count(),
            5
        );
        assert_eq!(
            verdicts
                .iter()
                .filter(|v| **v == RateVerdict::Refuse)
                .count(),
            5
        );
        assert_eq!(verdicts[19], RateVerdict::Close);
    }
}
