//! `switchboard-load`: a load generator for switchboard that holds very many WebSocket
//! connections at very little memory each and measures the server under them.
//!
//! # Layout
//!
//! - [`cli`]: the command line (one subcommand per scenario) and its validation.
//! - [`coordinator`]: the process you start. It spawns worker copies of this
//!   executable, moves them through ramp / steady / drain together over the
//!   [`control`] line protocol, samples the server ([`procfs`]) and prints the
//!   [`report`].
//! - [`worker`]: a worker process: one thread, one task per connection, its slice
//!   of the run as given by [`plan`].
//! - [`session`]: one connection's life: [`connect`] (bound source address from
//!   [`source_addr`], small buffers, [`auth`]), then the [`frames`] of the scenario.
//! - [`shared`] and [`stats`]: what a worker's sessions share and measure, and how
//!   workers' results add up (HDR histograms travel in V2 format).
//! - [`publisher`]: the fanout's one sender, in the coordinator: a group owner's
//!   connection, or the [`admin_api`] publishing to a feed; [`fanout`] adds up what
//!   every worker saw of each message.
//! - [`storm`]: the storm scenario's clients once they went away (reconnect, retry,
//!   check the replay), its senders ([`storm::seed`]) and its figures
//!   ([`storm::outcome`]), with the servers' counters from [`server_metrics`].
//!
//! # Why several processes
//!
//! A process may hold at most 20,000 open files here, so a worker holds at most 19,000
//! sockets; more connections need more workers. One source address reaches one server
//! port through ~28k ephemeral ports only, so sockets are bound to 127.0.0.X round-robin.
//!
//! # Non-objectives
//!
//! TLS (`wss://`), reconnecting dropped connections (the storm's reconnects are its
//! measurement, not a recovery), and coordinated-omission
//! correction (a sender that falls behind skips slots and counts them as `send_lag`).

mod admin_api;
mod auth;
mod cli;
mod connect;
mod control;
mod coordinator;
mod fanout;
mod frames;
#[cfg(test)]
mod mock_server;
mod plan;
mod plot;
mod procfs;
mod publisher;
mod report;
mod server_metrics;
mod session;
mod shared;
mod source_addr;
mod stats;
mod storm;
mod worker;

use std::process::ExitCode;

use clap::Parser as _;
use tracing_subscriber::EnvFilter;

/// Exit code for an invalid command line (as clap uses).
const EXIT_USAGE: u8 = 2;

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    let worker_index = cli.scenario.common().worker_index;
    init_tracing(worker_index);

    if let Err(problems) = cli::validate(&cli.scenario) {
        for problem in problems.lines() {
            eprintln!("error: {problem}");
        }
        return ExitCode::from(EXIT_USAGE);
    }

    let outcome = match worker_index {
        Some(index) => worker::run(&cli.scenario, index),
        // Workers get the same command line, so they derive the same plan.
        None => coordinator::run(&cli.scenario, std::env::args_os().skip(1).collect()),
    };
    match outcome {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// Logs go to stderr (stdout carries the table, or a worker's events). `RUST_LOG`
/// overrides the default level: `info` for the coordinator, `warn` for workers.
fn init_tracing(worker_index: Option<u64>) {
    let default_level = if worker_index.is_some() { "warn" } else { "info" };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_level));
    // A second initialisation can only fail in tests; logging is best effort.
    let _ =
        tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_target(false).try_init();
}
