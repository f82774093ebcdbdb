//! The dashboard's state, free of terminal I/O: snapshots in, key presses in, rows and rates
//! out. Rendering ([`super::view`]) only reads it.

use std::collections::{BTreeMap, VecDeque};

use crate::api::Snapshot;
use crate::flows::{Filter, FlowRecord};

/// Points kept for the traffic chart (one a refresh).
pub const HISTORY: usize = 120;
/// Flows kept for the flow pane.
pub const FLOWS: usize = 200;

/// The panes, in Tab order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pane {
    /// Clusters and peers.
    Clusters,
    /// Services.
    Services,
    /// Tunnels.
    Tunnels,
    /// Flows.
    Flows,
}

impl Pane {
    fn next(self) -> Pane {
        match self {
            Pane::Clusters => Pane::Services,
            Pane::Services => Pane::Tunnels,
            Pane::Tunnels => Pane::Flows,
            Pane::Flows => Pane::Clusters,
        }
    }

    fn prev(self) -> Pane {
        match self {
            Pane::Clusters => Pane::Flows,
            Pane::Services => Pane::Clusters,
            Pane::Tunnels => Pane::Services,
            Pane::Flows => Pane::Tunnels,
        }
    }
}

/// A key press, as the model understands it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Key {
    /// A printable character.
    Char(char),
    /// Up arrow.
    Up,
    /// Down arrow.
    Down,
    /// Tab.
    Tab,
    /// Shift-Tab.
    BackTab,
    /// Enter.
    Enter,
    /// Escape.
    Esc,
    /// Backspace.
    Backspace,
    /// Ctrl-C.
    Interrupt,
}

/// What the caller must do after a key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Redraw.
    Redraw,
    /// Leave.
    Quit,
}

/// Per-second rates of a service between two snapshots.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Rate {
    /// Packets per second.
    pub pps: f64,
    /// Bits per second.
    pub bps: f64,
}

/// The dashboard state.
#[derive(Debug)]
pub struct Model {
    /// The latest snapshot.
    pub snap: Option<Snapshot>,
    prev: Option<Snapshot>,
    /// Why the daemon cannot be reached, while it cannot.
    pub error: Option<String>,
    /// (packets/s, drops/s) history, oldest first.
    pub history: VecDeque<(f64, f64)>,
    /// Recent flows, oldest first.
    pub flows: Vec<FlowRecord>,
    /// The focused pane.
    pub focus: Pane,
    /// Selected row per pane.
    pub selected: BTreeMap<&'static str, usize>,
    /// The flow filter being typed or applied.
    pub filter: String,
    /// Whether keys go to the filter.
    pub editing: bool,
    /// Whether the help overlay shows.
    pub help: bool,
    /// Whether the selected service's backends show (Enter on the services pane).
    pub detail: bool,
}

impl Default for Model {
    fn default() -> Self {
        Model {
            snap: None,
            prev: None,
            error: None,
            history: VecDeque::new(),
            flows: Vec::new(),
            focus: Pane::Services,
            selected: BTreeMap::new(),
            filter: String::new(),
            editing: false,
            help: false,
            detail: false,
        }
    }
}

fn pane_name(p: Pane) -> &'static str {
    match p {
        Pane::Clusters => "clusters",
        Pane::Services => "services",
        Pane::Tunnels => "tunnels",
        Pane::Flows => "flows",
    }
}

fn sum_drops(s: &Snapshot) -> u64 {
    s.counters
        .iter()
        .filter(|(k, _)| k.starts_with("drop_"))
        .map(|(_, v)| *v)
        .sum()
}

fn sum_rx(s: &Snapshot) -> u64 {
    ["legacy_rx", "mesh_rx"]
        .iter()
        .filter_map(|k| s.counters.get(*k))
        .sum()
}

impl Model {
    /// Seconds between the last two snapshots (None before two).
    fn dt(&self) -> Option<(f64, &Snapshot, &Snapshot)> {
        let (p, c) = (self.prev.as_ref()?, self.snap.as_ref()?);
        let dt = c.taken_at_ms.checked_sub(p.taken_at_ms)? as f64 / 1000.0;
        (dt > 0.0).then_some((dt, p, c))
    }

    /// A new snapshot from the daemon.
    pub fn apply_snapshot(&mut self, s: Snapshot) {
        self.error = None;
        if self
            .snap
            .as_ref()
            .is_some_and(|c| c.taken_at_ms == s.taken_at_ms)
        {
            return;
        }
        self.prev = self.snap.replace(s);
        if let Some((dt, p, c)) = self.dt() {
            let pps = sum_rx(c).saturating_sub(sum_rx(p)) as f64 / dt;
            let dps = sum_drops(c).saturating_sub(sum_drops(p)) as f64 / dt;
            self.history.push_back((pps, dps));
            while self.history.len() > HISTORY {
                self.history.pop_front();
            }
        }
    }

    /// The daemon could not be asked.
    pub fn apply_error(&mut self, e: String) {
        self.error = Some(e);
    }

    /// The recent flows.
    pub fn apply_flows(&mut self, mut f: Vec<FlowRecord>) {
        if f.len() > FLOWS {
            f.drain(..f.len() - FLOWS);
        }
        self.flows = f;
    }

    /// The rate of the service frontend at `idx` of the snapshot.
    pub fn service_rate(&self, idx: usize) -> Rate {
        let Some((dt, p, c)) = self.dt() else {
            return Rate::default();
        };
        let Some(cur) = c.services.get(idx) else {
            return Rate::default();
        };
        let before = p
            .services
            .iter()
            .find(|s| s.service == cur.service && s.vip == cur.vip && s.port == cur.port);
        let (p0, b0) = before.map_or((cur.packets, cur.bytes), |s| (s.packets, s.bytes));
        Rate {
            pps: cur.packets.saturating_sub(p0) as f64 / dt,
            bps: cur.bytes.saturating_sub(b0) as f64 * 8.0 / dt,
        }
    }

    /// The rate into the tunnel to the node at `idx`.
    pub fn node_rate(&self, idx: usize) -> Rate {
        let Some((dt, p, c)) = self.dt() else {
            return Rate::default();
        };
        let Some(cur) = c.nodes.get(idx) else {
            return Rate::default();
        };
        let (p0, b0) = p
            .nodes
            .iter()
            .find(|n| n.address == cur.address)
            .map_or((cur.packets, cur.bytes), |n| (n.packets, n.bytes));
        Rate {
            pps: cur.packets.saturating_sub(p0) as f64 / dt,
            bps: cur.bytes.saturating_sub(b0) as f64 * 8.0 / dt,
        }
    }

    /// The service frontend the services pane has selected.
    pub fn selected_service(&self) -> Option<&crate::api::ServiceTelemetry> {
        self.snap
            .as_ref()?
            .services
            .get(self.selection(Pane::Services))
            .map(|s| &**s)
    }

    /// The flows the filter lets through, oldest first.
    pub fn visible_flows(&self) -> Vec<&FlowRecord> {
        let f = Filter {
            text: Some(self.filter.clone()),
            ..Filter::default()
        };
        self.flows.iter().filter(|r| f.matches(r)).collect()
    }

    /// The selected row of `p`.
    pub fn selection(&self, p: Pane) -> usize {
        self.selected.get(pane_name(p)).copied().unwrap_or(0)
    }

    fn rows(&self, p: Pane) -> usize {
        let Some(s) = &self.snap else { return 0 };
        match p {
            Pane::Clusters => s.status.clusters.len(),
            Pane::Services => s.services.len(),
            Pane::Tunnels => s.nodes.len(),
            Pane::Flows => self.visible_flows().len(),
        }
    }

    fn step(&mut self, down: bool) {
        // The flow pane is a log, newest at the bottom: up goes back in time.
        let down = if self.focus == Pane::Flows {
            !down
        } else {
            down
        };
        let rows = self.rows(self.focus);
        let cur = self.selection(self.focus);
        let next = if down {
            (cur + 1).min(rows.saturating_sub(1))
        } else {
            cur.saturating_sub(1)
        };
        self.selected.insert(pane_name(self.focus), next);
    }

    /// Handles a key.
    pub fn on_key(&mut self, k: Key) -> Action {
        if k == Key::Interrupt {
            return Action::Quit;
        }
        if self.editing {
            match k {
                Key::Char(c) => self.filter.push(c),
                Key::Backspace => {
                    self.filter.pop();
                }
                Key::Enter => self.editing = false,
                Key::Esc => {
                    self.filter.clear();
                    self.editing = false;
                }
                _ => {}
            }
            self.selected.insert(pane_name(Pane::Flows), 0);
            return Action::Redraw;
        }
        if self.help || self.detail {
            // Any key closes an overlay; q still quits.
            self.help = false;
            self.detail = false;
            return if k == Key::Char('q') {
                Action::Quit
            } else {
                Action::Redraw
            };
        }
        match k {
            Key::Char('q') => return Action::Quit,
            Key::Char('?') | Key::Char('h') => self.help = true,
            Key::Char('/') => {
                self.editing = true;
                self.focus = Pane::Flows;
            }
            Key::Esc => self.filter.clear(),
            Key::Enter if self.focus == Pane::Services && self.rows(Pane::Services) > 0 => {
                self.detail = true
            }
            Key::Tab => self.focus = self.focus.next(),
            Key::BackTab => self.focus = self.focus.prev(),
            Key::Up | Key::Char('k') => self.step(false),
            Key::Down | Key::Char('j') => self.step(true),
            _ => {}
        }
        Action::Redraw
    }
}

#[cfg(test)]
mod tests;
