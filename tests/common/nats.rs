//! Real nats-server processes for the JetStream engine's tests: one server,
//! or a cluster of three with routes, every port on loopback, every store
//! directory temporary. The binary is `ROOMQ_NATS_SERVER`, else the one
//! `scripts/install-nats-server.sh` installs (run here when missing).
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

/// Longest wait for servers to come up (and for a JetStream leader).
pub const START_WAIT: Duration = Duration::from_secs(30);

/// The nats-server binary, installed on first use.
pub fn server_binary() -> PathBuf {
    if let Ok(path) = std::env::var("ROOMQ_NATS_SERVER") {
        return PathBuf::from(path);
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = Command::new("bash")
        .arg(root.join("scripts/install-nats-server.sh"))
        .stderr(Stdio::inherit())
        .output()
        .expect("run scripts/install-nats-server.sh");
    assert!(
        out.status.success(),
        "scripts/install-nats-server.sh failed; run it by hand to see why"
    );
    PathBuf::from(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// One server of the set.
struct Server {
    name: String,
    client_port: u16,
    monitor_port: u16,
    config: PathBuf,
    child: Option<Child>,
}

/// A set of nats-server processes with JetStream. Killed on drop.
pub struct Nats {
    servers: Vec<Server>,
    binary: PathBuf,
    pub dir: TempDir,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind a loopback port")
}

impl Nats {
    /// `n` servers (1: standalone; 3 or 5: one cluster with routes),
    /// started and answering `/healthz?js-enabled-only=true`.
    pub fn start(n: usize) -> Nats {
        let binary = server_binary();
        let mut last = String::new();
        // A port picked free may be taken before the server binds it:
        // start again with other ports, a bounded number of times.
        for _ in 0..3 {
            let dir = tempfile::tempdir().expect("temp dir");
            let mut nats = Nats::write_configs(binary.clone(), dir, n);
            for i in 0..n {
                nats.spawn(i);
            }
            match nats.wait_healthy(START_WAIT) {
                Ok(()) => return nats,
                Err(e) => last = e,
            }
        }
        panic!("nats-server did not start: {last}");
    }

    fn write_configs(binary: PathBuf, dir: TempDir, n: usize) -> Nats {
        let ports: Vec<(u16, u16, u16)> = (0..n)
            .map(|_| (free_port(), free_port(), free_port()))
            .collect();
        let mut servers = Vec::new();
        for (i, (client, monitor, route)) in ports.iter().enumerate() {
            let name = format!("n{}", i + 1);
            let store = dir.path().join(&name);
            let mut conf = format!(
                "server_name: {name}\nlisten: 127.0.0.1:{client}\nhttp: 127.0.0.1:{monitor}\n\
                 max_payload: 2MB\n\
                 jetstream {{ store_dir: {store:?}, sync_interval: always, \
                 max_memory_store: 64MB, max_file_store: 2GB }}\n"
            );
            if n > 1 {
                let routes: Vec<String> = ports
                    .iter()
                    .enumerate()
                    .filter(|(j, _)| *j != i)
                    .map(|(_, (_, _, r))| format!("nats-route://127.0.0.1:{r}"))
                    .collect();
                conf.push_str(&format!(
                    "cluster {{ name: roomq_test, listen: 127.0.0.1:{route}, routes: [{}] }}\n",
                    routes.join(", ")
                ));
            }
            let config = dir.path().join(format!("{name}.conf"));
            std::fs::write(&config, conf).expect("write nats-server config");
            servers.push(Server {
                name,
                client_port: *client,
                monitor_port: *monitor,
                config,
                child: None,
            });
        }
        Nats {
            servers,
            binary,
            dir,
        }
    }

    /// Starts server `i` under a small shell that holds the test process's
    /// pipe: when the pipe closes (`kill9`, or the test process ending in
    /// any way, a panic or a static that is never dropped included), the
    /// shell kills the server with SIGKILL. No server outlives its test.
    fn spawn(&mut self, i: usize) {
        let s = &mut self.servers[i];
        let log = self.dir.path().join(format!("{}.log", s.name));
        let child = Command::new("bash")
            .arg("-c")
            .arg(r#""$0" -c "$1" 2>>"$2" & pid=$!; read -r _; kill -9 "$pid"; wait "$pid""#)
            .arg(&self.binary)
            .arg(&s.config)
            .arg(log)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            // The shell's own notice of the server it killed.
            .stderr(Stdio::null())
            .spawn()
            .expect("start nats-server");
        s.child = Some(child);
    }

    /// The client URL of server `i`.
    pub fn url(&self, i: usize) -> String {
        format!("nats://127.0.0.1:{}", self.servers[i].client_port)
    }

    /// Every server's client URL, comma-separated (`jetstream.urls`).
    pub fn urls(&self) -> String {
        (0..self.servers.len())
            .map(|i| self.url(i))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The log of server `i` so far (for failure messages).
    pub fn log(&self, i: usize) -> String {
        let path = self
            .dir
            .path()
            .join(format!("{}.log", self.servers[i].name));
        std::fs::read_to_string(path).unwrap_or_default()
    }

    /// `kill -9` of server `i` (closing its shell's pipe); its store
    /// directory stays.
    pub fn kill9(&mut self, i: usize) {
        if let Some(mut child) = self.servers[i].child.take() {
            drop(child.stdin.take());
            let _ = child.wait();
        }
    }

    /// Starts server `i` again on its ports and store directory, and waits
    /// until it is healthy.
    pub fn restart(&mut self, i: usize) {
        self.kill9(i);
        self.spawn(i);
        let deadline = Instant::now() + START_WAIT;
        while !self.healthy(i) {
            assert!(
                Instant::now() < deadline,
                "nats-server {} did not come back: {}",
                self.servers[i].name,
                self.log(i)
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn wait_healthy(&mut self, limit: Duration) -> Result<(), String> {
        let deadline = Instant::now() + limit;
        for i in 0..self.servers.len() {
            while !self.healthy(i) {
                if self.log(i).contains("[FTL]") {
                    return Err(format!("server {i} failed: {}", self.log(i)));
                }
                if Instant::now() >= deadline {
                    return Err(format!("server {i} not healthy: {}", self.log(i)));
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        Ok(())
    }

    /// Whether server `i` answers its JetStream health check with 200.
    pub fn healthy(&self, i: usize) -> bool {
        let port = self.servers[i].monitor_port;
        let Ok(mut conn) = TcpStream::connect(("127.0.0.1", port)) else {
            return false;
        };
        let _ = conn.set_read_timeout(Some(Duration::from_secs(2)));
        let request = "GET /healthz?js-enabled-only=true HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n";
        if conn.write_all(request.as_bytes()).is_err() {
            return false;
        }
        let mut answer = String::new();
        let _ = conn.take(4096).read_to_string(&mut answer);
        answer.starts_with("HTTP/1.1 200") || answer.starts_with("HTTP/1.0 200")
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        for i in 0..self.servers.len() {
            self.kill9(i);
        }
    }
}
