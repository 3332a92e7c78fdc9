//! Log output: `tracing` to stdout, as text or one JSON object per line.
//!
//! `RUST_LOG` picks what is logged, with one exception it cannot lift: events from
//! other crates are capped at INFO. Below that, dependencies print what they carry:
//! tungstenite logs every frame (SDP, candidates, messages) at TRACE, and HTTP
//! libraries log request lines with their query strings (tokens, room passwords).
//! Our own code never logs payloads or credentials at any level, so it stays
//! uncapped. The cap is a second filter, not a directive appended to `RUST_LOG`, so
//! no directive ordering or specificity can override it.

use std::io::Write;

use tracing_subscriber::filter::{FilterExt, LevelFilter, Targets};
use tracing_subscriber::fmt::MakeWriter;
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
            .with_writer(NodeStamped::new(config.node_id.as_str()))
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

/// Writes each JSON log line to stdout with `"node_id"` as its first top-level key.
///
/// tracing-subscriber's JSON formatter has no static fields: the node id would
/// otherwise sit only under `span` of the lines logged inside a span that carries
/// it, and be missing from the rest. Log pipelines filter on a top-level field.
struct NodeStamped {
    /// `{"node_id":"<id>",`, JSON-escaped once.
    prefix: std::sync::Arc<[u8]>,
}

impl NodeStamped {
    fn new(node_id: &str) -> Self {
        let id = serde_json::to_string(node_id).unwrap_or_else(|_| "\"\"".to_owned());
        Self {
            prefix: format!("{{\"node_id\":{id},").into_bytes().into(),
        }
    }
}

impl<'a> MakeWriter<'a> for NodeStamped {
    type Writer = StampedLine;

    fn make_writer(&'a self) -> StampedLine {
        StampedLine {
            prefix: self.prefix.clone(),
            line: Vec::new(),
        }
    }
}

/// One event's line, collected and stamped when the formatter drops its writer
/// (the fmt layer makes one writer per event).
struct StampedLine {
    prefix: std::sync::Arc<[u8]>,
    line: Vec<u8>,
}

impl Write for StampedLine {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.line.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for StampedLine {
    fn drop(&mut self) {
        if self.line.is_empty() {
            return;
        }
        let stamped = stamp(&self.prefix, &self.line);
        // Nowhere to report a failed write of a log line; the formatter ignores them too.
        let _ = std::io::stdout().lock().write_all(&stamped);
    }
}

/// `line` with `prefix` in place of its opening `{`, unless the line is not a JSON
/// object or already has a top-level `node_id` (an event that logs it as a field),
/// which must not appear twice.
fn stamp(prefix: &[u8], line: &[u8]) -> Vec<u8> {
    #[derive(serde::Deserialize)]
    struct TopLevel {
        node_id: Option<serde::de::IgnoredAny>,
    }
    let text = line.strip_suffix(b"\n").unwrap_or(line);
    let stampable = text.starts_with(b"{")
        && !text.starts_with(b"{}")
        && serde_json::from_slice::<TopLevel>(text).is_ok_and(|t| t.node_id.is_none());
    if !stampable {
        return line.to_vec();
    }
    let mut out = Vec::with_capacity(prefix.len() + line.len());
    out.extend_from_slice(prefix);
    out.extend_from_slice(&line[1..]);
    out
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

    #[test]
    fn json_lines_get_a_top_level_node_id_once() {
        let prefix = NodeStamped::new("node-1").prefix;
        let stamped = |line: &str| String::from_utf8(stamp(&prefix, line.as_bytes())).unwrap();
        assert_eq!(
            stamped("{\"level\":\"INFO\",\"span\":{\"node_id\":\"node-1\"}}\n"),
            "{\"node_id\":\"node-1\",\"level\":\"INFO\",\"span\":{\"node_id\":\"node-1\"}}\n"
        );
        // Already a field of the event: left as it is.
        let own = "{\"level\":\"INFO\",\"node_id\":\"node-1\"}\n";
        assert_eq!(stamped(own), own);
        // Not an object: untouched.
        assert_eq!(stamped("plain\n"), "plain\n");
        assert_eq!(stamped("{}\n"), "{}\n");
    }
}
