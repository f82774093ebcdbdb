//! `meshgw flows`: the flow log, in the style of `hubble observe`.

use std::io::Write;
use std::net::IpAddr;
use std::path::Path;

use anyhow::{Context, Result};

use super::{Filter, FlowRecord, Verdict};
use crate::api::client::Client;

/// How flows are printed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    /// One line a flow: time, source (identity, labels), destination, service, verdict, reason.
    Text,
    /// One JSON object a line.
    Json,
}

/// Prints one flow.
pub fn print(out: &mut impl Write, r: &FlowRecord, o: Output) -> std::io::Result<()> {
    match o {
        Output::Text => writeln!(out, "{}", r.text()),
        Output::Json => {
            let line = serde_json::to_string(r).map_err(std::io::Error::other)?;
            writeln!(out, "{line}")
        }
    }
}

/// Lists (or follows) the flows the daemon at `socket` holds.
pub fn run(
    socket: &Path,
    follow: bool,
    vip: Option<IpAddr>,
    verdict: Option<Verdict>,
    o: Output,
) -> Result<()> {
    let mut c = Client::connect(socket)?;
    c.flows(
        follow,
        Filter {
            vip,
            verdict,
            text: None,
        },
        0,
    )?;
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    while let Some(r) = c.next_flow()? {
        if let Err(e) = print(&mut out, &r, o).and_then(|()| out.flush()) {
            // A closed pipe (`| head`) ends the listing quietly.
            if e.kind() == std::io::ErrorKind::BrokenPipe {
                return Ok(());
            }
            return Err(e).context("writing flows");
        }
    }
    Ok(())
}
