//! Node configuration, read once at startup. This is the only module that reads
//! the environment; everything else receives a [`Config`].
//!
//! | variable | default | meaning |
//! | --- | --- | --- |
//! | `HOST`, `PORT` | `0.0.0.0`, `8000` | listen address (HTTP and WebSocket on one port) |
//! | `REDIS_URL` | unset | `redis://[:pw@]host:port/db` or `rediss://`; wins over the four below |
//! | `REDIS_HOST`, `REDIS_PORT`, `REDIS_DB`, `REDIS_PASSWORD` | `localhost`, `6379`, `0`, none | used when `REDIS_URL` is unset |
//! | `REDIS_MODE` | `single` | `single`, `cluster` (`REDIS_URL` lists seed nodes) or `sentinel` (`REDIS_URL` lists the sentinels) |
//! | `REDIS_SENTINEL_MASTER` | unset | the master's name in sentinel mode (required there, refused elsewhere) |
//! | `KEY_PREFIX` | `signal:` | prefix of every Redis key and channel |
//! | `ROOM_TTL_SECONDS` | `1800` | expiry of room and user keys, refreshed while users are connected |
//! | `NODE_ID` | hostname, else a UUID | this node's name in Redis, logs and `/users` |
//! | `RUST_LOG`, `LOG_FORMAT` | `info`, `text` | log filter; `json` for one JSON object per line |
//! | `MAX_MESSAGE_BYTES` | `65536` | largest accepted frame; larger closes with 1009 |
//! | `MAX_QUEUE_BYTES` | `1048576` | bound of one connection's outbound queue; overflow closes with 4413 |
//! | `PING_INTERVAL_SECONDS` | `20` | server ping period (decimals allowed); silence for two periods closes with 4408 |
//! | `RATE_LIMIT_PER_SECOND`, `RATE_LIMIT_BURST` | `50`, `200` | per-connection token bucket; `0` per second turns it off |
//! | `RATE_LIMIT_BYTES_PER_SECOND`, `RATE_LIMIT_BYTES_BURST` | `262144`, `524288` | per-connection byte bucket beside it; `0` per second turns it off |
//! | `MAX_CONNECTIONS` | `10000` | WebSocket sessions per node; past it new ones close with 1013 |
//! | `WORKER_THREADS` | the CPUs the process may use | 1–1024: threads running sessions; one per core the node is given |
//! | `ALERT_CONNECTION_SPIKE` | `1000` | WARN when connections rise by more than this within a minute |
//! | `AUTH_MODE` | `none` | `jwt` requires a token on every WebSocket |
//! | `JWT_SECRET` | unset | HS256 key: verifies client tokens and signs `POST /tokens` |
//! | `JWT_PUBLIC_KEY_FILE` | unset | PEM public key (RSA: RS256, EC P-256: ES256) for client tokens; not with `JWT_SECRET` |
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
//! | `RESUME_GRACE_SECONDS` | `20` | 0–3600: how long a dropped member stays in its room, resumable; `0` turns resume off |
//! | `RESUME_BUFFER_MESSAGES` | `256` | 1–100000: most relayed messages held for one member; more make its resume fail |
//! | `ICE_SERVERS` | `[]` | JSON array of RTCIceServer objects handed to every client |
//! | `TURN_URLS`, `TURN_SECRET` | unset | turn:/turns: URLs (comma list) and coturn's `static-auth-secret`: time-limited TURN credentials for every client |
//! | `TURN_TTL_SECONDS` | `86400` | 60–2592000: how long those credentials are valid |
//!
//! Every number has an inclusive range (the `*_RANGE` constants below); outside it
//! startup stops with one line that shows the range.
//!
//! With neither `REDIS_URL` nor any `REDIS_*` variable set the node runs standalone.

use std::fmt::Display;
use std::ops::RangeInclusive;
use std::str::FromStr;
use std::time::Duration;

use crate::broker::redis::RedisTarget;
use crate::ice::{IceError, IceServers};
use crate::ids::{is_valid_id, NodeId};

/// A configuration value that cannot be used; startup stops with this message.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The variable is set but its value is not acceptable.
    #[error("{var}={value:?}: {reason}")]
    Invalid {
        var: &'static str,
        value: String,
        reason: String,
    },
    /// Two variables are set that cannot be used together.
    #[error("{first} and {second} are both set: {reason}")]
    Conflict {
        first: &'static str,
        second: &'static str,
        reason: &'static str,
    },
}

// The accepted range of every numeric setting, in one place (README's table shows
// them). Bounds keep each value usable by what consumes it: TTLs stay far inside
// Redis's EXPIRE limit and i64 milliseconds (10 years), byte sizes above a frame
// that can hold any protocol message and below what one process can sensibly
// queue, rates and counts below what one node could ever reach.

/// `PORT`: 0 lets the OS pick one (tests, ephemeral setups).
const PORT_RANGE: RangeInclusive<u16> = 0..=65_535;
/// `REDIS_PORT`.
const REDIS_PORT_RANGE: RangeInclusive<u16> = 1..=65_535;
/// `REDIS_DB`: Redis's `databases` setting is a C int.
const REDIS_DB_RANGE: RangeInclusive<u32> = 0..=2_147_483_647;
/// `ROOM_TTL_SECONDS` and `TOKEN_MAX_TTL_SECONDS`: 1 s to 10 years.
const TTL_RANGE: RangeInclusive<u64> = 1..=315_360_000;
/// `MAX_MESSAGE_BYTES`: 128 B to 16 MiB.
const MESSAGE_BYTES_RANGE: RangeInclusive<usize> = 128..=16 << 20;
/// Upper bound of `MAX_QUEUE_BYTES` (1 GiB); its lower bound is `MAX_MESSAGE_BYTES`.
const MAX_QUEUE_BYTES: usize = 1 << 30;
/// `PING_INTERVAL_SECONDS`, decimals allowed.
const PING_RANGE: RangeInclusive<f64> = 0.05..=3600.0;
/// `RATE_LIMIT_PER_SECOND` (0 turns the limit off) and `RATE_LIMIT_BURST`.
const RATE_RANGE: RangeInclusive<u32> = 0..=1_000_000;
/// `RATE_LIMIT_BYTES_PER_SECOND` (0 turns it off) and `RATE_LIMIT_BYTES_BURST`
/// (at least `MAX_MESSAGE_BYTES`): up to 1 GiB.
const BYTE_RATE_RANGE: RangeInclusive<u32> = 0..=1 << 30;
/// `HTTP_HEADER_TIMEOUT_SECONDS`: also the TLS handshake's limit.
const HEADER_TIMEOUT_RANGE: RangeInclusive<u64> = 1..=300;
/// `HTTP_IDLE_TIMEOUT_SECONDS`.
const IDLE_TIMEOUT_RANGE: RangeInclusive<u64> = 1..=3600;
/// `MAX_CONNECTIONS`, `ALERT_CONNECTION_SPIKE` and `MAX_PENDING_CONNECTIONS`.
const CONNECTIONS_RANGE: RangeInclusive<usize> = 1..=1_000_000;
/// `RESUME_GRACE_SECONDS`: up to an hour (a member held longer is a ghost).
const RESUME_GRACE_RANGE: RangeInclusive<u64> = 0..=3600;
/// `RESUME_BUFFER_MESSAGES`: at least one, at most what Redis holds cheaply per member.
const RESUME_BUFFER_RANGE: RangeInclusive<usize> = 1..=100_000;
const WORKER_THREADS_RANGE: RangeInclusive<usize> = 1..=1024;
/// `TURN_TTL_SECONDS`: a minute (a call must get connected) to 30 days.
const TURN_TTL_RANGE: RangeInclusive<u64> = 60..=2_592_000;

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line, for log pipelines.
    Json,
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
    /// Bytes of client frames per connection (tokens are bytes); `None` turns it
    /// off. With the burst under `MAX_QUEUE_BYTES`, one sender cannot overflow the
    /// queue of a member that reads at all.
    pub byte_rate_limit: Option<RateLimit>,
    /// Sessions this node accepts at once.
    pub max_connections: usize,
    /// Runtime worker threads; `None` is one per CPU the process may use (cgroup
    /// quotas included). A node given less than the machine's cores (two nodes on
    /// one box, a pod's CPU limit that the quota does not show) runs best with one
    /// per core it really gets: every extra thread adds wake-ups between threads.
    pub worker_threads: Option<usize>,
    /// How long a member whose connection dropped stays resumable; zero turns
    /// resume off (every drop is a leave, as before resume existed).
    pub resume_grace: Duration,
    /// Most relayed frames held per member for a resume or a gap fill.
    pub resume_buffer: usize,
    /// Tokens, admin, TLS, origins, payload encryption.
    pub security: Security,
    /// Connection rise within a minute that is logged as a spike.
    pub alert_connection_spike: usize,
    /// STUN/TURN servers and TURN credentials handed to clients (section 12).
    pub ice: IceServers,
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

/// Checks that a PEM public key is RSA or EC P-256, for a clear startup error;
/// the verifier ([`crate::auth`]) builds its key with the algorithm it names.
pub fn check_public_key(pem: &[u8]) -> Result<jsonwebtoken::Algorithm, String> {
    if jsonwebtoken::DecodingKey::from_rsa_pem(pem).is_ok() {
        Ok(jsonwebtoken::Algorithm::RS256)
    } else if jsonwebtoken::DecodingKey::from_ec_pem(pem).is_ok() {
        Ok(jsonwebtoken::Algorithm::ES256)
    } else {
        Err("not a PEM RSA or EC public key".to_owned())
    }
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

    /// Reads the settings the command line gathered (by variable name: a flag, or
    /// its environment variable), then the process environment for the rest.
    pub fn from_settings(
        settings: &std::collections::HashMap<String, String>,
    ) -> Result<Self, ConfigError> {
        Self::from_vars(
            |name| {
                settings
                    .get(name)
                    .cloned()
                    .or_else(|| std::env::var(name).ok())
            },
            default_node_id,
        )
    }

    /// Parses configuration from any lookup function, so tests never touch the
    /// process environment. `default_node_id` is asked only when `NODE_ID` is unset.
    pub fn from_vars(
        var: impl Fn(&str) -> Option<String>,
        default_node_id: impl FnOnce() -> String,
    ) -> Result<Self, ConfigError> {
        let get = |name: &str| var(name).filter(|v| !v.is_empty());

        let host = get("HOST").unwrap_or_else(|| "0.0.0.0".to_owned());
        let port = parse_in(&get, "PORT", 8000, PORT_RANGE)?;
        let redis = redis_target(&get)?;

        let key_prefix = var("KEY_PREFIX").unwrap_or_else(|| "signal:".to_owned());
        // Braces would break the hash tags that keep prefixes apart (broker/redis/keys.rs).
        if key_prefix.len() > 128
            || key_prefix
                .chars()
                .any(|c| c.is_whitespace() || c == '{' || c == '}')
        {
            return Err(invalid(
                "KEY_PREFIX",
                &key_prefix,
                "at most 128 characters, no white space, no '{' or '}'",
            ));
        }

        let ttl = parse_in(&get, "ROOM_TTL_SECONDS", 1800, TTL_RANGE)?;

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

        let max_message_bytes = parse_in(&get, "MAX_MESSAGE_BYTES", 65536, MESSAGE_BYTES_RANGE)?;
        // One queue must hold at least one frame of the largest size.
        let max_queue_bytes = parse_in(
            &get,
            "MAX_QUEUE_BYTES",
            max_message_bytes.max(1 << 20),
            max_message_bytes..=MAX_QUEUE_BYTES,
        )?;

        let ping = parse_in(&get, "PING_INTERVAL_SECONDS", 20.0, PING_RANGE)?;
        let per_second = parse_in(&get, "RATE_LIMIT_PER_SECOND", 50, RATE_RANGE)?;
        // An empty bucket would refuse every frame: at least 1 while the limit is on.
        let burst_min = u32::from(per_second > 0);
        let burst = parse_in(&get, "RATE_LIMIT_BURST", 200, burst_min..=*RATE_RANGE.end())?;
        let rate_limit = (per_second > 0).then(|| RateLimit {
            per_second: f64::from(per_second),
            burst: f64::from(burst),
        });
        let byte_rate_limit = byte_rate_limit(&get, max_message_bytes)?;
        let max_connections = parse_in(&get, "MAX_CONNECTIONS", 10_000, CONNECTIONS_RANGE)?;
        let worker_threads = match get("WORKER_THREADS") {
            Some(_) => Some(parse_in(&get, "WORKER_THREADS", 1, WORKER_THREADS_RANGE)?),
            None => None,
        };
        let resume_grace = parse_in(&get, "RESUME_GRACE_SECONDS", 20, RESUME_GRACE_RANGE)?;
        let resume_buffer = parse_in(&get, "RESUME_BUFFER_MESSAGES", 256, RESUME_BUFFER_RANGE)?;

        let security = security(&get)?;
        let alert_connection_spike =
            parse_in(&get, "ALERT_CONNECTION_SPIKE", 1000, CONNECTIONS_RANGE)?;
        let http = http_limits(&get)?;
        let ice = ice_servers(&get)?;

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
            byte_rate_limit,
            max_connections,
            resume_grace: Duration::from_secs(resume_grace),
            resume_buffer,
            worker_threads,
            security,
            alert_connection_spike,
            http,
            ice,
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
    Ok(HttpLimits {
        header_timeout: Duration::from_secs(parse_in(
            get,
            "HTTP_HEADER_TIMEOUT_SECONDS",
            10,
            HEADER_TIMEOUT_RANGE,
        )?),
        idle_timeout: Duration::from_secs(parse_in(
            get,
            "HTTP_IDLE_TIMEOUT_SECONDS",
            60,
            IDLE_TIMEOUT_RANGE,
        )?),
        max_pending: parse_in(get, "MAX_PENDING_CONNECTIONS", 1024, CONNECTIONS_RANGE)?,
    })
}

fn security(get: &impl Fn(&str) -> Option<String>) -> Result<Security, ConfigError> {
    use base64::Engine;

    let secret = get("JWT_SECRET").map(String::into_bytes);
    // POST /tokens signs with JWT_SECRET (HS256) while a public key would verify
    // client tokens: the node would mint tokens it refuses. Refused before the file
    // is read, so the message is about the pair.
    if secret.is_some() && get("JWT_PUBLIC_KEY_FILE").is_some() {
        return Err(ConfigError::Conflict {
            first: "JWT_SECRET",
            second: "JWT_PUBLIC_KEY_FILE",
            reason: "set one, not both (tokens signed with JWT_SECRET would be refused by a node verifying with the public key)",
        });
    }
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
            // Both set was refused above.
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
        check_public_key(pem)
            .map_err(|reason| invalid("JWT_PUBLIC_KEY_FILE", "(file)", &reason))?;
    }
    let max_ttl = parse_in(get, "TOKEN_MAX_TTL_SECONDS", 86_400, TTL_RANGE)?;
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

/// `ICE_SERVERS`, `TURN_URLS`, `TURN_SECRET`, `TURN_TTL_SECONDS` (PROTOCOL.md
/// section 12). The values are never echoed: they may hold credentials.
fn ice_servers(get: &impl Fn(&str) -> Option<String>) -> Result<IceServers, ConfigError> {
    let ttl = parse_in(get, "TURN_TTL_SECONDS", 86_400, TURN_TTL_RANGE)?;
    let (fixed, urls, secret) = (get("ICE_SERVERS"), get("TURN_URLS"), get("TURN_SECRET"));
    IceServers::new(
        fixed.as_deref(),
        urls.as_deref(),
        secret.as_deref(),
        Duration::from_secs(ttl),
    )
    .map_err(|e| {
        let var = match e {
            IceError::Servers(_) => "ICE_SERVERS",
            IceError::TurnUrls(_) | IceError::TurnUrlsMissing => "TURN_URLS",
            IceError::TurnSecretMissing => "TURN_SECRET",
        };
        let reason = e.to_string();
        let reason = reason
            .strip_prefix(&format!("{var}: "))
            .unwrap_or(&reason)
            .to_owned();
        invalid(var, "(not shown)", &reason)
    })
}

fn invalid(var: &'static str, value: &str, reason: &str) -> ConfigError {
    ConfigError::Invalid {
        var,
        value: value.to_owned(),
        reason: reason.to_owned(),
    }
}

/// `RATE_LIMIT_BYTES_PER_SECOND` and `RATE_LIMIT_BYTES_BURST`. The burst must
/// admit the largest frame, or a frame of `MAX_MESSAGE_BYTES` could never pass.
fn byte_rate_limit(
    get: &impl Fn(&str) -> Option<String>,
    max_message_bytes: usize,
) -> Result<Option<RateLimit>, ConfigError> {
    let per_second = parse_in(
        get,
        "RATE_LIMIT_BYTES_PER_SECOND",
        256 * 1024,
        BYTE_RATE_RANGE,
    )?;
    if per_second == 0 {
        return Ok(None);
    }
    let burst_min = u32::try_from(max_message_bytes).unwrap_or(u32::MAX);
    let burst = parse_in(
        get,
        "RATE_LIMIT_BYTES_BURST",
        (512 * 1024).max(burst_min),
        burst_min..=*BYTE_RATE_RANGE.end(),
    )?;
    Ok(Some(RateLimit {
        per_second: f64::from(per_second),
        burst: f64::from(burst),
    }))
}

/// Parses `var` as a number inside `range` (inclusive), `default` when unset. A
/// value that does not parse or lies outside gets the same message, with the range.
fn parse_in<T>(
    get: &impl Fn(&str) -> Option<String>,
    var: &'static str,
    default: T,
    range: RangeInclusive<T>,
) -> Result<T, ConfigError>
where
    T: FromStr + PartialOrd + Display,
{
    match get(var) {
        None => Ok(default),
        Some(v) => v
            .trim()
            .parse::<T>()
            .ok()
            .filter(|n| range.contains(n))
            .ok_or_else(|| invalid(var, &v, &between(&range))),
    }
}

fn between<T: Display>(range: &RangeInclusive<T>) -> String {
    format!("must be between {} and {}", range.start(), range.end())
}

fn redis_target(get: &impl Fn(&str) -> Option<String>) -> Result<Option<RedisTarget>, ConfigError> {
    let mode = get("REDIS_MODE");
    let master = get("REDIS_SENTINEL_MASTER");
    match mode.as_deref() {
        None | Some("single") => {
            if let Some(master) = master {
                return Err(invalid(
                    "REDIS_SENTINEL_MASTER",
                    &master,
                    "only used with REDIS_MODE=sentinel",
                ));
            }
        }
        Some("sentinel") => {
            let Some(master) = master.filter(|m| !m.trim().is_empty()) else {
                return Err(invalid(
                    "REDIS_SENTINEL_MASTER",
                    "",
                    "REDIS_MODE=sentinel needs the master's name",
                ));
            };
            let Some(urls) = get("REDIS_URL") else {
                return Err(invalid(
                    "REDIS_URL",
                    "",
                    "REDIS_MODE=sentinel needs the sentinels: redis://host:port,redis://host:port",
                ));
            };
            let target = RedisTarget::sentinel(&urls, master.trim())
                .map_err(|e| invalid("REDIS_URL", &redact_url(&urls), &e))?;
            return Ok(Some(target));
        }
        Some("cluster") => {
            if let Some(master) = master {
                return Err(invalid(
                    "REDIS_SENTINEL_MASTER",
                    &master,
                    "only used with REDIS_MODE=sentinel",
                ));
            }
            let Some(urls) = get("REDIS_URL") else {
                return Err(invalid(
                    "REDIS_URL",
                    "",
                    "REDIS_MODE=cluster needs seed nodes: redis://host:port,redis://host:port",
                ));
            };
            let target = RedisTarget::cluster(&urls)
                .map_err(|e| invalid("REDIS_URL", &redact_url(&urls), &e))?;
            return Ok(Some(target));
        }
        Some(other) => {
            return Err(invalid(
                "REDIS_MODE",
                other,
                "expected single, cluster or sentinel",
            ));
        }
    }
    if let Some(url) = get("REDIS_URL") {
        let target =
            RedisTarget::from_url(&url).map_err(|e| invalid("REDIS_URL", &redact_url(&url), &e))?;
        return Ok(Some(target));
    }
    let any_set = [
        "REDIS_HOST",
        "REDIS_PORT",
        "REDIS_DB",
        "REDIS_PASSWORD",
        "REDIS_MODE",
    ]
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
    let port = parse_in(get, "REDIS_PORT", 6379, REDIS_PORT_RANGE)?;
    let db = parse_in(get, "REDIS_DB", 0, REDIS_DB_RANGE)?;
    let target = RedisTarget::from_parts(host, port, db, get("REDIS_PASSWORD"))
        .map_err(|e| invalid("REDIS_HOST", "", &e))?;
    Ok(Some(target))
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
    fn redis_modes_and_their_bad_combinations() {
        let c = parse(&[
            ("REDIS_MODE", "sentinel"),
            ("REDIS_URL", "redis://:pw@s1:26379/1,redis://s2:26379"),
            ("REDIS_SENTINEL_MASTER", "mymaster"),
        ])
        .unwrap();
        let target = c.redis.expect("sentinel target");
        assert_eq!(target.mode(), "sentinel");
        assert!(!format!("{target:?}").contains("pw"));
        let e = err_text(&[
            ("REDIS_MODE", "sentinel"),
            ("REDIS_URL", "redis://s1:26379"),
        ]);
        assert!(e.contains("REDIS_SENTINEL_MASTER"), "{e}");
        let e = err_text(&[("REDIS_MODE", "sentinel"), ("REDIS_SENTINEL_MASTER", "m")]);
        assert!(e.contains("REDIS_URL"), "{e}");
        let e = err_text(&[
            ("REDIS_MODE", "sentinel"),
            ("REDIS_SENTINEL_MASTER", "m"),
            ("REDIS_URL", "redis://:pw@s1:26379,not a url"),
        ]);
        assert!(e.contains("REDIS_URL") && !e.contains("pw@"), "{e}");
        let e = err_text(&[("REDIS_MODE", "bogus")]);
        assert!(e.contains("REDIS_MODE") && e.contains("single"), "{e}");
        let cluster = parse(&[
            ("REDIS_MODE", "cluster"),
            ("REDIS_URL", "redis://:pw@a:7000, redis://b:7001"),
        ])
        .unwrap();
        let target = cluster.redis.expect("cluster target");
        assert_eq!(target.mode(), "cluster");
        assert!(!format!("{target:?}").contains("pw"));
        let e = err_text(&[("REDIS_MODE", "cluster")]);
        assert!(e.contains("REDIS_URL") && e.contains("seed"), "{e}");
        let e = err_text(&[
            ("REDIS_MODE", "cluster"),
            ("REDIS_URL", "redis://:pw@a:7000,not a url"),
        ]);
        assert!(
            e.contains("REDIS_URL") && e.contains("2") && !e.contains("pw@"),
            "{e}"
        );
        let e = err_text(&[
            ("REDIS_MODE", "cluster"),
            ("REDIS_URL", "redis://a:7000"),
            ("REDIS_SENTINEL_MASTER", "m"),
        ]);
        assert!(e.contains("REDIS_SENTINEL_MASTER"), "{e}");
        let e = err_text(&[("REDIS_URL", "redis://a:1"), ("REDIS_SENTINEL_MASTER", "m")]);
        assert!(e.contains("REDIS_SENTINEL_MASTER"), "{e}");
        let single = parse(&[("REDIS_MODE", "single")]).unwrap();
        assert_eq!(single.redis.map(|t| t.mode()), Some("single"));
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

    /// Every numeric setting: (variable, lowest accepted, highest accepted, extra vars).
    /// Each bound is accepted, one past it is refused with the range in the message.
    type RangeCase = (
        &'static str,
        u64,
        u64,
        &'static [(&'static str, &'static str)],
    );
    const RANGES: &[RangeCase] = &[
        ("PORT", 0, 65_535, &[]),
        ("REDIS_PORT", 1, 65_535, &[]),
        ("REDIS_DB", 0, 2_147_483_647, &[]),
        ("ROOM_TTL_SECONDS", 1, 315_360_000, &[]),
        ("TOKEN_MAX_TTL_SECONDS", 1, 315_360_000, &[]),
        (
            "MAX_MESSAGE_BYTES",
            128,
            16_777_216,
            &[("MAX_QUEUE_BYTES", "16777216")],
        ),
        ("MAX_QUEUE_BYTES", 65_536, 1_073_741_824, &[]),
        ("RATE_LIMIT_PER_SECOND", 0, 1_000_000, &[]),
        ("RATE_LIMIT_BURST", 1, 1_000_000, &[]),
        ("RATE_LIMIT_BYTES_PER_SECOND", 0, 1_073_741_824, &[]),
        ("RATE_LIMIT_BYTES_BURST", 65_536, 1_073_741_824, &[]),
        ("MAX_CONNECTIONS", 1, 1_000_000, &[]),
        ("WORKER_THREADS", 1, 1024, &[]),
        ("RESUME_GRACE_SECONDS", 0, 3600, &[]),
        ("RESUME_BUFFER_MESSAGES", 1, 100_000, &[]),
        ("TURN_TTL_SECONDS", 60, 2_592_000, &[]),
        ("ALERT_CONNECTION_SPIKE", 1, 1_000_000, &[]),
        ("HTTP_HEADER_TIMEOUT_SECONDS", 1, 300, &[]),
        ("HTTP_IDLE_TIMEOUT_SECONDS", 1, 3600, &[]),
        ("MAX_PENDING_CONNECTIONS", 1, 1_000_000, &[]),
    ];

    #[test]
    fn every_number_has_an_inclusive_range() {
        for (var, lo, hi, extra) in RANGES {
            let with = |v: String| {
                let mut vars: Vec<(&str, String)> = vec![(var, v)];
                vars.extend(extra.iter().map(|(k, v)| (*k, (*v).to_owned())));
                if var.starts_with("REDIS_") {
                    vars.push(("REDIS_HOST", "127.0.0.1".to_owned()));
                }
                vars
            };
            let run = |v: String| {
                let vars = with(v);
                let refs: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (*k, v.as_str())).collect();
                parse(&refs)
            };
            for ok in [*lo, *hi] {
                if let Err(e) = run(ok.to_string()) {
                    panic!("{var}={ok} refused: {e}");
                }
            }
            let range = format!("must be between {lo} and {hi}");
            let mut bad = vec![
                hi.saturating_add(1).to_string(),
                "18446744073709551616".into(),
            ];
            if *lo > 0 {
                bad.push((lo - 1).to_string());
            }
            for v in bad {
                let e = run(v.clone())
                    .err()
                    .map(|e| e.to_string())
                    .unwrap_or_default();
                assert!(
                    e.starts_with(&format!("{var}=")) && e.ends_with(&range),
                    "{var}={v}: {e:?} should end with {range:?}"
                );
            }
        }
        let e = err_text(&[("PING_INTERVAL_SECONDS", "3601")]);
        assert!(e.ends_with("must be between 0.05 and 3600"), "{e}");
        let e = err_text(&[("MAX_MESSAGE_BYTES", "2048"), ("MAX_QUEUE_BYTES", "1024")]);
        assert!(
            e.starts_with("MAX_QUEUE_BYTES=") && e.contains("must be between 2048 and"),
            "{e}"
        );
    }

    #[test]
    fn a_public_key_and_a_secret_together_are_refused() {
        // Refused before the file is read, so the message is about the pair.
        for mode in ["jwt", "none"] {
            let e = err_text(&[
                ("AUTH_MODE", mode),
                ("JWT_SECRET", "s3cret"),
                ("JWT_PUBLIC_KEY_FILE", "/nonexistent.pem"),
            ]);
            assert!(
                e.contains("JWT_SECRET")
                    && e.contains("JWT_PUBLIC_KEY_FILE")
                    && e.contains("not both"),
                "{e}"
            );
            assert!(!e.contains("s3cret"), "{e}");
        }
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
