//! `signal-node`: read the configuration, start logging, bind, serve until SIGTERM.

use std::process::ExitCode;

use signal_node::{app, config::Config, shutdown, telemetry};

fn main() -> ExitCode {
    let config = match Config::from_env() {
        Ok(config) => config,
        Err(e) => {
            eprintln!("signal-node: configuration error: {e}");
            return ExitCode::from(2);
        }
    };
    // One TLS crypto provider for the process: native TLS and rediss:// both use it.
    let _ = rustls::crypto::ring::default_provider().install_default();
    if let Err(e) = telemetry::init(&config) {
        eprintln!("signal-node: configuration error: {e}");
        return ExitCode::from(2);
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
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
        match app::run(listener, config, shutdown::signal()).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                tracing::error!(error = %e, "server failed");
                ExitCode::FAILURE
            }
        }
    })
}
