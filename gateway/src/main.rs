//! meshgw: a transit gateway between a legacy L3 network and a Cilium Cluster Mesh.
//!
//! `meshgw run` is the daemon, `meshgw check` validates a configuration file, `meshgw status`
//! shows what a running gateway serves, `meshgw down` removes everything a gateway created.

mod api;
mod bpffs;
mod catalog;
mod clustermesh;
mod config;
mod daemon;
mod desired;
mod dns;
mod egress;
mod flows;
mod ipfix;
mod lb;
mod metrics;
mod netlink;
mod policy;
mod reconcile;
mod statefile;
mod status_cmd;
mod top;
mod vip;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Where an installed appliance keeps its configuration.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/meshgw/gateway.toml";

#[derive(Parser)]
#[command(
    name = "meshgw",
    version,
    about = "Transit gateway between a legacy L3 network and a Cilium Cluster Mesh"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the gateway (SIGHUP reloads the configuration; SIGTERM stops the daemon and leaves the
    /// datapath forwarding).
    Run {
        /// Configuration file (default: /etc/meshgw/gateway.toml, else the embedded default).
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Validate configuration files and print every problem with its line and key.
    Check {
        /// Files to check.
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Show what a running gateway serves, with its datapath counters.
    Status {
        /// Configuration file of the gateway to ask about.
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Show the flows the gateway saw (new flows, sampled packets, policy drops), as Hubble does.
    Flows {
        /// Configuration file of the gateway to ask about.
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Keep printing flows as they come.
        #[arg(long, short)]
        follow: bool,
        /// Only flows to this VIP.
        #[arg(long)]
        vip: Option<std::net::IpAddr>,
        /// Only flows with this verdict (forwarded, dropped).
        #[arg(long)]
        verdict: Option<flows::Verdict>,
        /// Output format.
        #[arg(long, short, value_enum, default_value = "text")]
        output: flows::cli::Output,
    },
    /// The live dashboard: clusters, services, tunnels, traffic, drops and flows.
    Top {
        /// Configuration file of the gateway to watch.
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Remove the datapath, devices, routes and proxy entries a gateway created.
    Down {
        /// Configuration file of the gateway to remove.
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .init();
}

fn check(files: &[PathBuf]) -> ExitCode {
    let mut ok = true;
    for f in files {
        match config::load_file(f) {
            Ok(c) => match policy::cnp::load(&c.policy_files) {
                Ok(p) => println!(
                    "{}: ok ({} services, {} nodes, {} policies)",
                    f.display(),
                    c.services.len(),
                    c.nodes.len(),
                    p.len()
                ),
                Err(e) => {
                    ok = false;
                    eprintln!("{}: [policy].files: {e}", f.display());
                }
            },
            Err(e) => {
                ok = false;
                eprintln!("{e}");
            }
        }
    }
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?)
}

/// Two malloc arenas instead of glibc's default of eight per core: the daemon's allocations
/// (Cluster Mesh values decoded on the runtime's workers, the catalog built on the main thread)
/// otherwise spread over arenas that each keep their own free memory, which showed as RSS far
/// above the live heap at 50,000 services.
fn limit_malloc_arenas() {
    // SAFETY: mallopt only sets an allocator parameter; called before any thread is started.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.cmd {
        Cmd::Check { files } => return check(&files),
        Cmd::Run { config } => {
            init_logging();
            limit_malloc_arenas();
            daemon::require_privileges()
                .and_then(|()| daemon::source_for(config.as_deref()))
                .and_then(|src| runtime()?.block_on(daemon::run(src)))
        }
        Cmd::Down { config } => {
            init_logging();
            daemon::require_privileges()
                .and_then(|()| daemon::source_for(config.as_deref()))
                .and_then(|src| runtime()?.block_on(daemon::down(src)))
        }
        Cmd::Flows {
            config,
            follow,
            vip,
            verdict,
            output,
        } => daemon::source_for(config.as_deref())
            .and_then(|src| status_cmd::config_of(&src))
            .and_then(|cfg| flows::cli::run(&cfg.observe.api_socket, follow, vip, verdict, output)),
        Cmd::Top { config } => daemon::source_for(config.as_deref())
            .and_then(|src| status_cmd::config_of(&src))
            .and_then(|cfg| top::run(&cfg.observe.api_socket)),
        Cmd::Status { config, json } => {
            daemon::source_for(config.as_deref()).and_then(|src| status_cmd::show(&src, json))
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("meshgw: {e:#}");
            ExitCode::FAILURE
        }
    }
}
