//! Redis Cluster changing under the nodes: a slot moved by a resharding.
//! Found by `scripts/cluster-failover.sh`: the moved groups went silent for
//! good. (A lost primary is covered by that script, with replicas.)

mod common;

use std::time::Duration;

use common::redis_servers::*;
use common::*;
use serde_json::json;

/// The id and port of the primary that owns `slot`.
fn owner_of(rc: &RedisCluster, slot: u16) -> (String, u16) {
    for line in redis_cli(rc.nodes[0].port, &["cluster", "nodes"]) {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if !fields.get(2).is_some_and(|f| f.contains("master")) {
            continue;
        }
        let owns = fields[8..].iter().any(|range| {
            let mut ends = range.split('-').map(|n| n.parse::<u16>().ok());
            match (ends.next().flatten(), ends.next().flatten()) {
                (Some(a), Some(b)) => (a..=b).contains(&slot),
                (Some(a), None) => a == slot,
                _ => false,
            }
        });
        if owns {
            let port = fields[1].split([':', '@']).nth(1).unwrap().parse().unwrap();
            return (fields[0].to_string(), port);
        }
    }
    panic!("no owner of slot {slot}");
}

fn node_id(port: u16) -> String {
    redis_cli(port, &["cluster", "myid"]).remove(0)
}

fn slot_of(rc: &RedisCluster, channel: &str) -> u16 {
    redis_cli(rc.nodes[0].port, &["cluster", "keyslot", channel])[0]
        .parse()
        .unwrap()
}

/// Moves `slot` (and any keys in it) from its owner to `to`, as
/// `redis-cli --cluster reshard` does, one slot.
fn move_slot(rc: &RedisCluster, slot: u16, to: u16) {
    let (from_id, from) = owner_of(rc, slot);
    let to_id = node_id(to);
    let s = slot.to_string();
    redis_cli(to, &["cluster", "setslot", &s, "importing", &from_id]);
    redis_cli(from, &["cluster", "setslot", &s, "migrating", &to_id]);
    loop {
        let keys = redis_cli(from, &["cluster", "getkeysinslot", &s, "100"]);
        if keys.is_empty() {
            break;
        }
        let mut args = vec!["migrate", "127.0.0.1"];
        let to_port = to.to_string();
        args.extend([to_port.as_str(), "", "0", "5000", "keys"]);
        args.extend(keys.iter().map(String::as_str));
        redis_cli(from, &args);
    }
    for port in rc.ports() {
        redis_cli(port, &["cluster", "setslot", &s, "node", &to_id]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resharded_group_is_resubscribed_on_its_new_owner() {
    let rc = RedisCluster::start(3);
    let pg = PgDb::create().await;
    let dir = tempfile::tempdir().unwrap();
    let prefix = RedisPrefix::random();
    let cfg = |n| redis_node_config(dir.path(), n, &rc.url(), &prefix, &pg.url);
    let a = spawn(cfg("node-a")).await;
    let b = spawn(cfg("node-b")).await;
    let token = a.issue_token("1").await;
    let group = "market.AAPL";
    let channel = format!("{prefix}group:{group}");
    let mut clients = Vec::new();
    for n in [&a, &b] {
        let (mut client, _) = Client::authed(&n.ws_url(), &token).await;
        client.subscribe(group).await;
        clients.push(client);
    }
    let slot = slot_of(&rc, &channel);
    let (_, from) = owner_of(&rc, slot);
    let to = rc.ports().into_iter().find(|&p| p != from).unwrap();
    move_slot(&rc, slot, to);
    // Redis dropped both nodes' subscriptions on the old owner; each node
    // notices the move and subscribes on the new one.
    eventually(
        Duration::from_secs(10),
        "both nodes subscribed on the new owner",
        || async {
            redis_cli(to, &["pubsub", "shardnumsub", &channel])
                .get(1)
                .map(String::as_str)
                == Some("2")
        },
    )
    .await;
    a.publish(group, json!("after the move")).await;
    for client in &mut clients {
        let m = client.recv_json().await;
        assert_eq!(
            (m["group"].as_str(), &m["data"]),
            (Some(group), &json!("after the move"))
        );
    }
    a.shutdown().await;
    b.shutdown().await;
}
