//! The command line, by clap: `signal-node [serve]` runs the node,
//! `signal-node healthcheck` asks a running node on this host whether it is alive
//! (container HEALTHCHECKs have no curl), and `signal-node token --user U --room R
//! [--role ROLE] [--ttl SECONDS]` prints a client token signed with `JWT_SECRET`,
//! as `POST /tokens` does, for scripts and quick tests.
//!
//! Every setting is a flag backed by its environment variable (a flag wins), so
//! `signal-node --help` lists them all with variable, default and meaning. clap
//! only gathers the values: [`crate::config`] checks them (ranges, combinations)
//! and stops startup with one line, as it did before there was a command line.
//! Values of variables are never shown in the help (some are secrets).

use std::collections::HashMap;

use clap::{ArgMatches, Args, CommandFactory, FromArgMatches, Parser, Subcommand, ValueEnum};

/// `signal-node`: one WebRTC signaling node, standalone or clustered over Redis.
#[derive(Parser, Debug)]
#[command(name = "signal-node", version, about, long_about = None)]
pub struct Cli {
    /// What to do (serve when absent).
    #[command(subcommand)]
    pub command: Option<Command>,
    /// The node's settings; read back by name from the matches (see [`settings`]).
    #[command(flatten)]
    settings: Settings,
}

/// The subcommands.
#[derive(Subcommand, Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Serve HTTP and WebSocket until SIGTERM (the default)
    Serve,
    /// Exit 0 when the node on this host answers GET /healthz (for container HEALTHCHECKs)
    Healthcheck,
    /// Print a client token signed with JWT_SECRET (as POST /tokens does)
    Token(TokenArgs),
}

/// `signal-node token`.
#[derive(Args, Debug, Clone, PartialEq, Eq)]
pub struct TokenArgs {
    /// The user id the token is for (its `sub`)
    #[arg(long)]
    pub user: String,
    /// The room it admits to, or `*` for any
    #[arg(long)]
    pub room: String,
    /// The role in moderated rooms [default: none, i.e. audience there]
    #[arg(long, value_enum)]
    pub role: Option<TokenRole>,
    /// Lifetime in seconds, at least 1 (capped at TOKEN_MAX_TTL_SECONDS)
    #[arg(long, default_value_t = 3600, value_parser = clap::value_parser!(u64).range(1..))]
    pub ttl: u64,
}

/// The roles a token may carry.
#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenRole {
    Peer,
    Host,
    Audience,
}

/// Every setting (PROTOCOL.md section 10 and README "Configuration").
// The fields are read by their environment variable names from the matches, so
// that config.rs keeps one way of reading settings: they are never read here.
#[allow(dead_code)]
#[derive(Args, Debug)]
#[command(next_help_heading = "Settings (each one also read from its environment variable)")]
struct Settings {
    /// Interface to listen on (HTTP and WebSocket share the port) [default: 0.0.0.0]
    #[arg(
        long,
        env = "HOST",
        global = true,
        value_name = "VALUE",
        hide_env_values = true
    )]
    host: Option<String>,
    /// TCP port, 0-65535 (0: the OS picks one) [default: 8000]
    #[arg(
        long,
        env = "PORT",
        global = true,
        value_name = "VALUE",
        hide_env_values = true
    )]
    port: Option<String>,
    /// redis://[:password@]host:port/db or rediss://; in cluster mode the seed nodes, in sentinel mode the sentinels, comma-separated; wins over REDIS_HOST.. [default: unset: standalone, in memory]
    #[arg(
        long,
        env = "REDIS_URL",
        global = true,
        value_name = "VALUE",
        hide_env_values = true
    )]
    redis_url: Option<String>,
    /// Redis host when REDIS_URL is unset (setting any REDIS_* enables Redis) [default: localhost]
    #[arg(
        long,
        env = "REDIS_HOST",
        global = true,
        value_name = "VALUE",
        hide_env_values = true
    )]
    redis_host: Option<String>,
    /// Redis port, 1-65535 [default: 6379]
    #[arg(
        long,
        env = "REDIS_PORT",
        global = true,
        value_name = "VALUE",
        hide_env_values = true
    )]
    redis_port: Option<String>,
    /// Redis database, 0-2147483647 [default: 0]
    #[arg(
        long,
        env = "REDIS_DB",
        global = true,
        value_name = "VALUE",
        hide_env_values = true
    )]
    redis_db: Option<String>,
    /// Redis password [default: none]
    #[arg(
        long,
        env = "REDIS_PASSWORD",
        global = true,
        value_name = "VALUE",
        hide_env_values = true
    )]
    redis_password: Option<String>,
    /// single, cluster (REDIS_URL lists seed nodes) or sentinel (REDIS_URL lists the sentinels) [default: single]
    #[arg(
        long,
        env = "REDIS_MODE",
        global = true,
        value_name = "VALUE",
        hide_env_values = true
    )]
    redis_mode: Option<String>,
    /// The master's name in sentinel mode (required there, refused elsewhere) [default: unset]
    #[arg(
        long,
        env = "REDIS_SENTINEL_MASTER",
        global = true,
        value_name = "VALUE",
        hide_env_values = true
    )]
    redis_sentinel_master: Option<String>,
    /// Prefix of every Redis key and channel (no braces); clusters with different prefixes share one Redis [default: signal:]
    #[arg(
        long,
        env = "KEY_PREFIX",
        global = true,
        value_name = "VALUE",
        hide_env_values = true
    )]
    key_prefix: Option<String>,
    /// Expiry of room and user keys, refreshed while users are connected, 1-315360000 [default: 1800]
    #[arg(
        long,
        env = "ROOM_TTL_SECONDS",
        global = true,
        value_name = "VALUE",
        hide_env_values = true
    )]
    room_ttl_seconds: Option<String>,
    /// This node's name in Redis, logs and GET /users [default: the hostname, else a UUID]
    #[arg(
        long,
        env = "NODE_ID",
        global = true,
        value_name = "VALUE",
        hide_env_values = true
    )]
    node_id: Option<String>,
    /// Log filter (tracing EnvFilter syntax) [default: info]
    #[arg(
        long,
        env = "RUST_LOG",
        global = true,
        value_name = "VALUE",
        hide_env_values = true
    )]
    rust_log: Option<String>,
    /// text, or json for one JSON object per line [default: text]
    #[arg(
        long,
        env = "LOG_FORMAT",
        global = true,
        value_name = "VALUE",
        hide_env_values = true
    )]
    log_format: Option<String>,
    /// Largest accepted WebSocket message (larger closes with 1009), 128-16777216 [default: 65536]
    #[arg(
        long,
        env = "MAX_MESSAGE_BYTES",
        global = true,
        value_name = "VALUE",
        hide_env_values = true
    )]
    max_message_bytes: Option<String>,
    /// Bound of one connection's outbound queue (overflow closes with 4413) [default: 1048576]
    #[arg(
        long,
        env = "MAX_QUEUE_BYTES",
        global = true,
        value_name = "VALUE",
        hide_env_values = true
    )]
    max_queue_bytes: Option<String>,
    /// Server ping period, 0.05-3600; silence for two periods closes with 4408 [default: 20]
    #[arg(
        long,
        env = "PING_INTERVAL_SECONDS",
        global = true,
        value_name = "VALUE",
        hide_env_values = true
    )]
    ping_interval_seconds: Option<String>,
    /// Frames per second per connection (0 turns the limit off) [default: 50]
    #[arg(
        long,
        env = "RATE_LIMIT_PER_SECOND",
        global = true,
        value_name = "VALUE",
        hide_env_values = true
    )]
    rate_limit_per_second: Option<String>,
    /// Frame bucket size per connection [default: 200]
    #[arg(
        long,
        env = "RATE_LIMIT_BURST",
        global = true,
        value_name = "VALUE",
        hide_env_values = true
    )]
    rate_limit_burst: Option<String>,
    /// Bytes per second per connection (0 turns it off) [default: 262144]
    #[arg(
        long,
        env = "RATE_LIMIT_BYTES_PER_SECOND",
        global = true,
        value_name = "VALUE",
        hide_env_values = true
    )]
    rate_limit_bytes_per_second: Option<String>,
    /// Byte bucket size, at least MAX_MESSAGE_BYTES [default: 524288]
    #[arg(
        long,
        env = "RATE_LIMIT_BYTES_BURST",
        global = true,
        value_name = "VALUE",
        hide_env_values = true
    )]
    rate_limit_bytes_burst: Option<String>,
    /// WebSocket sessions per node; past it new ones get unavailable + 1013 [default: 10000]
    #[arg(
        long,
        env = "MAX_CONNECTIONS",
        global = true,
        value_name = "VALUE",
        hide_env_values = true
    )]
    max_connections: Option<String>,
    /// WARN when connections rise by more than this within a minute [default: 1000]
    #[arg(
        long,
        env = "ALERT_CONNECTION_SPIKE",
        global = true,
        value_name = "VALUE",
        hide_env_values = true
    )]
    alert_connection_spike: Option<String>,
    /// none, or jwt: every WebSocket needs a token [default: none]
    #[arg(
        long,
        env = "AUTH_MODE",
        global = true,
        value_name = "VALUE",
        hide_env_values = true
    )]
    auth_mode: Option<String>,
    /// HS256 key: verifies client tokens in jwt mode and signs POST /tokens and `signal-node token` [default: unset]
    #[arg(
        long,
        env = "JWT_SECRET",
        global = true,
        value_name = "VALUE",
        hide_env_values = true
    )]
    jwt_secret: Option<String>,
    /// PEM public key for client tokens (RSA: RS256, EC P-256: ES256); not with JWT_SECRET [default: unset]
    #[arg(
        long,
        env = "JWT_PUBLIC_KEY_FILE",
        global = true,
        value_name = "VALUE",
        hide_env_values = true
    )]
    jwt_public_key_file: Option<String>,
    /// Required iss of client tokens [default: unset]
    #[arg(
        long,
        env = "JWT_ISSUER",
        global = true,
        value_name = "VALUE",
        hide_env_values = true
    )]
    jwt_issuer: Option<String>,
    /// Required aud of client tokens [default: unset]
    #[arg(
        long,
        env = "JWT_AUDIENCE",
        global = true,
        value_name = "VALUE",
        hide_env_values = true
    )]
    jwt_audience: Option<String>,
    /// Cap of a minted token's lifetime, 1-315360000 [default: 86400]
    #[arg(
        long,
        env = "TOKEN_MAX_TTL_SECONDS",
        global = true,
        value_name = "VALUE",
        hide_env_values = true
    )]
    token_max_ttl_seconds: Option<String>,
    /// Bearer of the admin endpoints; unset disables them [default: unset]
    #[arg(
        long,
        env = "ADMIN_TOKEN",
        global = true,
        value_name = "VALUE",
        hide_env_values = true
    )]
    admin_token: Option<String>,
    /// Bearer required by /metrics; unset leaves it open [default: unset]
    #[arg(
        long,
        env = "METRICS_TOKEN",
        global = true,
        value_name = "VALUE",
        hide_env_values = true
    )]
    metrics_token: Option<String>,
    /// PEM certificate chain: the node serves https and wss itself [default: unset]
    #[arg(
        long,
        env = "TLS_CERT_FILE",
        global = true,
        value_name = "VALUE",
        hide_env_values = true
    )]
    tls_cert_file: Option<String>,
    /// PEM private key of TLS_CERT_FILE [default: unset]
    #[arg(
        long,
        env = "TLS_KEY_FILE",
        global = true,
        value_name = "VALUE",
        hide_env_values = true
    )]
    tls_key_file: Option<String>,
    /// Comma list of Origins allowed for WebSockets and CORS [default: any]
    #[arg(
        long,
        env = "ALLOWED_ORIGINS",
        global = true,
        value_name = "VALUE",
        hide_env_values = true
    )]
    allowed_origins: Option<String>,
    /// base64 of 32 bytes: relayed frames cross Redis sealed [default: unset]
    #[arg(
        long,
        env = "PAYLOAD_ENCRYPTION_KEY",
        global = true,
        value_name = "VALUE",
        hide_env_values = true
    )]
    payload_encryption_key: Option<String>,
    /// TLS handshake and request head time limit, 1-300 [default: 10]
    #[arg(
        long,
        env = "HTTP_HEADER_TIMEOUT_SECONDS",
        global = true,
        value_name = "VALUE",
        hide_env_values = true
    )]
    http_header_timeout_seconds: Option<String>,
    /// A connection not yet upgraded that moves no byte this long is closed, 1-3600 [default: 60]
    #[arg(
        long,
        env = "HTTP_IDLE_TIMEOUT_SECONDS",
        global = true,
        value_name = "VALUE",
        hide_env_values = true
    )]
    http_idle_timeout_seconds: Option<String>,
    /// Connections not yet upgraded to WebSocket; at the cap the oldest is closed [default: 1024]
    #[arg(
        long,
        env = "MAX_PENDING_CONNECTIONS",
        global = true,
        value_name = "VALUE",
        hide_env_values = true
    )]
    max_pending_connections: Option<String>,
    /// How long a dropped member stays in its room, resumable, 0-3600 (0 turns resume off) [default: 20]
    #[arg(
        long,
        env = "RESUME_GRACE_SECONDS",
        global = true,
        value_name = "VALUE",
        hide_env_values = true
    )]
    resume_grace_seconds: Option<String>,
    /// Most relayed messages held per member, 1-100000 [default: 256]
    #[arg(
        long,
        env = "RESUME_BUFFER_MESSAGES",
        global = true,
        value_name = "VALUE",
        hide_env_values = true
    )]
    resume_buffer_messages: Option<String>,
    /// JSON array of RTCIceServer objects handed to every client [default: []]
    #[arg(
        long,
        env = "ICE_SERVERS",
        global = true,
        value_name = "VALUE",
        hide_env_values = true
    )]
    ice_servers: Option<String>,
    /// turn:/turns: URLs (comma list) for time-limited TURN credentials [default: unset]
    #[arg(
        long,
        env = "TURN_URLS",
        global = true,
        value_name = "VALUE",
        hide_env_values = true
    )]
    turn_urls: Option<String>,
    /// The TURN server's shared secret (coturn static-auth-secret) [default: unset]
    #[arg(
        long,
        env = "TURN_SECRET",
        global = true,
        value_name = "VALUE",
        hide_env_values = true
    )]
    turn_secret: Option<String>,
    /// How long TURN credentials are valid, 60-2592000 [default: 86400]
    #[arg(
        long,
        env = "TURN_TTL_SECONDS",
        global = true,
        value_name = "VALUE",
        hide_env_values = true
    )]
    turn_ttl_seconds: Option<String>,
}

/// Parses the process's arguments (exits with clap's message and code 2 on a
/// bad flag, 0 after `--help` or `--version`), and returns the command with the
/// settings given by flag or environment, by variable name.
pub fn parse() -> (Option<Command>, HashMap<String, String>) {
    let matches = Cli::command().get_matches();
    match Cli::from_arg_matches(&matches) {
        Ok(cli) => (cli.command, settings(&matches)),
        Err(e) => e.exit(),
    }
}

/// The settings in `matches`, by environment variable name (a flag wins over its
/// variable; clap reads the variable when the flag is absent).
pub fn settings(matches: &ArgMatches) -> HashMap<String, String> {
    let command = Cli::command();
    let mut values = HashMap::new();
    for arg in command.get_arguments() {
        let Some(var) = arg.get_env().and_then(|v| v.to_str()) else {
            continue;
        };
        if let Ok(Some(value)) = matches.try_get_one::<String>(arg.get_id().as_str()) {
            values.insert(var.to_owned(), value.clone());
        }
    }
    values
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_from(args: &[&str]) -> (Option<Command>, HashMap<String, String>) {
        let matches = Cli::command()
            .try_get_matches_from(args)
            .expect("valid arguments");
        let cli = Cli::from_arg_matches(&matches).expect("matches the command");
        (cli.command, settings(&matches))
    }

    #[test]
    fn flags_are_settings_by_variable_name() {
        let (command, values) =
            parse_from(&["signal-node", "--port", "9000", "--redis-mode", "cluster"]);
        assert_eq!(command, None);
        assert_eq!(values.get("PORT").map(String::as_str), Some("9000"));
        assert_eq!(
            values.get("REDIS_MODE").map(String::as_str),
            Some("cluster")
        );
        let (command, values) = parse_from(&["signal-node", "serve", "--port", "9001"]);
        assert_eq!(command, Some(Command::Serve));
        assert_eq!(values.get("PORT").map(String::as_str), Some("9001"));
    }

    #[test]
    fn token_takes_user_room_role_and_ttl() {
        let (command, _) = parse_from(&[
            "signal-node",
            "token",
            "--user",
            "alice",
            "--room",
            "*",
            "--role",
            "host",
            "--ttl",
            "60",
        ]);
        assert_eq!(
            command,
            Some(Command::Token(TokenArgs {
                user: "alice".into(),
                room: "*".into(),
                role: Some(TokenRole::Host),
                ttl: 60,
            }))
        );
        for bad in [
            "signal-node token --room r",
            "signal-node token --user u --room r --ttl 0",
            "signal-node token --user u --room r --role king",
        ] {
            let args = bad.split_whitespace();
            assert!(Cli::command().try_get_matches_from(args).is_err(), "{bad}");
        }
    }

    #[test]
    fn every_setting_has_a_variable_and_a_default_in_its_help() {
        let command = Cli::command();
        let settings: Vec<_> = command
            .get_arguments()
            .filter(|a| a.get_env().is_some())
            .collect();
        assert!(settings.len() >= 44, "{}", settings.len());
        for arg in settings {
            let help = arg.get_help().map(ToString::to_string).unwrap_or_default();
            assert!(help.contains("[default: "), "{:?}: {help}", arg.get_id());
        }
        Cli::command().debug_assert();
    }
}
