//! A real `switchboard` process on a loopback port, with its own data directory.
//!
//! The process is started from the binary cargo built for this test run; the harness
//! reads the `switchboard listening on ADDR` line it prints. Dropping the handle kills
//! the process; the data directory lives as long as the handle (so a test can kill -9
//! and restart on the same data).

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use super::token::{ADMIN_TOKEN, SECRET};

/// How a test server is started.
#[derive(Debug, Clone, Default)]
pub(crate) struct Options {
    pub(crate) dev: bool,
    /// Extra TOML for the config file.
    pub(crate) config: String,
    /// A config file to start from (the test's `config` is merged over it).
    pub(crate) base_config: Option<PathBuf>,
    /// Extra command-line flags.
    pub(crate) args: Vec<String>,
    /// Extra environment variables.
    pub(crate) env: Vec<(String, String)>,
}

#[derive(Debug)]
pub(crate) struct TestServer {
    child: Option<Child>,
    pub(crate) addr: SocketAddr,
    dir: tempfile::TempDir,
    options: Options,
    port: u16,
}

impl TestServer {
    pub(crate) fn start() -> Self {
        Self::start_with(Options::default())
    }

    pub(crate) fn start_dev() -> Self {
        Self::start_with(Options { dev: true, ..Options::default() })
    }

    pub(crate) fn start_with(mut options: Options) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        if super::cql::servers_on_cql() && !options.args.iter().any(|arg| arg == "--store") {
            // A keyspace of its own, kept across restarts of this server.
            let keyspace = super::cql::fresh_keyspace("server");
            options.args.extend(["--store".to_owned(), format!("{}/{keyspace}", super::cql::base_url())]);
            options.config.push_str("\n[cql]\nmigrate_on_start = true\nrequest_timeout_ms = 5000\nbucket_size = 64\n");
        }
        let mut server = TestServer { child: None, addr: ([127, 0, 0, 1], 0).into(), dir, options, port: 0 };
        server.spawn();
        server
    }

    pub(crate) fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("server.log")
    }

    fn spawn(&mut self) {
        let config_path = self.dir.path().join("switchboard.toml");
        // Test defaults (short timeouts), under whatever the test configures.
        let base = self.options.base_config.as_ref().map(|path| std::fs::read_to_string(path).expect("base config"));
        let mut config: toml::Table = toml::from_str(base.as_deref().unwrap_or("")).expect("base config is TOML");
        let extra: toml::Table = toml::from_str(&self.options.config).expect("test config is TOML");
        for (key, value) in extra {
            match (config.get_mut(&key), value) {
                (Some(toml::Value::Table(section)), toml::Value::Table(extra)) => section.extend(extra),
                (_, value) => {
                    config.insert(key, value);
                }
            }
        }
        for (table, key, value) in [("gateway", "handshake_timeout_ms", 2000), ("shutdown", "grace_ms", 3000)] {
            let section = config.entry(table).or_insert_with(|| toml::Value::Table(toml::Table::new()));
            if let toml::Value::Table(section) = section {
                section.entry(key).or_insert(toml::Value::Integer(value));
            }
        }
        std::fs::write(&config_path, toml::to_string(&config).expect("config")).expect("write config");
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.log_path()).expect("log file");
        let mut command = Command::new(env!("CARGO_BIN_EXE_switchboard"));
        command
            .arg("serve")
            .arg("--config")
            .arg(&config_path)
            .arg("--listen")
            .arg(format!("127.0.0.1:{}", self.port))
            .arg("--data-dir")
            .arg(self.data_dir())
            .args(&self.options.args)
            .env("SWITCHBOARD_JWT_SECRET", SECRET)
            .env("SWITCHBOARD_ADMIN_TOKEN", ADMIN_TOKEN)
            .env("SWITCHBOARD_LOG", "info,switchboard=debug")
            .env_remove("SWITCHBOARD_DEV")
            .envs(self.options.env.iter().map(|(name, value)| (name, value)))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log));
        if self.options.dev {
            command.arg("--dev");
        }
        let mut child = command.spawn().expect("spawn switchboard");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some(addr) = line.strip_prefix("switchboard listening on ") {
                    let _ = tx.send(addr.trim().parse::<SocketAddr>().expect("listen addr"));
                }
            }
        });
        match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(addr) => {
                self.addr = addr;
                self.port = addr.port();
            }
            Err(_) => {
                let _ = child.kill();
                panic!("server did not start; log:\n{}", self.log());
            }
        }
        self.child = Some(child);
    }

    /// Waits up to `timeout` for the process to exit by itself; its status if it did.
    pub(crate) fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let started = Instant::now();
        while started.elapsed() < timeout {
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                self.child = None;
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// The process id of the running server.
    pub(crate) fn is_running(&self) -> bool {
        self.child.is_some()
    }

    pub(crate) fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// Open file descriptors of the server process.
    pub(crate) fn open_fds(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.pid())).map(Iterator::count).unwrap_or(0)
    }

    /// Resident memory of the server process, bytes.
    pub(crate) fn rss_bytes(&self) -> u64 {
        let statm = std::fs::read_to_string(format!("/proc/{}/statm", self.pid())).unwrap_or_default();
        statm.split_whitespace().nth(1).and_then(|pages| pages.parse::<u64>().ok()).unwrap_or(0) * 4096
    }

    /// The server's log so far (stderr).
    pub(crate) fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// `kill -9`: no shutdown, no flush.
    pub(crate) fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM, then waits up to `timeout` for the exit; returns the status and how long
    /// it took.
    pub(crate) fn terminate(&mut self, timeout: Duration) -> (Option<ExitStatus>, Duration) {
        let mut child = self.child.take().expect("running");
        let started = Instant::now();
        Command::new("kill").arg("-TERM").arg(child.id().to_string()).status().expect("kill -TERM");
        while started.elapsed() < timeout {
            if let Ok(Some(status)) = child.try_wait() {
                return (Some(status), started.elapsed());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
        (None, started.elapsed())
    }

    /// Starts the process again on the same port and data directory.
    pub(crate) fn restart(&mut self) {
        assert!(self.child.is_none(), "stop the server first");
        self.spawn();
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.kill9();
        if std::thread::panicking() {
            eprintln!("---- server log ----\n{}", self.log());
        }
    }
}
