//! TLS: self-signed certificates, blocking HTTPS and `wss://` clients, and a
//! redis-server with a TLS port (`rediss://`).

use std::fs::{self, File};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::sync::Mutex;

use serde_json::Value;

use super::redis::{wait_for_pong, RedisServer};
use super::util::{free_port, TempDir, TIMEOUT};

/// A self-signed certificate for `localhost` and `127.0.0.1`, written as PEM files.
pub struct SelfSigned {
    pub cert_der: Vec<u8>,
    pub cert_path: String,
    pub key_path: String,
    _dir: TempDir,
}

impl SelfSigned {
    pub fn generate() -> Self {
        let certified = rcgen::generate_simple_self_signed(vec![
            "localhost".to_owned(),
            "127.0.0.1".to_owned(),
        ])
        .expect("generate a self-signed certificate");
        let dir = TempDir::new();
        let cert_path = dir.write("cert.pem", certified.cert.pem().as_bytes());
        let key_path = dir.write("key.pem", certified.signing_key.serialize_pem().as_bytes());
        Self {
            cert_der: certified.cert.der().to_vec(),
            cert_path,
            key_path,
            _dir: dir,
        }
    }

    /// A rustls client configuration that trusts only this certificate.
    pub fn client_config(&self) -> std::sync::Arc<rustls::ClientConfig> {
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(rustls::pki_types::CertificateDer::from(
                self.cert_der.clone(),
            ))
            .expect("add the self-signed certificate as a root");
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("default TLS versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        std::sync::Arc::new(config)
    }
}

/// A blocking TLS stream to `127.0.0.1:port` verified as `localhost`; every read
/// and write is bounded by TIMEOUT.
pub type TlsStream = rustls::StreamOwned<rustls::ClientConnection, TcpStream>;

pub fn tls_connect(
    port: u16,
    config: std::sync::Arc<rustls::ClientConfig>,
) -> Result<TlsStream, String> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let tcp = TcpStream::connect_timeout(&addr, TIMEOUT).map_err(|e| format!("connect: {e}"))?;
    tcp.set_read_timeout(Some(TIMEOUT))
        .expect("set_read_timeout");
    tcp.set_write_timeout(Some(TIMEOUT))
        .expect("set_write_timeout");
    let name = rustls::pki_types::ServerName::try_from("localhost").expect("server name");
    let mut conn =
        rustls::ClientConnection::new(config, name).map_err(|e| format!("TLS client: {e}"))?;
    let mut tcp = tcp;
    // Complete the handshake now, so that certificate errors surface here.
    while conn.is_handshaking() {
        conn.complete_io(&mut tcp)
            .map_err(|e| format!("TLS handshake: {e}"))?;
    }
    Ok(rustls::StreamOwned::new(conn, tcp))
}

/// Blocking `GET path` over TLS (HTTP/1.1, `Connection: close`) → (status, body).
pub fn https_get_blocking(
    port: u16,
    path: &str,
    config: std::sync::Arc<rustls::ClientConfig>,
) -> Result<(u16, String), String> {
    let mut stream = tls_connect(port, config)?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    stream
        .write_all(request.as_bytes())
        .map_err(|e| format!("write request: {e}"))?;
    let mut raw = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => raw.extend_from_slice(&buf[..n]),
            // A peer that closes without close_notify: keep what arrived.
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && !raw.is_empty() => break,
            Err(e) => return Err(format!("read response: {e}")),
        }
    }
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("no end of headers in {text:?}"))?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("bad status line in {head:?}"))?;
    let chunked = head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked");
    let body = if chunked {
        dechunk(body)
    } else {
        body.to_owned()
    };
    Ok((status, body))
}

fn dechunk(mut rest: &str) -> String {
    let mut out = String::new();
    while let Some((size, after)) = rest.split_once("\r\n") {
        let Ok(size) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if size == 0 || after.len() < size {
            break;
        }
        out.push_str(&after[..size]);
        rest = after[size..].trim_start_matches("\r\n");
    }
    out
}

/// A blocking WebSocket client over TLS (tungstenite over rustls), for `wss://`
/// tests without a TLS feature in tokio-tungstenite. Reads are bounded by TIMEOUT.
pub struct BlockingWs {
    ws: tungstenite::WebSocket<TlsStream>,
    label: String,
}

impl BlockingWs {
    /// Connects to `wss://localhost:{port}{path}`.
    pub fn connect(
        port: u16,
        path: &str,
        config: std::sync::Arc<rustls::ClientConfig>,
    ) -> Result<Self, String> {
        let stream = tls_connect(port, config)?;
        let url = format!("wss://localhost:{port}{path}");
        let (ws, _response) =
            tungstenite::client::client(url.as_str(), stream).map_err(|e| format!("{url}: {e}"))?;
        Ok(Self { ws, label: url })
    }

    pub fn send_json(&mut self, frame: &Value) {
        self.ws
            .send(tungstenite::Message::text(frame.to_string()))
            .unwrap_or_else(|e| panic!("{}: send failed: {e}", self.label));
    }

    /// The next JSON text frame (ping/pong skipped).
    pub fn recv_json(&mut self) -> Value {
        loop {
            match self.ws.read() {
                Ok(tungstenite::Message::Text(text)) => {
                    return serde_json::from_str(&text).unwrap_or_else(|e| {
                        panic!("{}: frame is not JSON ({e}): {text:?}", self.label)
                    })
                }
                Ok(tungstenite::Message::Ping(_) | tungstenite::Message::Pong(_)) => {}
                Ok(other) => panic!("{}: expected a JSON text frame, got {other:?}", self.label),
                Err(e) => panic!("{}: no frame (within {TIMEOUT:?}): {e}", self.label),
            }
        }
    }

    pub fn close(mut self) {
        let _ = self.ws.close(None);
        // Drain until the server's close arrives or the stream ends (bounded by the read timeout).
        while self.ws.read().is_ok() {}
    }
}

/// A redis-server listening on a plain port (for `redis-cli` and PING) and on a TLS
/// port (for the nodes, `rediss://`). Killed on drop.
pub struct TlsRedis {
    pub server: RedisServer,
    tls_port: u16,
    _cert: SelfSigned,
}

impl TlsRedis {
    pub fn tls_port(&self) -> u16 {
        self.tls_port
    }

    /// `rediss://127.0.0.1:TLS_PORT/0#insecure` (self-signed: no verification).
    pub fn url(&self) -> String {
        format!("rediss://127.0.0.1:{}/0#insecure", self.tls_port)
    }
}

impl RedisServer {
    /// Starts a redis-server with TLS on a second port. `None` (with the reason on
    /// stderr) when this redis-server was built without TLS.
    pub fn start_tls() -> Option<TlsRedis> {
        let cert = SelfSigned::generate();
        let mut last_error = String::new();
        for _attempt in 0..3 {
            let port = free_port();
            let tls_port = free_port();
            let log = TempDir::new();
            let log_path = log.path().join("redis.log");
            let log_file = File::create(&log_path).expect("create redis log");
            let mut child = Command::new("redis-server")
                .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
                .args(["--tls-port", &tls_port.to_string()])
                .args(["--tls-cert-file", &cert.cert_path])
                .args(["--tls-key-file", &cert.key_path])
                .args(["--tls-auth-clients", "no"])
                .args(["--save", "", "--appendonly", "no"])
                .stdin(Stdio::null())
                .stdout(log_file.try_clone().expect("clone log handle"))
                .stderr(log_file)
                .spawn()
                .unwrap_or_else(|e| panic!("cannot run redis-server: {e}"));
            match wait_for_pong(port, &mut child) {
                Ok(()) => {
                    return Some(TlsRedis {
                        server: RedisServer {
                            port,
                            child: Mutex::new(Some(child)),
                        },
                        tls_port,
                        _cert: cert,
                    })
                }
                Err(e) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    let output = fs::read_to_string(&log_path).unwrap_or_default();
                    if output.to_lowercase().contains("in use") {
                        last_error = format!("{e}: {output}");
                        continue;
                    }
                    eprintln!("redis-server cannot serve TLS here ({e}):\n{output}");
                    return None;
                }
            }
        }
        panic!("TLS redis-server did not start: {last_error}");
    }
}
