//! Timeouts, fresh ids and ports, bounded polling, temporary directories.

use std::fmt::Display;
use std::fs;
use std::future::Future;
use std::net::TcpListener;
use std::path::PathBuf;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use uuid::Uuid;

/// Bound on every network wait (connect, send, receive, HTTP request).
pub const TIMEOUT: Duration = Duration::from_secs(5);
/// Window used only to assert that nothing arrives; never to wait for something.
pub const QUIET: Duration = Duration::from_millis(300);
/// Period of every bounded poll.
pub(super) const POLL: Duration = Duration::from_millis(25);

/// A fresh room id, unique per call, valid per PROTOCOL.md section 1.
pub fn room_id() -> String {
    format!("r-{}", Uuid::new_v4().simple())
}

/// A fresh KEY_PREFIX, unique per call.
pub fn key_prefix() -> String {
    format!("t-{}:", Uuid::new_v4().simple())
}

/// A free TCP port on 127.0.0.1 (bind port 0, read it, drop the listener; the
/// small race with other processes is known and accepted).
pub fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    listener.local_addr().expect("local_addr").port()
}

/// Polls `check` every few milliseconds until it holds; panics naming `what` after
/// `within`. This is the only acceptable way to wait for a state without an event.
pub async fn eventually<F, Fut>(within: Duration, what: impl Display, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    loop {
        if check().await {
            return;
        }
        if Instant::now() >= deadline {
            panic!("timed out after {within:?} waiting for: {what}");
        }
        tokio::time::sleep(POLL).await;
    }
}
pub(super) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding the lock already failed the test; keep going for Drop.
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A directory under the system temp dir, removed on drop.
pub struct TempDir {
    path: PathBuf,
}

impl TempDir {
    pub fn new() -> Self {
        let path = std::env::temp_dir()
            .join("signal-node-tests")
            .join(format!("d-{}", Uuid::new_v4().simple()));
        fs::create_dir_all(&path).expect("create temp dir");
        Self { path }
    }

    pub fn path(&self) -> &std::path::Path {
        &self.path
    }

    /// Writes `contents` to `name` inside the directory; returns the full path as text.
    pub fn write(&self, name: &str, contents: &[u8]) -> String {
        let path = self.path.join(name);
        fs::write(&path, contents).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
        path.to_string_lossy().into_owned()
    }
}

impl Default for TempDir {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.path);
    }
}
