//! Per-node figures from each node's Prometheus `/metrics` (`--metrics-url`),
//! read at the same moments as the CPU snapshots, so that a run over several
//! nodes reports each node's deliveries and CPU per delivery.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use serde_json::{Value, json};

/// Series read from `/metrics`: counters (deltas are reported) and gauges
/// (the value at the end). Labelled series are summed over their labels,
/// except `wsgate_connections`, which is read for `state="authenticated"`.
const COUNTERS: [&str; 3] = [
    "wsgate_messages_delivered_total",
    "wsgate_messages_published_total",
    "wsgate_messages_dropped_total",
];
const AUTHENTICATED: &str = "wsgate_connections{state=\"authenticated\"}";
const GROUPS: &str = "wsgate_groups";

pub struct Scraper {
    client: reqwest::Client,
    urls: Vec<String>,
}

/// One reading of one node (`None`: it did not answer).
pub type Reading = Option<BTreeMap<String, f64>>;

impl Scraper {
    pub fn new(urls: &[String]) -> Result<Scraper, String> {
        for u in urls {
            let rest = u
                .strip_prefix("http://")
                .ok_or_else(|| format!("{u}: only http:// metrics URLs are supported"))?;
            let host: SocketAddr = rest
                .split('/')
                .next()
                .unwrap_or_default()
                .parse()
                .map_err(|_| format!("{u}: host must be IP:PORT"))?;
            if !host.ip().is_loopback() {
                return Err(format!("{u}: only loopback addresses may be read"));
            }
        }
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .build()
            .map_err(|e| e.to_string())?;
        Ok(Scraper {
            client,
            urls: urls.to_vec(),
        })
    }

    pub fn is_empty(&self) -> bool {
        self.urls.is_empty()
    }

    /// Reads every node, one after the other (a few ms each on loopback).
    pub async fn read(&self) -> Vec<Reading> {
        let mut out = Vec::with_capacity(self.urls.len());
        for u in &self.urls {
            let text = match self.client.get(u).send().await {
                Ok(r) if r.status().is_success() => r.text().await.ok(),
                _ => None,
            };
            out.push(text.map(|t| parse(&t)));
        }
        out
    }

    /// The `nodes` array of a result: node i is `--metrics-url` i with
    /// `--server-pid` i and its CPU seconds `cpu_each[i]` over the window.
    pub fn report(
        &self,
        before: &[Reading],
        after: &[Reading],
        pids: &[u32],
        cpu_each: &[f64],
    ) -> Value {
        let mut nodes = Vec::new();
        for (i, url) in self.urls.iter().enumerate() {
            let (Some(Some(b)), Some(Some(a))) = (before.get(i), after.get(i)) else {
                nodes.push(json!({"metrics_url": url, "error": "no /metrics reading"}));
                continue;
            };
            let delta = |k: &str| {
                (a.get(k).copied().unwrap_or(0.0) - b.get(k).copied().unwrap_or(0.0)).max(0.0)
            };
            let delivered = delta(COUNTERS[0]);
            let cpu = cpu_each.get(i).copied();
            nodes.push(json!({
                "metrics_url": url,
                "pid": pids.get(i),
                "cpu_s": cpu.map(|c| (c * 1000.0).round() / 1000.0),
                "delivered": delivered,
                "published": delta(COUNTERS[1]),
                "dropped": delta(COUNTERS[2]),
                "connections_authenticated": a.get(AUTHENTICATED),
                "groups": a.get(GROUPS),
                "cpu_us_per_delivery": match cpu {
                    Some(c) if delivered > 0.0 => json!((c * 1e6 / delivered * 1000.0).round() / 1000.0),
                    _ => Value::Null,
                },
            }));
        }
        Value::Array(nodes)
    }
}

/// The wanted series of a Prometheus text exposition.
fn parse(text: &str) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    for line in text.lines() {
        if line.starts_with('#') {
            continue;
        }
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let Ok(v) = value.parse::<f64>() else {
            continue;
        };
        let name = series.split('{').next().unwrap_or(series);
        if COUNTERS.contains(&name) || name == GROUPS {
            *out.entry(name.to_string()).or_insert(0.0) += v;
        } else if series == AUTHENTICATED {
            out.insert(series.to_string(), v);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_counters_and_gauges() {
        let text = "# HELP x\nwsgate_messages_delivered_total 120\n\
                    wsgate_messages_dropped_total{reason=\"slow\"} 2\n\
                    wsgate_messages_dropped_total{reason=\"broker_lag\"} 3\n\
                    wsgate_connections{state=\"pending\"} 4\n\
                    wsgate_connections{state=\"authenticated\"} 700\n\
                    wsgate_groups 55\nwsgate_messages_delivered_total_x 9\n";
        let m = parse(text);
        assert_eq!(m["wsgate_messages_delivered_total"], 120.0);
        assert_eq!(m["wsgate_messages_dropped_total"], 5.0);
        assert_eq!(m[AUTHENTICATED], 700.0);
        assert_eq!(m[GROUPS], 55.0);
        assert_eq!(m.len(), 4);
    }

    #[test]
    fn only_loopback() {
        assert!(Scraper::new(&["http://127.0.0.1:9090/metrics".into()]).is_ok());
        assert!(Scraper::new(&["http://10.0.0.1:9090/metrics".into()]).is_err());
    }
}
