//! Log output: `tracing` to stdout, as text or one JSON object per line.
//!
//! `RUST_LOG` picks what is logged, with one exception it cannot lift: events from
//! other crates are capped at INFO. Below that, dependencies print what they carry:
//! tungstenite logs every frame (SDP, candidates, messages) at TRACE, and HTTP
//! libraries log request lines with their query strings (tokens, room passwords).
//! Our own code never logs payloads or credentials at any level, so it stays
//! uncapped. The cap is a second filter, not a directive appended to `RUST_LOG`, so
//! no directive ordering or specificity can override it.

use tracing_subscriber::filter::{FilterExt, LevelFilter, Targets};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

use crate::config::{Config, LogFormat};

/// The most detailed level any dependency may log at.
const DEPENDENCY_CAP: LevelFilter = LevelFilter::INFO;

/// `RUST_LOG` holds a directive that cannot be parsed.
#[derive(Debug, thiserror::Error)]
#[error("invalid RUST_LOG={0:?}: {1}")]
pub struct LogFilterError(String, String);

/// The filter no `RUST_LOG` can widen: this crate at any level, every other target
/// (including `log` records bridged from tungstenite) at most [`DEPENDENCY_CAP`].
pub fn payload_cap() -> Targets {
    Targets::new()
        .with_default(DEPENDENCY_CAP)
        .with_target(env!("CARGO_CRATE_NAME"), LevelFilter::TRACE)
}

/// Installs the global subscriber.
pub fn init(config: &Config) -> Result<(), LogFilterError> {
    let filter = EnvFilter::try_new(&config.log_filter)
        .map_err(|e| LogFilterError(config.log_filter.clone(), e.to_string()))?;
    let filter = filter.and(payload_cap());
    // Colour codes only for a person at a terminal, never into files or log pipelines.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stdout());
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stdout)
        .with_ansi(ansi);
    let layer = match config.log_format {
        LogFormat::Text => fmt.with_filter(filter).boxed(),
        LogFormat::Json => fmt
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .with_filter(filter)
            .boxed(),
    };
    tracing_subscriber::registry().with(layer).init();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tracing::Level;

    #[test]
    fn dependencies_are_capped_and_this_crate_is_not() {
        let cap = payload_cap();
        assert!(!cap.would_enable("tungstenite::protocol", &Level::TRACE));
        assert!(!cap.would_enable("tokio_tungstenite::compat", &Level::DEBUG));
        assert!(!cap.would_enable("hyper::proto::h1::conn", &Level::DEBUG));
        assert!(cap.would_enable("hyper::proto::h1::conn", &Level::WARN));
        assert!(cap.would_enable("signal_node::session", &Level::TRACE));
    }
}
