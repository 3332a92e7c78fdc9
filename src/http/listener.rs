//! The node's accept loop, for plain HTTP and TLS alike, with the bounds that
//! `axum::serve` and axum-server lack: a connection that never finishes its TLS
//! handshake or request head is closed after `HTTP_HEADER_TIMEOUT_SECONDS` (hyper
//! also runs that timer over the idle wait between keep-alive requests), one that
//! stops moving bytes mid-request after `HTTP_IDLE_TIMEOUT_SECONDS`, and at most
//! `MAX_PENDING_CONNECTIONS` are served as HTTP at once (past it the oldest is
//! closed; see [`super::pending`]). Upgraded WebSockets are outside all three: hyper
//! hands their socket off and finishes the connection future, which drops its
//! pending ticket and idle watch, and the session's own heartbeat takes over.

use std::future::Future;
use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use super::activity::{Activity, Watched};
use super::pending::{Pending, Ticket};
use crate::config::HttpLimits;
use crate::log_limit::LogLimiter;

/// Pause after an accept error that is not about one connection (usually: out of
/// file descriptors), so that the loop does not spin while none is free.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(20);

/// The TLS certificate or key cannot be used; startup stops with this.
#[derive(Debug, thiserror::Error)]
pub enum TlsSetupError {
    /// The certificate file is unreadable or holds no PEM certificate.
    #[error("TLS_CERT_FILE {0}: {1}")]
    Cert(String, String),
    /// The key file is unreadable or holds no PEM private key.
    #[error("TLS_KEY_FILE {0}: {1}")]
    Key(String, String),
    /// rustls refused the pair (e.g. the key does not match the certificate).
    #[error("TLS_CERT_FILE/TLS_KEY_FILE: {0}")]
    Config(String),
}

/// Builds the TLS acceptor from PEM files (ring, HTTP/1.1 only).
pub fn tls_acceptor(cert: &str, key: &str) -> Result<TlsAcceptor, TlsSetupError> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};

    let cert_error =
        |e: &dyn std::fmt::Display| TlsSetupError::Cert(cert.to_owned(), e.to_string());
    let certs = CertificateDer::pem_file_iter(cert)
        .map_err(|e| cert_error(&e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| cert_error(&e))?;
    if certs.is_empty() {
        return Err(cert_error(&"no PEM certificate in the file"));
    }
    let private_key = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| TlsSetupError::Key(key.to_owned(), e.to_string()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsSetupError::Config(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, private_key)
        .map_err(|e| TlsSetupError::Config(e.to_string()))?;
    // The node speaks HTTP/1.1 only; WebSockets upgrade over it.
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// Serves `router` on `listener` (over TLS with `tls`) until `shutdown` resolves;
/// then stops accepting, lets in-flight requests finish within `drain`, and
/// returns. Upgraded WebSockets are not waited for here: app.rs drains them.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    tls: Option<TlsAcceptor>,
    limits: HttpLimits,
    shutdown: impl Future<Output = ()>,
    drain: Duration,
) {
    let pending = Pending::new(limits.max_pending);
    let connections = TaskTracker::new();
    let stopping = CancellationToken::new();
    let accept_errors = LogLimiter::new(5, Duration::from_secs(10));
    tokio::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => accepted,
        };
        let stream = match accepted {
            Ok((stream, _peer)) => stream,
            // The peer gave up before we accepted: nothing to do.
            Err(e) if is_connection_error(&e) => continue,
            Err(e) => {
                // Out of descriptors: closing the oldest pending connection frees one,
                // so the next connection (a health probe, a WebSocket) gets in.
                let evicted = pending.evict_oldest();
                if let Some(suppressed) = accept_errors.admit() {
                    tracing::warn!(error = %e, evicted, pending = pending.len(), suppressed, "accept failed");
                }
                tokio::select! {
                    () = &mut shutdown => break,
                    () = tokio::time::sleep(ACCEPT_BACKOFF) => continue,
                }
            }
        };
        // Signaling frames are small and latency-bound: without this, Nagle's
        // algorithm holds a frame back while the previous one is unacknowledged.
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!(error = %e, "TCP_NODELAY not set");
        }
        let connection = Connection {
            router: router.clone(),
            limits,
            ticket: pending.admit(),
            stopping: stopping.clone(),
        };
        match &tls {
            None => connections.spawn(connection.serve(stream).in_current_span()),
            Some(acceptor) => connections.spawn(
                connection
                    .serve_tls(acceptor.clone(), stream)
                    .in_current_span(),
            ),
        };
    }
    // Closing the socket refuses new connections at once (a load balancer moves on).
    drop(listener);
    stopping.cancel();
    connections.close();
    if tokio::time::timeout(drain, connections.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            left = connections.len(),
            "HTTP requests still in flight at the drain deadline"
        );
    }
}

/// Errors about one connection that `accept` reports; the listener is fine.
fn is_connection_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    )
}

/// One accepted connection until it closes or is upgraded.
struct Connection {
    router: Router,
    limits: HttpLimits,
    /// Held while the connection is HTTP; dropped at close or hand-off.
    ticket: Ticket,
    stopping: CancellationToken,
}

impl Connection {
    /// The TLS handshake counts against the header timeout: a client that opens a
    /// socket and sends nothing is a slowloris too.
    async fn serve_tls(self, acceptor: TlsAcceptor, stream: TcpStream) {
        let handshake = tokio::time::timeout(self.limits.header_timeout, acceptor.accept(stream));
        let tls = tokio::select! {
            done = handshake => match done {
                Ok(Ok(tls)) => tls,
                Ok(Err(e)) => {
                    tracing::debug!(error = %e, "TLS handshake failed");
                    return;
                }
                Err(_) => {
                    tracing::debug!("TLS handshake timed out");
                    return;
                }
            },
            () = self.ticket.evicted() => return,
            () = self.stopping.cancelled() => return,
        };
        self.serve(tls).await;
    }

    async fn serve<IO>(self, io: IO)
    where
        IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let activity = Activity::new();
        // The buffers outside the watch: a write collected in the batch is not
        // activity until it reaches the socket, and the watch (a clock read) is
        // paid once per batch, not once per WebSocket frame.
        let io = TokioIo::new(SocketBuffers::new(Watched::new(io, activity.clone())));
        let mut builder = hyper::server::conn::http1::Builder::new();
        builder
            .timer(TokioTimer::new())
            .header_read_timeout(self.limits.header_timeout);
        let conn = builder
            .serve_connection(io, TowerToHyperService::new(self.router))
            .with_upgrades();
        tokio::pin!(conn);
        let idle = idle_expired(&activity, self.limits.idle_timeout);
        tokio::pin!(idle);
        let mut stopping = false;
        loop {
            tokio::select! {
                // Closed, timed out (hyper's header timer), or handed off as a WebSocket.
                served = conn.as_mut() => {
                    if let Err(e) = served {
                        tracing::debug!(error = %e, "HTTP connection ended with an error");
                    }
                    return;
                }
                () = &mut idle => {
                    tracing::debug!(idle = ?self.limits.idle_timeout, "idle HTTP connection closed");
                    return;
                }
                () = self.ticket.evicted() => {
                    tracing::debug!("pending HTTP connection closed: MAX_PENDING_CONNECTIONS reached");
                    return;
                }
                // Finish the request in flight, then close (idle keep-alive closes now).
                () = self.stopping.cancelled(), if !stopping => {
                    stopping = true;
                    conn.as_mut().graceful_shutdown();
                }
            }
        }
    }
}

/// Resolves once no byte has moved for `timeout`.
async fn idle_expired(activity: &Activity, timeout: Duration) {
    loop {
        let deadline = activity.last() + timeout;
        if tokio::time::Instant::now().into_std() >= deadline {
            return;
        }
        tokio::time::sleep_until(deadline.into()).await;
    }
}

/// Most bytes one read takes from the socket when the reader's own buffer is
/// smaller (tungstenite's, `READ_BUFFER_BYTES` in ws.rs).
const READ_AHEAD_BYTES: usize = 8 * 1024;

/// Most bytes of small writes collected before they go to the socket without
/// waiting for a flush: a session's writer flushes after each burst of at most
/// 64 KiB (`WRITE_BURST_BYTES` in session/mod.rs), so a burst is one system call.
const WRITE_BATCH_BYTES: usize = 64 * 1024;

/// First allocation of the write batch: most bursts are a few small frames, and
/// starting here spares them the reallocations of growing from nothing.
const WRITE_BATCH_START: usize = 4 * 1024;

/// The socket's buffers, held only while they hold bytes, so that an idle
/// connection keeps none.
///
/// Reads: a read into a buffer smaller than [`READ_AHEAD_BYTES`] takes up to
/// that much from the socket into the stack, and keeps what did not fit on the
/// heap only until the next reads take it, so tungstenite's own read buffer can
/// stay small without a syscall per small chunk.
///
/// Writes: small writes collect here until a flush (or [`WRITE_BATCH_BYTES`]),
/// then go out in one system call, and the batch is freed. The WebSocket's own
/// write buffer is off (`write_buffer_size(0)` in ws.rs): tungstenite's buffer
/// keeps the capacity of the largest write it ever held for the connection's
/// life (a burst of frames, a few KiB in every idle session); this one is given
/// back after each flush. The batch is bounded, so a client that stops reading
/// only ever pins [`WRITE_BATCH_BYTES`] here: past it writes wait for the socket,
/// and tungstenite's buffer takes the rest under its own bound
/// (`max_write_buffer_size`).
struct SocketBuffers<IO> {
    io: IO,
    /// Bytes read from the socket and not yet handed out; empty (unallocated) when
    /// nothing is left.
    left: Vec<u8>,
    /// How much of `left` was handed out already.
    at: usize,
    /// Bytes accepted from writes and not yet written; unallocated when empty.
    out: Vec<u8>,
    /// How much of `out` the socket took already.
    out_at: usize,
}

impl<IO> SocketBuffers<IO> {
    fn new(io: IO) -> Self {
        Self {
            io,
            left: Vec::new(),
            at: 0,
            out: Vec::new(),
            out_at: 0,
        }
    }
}

impl<IO: AsyncWrite + Unpin> SocketBuffers<IO> {
    /// Writes the whole batch to the socket, then frees it.
    fn poll_write_out(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.out_at < self.out.len() {
            let n = ready!(Pin::new(&mut self.io).poll_write(cx, &self.out[self.out_at..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.out_at += n;
        }
        // Freed, not kept: an idle connection holds no write buffer.
        self.out = Vec::new();
        self.out_at = 0;
        Poll::Ready(Ok(()))
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for SocketBuffers<IO> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.at < this.left.len() {
            let n = buf.remaining().min(this.left.len() - this.at);
            buf.put_slice(&this.left[this.at..this.at + n]);
            this.at += n;
            if this.at == this.left.len() {
                // Freed, not kept: the next burst allocates what it needs.
                this.left = Vec::new();
                this.at = 0;
            }
            return Poll::Ready(Ok(()));
        }
        if buf.remaining() >= READ_AHEAD_BYTES {
            return Pin::new(&mut this.io).poll_read(cx, buf);
        }
        let mut stack = [MaybeUninit::<u8>::uninit(); READ_AHEAD_BYTES];
        let mut ahead = ReadBuf::uninit(&mut stack);
        ready!(Pin::new(&mut this.io).poll_read(cx, &mut ahead))?;
        let got = ahead.filled();
        let n = buf.remaining().min(got.len());
        buf.put_slice(&got[..n]);
        if n < got.len() {
            this.left = got[n..].to_vec();
            this.at = 0;
        }
        Poll::Ready(Ok(()))
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for SocketBuffers<IO> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.out.len() >= WRITE_BATCH_BYTES {
            ready!(this.poll_write_out(cx))?;
        }
        if this.out.is_empty() && buf.len() >= WRITE_BATCH_BYTES {
            // Large enough on its own: no copy.
            return Pin::new(&mut this.io).poll_write(cx, buf);
        }
        if this.out.capacity() == 0 {
            this.out = Vec::with_capacity(WRITE_BATCH_START.clamp(buf.len(), WRITE_BATCH_BYTES));
        }
        let n = buf.len().min(WRITE_BATCH_BYTES - this.out.len());
        this.out.extend_from_slice(&buf[..n]);
        Poll::Ready(Ok(n))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        // hyper's writes (HTTP responses) come vectored and already batched:
        // they go straight to the socket, behind whatever was collected before.
        let this = self.get_mut();
        ready!(this.poll_write_out(cx))?;
        Pin::new(&mut this.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_write_out(cx))?;
        Pin::new(&mut this.io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_write_out(cx))?;
        Pin::new(&mut this.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Small reads see every byte in order, across read-ahead chunks.
    #[tokio::test]
    async fn read_ahead_hands_out_every_byte_in_order() {
        let (mut client, server) = tokio::io::duplex(64 * 1024);
        let data: Vec<u8> = (0..40_000u32).map(|i| (i % 251) as u8).collect();
        client
            .write_all(&data)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        drop(client);
        let mut reader = SocketBuffers::new(server);
        let mut got = Vec::new();
        let mut small = [0u8; 100];
        loop {
            let n = reader
                .read(&mut small)
                .await
                .unwrap_or_else(|e| panic!("{e}"));
            if n == 0 {
                break;
            }
            got.extend_from_slice(&small[..n]);
        }
        assert_eq!(got, data);
        assert!(reader.left.capacity() == 0);
    }
}
