//! The line protocol between the coordinator and its worker processes.
//!
//! Worker to coordinator, on the worker's stdout, one JSON object per line:
//! `progress` every second, `ready` once every connection has settled (synced, failed
//! or timed out), and `result` last. Lines that are not events (stray output) are passed
//! through to the coordinator's stderr.
//!
//! Coordinator to worker, on the worker's stdin: `go` starts the steady phase, `stop`
//! ends it. End of input means the coordinator is gone: the worker exits at once, so
//! workers never outlive their coordinator.

use serde::{Deserialize, Serialize};

use crate::stats::{Counters, WorkerReport};

/// One line a worker writes.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub(crate) enum WorkerEvent {
    /// Cumulative counters, every second.
    Progress { counters: Counters, errors: u64 },
    /// Every connection of the worker has settled; waiting for `go`.
    Ready { counters: Counters, errors: u64, ramp_secs: f64 },
    /// Final measurements; the last line a worker writes.
    Result(Box<WorkerReport>),
}

impl WorkerEvent {
    /// The event as one line of JSON (without the newline).
    pub(crate) fn to_line(&self) -> Result<String, serde_json::Error> {
        serde_json::to_string(self)
    }

    /// Parses a line; `None` when the line is not an event.
    pub(crate) fn from_line(line: &str) -> Option<WorkerEvent> {
        let line = line.trim();
        if !line.starts_with('{') {
            return None;
        }
        serde_json::from_str(line).ok()
    }
}

/// One line the coordinator writes to a worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Command {
    /// Start the steady phase (hold idle, or send).
    Go,
    /// End the steady phase, drain, close and report.
    Stop,
}

impl Command {
    /// The line for this command, newline included.
    pub(crate) fn line(self) -> &'static [u8] {
        match self {
            Command::Go => b"go\n",
            Command::Stop => b"stop\n",
        }
    }

    /// Parses a line; `None` for anything else (ignored).
    pub(crate) fn from_line(line: &str) -> Option<Command> {
        match line.trim() {
            "go" => Some(Command::Go),
            "stop" => Some(Command::Stop),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::{ErrorCounts, Histograms, SteadyWindow};

    #[test]
    fn events_round_trip_as_lines() {
        let progress = WorkerEvent::Progress { counters: Counters { connected: 5, ..Counters::default() }, errors: 1 };
        let line = progress.to_line().expect("serialize");
        assert!(line.starts_with("{\"event\":\"progress\""), "{line}");
        assert!(!line.contains('\n'));
        match WorkerEvent::from_line(&line) {
            Some(WorkerEvent::Progress { counters, errors }) => {
                assert_eq!((counters.connected, errors), (5, 1));
            }
            other => panic!("unexpected {other:?}"),
        }

        let report = WorkerReport {
            worker_index: 2,
            counters: Counters::default(),
            errors: ErrorCounts::default(),
            histograms: Histograms::new().expect("new").encode().expect("encode"),
            ramp_secs: 0.5,
            steady: SteadyWindow::default(),
            cpu_secs: None,
            rss_kib: None,
            rss_start_kib: None,
            deadline_hit: false,
            messages: Vec::new(),
            storm: None,
        };
        let line = WorkerEvent::Result(Box::new(report)).to_line().expect("serialize");
        assert!(matches!(
            WorkerEvent::from_line(&line),
            Some(WorkerEvent::Result(r)) if r.worker_index == 2
        ));
    }

    #[test]
    fn stray_lines_are_not_events() {
        assert!(WorkerEvent::from_line("thread 'main' panicked").is_none());
        assert!(WorkerEvent::from_line("{\"event\":\"unknown\"}").is_none());
    }

    #[test]
    fn commands_parse() {
        for command in [Command::Go, Command::Stop] {
            let line = std::str::from_utf8(command.line()).expect("utf8");
            assert_eq!(Command::from_line(line), Some(command));
        }
        assert_eq!(Command::from_line("launch"), None);
    }
}
