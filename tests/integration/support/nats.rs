//! A real nats-server for the cluster tests, on a port of its own.
//!
//! `tests/run-all.sh` installs nats-server (`tests/nats/setup.sh`) and exports
//! `SWITCHBOARD_NATS_SERVER`; without it the cluster tests fail loudly, never skip.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The nats-server binary the tests run.
fn binary() -> PathBuf {
    match std::env::var("SWITCHBOARD_NATS_SERVER") {
        Ok(path) => PathBuf::from(path),
        Err(_) => panic!(
            "SWITCHBOARD_NATS_SERVER is not set: run tests/run-all.sh, or install nats-server with \
             `bash tests/nats/setup.sh` and export SWITCHBOARD_NATS_SERVER=<the path it prints>"
        ),
    }
}

/// A loopback port nobody listens on right now.
pub(crate) fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|listener| listener.local_addr()).expect("free port").port()
}

#[derive(Debug)]
pub(crate) struct NatsServer {
    child: Option<Child>,
    port: u16,
    log: tempfile::NamedTempFile,
}

impl NatsServer {
    pub(crate) fn start() -> Self {
        let log = tempfile::NamedTempFile::new().expect("log file");
        let mut server = NatsServer { child: None, port: free_port(), log };
        server.spawn();
        server
    }

    pub(crate) fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    fn spawn(&mut self) {
        let log = self.log.reopen().expect("log file");
        let child = Command::new(binary())
            .args(["-a", "127.0.0.1", "-p", &self.port.to_string(), "-n", "switchboard-test"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .spawn()
            .expect("spawn nats-server");
        self.child = Some(child);
        let addr = SocketAddr::from(([127, 0, 0, 1], self.port));
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
            assert!(Instant::now() < deadline, "nats-server did not listen on {addr}: {}", self.log());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills the server (SIGKILL), as an outage.
    pub(crate) fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port.
    pub(crate) fn restart(&mut self) {
        assert!(self.child.is_none(), "kill the server first");
        self.spawn();
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.log.path()).unwrap_or_default()
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
    }
}
