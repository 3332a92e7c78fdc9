//! How a redis-rs error becomes a [`BrokerError`]: an outage (Redis unreachable or
//! unable to serve) or a command Redis answered with an error. Kept here so only
//! the Redis engine knows redis-rs error kinds.

use crate::broker::BrokerError;

impl From<::redis::RedisError> for BrokerError {
    /// Classifies a redis-rs error; the command name is filled in by the broker.
    fn from(e: ::redis::RedisError) -> Self {
        if is_outage(&e) {
            Self::Unreachable(Box::new(e))
        } else {
            Self::Command {
                op: "redis",
                source: Box::new(e),
            }
        }
    }
}

/// Whether a redis-rs error means the server is unreachable or cannot serve now
/// (retrying elsewhere or later helps), rather than that it refused this command.
pub(super) fn is_outage(e: &::redis::RedisError) -> bool {
    use ::redis::{ErrorKind, ServerErrorKind};
    if e.is_io_error() || e.is_connection_dropped() || e.is_timeout() || e.is_connection_refusal() {
        return true;
    }
    matches!(
        e.kind(),
        ErrorKind::Parse
            | ErrorKind::AuthenticationFailed
            | ErrorKind::ClusterConnectionNotFound
            | ErrorKind::MasterNameNotFoundBySentinel
            | ErrorKind::NoValidReplicasFoundBySentinel
            | ErrorKind::Server(
                ServerErrorKind::BusyLoading
                    | ServerErrorKind::MasterDown
                    | ServerErrorKind::ClusterDown
                    | ServerErrorKind::TryAgain
                    | ServerErrorKind::ReadOnly
            )
    )
}

#[cfg(test)]
mod tests {
    use crate::broker::BrokerError;
    use ::redis::{ErrorKind, RedisError, ServerErrorKind};

    #[test]
    fn lost_connections_are_outages_and_answered_errors_are_not() {
        let io = |kind| BrokerError::from(RedisError::from(std::io::Error::from(kind)));
        for kind in [
            std::io::ErrorKind::ConnectionRefused,
            std::io::ErrorKind::ConnectionReset,
            std::io::ErrorKind::TimedOut,
            std::io::ErrorKind::UnexpectedEof,
        ] {
            assert!(io(kind).is_outage(), "{kind:?}");
        }
        let server = |kind| BrokerError::from(RedisError::from((kind, "x")));
        assert!(server(ErrorKind::Server(ServerErrorKind::BusyLoading)).is_outage());
        assert!(server(ErrorKind::AuthenticationFailed).is_outage());
        for kind in [
            ErrorKind::Server(ServerErrorKind::ResponseError),
            ErrorKind::Server(ServerErrorKind::NoScript),
            ErrorKind::Extension,
            ErrorKind::UnexpectedReturnType,
        ] {
            let e = server(kind).in_op("join");
            assert!(!e.is_outage(), "{kind:?}");
            assert!(
                e.to_string().starts_with("redis command join failed"),
                "{e}"
            );
        }
    }
}
