//! The shards of a Redis Cluster as the node needs to see them: which master owns
//! which slots (`CLUSTER SLOTS`), one probe channel on each shard (so the
//! subscription probe checks every shard, not just one), and whether each master
//! answers (for `/readyz` and `/stats`).

use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{RoutingInfo, SingleNodeRoutingInfo};
use redis::{RedisResult, Value};

use super::keys::{self, Keys};

/// One master and the slot ranges it serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Shard {
    pub(super) host: String,
    pub(super) port: u16,
    /// Inclusive ranges, sorted.
    pub(super) ranges: Vec<(u16, u16)>,
}

impl Shard {
    /// `host:port`, for logs and `/stats`.
    pub(super) fn address(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }

    /// How many slots it serves.
    pub(super) fn slot_count(&self) -> u32 {
        self.ranges
            .iter()
            .map(|&(lo, hi)| u32::from(hi.saturating_sub(lo)) + 1)
            .sum()
    }

    fn owns(&self, slot: u16) -> bool {
        self.ranges
            .iter()
            .any(|&(lo, hi)| (lo..=hi).contains(&slot))
    }
}

/// The cluster's masters and their slots, asked of any node.
pub(super) async fn shards(conn: &mut ClusterConnection) -> RedisResult<Vec<Shard>> {
    let reply: Value = redis::cmd("CLUSTER").arg("SLOTS").query_async(conn).await?;
    Ok(parse_slots(&reply))
}

fn parse_slots(reply: &Value) -> Vec<Shard> {
    let mut shards: Vec<Shard> = Vec::new();
    let Value::Array(ranges) = reply else {
        return shards;
    };
    for range in ranges {
        let Value::Array(fields) = range else {
            continue;
        };
        let (Some(Value::Int(lo)), Some(Value::Int(hi)), Some(Value::Array(master))) =
            (fields.first(), fields.get(1), fields.get(2))
        else {
            continue;
        };
        let (Some(host), Some(Value::Int(port))) = (master.first(), master.get(1)) else {
            continue;
        };
        let host = match host {
            Value::BulkString(b) => String::from_utf8_lossy(b).into_owned(),
            Value::SimpleString(s) => s.clone(),
            _ => continue,
        };
        let (Ok(lo), Ok(hi), Ok(port)) =
            (u16::try_from(*lo), u16::try_from(*hi), u16::try_from(*port))
        else {
            continue;
        };
        match shards.iter_mut().find(|s| s.host == host && s.port == port) {
            Some(shard) => shard.ranges.push((lo, hi)),
            None => shards.push(Shard {
                host,
                port,
                ranges: vec![(lo, hi)],
            }),
        }
    }
    for shard in &mut shards {
        shard.ranges.sort_unstable();
    }
    shards.sort_by(|a, b| a.ranges.cmp(&b.ranges));
    shards
}

/// One probe channel of `node` per shard: `P node:{NODE#i}:ch` with the first `i`
/// whose tag hashes to a slot the shard owns (`#` is never part of a node id, so
/// no other name is ever one of these).
pub(super) fn probe_channels(keys: &Keys, node: &str, shards: &[Shard]) -> Vec<String> {
    shards
        .iter()
        .filter_map(|shard| {
            (0u32..1_000_000)
                .map(|i| format!("{node}#{i}"))
                .find(|tag| shard.owns(keys::slot(&format!("{{{tag}}}"))))
                .map(|tag| keys.node_channel(&tag))
        })
        .collect()
}

/// `INFO memory` of `shard`'s master.
pub(super) async fn info_memory(
    conn: &mut ClusterConnection,
    shard: &Shard,
) -> RedisResult<String> {
    let reply = conn
        .route_command(redis::cmd("INFO").arg("memory").clone(), by_address(shard))
        .await?;
    redis::FromRedisValue::from_redis_value(reply).map_err(redis::RedisError::from)
}

fn by_address(shard: &Shard) -> RoutingInfo {
    RoutingInfo::SingleNode(SingleNodeRoutingInfo::ByAddress {
        host: shard.host.clone(),
        port: shard.port,
    })
}

/// Whether `shard`'s master answers a PING.
pub(super) async fn answers(conn: &mut ClusterConnection, shard: &Shard) -> bool {
    matches!(
        conn.route_command(redis::cmd("PING"), by_address(shard))
            .await,
        Ok(Value::SimpleString(_) | Value::BulkString(_) | Value::Okay)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(host: &str, port: i64) -> Value {
        Value::Array(vec![
            Value::BulkString(host.as_bytes().to_vec()),
            Value::Int(port),
            Value::BulkString(b"id".to_vec()),
        ])
    }

    #[test]
    fn slots_are_grouped_by_master_and_each_shard_gets_a_probe() {
        let reply = Value::Array(vec![
            Value::Array(vec![Value::Int(10923), Value::Int(16383), node("h", 3)]),
            Value::Array(vec![Value::Int(0), Value::Int(5460), node("h", 1)]),
            Value::Array(vec![Value::Int(5461), Value::Int(10922), node("h", 2)]),
        ]);
        let shards = parse_slots(&reply);
        assert_eq!(shards.len(), 3);
        assert_eq!(shards[0].address(), "h:1");
        let keys = Keys::new("p:");
        let probes = probe_channels(&keys, "node-a", &shards);
        assert_eq!(probes.len(), 3);
        for (probe, shard) in probes.iter().zip(&shards) {
            assert!(shard.owns(keys::slot(probe)), "{probe}");
            assert!(probe.starts_with("p:node:{node-a#"), "{probe}");
        }
    }
}
