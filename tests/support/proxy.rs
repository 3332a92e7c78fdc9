//! A freezable TCP proxy in front of Redis (hung middlebox, half-dead failover).

use std::sync::Mutex;

use super::util::lock;

/// A TCP proxy in front of a Redis port. [`TcpProxy::freeze`] makes every
/// connection open at that moment stop forwarding in both directions while both
/// of its sockets stay open (a hung middlebox, a half-dead failover), and lets new
/// connections through normally. Dropping the proxy closes everything.
pub struct TcpProxy {
    port: u16,
    /// One switch per connection accepted so far; `true` freezes it.
    switches: std::sync::Arc<Mutex<Vec<tokio::sync::watch::Sender<bool>>>>,
    accept_task: tokio::task::JoinHandle<()>,
}

impl TcpProxy {
    /// Listens on a free port of 127.0.0.1 and forwards to `127.0.0.1:upstream_port`.
    pub async fn start(upstream_port: u16) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the proxy on 127.0.0.1:0");
        let port = listener.local_addr().expect("proxy local_addr").port();
        let switches = std::sync::Arc::new(Mutex::new(Vec::new()));
        let registry = switches.clone();
        let accept_task = tokio::spawn(async move {
            // Owning the connection tasks here means aborting this task closes them all.
            let mut connections = tokio::task::JoinSet::new();
            loop {
                tokio::select! {
                    accepted = listener.accept() => {
                        let Ok((client, _)) = accepted else { continue };
                        let (switch, frozen) = tokio::sync::watch::channel(false);
                        lock(&registry).push(switch);
                        connections.spawn(proxy_connection(client, upstream_port, frozen));
                    }
                    Some(_) = connections.join_next() => {}
                }
            }
        });
        Self {
            port,
            switches,
            accept_task,
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `redis://127.0.0.1:PORT/0`, for a node's REDIS_URL.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// Freezes every connection accepted so far; returns how many were still open.
    pub fn freeze(&self) -> usize {
        let switches = lock(&self.switches);
        let open: Vec<_> = switches.iter().filter(|s| !s.is_closed()).collect();
        for switch in &open {
            switch.send_replace(true);
        }
        open.len()
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.accept_task.abort();
    }
}

async fn proxy_connection(
    mut client: tokio::net::TcpStream,
    upstream_port: u16,
    mut frozen: tokio::sync::watch::Receiver<bool>,
) {
    let Ok(mut upstream) = tokio::net::TcpStream::connect(("127.0.0.1", upstream_port)).await
    else {
        return; // Dropping the client socket refuses it, as a dead upstream would.
    };
    let froze = tokio::select! {
        _ = tokio::io::copy_bidirectional(&mut client, &mut upstream) => false,
        Ok(_) = frozen.wait_for(|frozen| *frozen) => true,
    };
    if froze {
        // Both sockets stay open and unread until the proxy is dropped.
        std::future::pending::<()>().await;
    }
}
