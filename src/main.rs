//! `signal-node`: read the command line and the configuration, start logging,
//! bind, serve until SIGTERM. `signal-node healthcheck` asks a running node on this
//! host whether it is alive (for container HEALTHCHECKs, where no curl is
//! installed); `signal-node token` prints a client token (src/cli.rs).

// The node's future nests the engine's (see the same limit in lib.rs).
#![recursion_limit = "256"]

use std::io::{Read, Write};
use std::process::ExitCode;
use std::time::Duration;

use signal_node::cli::{self, Command, TokenArgs, TokenRole};
use signal_node::{app, auth, config::Config, ids::UserId, protocol::Role, shutdown, telemetry};
use tracing::Instrument;

/// mimalloc instead of the system allocator: a relayed message makes a handful of
/// short-lived allocations on whichever worker thread runs it, and glibc's arenas
/// cost more CPU per message and keep more memory per idle connection (issue 13,
/// README "Measured numbers").
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Exit 0 when `GET /healthz` on this host's `PORT` answers 200. With native TLS
/// on, a completed TCP connect is the check (the probe speaks no TLS).
fn healthcheck(config: &Config) -> ExitCode {
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], config.port));
    let Ok(mut stream) = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2)) else {
        return ExitCode::FAILURE;
    };
    if config.security.tls.is_some() {
        return ExitCode::SUCCESS;
    }
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    let request = "GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n";
    let mut reply = [0u8; 16];
    match stream
        .write_all(request.as_bytes())
        .and_then(|()| stream.read(&mut reply))
    {
        Ok(n) if reply[..n].starts_with(b"HTTP/1.1 200") => ExitCode::SUCCESS,
        _ => ExitCode::FAILURE,
    }
}

/// Prints a client token for `args`, signed with `JWT_SECRET` like `POST /tokens`
/// (same rules: a valid user id, a valid room id or `*`, the lifetime capped at
/// `TOKEN_MAX_TTL_SECONDS`); exit 2 with one line when it cannot.
fn token(config: &Config, args: &TokenArgs) -> ExitCode {
    let refuse = |why: &str| {
        eprintln!("signal-node token: {why}");
        ExitCode::from(2)
    };
    if UserId::parse(&args.user).is_err() {
        return refuse("--user is not a valid user id (1-64 of A-Z a-z 0-9 _ - .)");
    }
    if args.room != "*" && signal_node::ids::RoomId::parse(&args.room).is_err() {
        return refuse("--room is not a valid room id (1-64 of A-Z a-z 0-9 _ - .) nor *");
    }
    let role = args.role.map(|r| match r {
        TokenRole::Peer => Role::Peer,
        TokenRole::Host => Role::Host,
        TokenRole::Audience => Role::Audience,
    });
    let ttl = Duration::from_secs(args.ttl);
    match auth::issue(&config.security, &args.user, &args.room, role, ttl) {
        Ok((token, _)) => {
            println!("{token}");
            ExitCode::SUCCESS
        }
        Err(auth::IssueError::NoSecret) => refuse("JWT_SECRET is not set: nothing to sign with"),
        Err(e) => refuse(&e.to_string()),
    }
}

fn main() -> ExitCode {
    let (command, settings) = cli::parse();
    let config = match Config::from_settings(&settings) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("signal-node: configuration error: {e}");
            return ExitCode::from(2);
        }
    };
    match &command {
        Some(Command::Healthcheck) => return healthcheck(&config),
        Some(Command::Token(args)) => return token(&config, args),
        Some(Command::Serve) | None => {}
    }
    // One TLS crypto provider for the process: native TLS and rediss:// both use it.
    let _ = rustls::crypto::ring::default_provider().install_default();
    if let Err(e) = telemetry::init(&config) {
        eprintln!("signal-node: configuration error: {e}");
        return ExitCode::from(2);
    }
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if let Some(threads) = config.worker_threads {
        builder.worker_threads(threads);
    }
    let runtime = match builder.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("signal-node: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        let listener = match tokio::net::TcpListener::bind((config.host.as_str(), config.port)).await {
            Ok(l) => l,
            Err(e) => {
                tracing::error!(host = %config.host, port = config.port, error = %e, "cannot listen");
                return ExitCode::FAILURE;
            }
        };
        // Every log line of the node carries its id (sessions add theirs).
        let span = tracing::info_span!("node", node_id = %config.node_id);
        match app::run(listener, config, shutdown::signal()).instrument(span).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                tracing::error!(error = %e, "server failed");
                ExitCode::FAILURE
            }
        }
    })
}
