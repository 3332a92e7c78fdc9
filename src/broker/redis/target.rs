//! Where the cluster's Redis lives, as redis-rs wants it. The configuration
//! ([`crate::config`]) reads the environment and builds it here, so a bad URL fails
//! at startup while only the Redis engine knows redis-rs types.

use redis::IntoConnectionInfo;

/// A parsed Redis address with a display form that never contains the password.
#[derive(Clone)]
pub struct RedisTarget {
    /// What redis-rs connects to.
    pub(super) info: redis::ConnectionInfo,
    /// `redis://host:port/db`, safe to log.
    pub display: String,
}

impl std::fmt::Debug for RedisTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.display)
    }
}

impl RedisTarget {
    /// Parses `REDIS_URL` (`redis://[:pw@]host:port/db`, `rediss://`, `unix://`);
    /// the error is redis-rs's reason, for the caller to report.
    pub fn from_url(url: &str) -> Result<Self, String> {
        let info = url.into_connection_info().map_err(|e| e.to_string())?;
        Ok(Self::from_info(info))
    }

    /// Builds the target from its parts (`REDIS_HOST`, `REDIS_PORT`, `REDIS_DB`,
    /// `REDIS_PASSWORD`); the error is redis-rs's reason, for the caller to report.
    pub fn from_parts(
        host: String,
        port: u16,
        db: u32,
        password: Option<String>,
    ) -> Result<Self, String> {
        let mut settings = redis::RedisConnectionInfo::default().set_db(i64::from(db));
        if let Some(pw) = password {
            settings = settings.set_password(pw);
        }
        let info = (host, port)
            .into_connection_info()
            .map_err(|e| e.to_string())?
            .set_redis_settings(settings);
        Ok(Self::from_info(info))
    }

    fn from_info(info: redis::ConnectionInfo) -> Self {
        let display = display_target(&info);
        Self { info, display }
    }
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
