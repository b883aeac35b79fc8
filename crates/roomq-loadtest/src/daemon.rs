//! A `roomqd` child process on `127.0.0.1:0`, for the chaos mode.
//!
//! The daemon logs `roomqd serving listen=ADDR …` on stderr once it
//! accepts connections; a reader thread watches for that line, then keeps
//! draining stderr (a full pipe would block the broker's logging) and keeps
//! the last lines for error messages. Dropping a [`Daemon`] kills it, so no
//! broker outlives the load test.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};

/// Log lines kept for error messages.
const TAIL_LINES: usize = 40;

/// How the load generator's clients reach the broker.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    /// Length-prefixed frames on the TCP listener.
    #[default]
    Tcp,
    /// The HTTP listener's WebSocket endpoint `/ws`.
    Ws,
}

/// A running `roomqd`.
pub struct Daemon {
    child: Child,
    pub addr: SocketAddr,
    /// The HTTP listener (WebSocket endpoint `/ws`).
    pub http: Option<SocketAddr>,
    /// What [`Daemon::client_addr`] gives out.
    pub transport: Transport,
    /// The `version=` field of its "serving" line.
    pub version: String,
    /// From spawning the process to its "serving" line.
    pub serving_after: Duration,
    tail: Arc<Mutex<VecDeque<String>>>,
}

impl Daemon {
    /// Starts `roomqd` on `data_dir` and waits up to `wait` for it to serve.
    pub async fn start(
        bin: &Path,
        data_dir: &Path,
        config: Option<&Path>,
        wait: Duration,
    ) -> anyhow::Result<Daemon> {
        let spawned = Instant::now();
        let mut cmd = Command::new(bin);
        cmd.args(["--listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0"])
            .arg("--data-dir")
            .arg(data_dir)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        if let Some(c) = config {
            cmd.arg("--config").arg(c);
        }
        let mut child = cmd
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let stderr = child.stderr.take();
        let tail = Arc::new(Mutex::new(VecDeque::with_capacity(TAIL_LINES)));
        let (tx, rx) = tokio::sync::oneshot::channel::<Serving>();
        let mut daemon = Daemon {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            http: None,
            transport: Transport::Tcp,
            version: String::new(),
            serving_after: Duration::ZERO,
            tail: tail.clone(),
        };
        let Some(stderr) = stderr else {
            bail!("roomqd's stderr is not captured");
        };
        std::thread::Builder::new()
            .name("roomqd-log".into())
            .spawn(move || watch_log(stderr, tx, &tail))
            .context("starting the log reader")?;
        match tokio::time::timeout(wait, rx).await {
            Ok(Ok(serving)) => {
                daemon.serving_after = spawned.elapsed();
                let addr = serving.addr;
                daemon.addr = addr
                    .parse()
                    .with_context(|| format!("roomqd reported listen={addr:?}"))?;
                daemon.http = serving.http.parse().ok();
                daemon.version = serving.version;
                Ok(daemon)
            }
            Ok(Err(_)) => bail!(
                "roomqd exited before serving; its last log lines:\n{}",
                daemon.tail()
            ),
            Err(_) => bail!(
                "roomqd did not report serving within {wait:?}; its last log lines:\n{}",
                daemon.tail()
            ),
        }
    }

    /// The address clients connect to: `host:port` for TCP, `ws://host:port`
    /// for WebSocket (falls back to TCP if the HTTP listener is off).
    /// The roomqd process's id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn client_addr(&self) -> String {
        match (self.transport, self.http) {
            (Transport::Ws, Some(http)) => format!("ws://{http}"),
            _ => self.addr.to_string(),
        }
    }

    /// SIGKILL, then reap.
    pub fn kill9(&mut self) -> anyhow::Result<()> {
        // Child::kill sends SIGKILL on Unix.
        self.child.kill().context("killing roomqd")?;
        self.child.wait().context("reaping roomqd")?;
        Ok(())
    }

    /// Whether the process has exited on its own (it should not).
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// The last lines it logged.
    pub fn tail(&self) -> String {
        self.tail
            .lock()
            .map(|t| t.iter().cloned().collect::<Vec<_>>().join("\n"))
            .unwrap_or_default()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The fields of the "roomqd serving" line.
struct Serving {
    addr: String,
    /// An address, or `off`.
    http: String,
    version: String,
}

fn watch_log(
    stderr: std::process::ChildStderr,
    tx: tokio::sync::oneshot::Sender<Serving>,
    tail: &Mutex<VecDeque<String>>,
) {
    let mut tx = Some(tx);
    for line in BufReader::new(stderr).lines().map_while(Result::ok) {
        if line.contains("roomqd serving") {
            if let (Some(addr), Some(tx)) = (field(&line, "listen="), tx.take()) {
                let version = field(&line, "version=").unwrap_or_default();
                let http = field(&line, "http=").unwrap_or_default();
                let _ = tx.send(Serving {
                    addr,
                    http,
                    version,
                });
            }
        }
        if let Ok(mut t) = tail.lock() {
            if t.len() == TAIL_LINES {
                t.pop_front();
            }
            t.push_back(line);
        }
    }
}

/// The value of `name` (given with its `=`) in a `key=value` log line.
fn field(line: &str, name: &str) -> Option<String> {
    let rest = line.split(name).nth(1)?;
    let value = rest.split_whitespace().next()?;
    Some(value.trim_matches('"').to_string())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn fields_are_read_from_the_serving_line() {
        let line = "2026-01-01T00:00:00Z  INFO roomq::server: roomqd serving \
                    listen=127.0.0.1:40123 data_dir=/tmp/x version=0.1.0";
        assert_eq!(field(line, "listen=").unwrap(), "127.0.0.1:40123");
        assert_eq!(field(line, "version=").unwrap(), "0.1.0");
        assert_eq!(field(line, "nope="), None);
    }
}
