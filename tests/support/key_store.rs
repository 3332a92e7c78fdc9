//! Reading the keys the nodes wrote, wherever they live: on one `redis-server`,
//! or spread over the masters of a Redis Cluster (each key on the master that owns
//! its slot). Tests that check the Redis layout read through [`KeyStore`], so the
//! same test body runs on a single Redis and on a cluster.

use std::collections::{BTreeMap, BTreeSet};

use super::redis::RedisServer;
use super::redis_cluster::RedisCluster;

/// The read-only key inspection the layout and cleanup checks need.
pub trait KeyStore: Sync {
    /// `KEYS pattern` (on a cluster: over every master), sorted.
    fn keys(&self, pattern: &str) -> BTreeSet<String>;
    /// `TTL key`: seconds left, -1 without expiry, -2 when missing.
    fn ttl(&self, key: &str) -> i64;
    fn exists(&self, key: &str) -> bool;
    /// `TYPE key`.
    fn key_type(&self, key: &str) -> String;
    fn smembers(&self, key: &str) -> BTreeSet<String>;
    fn hgetall(&self, key: &str) -> BTreeMap<String, String>;
    /// Every key matching `pattern` with its type and content as text.
    fn dump(&self, pattern: &str) -> Vec<(String, String)>;
    /// Runs `args` (a command on `key`) on the server holding `key`, for tests
    /// that change Redis under the nodes; returns the reply as redis-cli prints it.
    fn command(&self, key: &str, args: &[&str]) -> String;
}

impl KeyStore for RedisServer {
    fn keys(&self, pattern: &str) -> BTreeSet<String> {
        RedisServer::keys(self, pattern)
    }
    fn ttl(&self, key: &str) -> i64 {
        RedisServer::ttl(self, key)
    }
    fn exists(&self, key: &str) -> bool {
        RedisServer::exists(self, key)
    }
    fn key_type(&self, key: &str) -> String {
        RedisServer::key_type(self, key)
    }
    fn smembers(&self, key: &str) -> BTreeSet<String> {
        RedisServer::smembers(self, key)
    }
    fn hgetall(&self, key: &str) -> BTreeMap<String, String> {
        RedisServer::hgetall(self, key)
    }
    fn dump(&self, pattern: &str) -> Vec<(String, String)> {
        RedisServer::dump(self, pattern)
    }
    fn command(&self, _key: &str, args: &[&str]) -> String {
        self.cli(args)
    }
}

impl RedisCluster {
    /// The server holding `key` now.
    fn holder(&self, key: &str) -> &RedisServer {
        self.node(self.master_of_key(key))
    }
}

impl KeyStore for RedisCluster {
    fn keys(&self, pattern: &str) -> BTreeSet<String> {
        self.masters()
            .into_iter()
            .flat_map(|port| self.keys_on(port, pattern))
            .collect()
    }
    fn ttl(&self, key: &str) -> i64 {
        self.holder(key).ttl(key)
    }
    fn exists(&self, key: &str) -> bool {
        self.holder(key).exists(key)
    }
    fn key_type(&self, key: &str) -> String {
        self.holder(key).key_type(key)
    }
    fn smembers(&self, key: &str) -> BTreeSet<String> {
        self.holder(key).smembers(key)
    }
    fn hgetall(&self, key: &str) -> BTreeMap<String, String> {
        self.holder(key).hgetall(key)
    }
    fn dump(&self, pattern: &str) -> Vec<(String, String)> {
        let mut all: Vec<(String, String)> = self
            .masters()
            .into_iter()
            .flat_map(|port| self.node(port).dump(pattern))
            .collect();
        all.sort();
        all
    }
    fn command(&self, key: &str, args: &[&str]) -> String {
        self.holder(key).cli(args)
    }
}
