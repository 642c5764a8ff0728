//! Test support for the end-to-end tests: runs the real `proglog` binary as
//! child processes, with bounded waits and no leftovers.
//!
//! How a server is started ([`serve_args`]) and how clients reach it
//! ([`endpoint`]) are each decided in one place, both by [`TLS`].

// Each test crate uses a different part of this module.
#![allow(dead_code)]

use std::ffi::OsString;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStderr, ChildStdin, ChildStdout, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_proglog");

/// Longest wait for a server's `ready` line.
pub const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest wait for a process to exit once it should.
pub const EXIT_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest run of one client command.
pub const CLIENT_TIMEOUT: Duration = Duration::from_secs(120);

/// Mutual TLS with the development certificates `serve` makes in
/// `<data-dir>/tls/` (the default; clients present `root.pem`), or
/// `--insecure` plain TCP on both sides.
pub const TLS: bool = true;

/// Gossip listen address (UDP; a free port).
pub const GOSSIP_ADDR: &str = "127.0.0.1:0";

/// HTTP (metrics, health) listen address: a free port, so nodes started by
/// tests running in parallel do not compete for the default 8402.
pub const HTTP_ADDR: &str = "127.0.0.1:0";

/// Node name given to servers started by [`Server::start`].
pub const NODE_NAME: &str = "e2e-node";

/// `proglog` with a predictable environment: no inherited `PROGLOG_*`
/// or `RUST_LOG`, info-level logs (tests grep them), no colours.
pub fn proglog() -> Command {
    let mut cmd = Command::new(BIN);
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("PROGLOG_") {
            cmd.env_remove(&key);
        }
    }
    cmd.env_remove("RUST_LOG")
        .env("PROGLOG_LOG_LEVEL", "info")
        .env("NO_COLOR", "1")
        .stdin(Stdio::null());
    cmd
}

/// What a test may vary when starting `serve`.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// `--rpc-addr`.
    pub rpc_addr: String,
    /// `--node-name`; `None` leaves it to the config file, env or default.
    pub node_name: Option<String>,
    /// More arguments after the others (e.g. `--no-metrics`).
    pub extra_args: Vec<String>,
}

impl Default for ServeOptions {
    fn default() -> Self {
        ServeOptions {
            rpc_addr: "127.0.0.1:0".to_string(),
            node_name: Some(NODE_NAME.to_string()),
            extra_args: Vec::new(),
        }
    }
}

/// THE arguments of `proglog serve` for tests (the one place that decides
/// how a node is started). Without `--insecure` (and without TLS files)
/// the node serves mutual TLS with development certificates it makes in
/// `<data-dir>/tls/`.
pub fn serve_args(data_dir: &Path, opts: &ServeOptions) -> Vec<OsString> {
    let mut args: Vec<OsString> = vec!["serve".into()];
    if !TLS {
        args.push("--insecure".into());
    }
    args.extend([
        "--data-dir".into(),
        data_dir.into(),
        "--rpc-addr".into(),
        opts.rpc_addr.clone().into(),
        "--gossip-addr".into(),
        GOSSIP_ADDR.into(),
        "--http-addr".into(),
        HTTP_ADDR.into(),
    ]);
    if let Some(name) = &opts.node_name {
        args.push("--node-name".into());
        args.push(name.into());
    }
    args.extend(opts.extra_args.iter().map(OsString::from));
    args
}

/// Files a client presents and checks with mutual TLS.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// How a client reaches a server.
#[derive(Debug, Clone)]
pub struct Endpoint {
    pub addr: SocketAddr,
    pub tls: Option<TlsFiles>,
}

/// THE client connection settings for a node listening on `rpc` with
/// `data_dir` (the one place that decides how clients connect): with TLS,
/// the node's development CA and the `root` client certificate.
pub fn endpoint(rpc: SocketAddr, data_dir: &Path) -> Endpoint {
    let tls = TLS.then(|| {
        let dir = data_dir.join("tls");
        TlsFiles {
            ca: dir.join("ca.pem"),
            cert: dir.join("root.pem"),
            key: dir.join("root.key"),
        }
    });
    Endpoint { addr: rpc, tls }
}

impl Endpoint {
    /// Connection flags of the `proglog` client subcommands.
    pub fn cli_args(&self) -> Vec<OsString> {
        let mut args: Vec<OsString> = vec!["--addr".into(), self.addr.to_string().into()];
        match &self.tls {
            None => args.push("--insecure".into()),
            Some(tls) => args.extend([
                "--tls-ca".into(),
                tls.ca.clone().into(),
                "--tls-cert".into(),
                tls.cert.clone().into(),
                "--tls-key".into(),
                tls.key.clone().into(),
            ]),
        }
        args
    }

    /// Arguments of `tests/interop/interop.py`.
    pub fn python_args(&self) -> Vec<OsString> {
        let mut args: Vec<OsString> = vec![self.addr.to_string().into()];
        if let Some(tls) = &self.tls {
            args.extend([
                "--ca".into(),
                tls.ca.clone().into(),
                "--cert".into(),
                tls.cert.clone().into(),
                "--key".into(),
                tls.key.clone().into(),
            ]);
        }
        args
    }
}

/// A client subcommand (`produce`, `consume`, ...) connected to `ep`.
pub fn client(subcommand: &str, ep: &Endpoint) -> Command {
    let mut cmd = proglog();
    cmd.arg(subcommand).args(ep.cli_args());
    cmd
}

/// A child process that is SIGKILLed and reaped when dropped, so a failed
/// assertion leaves nothing running.
pub struct ChildGuard {
    child: Child,
    name: String,
}

impl ChildGuard {
    /// Spawns `cmd` with piped stdout and stderr.
    pub fn spawn(name: &str, cmd: &mut Command) -> ChildGuard {
        let child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        ChildGuard {
            child,
            name: name.to_string(),
        }
    }

    pub fn id(&self) -> u32 {
        self.child.id()
    }

    pub fn take_stdin(&mut self) -> ChildStdin {
        self.child.stdin.take().expect("stdin is piped")
    }

    pub fn take_stdout(&mut self) -> ChildStdout {
        self.child.stdout.take().expect("stdout is piped")
    }

    pub fn take_stderr(&mut self) -> ChildStderr {
        self.child.stderr.take().expect("stderr is piped")
    }

    /// Sends SIGTERM.
    pub fn sigterm(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -TERM {} failed", self.name);
    }

    /// Kills the process with SIGKILL: no handler, no clean shutdown.
    pub fn sigkill(&self) {
        let status = Command::new("kill")
            .args(["-KILL", &self.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -KILL {} failed", self.name);
    }

    /// The exit status if the process has exited.
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().expect("try_wait")
    }

    /// Waits at most `timeout` for the process to exit.
    pub fn wait_exit(&mut self, timeout: Duration) -> Result<ExitStatus, String> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.try_wait() {
                return Ok(status);
            }
            if Instant::now() >= deadline {
                return Err(format!("{} still running after {timeout:?}", self.name));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Lines of a child's output, read on a thread.
pub struct Lines {
    rx: Receiver<String>,
}

/// Why [`Lines::next`] has no line.
#[derive(Debug, PartialEq, Eq)]
pub enum NoLine {
    Timeout,
    Eof,
}

impl Lines {
    pub fn spawn(reader: impl Read + Send + 'static) -> Lines {
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(reader).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Lines { rx }
    }

    /// The next line, waiting at most `timeout`.
    pub fn next(&self, timeout: Duration) -> Result<String, NoLine> {
        self.rx.recv_timeout(timeout).map_err(|e| match e {
            RecvTimeoutError::Timeout => NoLine::Timeout,
            RecvTimeoutError::Disconnected => NoLine::Eof,
        })
    }
}

/// All of a child's output on one stream, collected on a thread.
pub struct Captured {
    buf: Arc<Mutex<Vec<u8>>>,
    thread: Option<JoinHandle<()>>,
}

impl Captured {
    pub fn spawn(mut reader: impl Read + Send + 'static) -> Captured {
        let buf = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&buf);
        let thread = std::thread::spawn(move || {
            let mut chunk = [0u8; 8192];
            while let Ok(n) = reader.read(&mut chunk) {
                if n == 0 {
                    break;
                }
                sink.lock().unwrap().extend_from_slice(&chunk[..n]);
            }
        });
        Captured {
            buf,
            thread: Some(thread),
        }
    }

    /// What was read so far.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.buf.lock().unwrap()).into_owned()
    }

    /// Everything, once the writer closed the stream (call after the
    /// process exited).
    pub fn finish(&mut self) -> String {
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        self.text()
    }
}

/// A running `proglog serve`.
pub struct Server {
    pub child: ChildGuard,
    pub rpc: SocketAddr,
    pub gossip: SocketAddr,
    pub partition: String,
    /// Where `/metrics`, `/healthz` and `/readyz` are served.
    pub http: SocketAddr,
    pub data_dir: PathBuf,
    stdout: Lines,
    stderr: Captured,
}

impl Server {
    /// Starts a node on free ports and waits for its `ready` line.
    pub fn start(data_dir: &Path) -> Server {
        Server::start_with(data_dir, &ServeOptions::default())
    }

    pub fn start_with(data_dir: &Path, opts: &ServeOptions) -> Server {
        let mut cmd = proglog();
        cmd.args(serve_args(data_dir, opts));
        let mut child = ChildGuard::spawn("proglog serve", &mut cmd);
        let stdout = Lines::spawn(child.take_stdout());
        let mut stderr = Captured::spawn(child.take_stderr());
        let deadline = Instant::now() + READY_TIMEOUT;
        let ready = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match stdout.next(left) {
                Ok(line) if line.starts_with("ready ") => break line,
                Ok(_) => continue,
                Err(why) => {
                    let exited = child.wait_exit(Duration::from_secs(5));
                    panic!(
                        "serve printed no ready line ({why:?}; exit: {exited:?}); stderr:\n{}",
                        if exited.is_ok() {
                            stderr.finish()
                        } else {
                            stderr.text()
                        }
                    );
                }
            }
        };
        let field = |name: &str| -> String {
            ready
                .split_whitespace()
                .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
                .unwrap_or_else(|| panic!("no {name}= in {ready:?}"))
                .to_string()
        };
        Server {
            rpc: field("rpc").parse().expect("rpc address"),
            gossip: field("gossip").parse().expect("gossip address"),
            partition: field("partition"),
            http: field("http").parse().expect("http address"),
            data_dir: data_dir.to_path_buf(),
            child,
            stdout,
            stderr,
        }
    }

    /// How clients reach this node.
    pub fn endpoint(&self) -> Endpoint {
        endpoint(self.rpc, &self.data_dir)
    }

    /// Sends SIGTERM and waits for the exit; returns the status and the
    /// whole stderr log.
    pub fn stop(&mut self) -> (ExitStatus, String) {
        self.child.sigterm();
        self.wait_stopped()
    }

    /// Waits for the exit (a signal was sent already); returns the status
    /// and the whole stderr log.
    pub fn wait_stopped(&mut self) -> (ExitStatus, String) {
        match self.child.wait_exit(EXIT_TIMEOUT) {
            Ok(status) => (status, self.stderr.finish()),
            Err(e) => panic!("{e}; stderr so far:\n{}", self.stderr.text()),
        }
    }

    /// The stderr log so far.
    pub fn log(&self) -> String {
        self.stderr.text()
    }
}

/// What a finished command printed.
#[derive(Debug)]
pub struct Output {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl Output {
    /// Panics, showing the output, unless the command succeeded.
    pub fn success(self) -> Output {
        assert!(self.status.success(), "command failed: {self:#?}");
        self
    }
}

/// Runs `cmd` to completion with `stdin` as its input, killing it and
/// failing if it takes longer than `timeout`.
pub fn run(mut cmd: Command, stdin: Option<Vec<u8>>, timeout: Duration) -> Output {
    let name = format!("{cmd:?}");
    cmd.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    });
    let mut child = ChildGuard::spawn(&name, &mut cmd);
    if let Some(input) = stdin {
        let mut pipe = child.take_stdin();
        std::thread::spawn(move || {
            let _ = pipe.write_all(&input);
        });
    }
    let mut out = Captured::spawn(child.take_stdout());
    let mut err = Captured::spawn(child.take_stderr());
    match child.wait_exit(timeout) {
        Ok(status) => Output {
            status,
            stdout: out.finish(),
            stderr: err.finish(),
        },
        Err(e) => panic!(
            "{e}\nstdout so far:\n{}\nstderr so far:\n{}",
            out.text(),
            err.text()
        ),
    }
}

/// An HTTP answer: status, headers (lower-case names) and body.
#[derive(Debug)]
pub struct HttpResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl HttpResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// [`http_get`] from a test whose server runs on this test's own actix
/// System (the blocking request runs on another thread).
pub async fn http_get_async(addr: SocketAddr, path: &'static str) -> std::io::Result<HttpResponse> {
    tokio::task::spawn_blocking(move || http_get(addr, path))
        .await
        .map_err(std::io::Error::other)?
}

/// `GET path` from `addr` over plain HTTP/1.1 (the server closes the
/// connection after answering), with bounded waits.
pub fn http_get(addr: SocketAddr, path: &str) -> std::io::Result<HttpResponse> {
    use std::net::TcpStream;
    let mut tcp = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    tcp.set_read_timeout(Some(Duration::from_secs(10)))?;
    tcp.set_write_timeout(Some(Duration::from_secs(10)))?;
    write!(
        tcp,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: proglog-tests\r\n\r\n"
    )?;
    let mut raw = Vec::new();
    tcp.read_to_end(&mut raw)?;
    let text = String::from_utf8(raw)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
    let bad = |what: &str| {
        std::io::Error::new(std::io::ErrorKind::InvalidData, format!("{what}: {text:?}"))
    };
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| bad("no blank line"))?;
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.strip_prefix("HTTP/1.1 "))
        .and_then(|l| l.get(..3))
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| bad("no status line"))?;
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    Ok(HttpResponse {
        status,
        headers,
        body: body.to_string(),
    })
}

/// Parses `consume --format json` output into (offset, value) pairs.
pub fn parse_records(stdout: &str) -> Vec<(u64, String)> {
    stdout
        .lines()
        .map(|line| {
            let v: serde_json::Value =
                serde_json::from_str(line).unwrap_or_else(|e| panic!("{line:?}: {e}"));
            let offset = v["offset"].as_u64().unwrap_or_else(|| panic!("{line:?}"));
            let value = v["value"].as_str().unwrap_or_else(|| panic!("{line:?}"));
            (offset, value.to_string())
        })
        .collect()
}

/// Every record of the node's own partition, as (offset, value).
pub fn consume_all(server: &Server) -> Vec<(u64, String)> {
    let mut cmd = client("consume", &server.endpoint());
    cmd.args(["--from", "0", "--format", "json"]);
    parse_records(&run(cmd, None, CLIENT_TIMEOUT).success().stdout)
}
