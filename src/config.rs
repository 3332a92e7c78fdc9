//! Node configuration, read once at startup. This is the only module that reads
//! the environment; everything else receives a [`Config`].
//!
//! | variable | default | meaning |
//! | --- | --- | --- |
//! | `HOST`, `PORT` | `0.0.0.0`, `8000` | listen address (HTTP and WebSocket on one port) |
//! | `REDIS_URL` | unset | `redis://[:pw@]host:port/db` or `rediss://`; wins over the four below |
//! | `REDIS_HOST`, `REDIS_PORT`, `REDIS_DB`, `REDIS_PASSWORD` | `localhost`, `6379`, `0`, none | used when `REDIS_URL` is unset |
//! | `KEY_PREFIX` | `signal:` | prefix of every Redis key and channel |
//! | `ROOM_TTL_SECONDS` | `1800` | expiry of room and user keys, refreshed while users are connected |
//! | `NODE_ID` | hostname, else a UUID | this node's name in Redis, logs and `/users` |
//! | `RUST_LOG`, `LOG_FORMAT` | `info`, `text` | log filter; `json` for one JSON object per line |
//! | `MAX_MESSAGE_BYTES` | `65536` | largest accepted frame; larger closes with 1009 |
//! | `MAX_QUEUE_BYTES` | `1048576` | bound of one connection's outbound queue; overflow closes with 4413 |
//! | `PING_INTERVAL_SECONDS` | `20` | server ping period (decimals allowed); silence for two periods closes with 4408 |
//! | `RATE_LIMIT_PER_SECOND`, `RATE_LIMIT_BURST` | `50`, `200` | per-connection token bucket; `0` per second turns it off |
//! | `MAX_CONNECTIONS` | `10000` | WebSocket sessions per node; past it new ones close with 1013 |
//! | `ALERT_CONNECTION_SPIKE` | `1000` | WARN when connections rise by more than this within a minute |
//! | `AUTH_MODE` | `none` | `jwt` requires a token on every WebSocket |
//! | `JWT_SECRET` | unset | HS256 key: verifies client tokens and signs `POST /tokens` |
//! | `JWT_PUBLIC_KEY_FILE` | unset | PEM public key (RSA: RS256, EC P-256: ES256) for client tokens |
//! | `JWT_ISSUER`, `JWT_AUDIENCE` | unset | required `iss` / `aud` when set |
//! | `ADMIN_TOKEN` | unset | bearer for the admin endpoints; unset disables them |
//! | `METRICS_TOKEN` | unset | bearer for `/metrics`; unset leaves it open |
//! | `TOKEN_MAX_TTL_SECONDS` | `86400` | cap of `ttl_seconds` in `POST /tokens` |
//! | `TLS_CERT_FILE`, `TLS_KEY_FILE` | unset | PEM certificate chain and key: serve https/wss |
//! | `ALLOWED_ORIGINS` | any | comma list of origins allowed for WebSockets and CORS |
//! | `PAYLOAD_ENCRYPTION_KEY` | unset | base64 of 32 bytes: relayed frames cross Redis sealed |
//! | `HTTP_HEADER_TIMEOUT_SECONDS` | `10` | 1–300: TLS handshake and request head, and the idle wait between keep-alive requests |
//! | `HTTP_IDLE_TIMEOUT_SECONDS` | `60` | 1–3600: a connection not yet upgraded with no byte read or written for this long is closed |
//! | `MAX_PENDING_CONNECTIONS` | `1024` | 1–1000000: connections not yet upgraded to WebSocket; past it the oldest is closed |
//!
//! With neither `REDIS_URL` nor any `REDIS_*` variable set the node runs standalone.

use std::time::Duration;

use crate::ids::{is_valid_id, NodeId};

/// A configuration value that cannot be used; startup stops with this message.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The variable is set but its value is not acceptable.
    #[error("invalid {var}={value:?}: {reason}")]
    Invalid {
        var: &'static str,
        value: String,
        reason: String,
    },
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line, for log pipelines.
    Json,
}

/// Where the cluster's Redis lives. Kept as a parsed `ConnectionInfo` so a bad
/// URL fails at startup, with a display form that never contains the password.
#[derive(Clone)]
pub struct RedisTarget {
    /// What redis-rs connects to.
    pub info: redis::ConnectionInfo,
    /// `redis://host:port/db`, safe to log.
    pub display: String,
}

impl std::fmt::Debug for RedisTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.display)
    }
}

/// Everything a node needs to know, parsed and validated.
#[derive(Debug, Clone)]
pub struct Config {
    /// Interface to bind (a name or an address).
    pub host: String,
    /// TCP port for HTTP and WebSocket.
    pub port: u16,
    /// `None` runs the node standalone with in-memory state.
    pub redis: Option<RedisTarget>,
    /// Prefix of every key and channel, so clusters can share one Redis.
    pub key_prefix: String,
    /// TTL of room and user keys.
    pub room_ttl: Duration,
    /// This node's name.
    pub node_id: NodeId,
    /// `RUST_LOG` filter directive.
    pub log_filter: String,
    /// Text or JSON logs.
    pub log_format: LogFormat,
    /// Largest accepted WebSocket message.
    pub max_message_bytes: usize,
    /// Bound of the frames queued for one connection.
    pub max_queue_bytes: usize,
    /// Server ping period; a client silent for two periods is dropped.
    pub ping_interval: Duration,
    /// Token refill rate per connection; `None` turns rate limiting off.
    pub rate_limit: Option<RateLimit>,
    /// Sessions this node accepts at once.
    pub max_connections: usize,
    /// Tokens, admin, TLS, origins, payload encryption.
    pub security: Security,
    /// Connection rise within a minute that is logged as a spike.
    pub alert_connection_spike: usize,
    /// Bounds on HTTP connections before they become WebSockets.
    pub http: HttpLimits,
}

/// How client tokens are verified.
#[derive(Clone)]
pub enum JwtKey {
    /// HS256 with a shared secret.
    Secret(Vec<u8>),
    /// RS256 or ES256 with a public key, PEM as read from the file.
    PublicPem(Vec<u8>),
}

impl std::fmt::Debug for JwtKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Secret(_) => "Secret(***)",
            Self::PublicPem(_) => "PublicPem",
        })
    }
}

/// Client authentication and the admin surface (PROTOCOL.md sections 8 and 9).
#[derive(Clone, Default)]
pub struct Security {
    /// `Some` in `AUTH_MODE=jwt`: every WebSocket needs a token verified with it.
    pub auth: Option<JwtKey>,
    /// Signs `POST /tokens`; `None` answers 409 `tokens_disabled`.
    pub token_secret: Option<Vec<u8>>,
    pub jwt_issuer: Option<String>,
    pub jwt_audience: Option<String>,
    /// Bearer of the admin endpoints; `None` disables them.
    pub admin_token: Option<String>,
    /// Bearer of `/metrics`; `None` leaves it open.
    pub metrics_token: Option<String>,
    /// Cap of `ttl_seconds` in `POST /tokens`.
    pub token_max_ttl: Duration,
    /// PEM files for native TLS.
    pub tls: Option<(String, String)>,
    /// `None` allows any origin.
    pub allowed_origins: Option<Vec<String>>,
    /// Key sealing relayed frames on their way through Redis.
    pub payload_key: Option<[u8; 32]>,
}

impl std::fmt::Debug for Security {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Secrets never reach a log line, even by accident.
        f.debug_struct("Security")
            .field("auth", &self.auth)
            .field("tokens", &self.token_secret.is_some())
            .field("admin", &self.admin_token.is_some())
            .field("tls", &self.tls.is_some())
            .field("allowed_origins", &self.allowed_origins)
            .field("payload_encryption", &self.payload_key.is_some())
            .finish()
    }
}

/// A per-connection token bucket's shape.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateLimit {
    /// Tokens added per second.
    pub per_second: f64,
    /// Bucket size, and its content at connect.
    pub burst: f64,
}

impl Config {
    /// Reads the process environment.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_vars(|name| std::env::var(name).ok(), default_node_id)
    }

    /// Parses configuration from any lookup function, so tests never touch the
    /// process environment. `default_node_id` is asked only when `NODE_ID` is unset.
    pub fn from_vars(
        var: impl Fn(&str) -> Option<String>,
        default_node_id: impl FnOnce() -> String,
    ) -> Result<Self, ConfigError> {
        let get = |name: &str| var(name).filter(|v| !v.is_empty());

        let host = get("HOST").unwrap_or_else(|| "0.0.0.0".to_owned());
        let port = parse_num::<u16>(&get, "PORT", 8000)?;
        let redis = redis_target(&get)?;

        let key_prefix = var("KEY_PREFIX").unwrap_or_else(|| "signal:".to_owned());
        if key_prefix.len() > 128 || key_prefix.chars().any(|c| c.is_whitespace()) {
            return Err(invalid(
                "KEY_PREFIX",
                &key_prefix,
                "at most 128 characters, no white space",
            ));
        }

        let ttl = parse_num::<u64>(&get, "ROOM_TTL_SECONDS", 1800)?;
        if ttl == 0 {
            return Err(invalid("ROOM_TTL_SECONDS", "0", "must be at least 1"));
        }

        let node_id = get("NODE_ID").unwrap_or_else(default_node_id);
        let node_id = NodeId::parse(&node_id).map_err(|_| {
            invalid(
                "NODE_ID",
                &node_id,
                "1 to 64 characters from A-Z a-z 0-9 _ - .",
            )
        })?;

        let log_filter = get("RUST_LOG").unwrap_or_else(|| "info".to_owned());
        let log_format = match get("LOG_FORMAT").as_deref() {
            None | Some("text") => LogFormat::Text,
            Some("json") => LogFormat::Json,
            Some(other) => return Err(invalid("LOG_FORMAT", other, "expected text or json")),
        };

        let max_message_bytes = parse_num::<usize>(&get, "MAX_MESSAGE_BYTES", 65536)?;
        if max_message_bytes < 128 {
            return Err(invalid(
                "MAX_MESSAGE_BYTES",
                &max_message_bytes.to_string(),
                "must be at least 128",
            ));
        }
        let max_queue_bytes = parse_num::<usize>(&get, "MAX_QUEUE_BYTES", 1 << 20)?;
        if max_queue_bytes < max_message_bytes {
            return Err(invalid(
                "MAX_QUEUE_BYTES",
                &max_queue_bytes.to_string(),
                "must be at least MAX_MESSAGE_BYTES",
            ));
        }

        let ping = match get("PING_INTERVAL_SECONDS") {
            None => 20.0,
            Some(v) => v
                .trim()
                .parse::<f64>()
                .ok()
                .filter(|s| s.is_finite() && *s >= 0.05 && *s <= 3600.0)
                .ok_or_else(|| {
                    invalid(
                        "PING_INTERVAL_SECONDS",
                        &v,
                        "expected seconds from 0.05 to 3600",
                    )
                })?,
        };
        let per_second = parse_num::<u32>(&get, "RATE_LIMIT_PER_SECOND", 50)?;
        let burst = parse_num::<u32>(&get, "RATE_LIMIT_BURST", 200)?;
        let rate_limit = match (per_second, burst) {
            (0, _) => None,
            (_, 0) => {
                return Err(invalid(
                    "RATE_LIMIT_BURST",
                    "0",
                    "must be at least 1 while RATE_LIMIT_PER_SECOND is set",
                ))
            }
            (p, b) => Some(RateLimit {
                per_second: f64::from(p),
                burst: f64::from(b),
            }),
        };
        let max_connections = parse_num::<usize>(&get, "MAX_CONNECTIONS", 10_000)?;
        if max_connections == 0 {
            return Err(invalid("MAX_CONNECTIONS", "0", "must be at least 1"));
        }

        let security = security(&get)?;
        let alert_connection_spike = parse_num::<usize>(&get, "ALERT_CONNECTION_SPIKE", 1000)?;
        let http = http_limits(&get)?;

        Ok(Self {
            host,
            port,
            redis,
            key_prefix,
            room_ttl: Duration::from_secs(ttl),
            node_id,
            log_filter,
            log_format,
            max_message_bytes,
            max_queue_bytes,
            ping_interval: Duration::from_secs_f64(ping),
            rate_limit,
            max_connections,
            security,
            alert_connection_spike,
            http,
        })
    }
}

/// Bounds on connections that have not become WebSockets (yet), so that clients
/// that connect and never finish a request (slowloris) cannot hold sockets and file
/// descriptors forever.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HttpLimits {
    /// TLS handshake, then each request head; hyper also runs it over the idle wait
    /// between keep-alive requests.
    pub header_timeout: Duration,
    /// No byte read or written for this long (a stalled body, an unread response)
    /// closes a connection that has not been upgraded.
    pub idle_timeout: Duration,
    /// Connections not yet upgraded; past it the oldest one is closed.
    pub max_pending: usize,
}

fn http_limits(get: &impl Fn(&str) -> Option<String>) -> Result<HttpLimits, ConfigError> {
    let in_range = |var: &'static str, default: u64, lo: u64, hi: u64| {
        let v = parse_num::<u64>(get, var, default)?;
        if (lo..=hi).contains(&v) {
            Ok(v)
        } else {
            Err(invalid(
                var,
                &v.to_string(),
                &format!("expected {lo} to {hi}"),
            ))
        }
    };
    Ok(HttpLimits {
        header_timeout: Duration::from_secs(in_range("HTTP_HEADER_TIMEOUT_SECONDS", 10, 1, 300)?),
        idle_timeout: Duration::from_secs(in_range("HTTP_IDLE_TIMEOUT_SECONDS", 60, 1, 3600)?),
        // A u64 from 1 to 1e6 always fits a usize.
        max_pending: usize::try_from(in_range("MAX_PENDING_CONNECTIONS", 1024, 1, 1_000_000)?)
            .unwrap_or(usize::MAX),
    })
}

fn security(get: &impl Fn(&str) -> Option<String>) -> Result<Security, ConfigError> {
    use base64::Engine;

    let secret = get("JWT_SECRET").map(String::into_bytes);
    let public_key = match get("JWT_PUBLIC_KEY_FILE") {
        None => None,
        Some(path) => Some(std::fs::read(&path).map_err(|e| {
            invalid(
                "JWT_PUBLIC_KEY_FILE",
                &path,
                &format!("cannot read it: {e}"),
            )
        })?),
    };
    let auth = match get("AUTH_MODE").as_deref() {
        None | Some("none") => None,
        Some("jwt") => Some(match (&public_key, &secret) {
            (Some(pem), _) => JwtKey::PublicPem(pem.clone()),
            (None, Some(secret)) => JwtKey::Secret(secret.clone()),
            (None, None) => {
                return Err(invalid(
                    "AUTH_MODE",
                    "jwt",
                    "needs JWT_SECRET or JWT_PUBLIC_KEY_FILE",
                ))
            }
        }),
        Some(other) => return Err(invalid("AUTH_MODE", other, "expected none or jwt")),
    };
    if let Some(JwtKey::PublicPem(pem)) = &auth {
        crate::auth::check_public_key(pem)
            .map_err(|reason| invalid("JWT_PUBLIC_KEY_FILE", "(file)", &reason))?;
    }
    let max_ttl = parse_num::<u64>(get, "TOKEN_MAX_TTL_SECONDS", 86_400)?;
    if max_ttl == 0 {
        return Err(invalid("TOKEN_MAX_TTL_SECONDS", "0", "must be at least 1"));
    }
    let tls = match (get("TLS_CERT_FILE"), get("TLS_KEY_FILE")) {
        (None, None) => None,
        (Some(cert), Some(key)) => Some((cert, key)),
        (Some(_), None) => {
            return Err(invalid(
                "TLS_KEY_FILE",
                "",
                "TLS_CERT_FILE needs TLS_KEY_FILE too",
            ))
        }
        (None, Some(_)) => {
            return Err(invalid(
                "TLS_CERT_FILE",
                "",
                "TLS_KEY_FILE needs TLS_CERT_FILE too",
            ))
        }
    };
    let allowed_origins = get("ALLOWED_ORIGINS").and_then(|list| {
        let origins: Vec<String> = list
            .split(',')
            .map(|o| o.trim().trim_end_matches('/').to_owned())
            .filter(|o| !o.is_empty())
            .collect();
        (!origins.is_empty() && !origins.iter().any(|o| o == "*")).then_some(origins)
    });
    let payload_key = match get("PAYLOAD_ENCRYPTION_KEY") {
        None => None,
        Some(b64) => {
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(b64.trim())
                .ok()
                .and_then(|b| <[u8; 32]>::try_from(b).ok())
                .ok_or_else(|| {
                    invalid(
                        "PAYLOAD_ENCRYPTION_KEY",
                        "(hidden)",
                        "expected base64 of exactly 32 bytes",
                    )
                })?;
            Some(bytes)
        }
    };
    Ok(Security {
        auth,
        token_secret: secret,
        jwt_issuer: get("JWT_ISSUER"),
        jwt_audience: get("JWT_AUDIENCE"),
        admin_token: get("ADMIN_TOKEN"),
        metrics_token: get("METRICS_TOKEN"),
        token_max_ttl: Duration::from_secs(max_ttl),
        tls,
        allowed_origins,
        payload_key,
    })
}

fn invalid(var: &'static str, value: &str, reason: &str) -> ConfigError {
    ConfigError::Invalid {
        var,
        value: value.to_owned(),
        reason: reason.to_owned(),
    }
}

fn parse_num<T: std::str::FromStr>(
    get: &impl Fn(&str) -> Option<String>,
    var: &'static str,
    default: T,
) -> Result<T, ConfigError> {
    match get(var) {
        None => Ok(default),
        Some(v) => v.trim().parse().map_err(|_| {
            invalid(
                var,
                &v,
                &format!("expected a whole number from 0 to {}", type_max::<T>()),
            )
        }),
    }
}

fn type_max<T>() -> &'static str {
    match std::any::type_name::<T>() {
        "u16" => "65535",
        _ => "2^64-1",
    }
}

fn redis_target(get: &impl Fn(&str) -> Option<String>) -> Result<Option<RedisTarget>, ConfigError> {
    use redis::IntoConnectionInfo;

    if let Some(url) = get("REDIS_URL") {
        let info = url
            .as_str()
            .into_connection_info()
            .map_err(|e| invalid("REDIS_URL", &redact_url(&url), &e.to_string()))?;
        let display = display_target(&info);
        return Ok(Some(RedisTarget { info, display }));
    }
    let any_set = ["REDIS_HOST", "REDIS_PORT", "REDIS_DB", "REDIS_PASSWORD"]
        .iter()
        .any(|v| get(v).is_some());
    if !any_set {
        return Ok(None);
    }
    let host = get("REDIS_HOST").unwrap_or_else(|| "localhost".to_owned());
    if host.chars().any(|c| c.is_whitespace() || c == '/') {
        return Err(invalid(
            "REDIS_HOST",
            &host,
            "expected a host name or address",
        ));
    }
    let port = parse_num::<u16>(get, "REDIS_PORT", 6379)?;
    let db = match get("REDIS_DB") {
        None => 0,
        Some(v) => v
            .trim()
            .parse::<u32>()
            .map_err(|_| invalid("REDIS_DB", &v, "expected a database number from 0"))?,
    };
    let mut settings = redis::RedisConnectionInfo::default().set_db(i64::from(db));
    if let Some(pw) = get("REDIS_PASSWORD") {
        settings = settings.set_password(pw);
    }
    let info = (host, port)
        .into_connection_info()
        .map_err(|e| invalid("REDIS_HOST", "", &e.to_string()))?
        .set_redis_settings(settings);
    let display = display_target(&info);
    Ok(Some(RedisTarget { info, display }))
}

/// `redis://host:port/db` without credentials, for logs.
fn display_target(info: &redis::ConnectionInfo) -> String {
    let db = info.redis_settings().db();
    match info.addr() {
        redis::ConnectionAddr::Tcp(host, port) => format!("redis://{host}:{port}/{db}"),
        redis::ConnectionAddr::TcpTls { host, port, .. } => format!("rediss://{host}:{port}/{db}"),
        redis::ConnectionAddr::Unix(path) => format!("unix://{}/{db}", path.display()),
        other => format!("{other}"),
    }
}

/// Removes any `user:password@` part before a URL is shown in an error.
fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            format!("{}://***@{}", &url[..scheme], &url[at + 1..])
        }
        _ => url.to_owned(),
    }
}

/// `HOSTNAME`, else `/etc/hostname`, else a random UUID; the first that is a valid id.
fn default_node_id() -> String {
    let candidates = [
        std::env::var("HOSTNAME").ok(),
        std::fs::read_to_string("/etc/hostname").ok(),
    ];
    candidates
        .into_iter()
        .flatten()
        .map(|h| h.trim().to_owned())
        .find(|h| is_valid_id(h))
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn parse(vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Config::from_vars(|k| map.get(k).cloned(), || "node-a".to_owned())
    }

    fn err_text(vars: &[(&str, &str)]) -> String {
        match parse(vars) {
            Ok(c) => panic!("expected an error, got {c:?}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn defaults_are_standalone() {
        let c = parse(&[]).unwrap();
        assert_eq!((c.host.as_str(), c.port), ("0.0.0.0", 8000));
        assert!(c.redis.is_none());
        assert_eq!(c.key_prefix, "signal:");
        assert_eq!(c.room_ttl, Duration::from_secs(1800));
        assert_eq!(c.node_id.as_str(), "node-a");
        assert_eq!(c.log_format, LogFormat::Text);
        assert_eq!(c.max_message_bytes, 65536);
        assert_eq!(c.max_queue_bytes, 1 << 20);
        assert_eq!(c.ping_interval, Duration::from_secs(20));
        assert_eq!(
            c.rate_limit,
            Some(RateLimit {
                per_second: 50.0,
                burst: 200.0
            })
        );
        assert_eq!(c.max_connections, 10_000);
        assert_eq!(
            c.http,
            HttpLimits {
                header_timeout: Duration::from_secs(10),
                idle_timeout: Duration::from_secs(60),
                max_pending: 1024,
            }
        );
    }

    #[test]
    fn http_limits_have_ranges() {
        for (var, value) in [
            ("HTTP_HEADER_TIMEOUT_SECONDS", "0"),
            ("HTTP_HEADER_TIMEOUT_SECONDS", "301"),
            ("HTTP_IDLE_TIMEOUT_SECONDS", "0"),
            ("MAX_PENDING_CONNECTIONS", "0"),
            ("MAX_PENDING_CONNECTIONS", "lots"),
        ] {
            assert!(err_text(&[(var, value)]).contains(var), "{var}={value}");
        }
        let c = parse(&[
            ("HTTP_HEADER_TIMEOUT_SECONDS", "1"),
            ("MAX_PENDING_CONNECTIONS", "32"),
        ])
        .unwrap();
        assert_eq!(c.http.header_timeout, Duration::from_secs(1));
        assert_eq!(c.http.max_pending, 32);
    }

    #[test]
    fn redis_url_wins_and_hides_password() {
        let c = parse(&[
            ("REDIS_URL", "redis://:s3cret@10.1.2.3:6380/2"),
            ("REDIS_HOST", "ignored"),
        ])
        .unwrap();
        let t = c.redis.unwrap();
        assert_eq!(t.display, "redis://10.1.2.3:6380/2");
        assert!(!format!("{t:?}").contains("s3cret"));
    }

    #[test]
    fn any_redis_part_enables_cluster_mode() {
        let c = parse(&[("REDIS_PASSWORD", "pw")]).unwrap();
        assert_eq!(c.redis.unwrap().display, "redis://localhost:6379/0");
        let c = parse(&[("REDIS_HOST", "cache"), ("REDIS_DB", "3")]).unwrap();
        assert_eq!(c.redis.unwrap().display, "redis://cache:6379/3");
    }

    #[test]
    fn bad_values_name_their_variable() {
        assert!(err_text(&[("PORT", "abc")]).contains("PORT"));
        assert!(err_text(&[("PORT", "70000")]).contains("PORT"));
        assert!(err_text(&[("REDIS_DB", "-1")]).contains("REDIS_DB"));
        assert!(err_text(&[("REDIS_PORT", "x")]).contains("REDIS_PORT"));
        let e = err_text(&[("REDIS_URL", "not a url")]);
        assert!(e.contains("REDIS_URL"), "{e}");
        let e = err_text(&[("REDIS_URL", "ftp://u:pw@h/0")]);
        assert!(e.contains("REDIS_URL") && !e.contains("pw@"), "{e}");
        assert!(err_text(&[("LOG_FORMAT", "xml")]).contains("LOG_FORMAT"));
        assert!(err_text(&[("MAX_MESSAGE_BYTES", "0")]).contains("MAX_MESSAGE_BYTES"));
        assert!(err_text(&[("ROOM_TTL_SECONDS", "0")]).contains("ROOM_TTL_SECONDS"));
        assert!(err_text(&[("NODE_ID", "a:b")]).contains("NODE_ID"));
        assert!(err_text(&[("PING_INTERVAL_SECONDS", "0")]).contains("PING_INTERVAL_SECONDS"));
        assert!(err_text(&[("RATE_LIMIT_BURST", "-3")]).contains("RATE_LIMIT_BURST"));
        assert!(err_text(&[("MAX_CONNECTIONS", "0")]).contains("MAX_CONNECTIONS"));
    }

    #[test]
    fn security_settings_are_validated() {
        assert!(err_text(&[("AUTH_MODE", "jwt")]).contains("AUTH_MODE"));
        assert!(err_text(&[("AUTH_MODE", "basic")]).contains("AUTH_MODE"));
        assert!(
            err_text(&[("PAYLOAD_ENCRYPTION_KEY", "c2hvcnQ=")]).contains("PAYLOAD_ENCRYPTION_KEY")
        );
        assert!(err_text(&[("TLS_CERT_FILE", "/x.pem")]).contains("TLS_KEY_FILE"));
        assert!(err_text(&[("JWT_PUBLIC_KEY_FILE", "/nonexistent.pem")])
            .contains("JWT_PUBLIC_KEY_FILE"));
        let c = parse(&[
            ("AUTH_MODE", "jwt"),
            ("JWT_SECRET", "s3cret"),
            ("ALLOWED_ORIGINS", "https://a.example/, https://b.example"),
            (
                "PAYLOAD_ENCRYPTION_KEY",
                "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=",
            ),
        ])
        .unwrap();
        assert!(matches!(c.security.auth, Some(JwtKey::Secret(_))));
        assert_eq!(
            c.security.allowed_origins,
            Some(vec![
                "https://a.example".to_owned(),
                "https://b.example".to_owned()
            ])
        );
        assert_eq!(c.security.payload_key, Some([0; 32]));
        assert!(!format!("{c:?}").contains("s3cret"));
        assert!(parse(&[("ALLOWED_ORIGINS", "*")])
            .unwrap()
            .security
            .allowed_origins
            .is_none());
    }

    #[test]
    fn short_pings_and_no_rate_limit_are_allowed() {
        let c = parse(&[
            ("PING_INTERVAL_SECONDS", "0.5"),
            ("RATE_LIMIT_PER_SECOND", "0"),
        ])
        .unwrap();
        assert_eq!(c.ping_interval, Duration::from_millis(500));
        assert_eq!(c.rate_limit, None);
    }
}
