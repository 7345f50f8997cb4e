//! Resident memory and CPU time of a process, read from Linux procfs.
//!
//! `VmRSS` comes from `/proc/PID/status` (kB); CPU time is `utime + stime` from
//! `/proc/PID/stat`, which covers all threads of the process. Those two fields are in
//! clock ticks of `USER_HZ`, which Linux fixes at 100 for user space on every mainstream
//! architecture (`sysconf(_SC_CLK_TCK)`; the crate forbids the unsafe FFI to ask).

use std::fs;
use std::io;

/// Clock ticks per second of the `utime`/`stime` fields.
const USER_HZ: f64 = 100.0;

/// Which process to read: a pid, or this process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Proc {
    Pid(u32),
    Current,
}

impl Proc {
    fn path(self, file: &str) -> String {
        match self {
            Proc::Pid(pid) => format!("/proc/{pid}/{file}"),
            Proc::Current => format!("/proc/self/{file}"),
        }
    }

    /// Resident set size in KiB.
    pub(crate) fn rss_kib(self) -> io::Result<u64> {
        parse_vm_rss(&fs::read_to_string(self.path("status"))?)
    }

    /// CPU time (user + system) in seconds since the process started.
    pub(crate) fn cpu_secs(self) -> io::Result<f64> {
        parse_cpu_ticks(&fs::read_to_string(self.path("stat"))?).map(|ticks| ticks as f64 / USER_HZ)
    }
}

fn invalid(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.to_owned())
}

fn parse_vm_rss(status: &str) -> io::Result<u64> {
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|kib| kib.parse().ok())
        .ok_or_else(|| invalid("no VmRSS line in status"))
}

fn parse_cpu_ticks(stat: &str) -> io::Result<u64> {
    // The command name (field 2) is in parentheses and may contain spaces or ')', so
    // fields are counted from the last ')'. After it come field 3 (state) onwards:
    // utime is field 14 and stime field 15.
    let after_comm = stat.rfind(')').map(|i| &stat[i + 1..]).ok_or_else(|| invalid("no command name in stat"))?;
    let mut fields = after_comm.split_whitespace().skip(14 - 3);
    let mut next_number =
        || -> io::Result<u64> { fields.next().and_then(|f| f.parse().ok()).ok_or_else(|| invalid("short stat line")) };
    let utime = next_number()?;
    let stime = next_number()?;
    Ok(utime + stime)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_vm_rss() {
        let status = "Name:\tswitchboard\nVmPeak:\t  9000 kB\nVmRSS:\t   12345 kB\nThreads:\t3\n";
        assert_eq!(parse_vm_rss(status).expect("rss"), 12345);
        assert!(parse_vm_rss("Name: x\n").is_err());
    }

    #[test]
    fn parses_cpu_ticks_with_awkward_command_names() {
        let stat = "4242 (my (odd) proc) S 1 4242 4242 0 -1 4194560 100 0 0 0 250 17 0 0 20 0 3 0";
        assert_eq!(parse_cpu_ticks(stat).expect("ticks"), 267);
        assert!(parse_cpu_ticks("4242 (x) S 1").is_err());
    }

    #[test]
    fn reads_this_process() {
        assert!(Proc::Current.rss_kib().expect("rss") > 0);
        assert!(Proc::Current.cpu_secs().expect("cpu") >= 0.0);
        let pid = std::process::id();
        assert!(Proc::Pid(pid).rss_kib().expect("rss") > 0);
    }
}
