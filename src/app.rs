//! The node assembled: its state ([`crate::state`]), the router, background tasks,
//! and the drain.

use std::future::Future;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use metrics_exporter_prometheus::PrometheusHandle;
use tracing::Instrument;

use crate::broker::NodeStatus;
use crate::config::Config;
use crate::state::AppState;

/// How long sessions get to say goodbye and clean Redis after a shutdown signal;
/// with the steps around it the process exits well within 10 s.
const DRAIN_DEADLINE: Duration = Duration::from_secs(7);
/// How long background tasks get to stop after the sessions are gone.
const BACKGROUND_DEADLINE: Duration = Duration::from_secs(1);

/// Serves on `listener` until `shutdown` resolves, then drains:
/// 1. mark draining (`/readyz` 503), stop accepting;
/// 2. tell the cluster this run drains, then close every session (`shutdown` with
///    `retry_after_ms`, 1001), each relaying what its client sent until the close
///    reply, then detaching (resume on) or leaving its room;
/// 3. wait for the sessions, bounded by [`DRAIN_DEADLINE`];
/// 4. stop the background tasks.
pub async fn run(
    listener: TcpListener,
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let state = AppState::new(config).map_err(std::io::Error::other)?;
    let addr = listener.local_addr()?;
    let config = state.config.clone();
    match &config.redis {
        Some(target) => tracing::info!(
            %addr, node_id = %config.node_id, mode = "redis", redis = %target.display,
            key_prefix = %config.key_prefix, "signal-node listening (cluster node)"
        ),
        None => tracing::info!(
            %addr, node_id = %config.node_id, mode = "standalone",
            "signal-node listening (standalone: no Redis configured, state in memory)"
        ),
    }

    log_security(&config);
    let background = CancellationToken::new();
    let background_tasks = TaskTracker::new();
    // Spawned tasks keep the node's span, so their log lines carry the node id.
    let broker = state.broker.clone();
    let cancel = background.clone();
    background_tasks.spawn(async move { broker.run(cancel).await }.in_current_span());
    background_tasks.spawn(refresh_ttls(state.clone(), background.clone()).in_current_span());
    let broker = state.broker.clone();
    let counted = state.clone();
    let node = NodeStatus {
        addr,
        connections: Box::new(move || counted.connections()),
    };
    let cancel = background.clone();
    background_tasks.spawn(async move { broker.upkeep(node, cancel).await }.in_current_span());
    background_tasks.spawn(
        crate::stats::run_sampler(
            state.stats.clone(),
            state.clone(),
            config.alert_connection_spike,
            background.clone(),
        )
        .in_current_span(),
    );
    if let Some(handle) = state.metrics.clone() {
        background_tasks.spawn(metrics_upkeep(handle, background.clone()));
    }
    crate::metrics::redis_up(true);

    let draining = state.clone();
    let stop_accepting = async move {
        shutdown.await;
        tracing::info!(
            sessions = draining.registry.len(),
            "shutting down: draining sessions"
        );
        draining.start_draining();
        // Before any session closes: a client that resumes elsewhere at once finds
        // its old session draining and waits until what it sent is relayed.
        draining.broker.draining().await;
        draining.sessions.cancel();
    };
    let router = crate::http::router(state.clone());
    let tls = match &config.security.tls {
        None => None,
        Some((cert, key)) => {
            Some(crate::http::listener::tls_acceptor(cert, key).map_err(std::io::Error::other)?)
        }
    };
    crate::http::listener::serve(
        listener,
        router,
        tls,
        config.http,
        stop_accepting,
        DRAIN_DEADLINE,
    )
    .await;

    state.sessions.cancel();
    state.tracker.close();
    if tokio::time::timeout(DRAIN_DEADLINE, state.tracker.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            left = state.tracker.len(),
            "drain deadline passed; closing the rest"
        );
    }
    background.cancel();
    background_tasks.close();
    let _ = tokio::time::timeout(BACKGROUND_DEADLINE, background_tasks.wait()).await;
    tracing::info!("signal-node stopped");
    Ok(())
}

/// Says at startup how the node is protected (never the secrets themselves).
fn log_security(config: &Config) {
    let s = &config.security;
    if s.admin_token.is_none() {
        tracing::info!(
            "admin API disabled (ADMIN_TOKEN unset): admin endpoints answer 403 admin_disabled"
        );
    }
    tracing::info!(
        auth = if s.auth.is_some() { "jwt" } else { "none" },
        tls = s.tls.is_some(),
        token_issuing = s.token_secret.is_some(),
        origins = ?s.allowed_origins,
        payload_encryption = s.payload_key.is_some(),
        "security settings"
    );
    // The IceServers Debug form shows counts and URLs, never the TURN secret.
    tracing::info!(ice = ?config.ice, "ICE servers handed to clients");
}

/// The exporter keeps histograms bounded only if its upkeep runs.
async fn metrics_upkeep(handle: PrometheusHandle, cancel: CancellationToken) {
    let mut tick = tokio::time::interval(Duration::from_secs(5));
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tick.tick() => handle.run_upkeep(),
        }
    }
}

/// Keeps connected users' keys alive: every third of the TTL, one pipelined
/// EXPIRE per local user and room. A node that dies stops refreshing, so its
/// users' keys still expire at the TTL.
async fn refresh_ttls(state: AppState, cancel: CancellationToken) {
    let period = (state.config.room_ttl / 3).max(Duration::from_millis(500));
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        let members: Vec<_> = state
            .registry
            .snapshot()
            .into_iter()
            .map(|(user, handle)| (user, handle.room_id))
            .collect();
        if let Err(e) = state.broker.refresh(&members).await {
            tracing::warn!(error = %e, users = members.len(), "TTL refresh failed");
        }
    }
}
