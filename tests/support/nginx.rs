//! A real nginx in front of real nodes, with the proxy configuration docker-compose
//! runs: nginx/signal-http.conf and nginx/signal-locations.conf are included
//! unchanged, and only what differs per machine (ports, paths, one worker) is
//! written here. Needs Debian's nginx (`apt-get install -y nginx`, as .ci/run does).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::util::{free_port, TempDir, TIMEOUT};

/// Bound on nginx answering after spawn, and on its graceful exit after QUIT.
const NGINX_TIMEOUT: Duration = Duration::from_secs(5);

/// An nginx master (one worker) on a free port proxying to `127.0.0.1:{upstreams}`;
/// stopped with QUIT (graceful), and killed if it lingers, on drop.
pub struct Nginx {
    port: u16,
    child: Option<Child>,
    dir: TempDir,
}

impl Nginx {
    /// Starts nginx in front of the nodes on `upstreams` (127.0.0.1 ports).
    pub async fn start(upstreams: &[u16]) -> Self {
        Self::start_with_backups(upstreams, &[]).await
    }

    /// Starts nginx sending to `upstreams`, and to `backups` only while none of
    /// those answers (so a test knows which node a client reaches, and where it
    /// goes when that node dies).
    pub async fn start_with_backups(upstreams: &[u16], backups: &[u16]) -> Self {
        let binary = nginx_binary();
        let mut last_error = String::new();
        for _attempt in 0..3 {
            let mut nginx = Self::spawn(&binary, upstreams, backups);
            match nginx.wait_up().await {
                Ok(()) => return nginx,
                // The free port was taken between probe and bind: try another one.
                Err(e) if e.contains("in use") => last_error = e,
                Err(e) => panic!("{e}"),
            }
            nginx.stop();
        }
        panic!("nginx did not start: {last_error}");
    }

    fn spawn(binary: &Path, upstreams: &[u16], backups: &[u16]) -> Self {
        let dir = TempDir::new();
        let port = free_port();
        let conf = config(dir.path(), port, upstreams, backups);
        let conf_path = dir.write("nginx.conf", conf.as_bytes());
        // -p: relative paths under the temp dir; -e: the startup error log too
        // (Debian's default may not be writable); `daemon off` keeps it our child.
        let child = Command::new(binary)
            .arg("-p")
            .arg(dir.path())
            .args(["-c", &conf_path])
            .arg("-e")
            .arg(dir.path().join("error.log"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", binary.display()));
        Self {
            port,
            child: Some(child),
            dir,
        }
    }

    /// Polls `GET /healthz` through nginx until 200 (a node behind it answered).
    async fn wait_up(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + NGINX_TIMEOUT;
        loop {
            if let Some(Ok(Some(status))) = self.child.as_mut().map(Child::try_wait) {
                return Err(format!("nginx exited ({status}):\n{}", self.error_log()));
            }
            if let Ok(resp) = http().get(self.url("/healthz")).send().await {
                if resp.status().as_u16() == 200 {
                    return Ok(());
                }
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "nginx not answering within {NGINX_TIMEOUT:?}:\n{}",
                    self.error_log()
                ));
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    pub fn ws_url(&self, room: &str, user: &str) -> String {
        format!("ws://127.0.0.1:{}/ws/{room}/{user}", self.port)
    }

    /// nginx's access log so far.
    pub fn access_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("access.log")).unwrap_or_default()
    }

    pub fn error_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("error.log")).unwrap_or_default()
    }

    /// `GET path` through nginx → (status, JSON body or Null).
    pub async fn get(&self, path: &str) -> (u16, Value) {
        let url = self.url(path);
        let resp = http()
            .get(&url)
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET {url} failed: {e}"));
        let status = resp.status().as_u16();
        let text = resp.text().await.expect("read body");
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    /// QUIT (finish open requests, then exit), bounded; KILL if it lingers.
    /// Returns whether it exited gracefully in time.
    pub fn stop(&mut self) -> bool {
        let Some(mut child) = self.child.take() else {
            return true;
        };
        if let Ok(Some(_)) = child.try_wait() {
            return true;
        }
        let _ = Command::new("kill")
            .args(["-QUIT", &child.id().to_string()])
            .status();
        let deadline = Instant::now() + NGINX_TIMEOUT;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = child.try_wait() {
                return status.success();
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        let _ = child.kill();
        let _ = child.wait();
        false
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        self.stop();
        if std::thread::panicking() {
            eprintln!("--- nginx error.log ---\n{}", self.error_log());
        }
    }
}

/// The test's main config: compose's nginx/nginx.conf with local ports and paths.
fn config(dir: &Path, port: u16, upstreams: &[u16], backups: &[u16]) -> String {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("nginx");
    let servers: String = upstreams
        .iter()
        .map(|p| format!("        server 127.0.0.1:{p};\n"))
        .chain(
            backups
                .iter()
                .map(|p| format!("        server 127.0.0.1:{p} backup;\n")),
        )
        .collect();
    let d = dir.display();
    let r = repo.display();
    format!(
        r#"# Written by tests/nginx.rs.
daemon off;
# One worker: round robin state is per worker, so with one it strictly alternates.
worker_processes 1;
pid "{d}/nginx.pid";
error_log "{d}/error.log" warn;
# Bounds a graceful stop if a test left a WebSocket open.
worker_shutdown_timeout 1s;
events {{
    worker_connections 256;
}}
http {{
    # Debian's compiled-in temp paths are under /var/lib/nginx: keep them private.
    client_body_temp_path "{d}/client_body";
    proxy_temp_path "{d}/proxy";
    fastcgi_temp_path "{d}/fastcgi";
    uwsgi_temp_path "{d}/uwsgi";
    scgi_temp_path "{d}/scgi";
    include "{r}/signal-http.conf";
    # The shipped format (signal-http.conf): no query strings.
    access_log "{d}/access.log" signal_redacted;
    upstream signal_nodes {{
{servers}    }}
    server {{
        listen 127.0.0.1:{port};
        include "{r}/signal-locations.conf";
    }}
}}
"#
    )
}

/// nginx from PATH or Debian's /usr/sbin (not on a non-root PATH); fails clearly.
fn nginx_binary() -> PathBuf {
    let on_path = std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .map(|dir| dir.join("nginx"));
    on_path
        .chain([PathBuf::from("/usr/sbin/nginx")])
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "nginx is not installed: these tests run the real proxy config. Install it \
                 (Debian: apt-get install -y nginx; .ci/run does) and run them again."
            )
        })
}

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(TIMEOUT)
        .build()
        .expect("build reqwest client")
}
