//! Where the cluster's Redis lives, as redis-rs wants it. The configuration
//! ([`crate::config`]) reads the environment and builds it here, so a bad URL fails
//! at startup while only the Redis engine knows redis-rs types.
//!
//! Three shapes (`REDIS_MODE`, PROTOCOL.md section 13): one Redis at a fixed
//! address; a master found through Sentinel, asked again whenever a connection is
//! made, so a failover moves every connection of the node to the new master; or a
//! Redis Cluster reached through seed nodes, whose topology redis-rs follows.

use redis::io::tcp::TcpSettings;
use redis::IntoConnectionInfo;

/// TCP settings of every Redis connection the node dials. Nagle's algorithm off:
/// a relay is one small script call whose publish another node waits for, and a
/// join pipelines a few small writes; holding any of them back for an ACK adds
/// the peer's delayed-ACK time to a message's latency.
pub(super) fn tcp_settings() -> TcpSettings {
    TcpSettings::default().set_nodelay(true)
}

/// `info` with the node's [`tcp_settings`].
fn with_tcp_settings(info: redis::ConnectionInfo) -> redis::ConnectionInfo {
    info.set_tcp_settings(tcp_settings())
}

/// A parsed Redis address with a display form that never contains the password.
#[derive(Clone)]
pub struct RedisTarget {
    /// What redis-rs connects to.
    pub(super) kind: TargetKind,
    /// `redis://host:port/db` (or the sentinels and master name), safe to log.
    pub display: String,
}

/// The two ways to reach the primary.
#[derive(Clone)]
pub(super) enum TargetKind {
    /// One Redis at a fixed address (`REDIS_MODE=single`).
    Single(redis::ConnectionInfo),
    /// The master `master` that the sentinels name (`REDIS_MODE=sentinel`); the
    /// database and credentials given with the sentinel URLs are the master's.
    Sentinel {
        sentinels: Vec<redis::ConnectionInfo>,
        master: String,
        settings: redis::RedisConnectionInfo,
    },
    /// A Redis Cluster found through these seed nodes (`REDIS_MODE=cluster`); the
    /// credentials of the first seed are the cluster's.
    Cluster(Vec<redis::ConnectionInfo>),
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

    /// Parses `REDIS_URL` as a comma-separated list of sentinels watching `master`.
    /// The password and database of the first URL are the master's (sentinels are
    /// asked without credentials). The error names the URL that failed, by position.
    pub fn sentinel(urls: &str, master: &str) -> Result<Self, String> {
        let sentinels = parse_list(urls, "sentinel")?;
        let Some(first) = sentinels.first() else {
            return Err("no sentinel URL".to_owned());
        };
        let settings = first.redis_settings().clone();
        let addresses: Vec<String> = sentinels.iter().map(address).collect();
        let display = format!(
            "sentinel master {master} via {} (db {})",
            addresses.join(","),
            settings.db()
        );
        // Sentinels are asked without the master's credentials.
        let sentinels = sentinels
            .into_iter()
            .map(|s| s.set_redis_settings(redis::RedisConnectionInfo::default()))
            .collect();
        Ok(Self {
            kind: TargetKind::Sentinel {
                sentinels,
                master: master.to_owned(),
                settings,
            },
            display,
        })
    }

    /// Parses `REDIS_URL` as a comma-separated list of Redis Cluster seed nodes. The
    /// error names the URL that failed, by position.
    pub fn cluster(urls: &str) -> Result<Self, String> {
        let seeds = parse_list(urls, "seed")?;
        for (i, info) in seeds.iter().enumerate() {
            if info.redis_settings().db() != 0 {
                return Err(format!(
                    "seed URL {}: a Redis Cluster has database 0 only",
                    i + 1
                ));
            }
            if matches!(info.addr(), redis::ConnectionAddr::Unix(_)) {
                return Err(format!(
                    "seed URL {}: a cluster is reached over TCP, not a unix socket",
                    i + 1
                ));
            }
        }
        let addresses: Vec<String> = seeds.iter().map(address).collect();
        let display = format!("cluster via {}", addresses.join(","));
        Ok(Self {
            kind: TargetKind::Cluster(seeds),
            display,
        })
    }

    fn from_info(info: redis::ConnectionInfo) -> Self {
        let info = with_tcp_settings(info);
        let display = format!("{}/{}", address(&info), info.redis_settings().db());
        Self {
            kind: TargetKind::Single(info),
            display,
        }
    }

    /// `single`, `sentinel` or `cluster`, for logs, `/readyz` and `/stats`.
    pub fn mode(&self) -> &'static str {
        match self.kind {
            TargetKind::Single(_) => "single",
            TargetKind::Sentinel { .. } => "sentinel",
            TargetKind::Cluster(_) => "cluster",
        }
    }
}

/// A comma-separated list of Redis URLs (`what`: sentinel or seed), at least one;
/// the error names the URL that failed, by position.
fn parse_list(urls: &str, what: &str) -> Result<Vec<redis::ConnectionInfo>, String> {
    let mut infos = Vec::new();
    for (i, url) in urls.split(',').map(str::trim).enumerate() {
        if url.is_empty() {
            return Err(format!("{what} URL {} is empty", i + 1));
        }
        let info = url
            .into_connection_info()
            .map_err(|e| format!("{what} URL {}: {e}", i + 1))?;
        infos.push(with_tcp_settings(info));
    }
    if infos.is_empty() {
        return Err(format!("no {what} URL"));
    }
    Ok(infos)
}

/// `redis://host:port` without credentials, for logs.
fn address(info: &redis::ConnectionInfo) -> String {
    match info.addr() {
        redis::ConnectionAddr::Tcp(host, port) => format!("redis://{host}:{port}"),
        redis::ConnectionAddr::TcpTls { host, port, .. } => format!("rediss://{host}:{port}"),
        redis::ConnectionAddr::Unix(path) => format!("unix://{}", path.display()),
        other => format!("{other}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sentinel_lists_parse_and_never_show_the_password() {
        let t = RedisTarget::sentinel("redis://:pw@10.0.0.1:26379/2, redis://10.0.0.2:26379", "m1")
            .expect("two sentinels");
        assert_eq!(t.mode(), "sentinel");
        assert!(!t.display.contains("pw"), "{}", t.display);
        assert!(t.display.contains("m1") && t.display.contains("10.0.0.2:26379"));
        assert!(RedisTarget::sentinel("redis://a:1,", "m").is_err());
        assert!(RedisTarget::sentinel("redis://a:1,ftp://b", "m").is_err());
        let single = RedisTarget::from_url("redis://:pw@h:6380/3").expect("one redis");
        assert_eq!(single.mode(), "single");
        assert_eq!(single.display, "redis://h:6380/3");
    }

    #[test]
    fn cluster_seed_lists_parse_and_never_show_the_password() {
        let t = RedisTarget::cluster("redis://:pw@10.0.0.1:7000, redis://10.0.0.2:7001")
            .expect("two seeds");
        assert_eq!(t.mode(), "cluster");
        assert!(!t.display.contains("pw"), "{}", t.display);
        assert!(t.display.contains("10.0.0.2:7001"), "{}", t.display);
        assert!(RedisTarget::cluster("redis://a:1,").is_err());
        assert!(RedisTarget::cluster("redis://a:1,ftp://b").is_err());
        assert!(RedisTarget::cluster("unix:///tmp/r.sock").is_err());
        assert!(RedisTarget::cluster("redis://a:1/0,redis://b:2/3").is_err());
    }
}
