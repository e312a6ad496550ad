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
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::http::HeaderMap;
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, DefaultKeyedRateLimiter, Quota, RateLimiter};
use ipnet::IpNet;

use crate::config::{LimitsConfig, ServerConfig, parse_cidr};
use crate::metrics::Rejection;

/// Finds the client's address: the peer's, unless the peer is a trusted
/// proxy, in which case the forwarding headers are read from the right,
/// skipping trusted hops, so a client cannot spoof its address by sending
/// its own `X-Forwarded-For`.
#[derive(Debug, Default)]
pub struct TrustedProxies {
    nets: Vec<IpNet>,
    /// Set once we have warned about forwarding headers from an untrusted peer.
    warned: std::sync::atomic::AtomicBool,
}

impl TrustedProxies {
    pub fn new(config: &ServerConfig) -> TrustedProxies {
        TrustedProxies {
            nets: config
                .trusted_proxies
                .iter()
                .filter_map(|c| parse_cidr(c))
                .collect(),
            warned: Default::default(),
        }
    }

    fn trusted(&self, ip: &IpAddr) -> bool {
        self.nets.iter().any(|net| net.contains(ip))
    }

    pub fn client_ip(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        let peer = peer.to_canonical();
        if !self.trusted(&peer) {
            // A proxy we were not told about: every client behind it shares
            // its address for the per-IP limits, which one abuser can then
            // exhaust for all. Say so once.
            let forwarded =
                headers.contains_key("x-forwarded-for") || headers.contains_key("forwarded");
            if forwarded && !self.warned.swap(true, std::sync::atomic::Ordering::Relaxed) {
                tracing::warn!(
                    %peer,
                    "forwarding headers from a peer not in server.trusted_proxies: per-IP limits \
                     apply to the proxy's address; list the load balancer there"
                );
            }
            return peer;
        }
        let hops = forwarded_for(headers);
        // Rightmost first: the hop our trusted proxy saw.
        let mut client = peer;
        for hop in hops.iter().rev() {
            client = *hop;
            if !self.trusted(hop) {
                break;
            }
        }
        client
    }
}

/// The addresses in `X-Forwarded-For`, or else in `Forwarded: for=`, left to right.
fn forwarded_for(headers: &HeaderMap) -> Vec<IpAddr> {
    let xff: Vec<IpAddr> = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|s| parse_hop(s.trim()))
        .collect();
    if !xff.is_empty() {
        return xff;
    }
    headers
        .get_all("forwarded")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split([',', ';']))
        .filter_map(|pair| {
            let (k, v) = pair.trim().split_once('=')?;
            k.trim()
                .eq_ignore_ascii_case("for")
                .then(|| parse_hop(v.trim().trim_matches('"')))?
        })
        .collect()
}

/// `1.2.3.4`, `1.2.3.4:5678`, `2001:db8::1`, `[2001:db8::1]:5678`.
fn parse_hop(s: &str) -> Option<IpAddr> {
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Some(ip.to_canonical());
    }
    if let Some(rest) = s.strip_prefix('[') {
        return rest
            .split(']')
            .next()?
            .parse::<IpAddr>()
            .ok()
            .map(|ip| ip.to_canonical());
    }
    s.rsplit_once(':')?
        .0
        .parse::<IpAddr>()
        .ok()
        .map(|ip| ip.to_canonical())
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

#[derive(Default)]
struct Counts {
    total: usize,
    pending: usize,
    /// Per IP: (open, pending). Entries go when both reach zero.
    per_ip: HashMap<IpAddr, (usize, usize)>,
}

/// Socket accounting for `limits.max_*`.
pub struct ConnectionLimits {
    max: usize,
    per_ip: usize,
    max_pending: usize,
    pending_per_ip: usize,
    counts: Mutex<Counts>,
}

impl ConnectionLimits {
    pub fn new(config: &LimitsConfig) -> Arc<ConnectionLimits> {
        Arc::new(ConnectionLimits {
            max: config.max_connections,
            per_ip: config.max_connections_per_ip,
            max_pending: config.max_pending,
            pending_per_ip: config.max_pending_per_ip,
            counts: Mutex::default(),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Counts> {
        self.counts.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Reserves a place for a new, pending socket from `ip`.
    pub fn try_open(self: &Arc<Self>, ip: IpAddr) -> Result<SessionSlot, Refusal> {
        let mut c = self.lock();
        let (ip_open, ip_pending) = c.per_ip.get(&ip).copied().unwrap_or((0, 0));
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
        c.per_ip.insert(ip, (ip_open + 1, ip_pending + 1));
        Ok(SessionSlot {
            limits: self.clone(),
            ip,
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
    ip: IpAddr,
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
            if let Some(e) = c.per_ip.get_mut(&self.ip) {
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
        if let Some(e) = c.per_ip.get_mut(&self.ip) {
            e.0 -= 1;
            if pending {
                e.1 -= 1;
            }
            if *e == (0, 0) {
                c.per_ip.remove(&self.ip);
            }
        }
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
        }
    }

    pub fn is_blocked(&self, ip: IpAddr) -> bool {
        self.blocked
            .get(&ip)
            .is_some_and(|until| until > Instant::now())
    }

    /// Records a failure; returns true when it put the IP over its limit.
    pub fn record_failure(&self, ip: IpAddr) -> bool {
        let Some(limiter) = &self.limiter else {
            return false;
        };
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
    fn connection_counts() {
        let limits = ConnectionLimits::new(&LimitsConfig {
            max_connections: 3,
            max_connections_per_ip: 2,
            max_pending: 10,
            max_pending_per_ip: 1,
            ..LimitsConfig::default()
        });
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
