//! What every handler, session and background task of the node shares: the
//! [`AppState`]. It sits in a module of its own so that the modules using it
//! (http, session, the node assembly in [`crate::app`]) import it from here and
//! nothing imports back into them.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use metrics_exporter_prometheus::PrometheusHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::auth::Verifier;
use crate::broker::{Broker, BrokerError, EngineSettings};
use crate::config::Config;
use crate::incarnation::{Incarnation, RunId};
use crate::password_gate::PasswordGate;
use crate::registry::Registry;
use crate::stats::{NodeGauges, Stats};

/// What every handler and session shares. Cheap to clone.
#[derive(Clone)]
pub struct AppState {
    /// The cluster engine.
    pub broker: Arc<Broker>,
    /// Sessions on this node.
    pub registry: Arc<Registry>,
    /// Settings.
    pub config: Arc<Config>,
    /// Parent of every session's close signal; cancelled to drain.
    pub sessions: CancellationToken,
    /// Owns every session task, so the drain can wait for them (axum does not wait
    /// for upgraded connections).
    pub tracker: TaskTracker,
    draining: Arc<AtomicBool>,
    connections: Arc<AtomicUsize>,
    /// Client token verification, in `AUTH_MODE=jwt`.
    pub verifier: Option<Arc<Verifier>>,
    /// Counters and rates for `/stats`.
    pub stats: Arc<Stats>,
    /// Renders `/metrics`; `None` when another recorder owns the process (tests).
    pub metrics: Option<PrometheusHandle>,
    /// Bounds the argon2 room-password checks running at once.
    pub passwords: Arc<PasswordGate>,
    /// This node's current run, shared with the broker and the upkeep.
    pub incarnation: Arc<Incarnation>,
}

/// One admitted WebSocket; the slot is given back when the session ends.
pub struct ConnectionSlot(Arc<AtomicUsize>);

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        let now = self.0.fetch_sub(1, Ordering::AcqRel) - 1;
        metrics::gauge!(crate::metrics::CONNECTIONS).set(now as f64);
    }
}

impl AppState {
    /// Builds the engine the configuration asks for.
    pub fn new(config: Config) -> Result<Self, BrokerError> {
        let registry = Arc::new(Registry::new());
        let incarnation = Arc::new(Incarnation::new());
        let settings = EngineSettings {
            redis: config.redis.as_ref(),
            key_prefix: &config.key_prefix,
            node_id: config.node_id.clone(),
            room_ttl: config.room_ttl,
            payload_key: config.security.payload_key.as_ref(),
            resume: crate::broker::ResumeSettings::new(
                config.resume_grace,
                config.resume_buffer,
                config.ping_interval,
            ),
        };
        let broker = Broker::new(settings, registry.clone(), incarnation.clone())?;
        let verifier = Verifier::new(&config.security).map(Arc::new);
        Ok(Self {
            broker: Arc::new(broker),
            registry,
            config: Arc::new(config),
            sessions: CancellationToken::new(),
            tracker: TaskTracker::new(),
            draining: Arc::new(AtomicBool::new(false)),
            connections: Arc::new(AtomicUsize::new(0)),
            verifier,
            stats: Arc::new(Stats::default()),
            metrics: crate::metrics::install(),
            passwords: Arc::new(PasswordGate::per_core()),
            incarnation,
        })
    }

    /// Takes a connection slot, or `None` when the node is at `MAX_CONNECTIONS`.
    pub fn try_admit(&self) -> Option<ConnectionSlot> {
        let before = self.connections.fetch_add(1, Ordering::AcqRel);
        metrics::gauge!(crate::metrics::CONNECTIONS).set((before + 1) as f64);
        let slot = ConnectionSlot(self.connections.clone());
        (before < self.config.max_connections).then_some(slot)
    }

    /// WebSocket sessions open on this node, including ones still joining.
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::Acquire)
    }

    /// This node's current run once the cluster knows it; `None` while the node
    /// is starting (or re-registering), when it is not ready and refuses sessions.
    pub fn registered_run(&self) -> Option<RunId> {
        self.broker.registered_run(&self.incarnation)
    }

    /// Whether the node is shutting down (readiness fails, new sessions are refused).
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    /// Marks the node as shutting down: from now on `/readyz` fails and new
    /// sessions are refused.
    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::Release);
    }
}

/// The sampler of [`crate::stats`] reads the node through this, so stats does not
/// import the state.
impl NodeGauges for AppState {
    async fn ready(&self) -> bool {
        !self.is_draining() && self.broker.ready().await
    }

    fn rooms(&self) -> usize {
        self.registry.rooms().len()
    }

    fn connections(&self) -> usize {
        AppState::connections(self)
    }
}
