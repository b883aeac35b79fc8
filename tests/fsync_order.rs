//! G1 at the level of system calls: the real `roomqd` runs under
//! `strace -f`, a client publishes and waits for each confirmation, and the
//! trace must show that whenever the broker writes to a client socket, every
//! file it wrote under the data directory since that file's last sync has
//! been synced again (`fsync`/`fdatasync` completed), and every directory in
//! which it created, removed or renamed a file has been synced too. A
//! `sync_file_range` never counts as a sync: it writes no metadata and does
//! not flush the disk's cache.
//!
//! Publishes are sent one at a time, each after the previous confirmation,
//! so at the moment a confirmation is written nothing else is being stored
//! and "everything is synced" is exactly "what this confirmation depends on
//! is synced". Large publishes make sled write blob files, so those and the
//! `blobs` directory are checked too.
//!
//! `strace` must be installed (`.ci/run` installs Debian's package). To
//! check another build (for example the code before the fix), set
//! `ROOMQ_TRACE_ROOMQD` to its `roomqd`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use roomq_client::raw::{ConnectOptions, Connection};

const WAIT: Duration = Duration::from_secs(30);

/// Small publishes, each waiting for its confirmation.
const SMALL: usize = 40;
/// Publishes large enough (200 KiB, over a quarter of sled's 512 KiB
/// segment) that sled writes them to blob files.
const LARGE: usize = 4;

const SYSCALLS: &str = "trace=openat,creat,write,writev,pwrite64,pwritev,pwritev2,\
sendto,sendmsg,fsync,fdatasync,sync_file_range,unlink,unlinkat,rename,renameat,renameat2";

fn strace_available() -> bool {
    Command::new("strace")
        .arg("-V")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// `roomqd` under `strace`; the trace goes to `trace`.
struct Traced {
    strace: std::process::Child,
    addr: String,
}

impl Traced {
    fn start(data: &Path, trace: &Path) -> Traced {
        let roomqd = std::env::var("ROOMQ_TRACE_ROOMQD")
            .unwrap_or_else(|_| env!("CARGO_BIN_EXE_roomqd").to_string());
        let mut strace = Command::new("strace")
            .args(["-f", "-tt", "-qq", "-yy", "-s", "0", "-e", SYSCALLS, "-o"])
            .arg(trace)
            .arg(roomqd)
            .args(["--listen", "127.0.0.1:0", "--data-dir"])
            .arg(data)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start strace");
        let stderr = strace.stderr.take().expect("stderr");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(rest) = line.split("listen=").nth(1) {
                    let addr = rest.split_whitespace().next().unwrap_or("").to_string();
                    let _ = tx.send(addr);
                }
            }
        });
        let addr = rx.recv_timeout(WAIT).expect("roomqd reports its address");
        Traced { strace, addr }
    }

    /// Kills `roomqd` (the tracee) and waits for `strace` to finish the
    /// trace.
    fn stop(mut self) {
        let pid = self.strace.id();
        let children =
            std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
        for child in children.split_whitespace() {
            let _ = Command::new("kill").args(["-KILL", child]).status();
        }
        let deadline = Instant::now() + WAIT;
        while self.strace.try_wait().unwrap().is_none() {
            assert!(Instant::now() < deadline, "strace did not finish");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// One system call as the trace shows it, once it has finished.
#[derive(Debug)]
struct Call {
    line: usize,
    name: String,
    /// The arguments as printed (file descriptors decorated by `-yy`).
    args: String,
    result: Option<i64>,
}

/// What the trace of one `roomqd` run shows.
#[derive(Debug, Default)]
struct Audit {
    /// Writes to a client socket.
    socket_writes: usize,
    /// Socket writes made while something was unsynced: (trace line, what).
    violations: Vec<(usize, Vec<String>)>,
    /// Completed `fsync`/`fdatasync` calls on data-directory paths.
    syncs: usize,
    /// `sync_file_range` calls seen (they never count as a sync).
    sync_file_ranges: usize,
    /// Blob files written.
    blob_writes: usize,
}

/// The path in the first `-yy` decoration of `args` (`7</a/b>`), if any.
fn fd_path(args: &str) -> Option<&str> {
    let start = args.find('<')? + 1;
    let end = start + args.get(start..)?.find('>')?;
    args.get(start..end)
}

/// The quoted strings among `args` that are paths under `root`.
fn quoted_paths<'a>(args: &'a str, root: &str) -> Vec<&'a str> {
    args.split('"')
        .skip(1)
        .step_by(2)
        .filter(|s| s.starts_with(root))
        .collect()
}

fn parent(path: &str) -> String {
    Path::new(path)
        .parent()
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// Joins `<unfinished ...>` and `<... resumed>` halves. Calls are reported
/// twice: when they start (`start`) and when they finish (`end`).
fn calls(trace: &str, mut on: impl FnMut(&Call, bool)) {
    let mut pending: HashMap<String, (String, String)> = HashMap::new();
    for (n, line) in trace.lines().enumerate() {
        // `PID  TIME CALL...`: strace pads the pid to a width.
        let Some((pid, rest)) = line.trim_start().split_once(' ') else {
            continue;
        };
        let Some((_time, rest)) = rest.trim_start().split_once(' ') else {
            continue;
        };
        let (name, args, tail) = if let Some(resumed) = rest.strip_prefix("<... ") {
            let Some((name, tail)) = resumed.split_once(" resumed>") else {
                continue;
            };
            let Some((_, args)) = pending.remove(pid) else {
                continue;
            };
            (name.to_string(), args, tail.to_string())
        } else {
            let Some((name, after)) = rest.split_once('(') else {
                continue;
            };
            if let Some(args) = after.strip_suffix(" <unfinished ...>") {
                pending.insert(pid.to_string(), (name.to_string(), args.to_string()));
                let call = Call {
                    line: n + 1,
                    name: name.to_string(),
                    args: args.to_string(),
                    result: None,
                };
                on(&call, true);
                continue;
            }
            let (args, tail) = match after.rfind(") = ") {
                Some(i) => (
                    after.get(..i).unwrap_or(""),
                    after.get(i + 1..).unwrap_or(""),
                ),
                None => (after, ""),
            };
            let call = Call {
                line: n + 1,
                name: name.to_string(),
                args: args.to_string(),
                result: None,
            };
            on(&call, true);
            (name.to_string(), args.to_string(), tail.to_string())
        };
        let result = tail
            .split(" = ")
            .nth(1)
            .and_then(|r| {
                // `-yy` decorates a returned descriptor: `8</d/blobs/5>`.
                let end = r
                    .char_indices()
                    .find(|(i, c)| !(c.is_ascii_digit() || (*i == 0 && *c == '-')))
                    .map_or(r.len(), |(i, _)| i);
                r.get(..end)
            })
            .and_then(|r| r.parse::<i64>().ok());
        let call = Call {
            line: n + 1,
            name,
            args,
            result,
        };
        on(&call, false);
    }
}

/// Checks the trace: see the module docs.
fn audit(trace: &str, root: &str) -> Audit {
    let mut audit = Audit::default();
    // Per path (a file, or a directory for its entries): how many changes
    // it has seen, and how many of them a completed sync covers.
    let mut changed: HashMap<String, u64> = HashMap::new();
    let mut synced: HashMap<String, u64> = HashMap::new();
    // A sync covers the changes made before it started.
    let mut sync_starts: HashMap<String, Vec<u64>> = HashMap::new();
    let bump = |changed: &mut HashMap<String, u64>, path: String| {
        *changed.entry(path).or_insert(0) += 1;
    };
    calls(trace, |call, start| {
        let name = call.name.as_str();
        let path = fd_path(&call.args);
        let in_root = path.is_some_and(|p| p.starts_with(root));
        match name {
            "write" | "writev" | "pwrite64" | "pwritev" | "pwritev2" | "sendto" | "sendmsg" => {
                let socket = path.is_some_and(|p| p.starts_with("TCP"));
                if socket && start {
                    audit.socket_writes += 1;
                    let dirty: Vec<String> = changed
                        .iter()
                        .filter(|(p, n)| synced.get(*p).copied().unwrap_or(0) < **n)
                        .map(|(p, _)| p.clone())
                        .collect();
                    if !dirty.is_empty() {
                        audit.violations.push((call.line, dirty));
                    }
                } else if in_root && !start {
                    let p = path.unwrap_or_default().to_string();
                    if p.contains("/blobs/") {
                        audit.blob_writes += 1;
                    }
                    bump(&mut changed, p);
                }
            }
            "fsync" | "fdatasync" if in_root => {
                let p = path.unwrap_or_default().to_string();
                if start {
                    let n = changed.get(&p).copied().unwrap_or(0);
                    sync_starts.entry(p).or_default().push(n);
                } else if call.result == Some(0) {
                    let n = sync_starts
                        .get_mut(&p)
                        .and_then(|v| {
                            if v.is_empty() {
                                None
                            } else {
                                Some(v.remove(0))
                            }
                        })
                        .unwrap_or(0);
                    let s = synced.entry(p).or_insert(0);
                    *s = (*s).max(n);
                    audit.syncs += 1;
                }
            }
            "sync_file_range" if start => audit.sync_file_ranges += 1,
            "openat" | "creat" if !start => {
                let created = call.args.contains("O_CREAT") || name == "creat";
                if created && call.result.is_some_and(|r| r >= 0) {
                    for p in quoted_paths(&call.args, root) {
                        bump(&mut changed, parent(p));
                    }
                }
            }
            "unlink" | "unlinkat" | "rename" | "renameat" | "renameat2"
                if !start && call.result == Some(0) =>
            {
                for p in quoted_paths(&call.args, root) {
                    bump(&mut changed, parent(p));
                }
            }
            _ => {}
        }
    });
    audit
}

#[test]
fn every_confirmation_follows_a_sync_of_what_was_written() {
    assert!(
        strace_available(),
        "strace is not installed; this test needs it (Debian: apt-get install -y strace; \
         .ci/run installs it when missing)"
    );
    let dir = tempfile::tempdir().unwrap();
    let data: PathBuf = dir.path().join("data");
    let trace_path = dir.path().join("trace");
    let daemon = Traced::start(&data, &trace_path);

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let (c, _d) = Connection::connect(ConnectOptions::new(daemon.addr.clone()))
            .await
            .unwrap();
        let mut expected = 0;
        for i in 0..SMALL {
            expected += 1;
            let seq = c.publish("r", "e", format!("small {i}")).await.unwrap();
            assert_eq!(seq, expected);
        }
        for i in 0..LARGE {
            expected += 1;
            let payload = vec![b'a' + i as u8; 200 * 1024];
            let seq = c.publish("r", "e", payload).await.unwrap();
            assert_eq!(seq, expected);
        }
        for i in 0..4 {
            expected += 1;
            let seq = c.publish("r", "e", format!("after {i}")).await.unwrap();
            assert_eq!(seq, expected);
        }
    });
    daemon.stop();

    let trace = std::fs::read_to_string(&trace_path).unwrap();
    let root = std::fs::canonicalize(&data).unwrap();
    let a = audit(&trace, &root.to_string_lossy());
    let published = SMALL + LARGE + 4;
    eprintln!(
        "{} socket writes, {} syncs, {} sync_file_range calls, {} blob writes, {} unsynced",
        a.socket_writes,
        a.syncs,
        a.sync_file_ranges,
        a.blob_writes,
        a.violations.len()
    );
    assert!(
        a.socket_writes > published,
        "the trace shows {} socket writes for {published} confirmations: is it complete? \
         It begins:\n{}",
        a.socket_writes,
        trace.lines().take(20).collect::<Vec<_>>().join("\n")
    );
    if let Some((line, dirty)) = a.violations.first() {
        panic!(
            "{} of {} socket writes were made while files or directories held unsynced \
             changes; the first, at trace line {line}, with unsynced {dirty:?}",
            a.violations.len(),
            a.socket_writes
        );
    }
}

#[test]
fn the_audit_counts_only_fsync_and_fdatasync() {
    let root = "/d";
    let trace = [
        r#"    1  10:00:00.000001 pwrite64(7</d/db>, ""..., 4096, 0) = 4096"#,
        r#"1 10:00:00.000002 sync_file_range(7</d/db>, 0, 4096, SYNC_FILE_RANGE_WAIT_BEFORE|SYNC_FILE_RANGE_WRITE|SYNC_FILE_RANGE_WAIT_AFTER) = 0"#,
        r#"2 10:00:00.000003 write(9<TCP:[127.0.0.1:1->127.0.0.1:2]>, ""..., 20) = 20"#,
        r#"1 10:00:00.000004 fdatasync(7</d/db> <unfinished ...>"#,
        r#"1 10:00:00.000005 <... fdatasync resumed>) = 0"#,
        r#"2 10:00:00.000006 write(9<TCP:[127.0.0.1:1->127.0.0.1:2]>, ""..., 20) = 20"#,
        r#"1 10:00:00.000007 openat(AT_FDCWD</>, "/d/blobs/5", O_WRONLY|O_CREAT|O_EXCL|O_CLOEXEC, 0666) = 8</d/blobs/5>"#,
        r#"1 10:00:00.000008 write(8</d/blobs/5>, ""..., 100) = 100"#,
        r#"1 10:00:00.000009 fdatasync(8</d/blobs/5>) = 0"#,
        r#"2 10:00:00.000010 write(9<TCP:[127.0.0.1:1->127.0.0.1:2]>, ""..., 20) = 20"#,
        r#"1 10:00:00.000011 fsync(10</d/blobs>) = 0"#,
        r#"2 10:00:00.000012 writev(9<TCP:[127.0.0.1:1->127.0.0.1:2]>, [], 0) = 20"#,
    ]
    .join("\n");
    let a = audit(&trace, root);
    assert_eq!(a.socket_writes, 4);
    assert_eq!(a.sync_file_ranges, 1);
    assert_eq!(a.syncs, 3);
    let lines: Vec<usize> = a.violations.iter().map(|(l, _)| *l).collect();
    // Line 3: only sync_file_range ran; line 10: the blob's directory entry
    // is not synced yet.
    assert_eq!(lines, vec![3, 10]);
    assert_eq!(a.violations[1].1, vec!["/d/blobs".to_string()]);
}
