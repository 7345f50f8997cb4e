//! A real `nats-server` process for one test: on a free loopback port, killed on drop,
//! and restartable on the same port so a test can take the bus's server away and give it
//! back. Every wait is bounded.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tokio::time::Instant;

/// How long a starting server may take to accept connections.
const START_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug)]
pub(crate) struct NatsServer {
    binary: PathBuf,
    port: u16,
    log: PathBuf,
    child: Option<Child>,
}

impl NatsServer {
    /// Starts a server on a free port and waits until it accepts connections.
    pub(crate) async fn start() -> Self {
        let binary = binary();
        // Bind port 0 for a free port, then let the server have it. Another process could
        // take it in between; ports handed out by the kernel rotate, so that is rare.
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let log = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("nats-server-{port}.log"));
        let mut server = Self { binary, port, log, child: None };
        server.restart().await;
        server
    }

    /// The URL clients connect to.
    pub(crate) fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Kills the server at once (SIGKILL: no goodbye to its clients, as in a crash).
    pub(crate) fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            // Reaps it; after SIGKILL this returns at once.
            let _ = child.wait();
        }
    }

    /// Freezes (`true`) or thaws (`false`) the server process: its sockets stay open but
    /// nothing answers, as when the network between client and server fails silently.
    pub(crate) fn freeze(&self, frozen: bool) {
        let pid = self.child.as_ref().expect("server is not running").id();
        let signal = if frozen { "-STOP" } else { "-CONT" };
        let status = Command::new("kill").args([signal, &pid.to_string()]).status().unwrap();
        assert!(status.success(), "kill {signal} {pid} failed");
    }

    /// Starts the server (again) on its port, and waits until it accepts connections.
    pub(crate) async fn restart(&mut self) {
        self.kill();
        let log_file = std::fs::File::create(&self.log).unwrap();
        let child = Command::new(&self.binary)
            .args(["-a", "127.0.0.1", "-p", &self.port.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_file)
            .spawn()
            .unwrap_or_else(|error| panic!("cannot start {}: {error}", self.binary.display()));
        self.child = Some(child);
        self.wait_until_ready().await;
    }

    async fn wait_until_ready(&mut self) {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if tokio::net::TcpStream::connect(("127.0.0.1", self.port)).await.is_ok() {
                return;
            }
            let child = self.child.as_mut().expect("server was just started");
            if let Some(status) = child.try_wait().unwrap() {
                panic!("nats-server exited with {status} before accepting connections:\n{}", self.log_text());
            }
            assert!(
                Instant::now() < deadline,
                "nats-server did not accept connections on port {} within {START_TIMEOUT:?}:\n{}",
                self.port,
                self.log_text()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log)
            .unwrap_or_else(|error| format!("(no log at {}: {error})", self.log.display()))
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        // SIGKILL ends a frozen (stopped) server too.
        self.kill();
    }
}

/// The nats-server binary named by `SWITCHBOARD_NATS_SERVER`. Never skips: without it
/// the test fails and says how to get one.
fn binary() -> PathBuf {
    let Some(path) = std::env::var_os("SWITCHBOARD_NATS_SERVER") else {
        panic!(
            "SWITCHBOARD_NATS_SERVER is not set; run tests/nats/setup.sh (it installs nats-server and \
             prints its path) and export SWITCHBOARD_NATS_SERVER=<that path>, or run tests/run-all.sh"
        );
    };
    let path = PathBuf::from(path);
    assert!(path.is_file(), "SWITCHBOARD_NATS_SERVER={} is not a file; run tests/nats/setup.sh", path.display());
    path
}
