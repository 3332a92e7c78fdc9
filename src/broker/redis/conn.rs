//! One connection type for every command the engine sends, whatever `REDIS_MODE`
//! is: a pooled multiplexed connection or the relay's auto-reconnecting one on a
//! single Redis (or the master Sentinel names), or a Redis Cluster connection that
//! routes each command to the shard owning its slot and follows `MOVED`/`ASK`.
//!
//! Every script and most commands touch one slot, so they run unchanged on all
//! three. The exceptions are the pipelines that batch commands for many rooms,
//! users or nodes (TTL refresh, room counts, heartbeats, mailbox reads): a cluster
//! refuses a pipeline across slots, so [`query_per_slot`] splits those per slot.

use std::collections::HashMap;

use redis::aio::{ConnectionLike, ConnectionManager, MultiplexedConnection};
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, Pipeline, RedisFuture, RedisResult, Value};

use super::keys;

/// A connection to the primary (single, sentinel) or to the whole cluster.
#[derive(Clone)]
pub(super) enum RedisConn {
    /// A pooled connection to one server.
    Multiplexed(MultiplexedConnection),
    /// The relay connection to one server, reconnecting by itself.
    Managed(ConnectionManager),
    /// The node's connection to a Redis Cluster (cheap to clone: a shared sender).
    Cluster(ClusterConnection),
}

impl ConnectionLike for RedisConn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Self::Multiplexed(c) => c.req_packed_command(cmd),
            Self::Managed(c) => c.req_packed_command(cmd),
            Self::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Self::Multiplexed(c) => c.req_packed_commands(pipeline, offset, count),
            Self::Managed(c) => c.req_packed_commands(pipeline, offset, count),
            Self::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Self::Multiplexed(c) => c.get_db(),
            Self::Managed(c) => c.get_db(),
            Self::Cluster(c) => c.get_db(),
        }
    }
}

/// Reads a reply (e.g. the array [`query_per_slot`] returns) as `T`.
pub(super) fn parse<T: redis::FromRedisValue>(value: Value) -> RedisResult<T> {
    T::from_redis_value(value).map_err(redis::RedisError::from)
}

/// The slot of a command's key (the first argument; for `EVALSHA` the first key),
/// which is where a cluster routes it. The engine's batched commands all name one.
fn slot_of(cmd: &Cmd) -> Option<u16> {
    let args: Vec<&[u8]> = cmd
        .args_iter()
        .filter_map(|arg| match arg {
            redis::Arg::Simple(bytes) => Some(bytes),
            _ => None,
        })
        .collect();
    let name = args.first()?;
    let key = if name.eq_ignore_ascii_case(b"EVALSHA") || name.eq_ignore_ascii_case(b"EVAL") {
        args.get(3)?
    } else {
        args.get(1)?
    };
    Some(keys::slot(&String::from_utf8_lossy(key)))
}

/// Runs `cmds` and returns their replies in order: as one pipeline on a single
/// server, as one pipeline per slot (concurrently) on a cluster. No command may be
/// marked ignored: every command has a reply in the result.
pub(super) async fn query_per_slot(
    conn: &mut RedisConn,
    cmds: Vec<Cmd>,
) -> RedisResult<Vec<Value>> {
    if cmds.is_empty() {
        return Ok(Vec::new());
    }
    let RedisConn::Cluster(cluster) = conn else {
        let mut pipe = redis::pipe();
        for cmd in cmds {
            pipe.add_command(cmd);
        }
        return pipe.query_async(conn).await;
    };
    // Commands grouped by slot, each with its position in `cmds`.
    let mut groups: HashMap<Option<u16>, Vec<(usize, Cmd)>> = HashMap::new();
    for (i, cmd) in cmds.into_iter().enumerate() {
        groups.entry(slot_of(&cmd)).or_default().push((i, cmd));
    }
    let total: usize = groups.values().map(Vec::len).sum();
    let runs = groups.into_values().map(|group| {
        let mut conn = cluster.clone();
        async move {
            let mut pipe = redis::pipe();
            let mut positions = Vec::with_capacity(group.len());
            for (i, cmd) in group {
                positions.push(i);
                pipe.add_command(cmd);
            }
            let replies: Vec<Value> = pipe.query_async(&mut conn).await?;
            Ok::<_, redis::RedisError>(positions.into_iter().zip(replies).collect::<Vec<_>>())
        }
    });
    let mut ordered: Vec<Option<Value>> = vec![None; total];
    for group in futures::future::try_join_all(runs).await? {
        for (i, reply) in group {
            if let Some(slot) = ordered.get_mut(i) {
                *slot = Some(reply);
            }
        }
    }
    Ok(ordered
        .into_iter()
        .map(|v| v.unwrap_or(Value::Nil))
        .collect())
}
