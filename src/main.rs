//! `amphi`: the live audio rooms server. This binary only parses the
//! command line; the node is the `amphi-node` library, the load generator
//! `amphi-load`.

use clap::{Parser, Subcommand};

/// amphi: a self-hosted live audio rooms server that holds when the audience
/// arrives all at once.
#[derive(Debug, Parser)]
#[command(name = "amphi", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the server (HTTP API, WHIP ingest, listener outputs, web app).
    Serve(Box<amphi_node::Config>),
    /// Load-test a node: N listeners on live.opus / live.ws, measured; with
    /// --speakers, spaces of its own with WebRTC speakers and listeners.
    Load(Box<amphi_load::LoadArgs>),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("AMPHI_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    match cli.command {
        Command::Serve(config) => amphi_node::Node::load(*config)?.run(),
        Command::Load(args) => amphi_load::run(*args),
    }
}
