//! `loadgen`: drives a chat cluster through the real protocol.
//!
//! For now one mode, `flood`: closed-loop senders that keep a window of unacknowledged
//! messages in flight and count acks, to find the accepted-messages/s ceiling of a node. The
//! full open-model generator with coordinated-omission-corrected latencies, verification and
//! distributed agents is the load-generator issue's work.

mod flood;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "loadgen", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Send as fast as acks come back and report accepted messages per second.
    Flood(flood::FloodArgs),
}

#[tokio::main]
async fn main() {
    match Cli::parse().command {
        Command::Flood(args) => flood::run(args).await,
    }
}
