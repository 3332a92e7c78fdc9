//! Log output: `tracing` to stdout, as text or one JSON object per line.

use tracing_subscriber::EnvFilter;

use crate::config::{Config, LogFormat};

/// `RUST_LOG` holds a directive that cannot be parsed.
#[derive(Debug, thiserror::Error)]
#[error("invalid RUST_LOG={0:?}: {1}")]
pub struct LogFilterError(String, String);

/// Installs the global subscriber.
pub fn init(config: &Config) -> Result<(), LogFilterError> {
    let filter = EnvFilter::try_new(&config.log_filter)
        .map_err(|e| LogFilterError(config.log_filter.clone(), e.to_string()))?;
    // Colour codes only for a person at a terminal, never into files or log pipelines.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stdout());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stdout)
        .with_ansi(ansi);
    match config.log_format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .init(),
    }
    Ok(())
}
