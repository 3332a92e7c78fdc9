//! Harness for the integration tests: real `redis-server` and `signal-node`
//! processes, a WebSocket client whose every wait is bounded, and assertions on
//! the frame and USER shapes of PROTOCOL.md.
//!
//! It owns process lifetimes (everything it starts is killed on drop) and all
//! timeouts. It does not decide what a test expects: tests build the exact frames.
//!
//! One submodule per topic, all re-exported here (`use support::*;`): `util`
//! (timeouts, ids, ports, polling, temp dirs), `redis`, `key_store` (keys on one
//! Redis or over a Redis Cluster's masters), `nginx` (a real nginx in front of
//! nodes), `node`, `http`, `cluster`,
//! `client` (WebSocket), `assert` (frame builders and shapes), `proxy` (freezable
//! TCP proxy), `redis_watch` (keyspace watch, raw Redis taps), `sentinel` and
//! `redis_cluster` (a real Sentinel deployment, a real Redis Cluster), `resume` (a
//! client that resumes its session, PROTOCOL.md section 11), `traffic` (probes
//! exchanged while Redis fails over, and what they lost), `tls`; and
//! `security`, helpers of the security suites, used as `support::security::*`.
#![allow(dead_code)] // Each test binary uses a different part of the harness.

mod assert;
mod client;
mod cluster;
mod http;
mod key_store;
mod nginx;
mod node;
mod proxy;
mod redis;
mod redis_cluster;
mod redis_watch;
mod resume;
pub mod security;
mod sentinel;
mod tls;
mod traffic;
mod util;

// Glob re-exports: a binary that uses nothing of a module must not warn.
#[allow(unused_imports)]
pub use assert::*;
#[allow(unused_imports)]
pub use client::*;
#[allow(unused_imports)]
pub use cluster::*;
#[allow(unused_imports)]
pub use http::*;
#[allow(unused_imports)]
pub use key_store::*;
#[allow(unused_imports)]
pub use nginx::*;
#[allow(unused_imports)]
pub use node::*;
#[allow(unused_imports)]
pub use proxy::*;
#[allow(unused_imports)]
pub use redis::*;
#[allow(unused_imports)]
pub use redis_cluster::*;
#[allow(unused_imports)]
pub use redis_watch::*;
#[allow(unused_imports)]
pub use resume::*;
#[allow(unused_imports)]
pub use sentinel::*;
#[allow(unused_imports)]
pub use tls::*;
#[allow(unused_imports)]
pub use traffic::*;
#[allow(unused_imports)]
pub use util::*;

/// Generates `mod $name { standalone, redis }`: the async fn `$body(&Cluster)` runs
/// once on a standalone node and once on a Redis cluster (2 nodes unless `nodes = N`).
/// `env = [("VAR", "value"), ...]` configures every node.
#[allow(unused_macros)] // Not every test binary uses it.
macro_rules! both_engines {
    ($name:ident, $body:ident) => {
        both_engines!($name, nodes = 2, env = [], $body);
    };
    ($name:ident, nodes = $n:expr, $body:ident) => {
        both_engines!($name, nodes = $n, env = [], $body);
    };
    ($name:ident, env = [$($kv:expr),* $(,)?], $body:ident) => {
        both_engines!($name, nodes = 2, env = [$($kv),*], $body);
    };
    ($name:ident, nodes = $n:expr, env = [$($kv:expr),* $(,)?], $body:ident) => {
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn standalone() {
                let cluster = $crate::support::Cluster::standalone_with(&[$($kv),*]).await;
                super::$body(&cluster).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn redis() {
                let cluster = $crate::support::Cluster::redis_with($n, &[$($kv),*]).await;
                super::$body(&cluster).await;
            }
        }
    };
}

/// Generates `mod $name { redis_cluster }`: the async fn `$body(&Cluster)` runs on
/// nodes (2 unless `nodes = N`) in `REDIS_MODE=cluster` on a private 3-master Redis
/// Cluster (PROTOCOL.md section 13). Used beside `both_engines!` for the shared
/// scenarios that must hold on every deployment.
#[allow(unused_macros)] // Not every test binary uses it.
macro_rules! on_redis_cluster {
    ($name:ident, $body:ident) => {
        on_redis_cluster!($name, nodes = 2, env = [], $body);
    };
    ($name:ident, nodes = $n:expr, $body:ident) => {
        on_redis_cluster!($name, nodes = $n, env = [], $body);
    };
    ($name:ident, env = [$($kv:expr),* $(,)?], $body:ident) => {
        on_redis_cluster!($name, nodes = 2, env = [$($kv),*], $body);
    };
    ($name:ident, nodes = $n:expr, env = [$($kv:expr),* $(,)?], $body:ident) => {
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn redis_cluster() {
                let cluster = $crate::support::Cluster::redis_cluster_with($n, &[$($kv),*]).await;
                super::$body(&cluster).await;
            }
        }
    };
}
