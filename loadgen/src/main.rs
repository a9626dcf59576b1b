//! `loadgen`: the command line. Everything else lives in the library (`lib.rs`), so that the
//! tests drive the same code.
//!
//! * `loadgen run`: one open-model run, in-process or over `--agents`;
//! * `loadgen agent --listen ADDR`: serve runs for a coordinator;
//! * `loadgen sweep`: raise the rate until p99 or loss says stop;
//! * `loadgen compare A/result.json B/result.json`: side by side;
//! * `loadgen report DIR`: redraw a result's report.md and plots from its result.json;
//! * `loadgen flood`: closed-loop accepted-messages/s ceiling;
//! * `loadgen floor`: the kernel's own cost per delivered frame (loopback writes, no protocol);
//! * `loadgen transport`: server CPU and wire bytes per delivery over ws/wss, deflate on/off;
//! * `loadgen presence-list`: time to list a large room's presence (v1.1).

use clap::{Parser, Subcommand};
use loadgen::coordinator::{self, RunOptions};
use loadgen::scenario::ScenarioArgs;
use loadgen::{agent, compare, flood, machine, sweep};
use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

#[derive(Parser)]
#[command(
    name = "loadgen",
    version,
    about = "Load generator for the chat backend"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Args, Clone)]
struct Common {
    /// Agents (`host:port` of `loadgen agent`), comma-separated; none: run in-process.
    #[arg(long, value_delimiter = ',')]
    agents: Vec<String>,
    /// Directory that receives `<name>/`.
    #[arg(long, default_value = "results")]
    results_dir: PathBuf,
    /// No live progress line.
    #[arg(long)]
    no_progress: bool,
    /// Milliseconds between the start command and the common start instant.
    #[arg(long, default_value_t = 500)]
    start_delay_ms: u64,
}

impl Common {
    fn options(&self, scenario: loadgen::scenario::Scenario, plots: bool) -> RunOptions {
        RunOptions {
            scenario,
            agents: self.agents.clone(),
            results_dir: self.results_dir.clone(),
            command_line: machine::command_line(),
            progress: !self.no_progress && std::io::stderr().is_terminal(),
            plots,
            start_delay: Duration::from_millis(self.start_delay_ms),
        }
    }
}

#[derive(Subcommand)]
enum Command {
    /// One open-model run: latencies from intended send times, every delivery verified.
    Run {
        #[command(flatten)]
        scenario: ScenarioArgs,
        #[command(flatten)]
        common: Common,
        /// Skip the SVG plots.
        #[arg(long)]
        no_plots: bool,
    },
    /// Serve runs for a coordinator (`loadgen run --agents ...`), one at a time.
    Agent {
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:7878")]
        listen: String,
    },
    /// Raise the rate step by step; report the highest rate with p99 under a bound and no loss.
    Sweep {
        #[command(flatten)]
        scenario: ScenarioArgs,
        #[command(flatten)]
        common: Common,
        /// Explicit rates, comma-separated (instead of start/factor/max).
        #[arg(long, value_delimiter = ',')]
        rates: Vec<f64>,
        /// First rate (msg/s).
        #[arg(long, default_value_t = 1000.0)]
        start_rate: f64,
        /// Multiply the rate by this after each step.
        #[arg(long, default_value_t = 1.5)]
        factor: f64,
        /// Add this to the rate after each step (instead of --factor).
        #[arg(long)]
        step: Option<f64>,
        /// Last rate to try.
        #[arg(long, default_value_t = 1_000_000.0)]
        max_rate: f64,
        /// Delivery p99 bound (ms).
        #[arg(long, default_value_t = 50.0)]
        p99_ms: f64,
        /// Keep going after the first failing rate.
        #[arg(long)]
        keep_going: bool,
        /// Run a step that failed only on its p99 (nothing lost) this many more times before
        /// the sweep stops there: one scheduling hiccup on a shared machine can cost a 10 s
        /// step its p99. Every attempt is recorded.
        #[arg(long, default_value_t = 1)]
        retries: u32,
    },
    /// Two results side by side, with ratios.
    Compare { a: PathBuf, b: PathBuf },
    /// Rewrite report.md and the SVG plots of a result directory from its result.json.
    Report { dir: PathBuf },
    /// Send as fast as acks come back and report accepted messages per second.
    Flood(flood::FloodArgs),
    /// The kernel's floor under a delivery: loopback writes of frames, no protocol; prints JSON.
    Floor(loadgen::floor::FloorArgs),
    /// Server CPU and wire bytes per delivery over ws:// or wss://, with or without
    /// permessage-deflate (its own client); prints one JSON line.
    Transport(loadgen::transport::TransportArgs),
    /// Fill one room with members, then time its `presence` list (v1.1); prints JSON.
    PresenceList(loadgen::social::list::ListArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    loadgen::client::raise_fd_limit();
    if let Command::Flood(args) = cli.command {
        tokio::runtime::Runtime::new()
            .expect("runtime")
            .block_on(flood::run(args));
        return ExitCode::SUCCESS;
    }
    // The coordinator and agent need little: one thread. Load runs on the shard threads.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        match cli.command {
            Command::Run {
                scenario,
                common,
                no_plots,
            } => {
                let sc = match scenario.resolve() {
                    Ok(s) => s,
                    Err(e) => return fail(&e),
                };
                match coordinator::run(&common.options(sc, !no_plots)).await {
                    Ok(r) => {
                        print!("{}", r.summary());
                        println!("results: {}", common.results_dir.join(&r.name).display());
                        if r.verdict.ok {
                            ExitCode::SUCCESS
                        } else {
                            eprintln!("{}", coordinator::failure_banner(&r));
                            ExitCode::from(2)
                        }
                    }
                    Err(e) => fail(&e),
                }
            }
            Command::Agent { listen } => {
                let l = match tokio::net::TcpListener::bind(&listen).await {
                    Ok(l) => l,
                    Err(e) => return fail(&format!("{listen}: {e}")),
                };
                eprintln!(
                    "agent listening on {}",
                    l.local_addr().map_or(listen, |a| a.to_string())
                );
                match agent::serve(l).await {
                    Ok(()) => ExitCode::SUCCESS,
                    Err(e) => fail(&e.to_string()),
                }
            }
            Command::Sweep {
                scenario,
                common,
                rates,
                start_rate,
                factor,
                step,
                max_rate,
                p99_ms,
                keep_going,
                retries,
            } => {
                let sc = match scenario.resolve() {
                    Ok(s) => s,
                    Err(e) => return fail(&e),
                };
                let plan = sweep::Plan {
                    rates,
                    start: start_rate,
                    factor,
                    step,
                    max: max_rate,
                    p99_ms,
                    keep_going,
                    retries,
                };
                match sweep::sweep(&common.options(sc, false), &plan).await {
                    Ok(r) => {
                        print!("{}", sweep::markdown(&r, &machine::command_line()));
                        if r.best_rate.is_some() {
                            ExitCode::SUCCESS
                        } else {
                            ExitCode::from(2)
                        }
                    }
                    Err(e) => fail(&e),
                }
            }
            Command::Compare { a, b } => match compare::compare(&a, &b) {
                Ok(t) => {
                    print!("{t}");
                    ExitCode::SUCCESS
                }
                Err(e) => fail(&e),
            },
            Command::Report { dir } => {
                let r = match loadgen::report::RunResult::load(&dir.join("result.json")) {
                    Ok(r) => r,
                    Err(e) => return fail(&e),
                };
                match r.write(&dir, true) {
                    Ok(()) => {
                        println!("rewrote {}", dir.display());
                        ExitCode::SUCCESS
                    }
                    Err(e) => fail(&e),
                }
            }
            Command::Floor(a) => {
                match tokio::task::spawn_blocking(move || loadgen::floor::measure(&a)).await {
                    Ok(Ok(f)) => {
                        println!("{}", serde_json::to_string_pretty(&f).unwrap_or_default());
                        ExitCode::SUCCESS
                    }
                    Ok(Err(e)) => fail(&e),
                    Err(e) => fail(&e.to_string()),
                }
            }
            Command::PresenceList(a) => match loadgen::social::list::run(&a).await {
                Ok(r) => {
                    println!("{}", serde_json::to_string_pretty(&r).unwrap_or_default());
                    ExitCode::SUCCESS
                }
                Err(e) => fail(&e),
            },
            Command::Transport(a) => match loadgen::transport::run(&a).await {
                Ok(r) => {
                    println!("{}", serde_json::to_string(&r).unwrap_or_default());
                    eprintln!("{}", r.summary());
                    if r.verified() {
                        ExitCode::SUCCESS
                    } else {
                        ExitCode::from(2)
                    }
                }
                Err(e) => fail(&e),
            },
            Command::Flood(_) => unreachable!("handled above"),
        }
    })
}

fn fail(e: &str) -> ExitCode {
    eprintln!("loadgen: {e}");
    ExitCode::FAILURE
}
