//! A stateless WebRTC signaling node. Clients join rooms over WebSocket and
//! exchange SDP, ICE candidates and app messages; several nodes sharing one Redis
//! form one cluster, and a node without Redis runs standalone in memory.
//!
//! The contract is PROTOCOL.md; the design, DESIGN.md.
//!
//! # Layout
//! - [`config`]: settings from the environment (the only reader of it).
//! - [`auth`]: client tokens, minted tokens and the admin bearer.
//! - [`ids`]: validated room, user, node and session ids.
//! - [`protocol`]: every wire frame, error code and close code.
//! - [`envelope`]: what nodes publish to each other on a user's channel.
//! - [`crypto`]: sealing relayed frames on their way through Redis.
//! - [`broker`]: the seam to cluster state, with the memory engine and, under
//!   `broker/redis/`, everything that knows Redis (engine, keys, scripts, subscriber,
//!   node upkeep: heartbeat, dead-run cleanup, recovery after Redis restarts).
//! - [`registry`]: the sessions on this node, delivery to them and what each was told;
//!   it is the [`broker::Deliveries`] handler the engines hand deliveries to.
//! - [`incarnation`]: this node's run id, which the cluster registers and may declare dead.
//! - [`outbox`]: a session's bounded outbound queue and close signal, shared by the
//!   transport (which drains it) and the registry (which fills it).
//! - [`session`]: one task per WebSocket: join, relay, leave.
//! - [`http`]: REST, health, readiness and the WebSocket route.
//! - [`metrics`]: Prometheus metric names and recording helpers.
//! - [`state`]: [`state::AppState`], what every handler, session and task shares.
//! - [`password_gate`]: bounds the argon2 room-password checks running at once.
//! - [`app`]: the node assembled: background tasks, serving and the drain on shutdown.
//! - [`shutdown`]: the signals that stop the node.
//! - [`stats`]: this node's counters, rates and process figures for `/stats`.
//! - [`log_limit`]: a budget for log lines a client can trigger at will.
//! - [`telemetry`]: log setup (text or JSON) with caps on dependency log lines.
//!
//! Imports run one way (no module imports one that imports it back); data flows
//! client → session → broker → Redis → subscriber → registry → session.

// Deep async nesting (the command pool dials through Sentinel inside every
// pooled command) passes the default query depth of the compiler.
#![recursion_limit = "256"]

pub mod app;
pub mod auth;
pub mod broker;
pub mod cli;
pub mod config;
pub mod crypto;
pub mod envelope;
pub mod http;
pub mod ice;
pub mod ids;
pub mod incarnation;
pub mod log_limit;
pub mod metrics;
pub mod outbox;
pub mod password_gate;
pub mod protocol;
pub mod registry;
pub mod resume_token;
pub mod session;
pub mod shutdown;
pub mod state;
pub mod stats;
pub mod telemetry;
