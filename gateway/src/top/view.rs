//! Drawing the dashboard from the [`Model`]: nothing here changes state, so a frame can be
//! rendered into ratatui's TestBackend and read back.

use ratatui::layout::{Constraint, Direction, Layout, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::symbols::Marker;
use ratatui::text::{Line, Span};
use ratatui::widgets::{
    Axis, Block, Borders, Cell, Chart, Clear, Dataset, GraphType, Paragraph, Row, Table, Wrap,
};
use ratatui::Frame;

use super::model::{Model, Pane};
use crate::flows::health::Health;
use crate::flows::record::clock;
use crate::flows::Verdict;

/// Packets, bits: 1234 -> "1.2k".
pub fn human(v: f64) -> String {
    let (d, unit) = if v >= 1e9 {
        (1e9, "G")
    } else if v >= 1e6 {
        (1e6, "M")
    } else if v >= 1e3 {
        (1e3, "k")
    } else {
        (1.0, "")
    };
    if d == 1.0 {
        format!("{v:.0}")
    } else {
        format!("{:.1}{unit}", v / d)
    }
}

fn block(m: &Model, p: Pane, title: String) -> Block<'static> {
    let style = if m.focus == p {
        Style::default()
            .fg(Color::Cyan)
            .add_modifier(Modifier::BOLD)
    } else {
        Style::default()
    };
    Block::default()
        .borders(Borders::ALL)
        .border_style(style)
        .title(Span::styled(title, style))
}

fn selected(m: &Model, p: Pane, i: usize) -> Style {
    if m.focus == p && m.selection(p) == i {
        Style::default().add_modifier(Modifier::REVERSED)
    } else {
        Style::default()
    }
}

/// Rows of a pane of `height` (inside borders, less the header) scrolled to keep the selection
/// visible.
fn window(sel: usize, rows: usize, height: usize) -> std::ops::Range<usize> {
    let h = height.max(1);
    let start = if sel >= h { sel + 1 - h } else { 0 };
    start..rows.min(start + h)
}

/// Draws the whole screen.
pub fn draw(f: &mut Frame<'_>, m: &Model) {
    let area = f.area();
    let rows = Layout::default()
        .direction(Direction::Vertical)
        .constraints([
            Constraint::Length(1),
            Constraint::Length(5),
            Constraint::Length(6),
            Constraint::Length(5),
            Constraint::Min(4),
            Constraint::Length(1),
        ])
        .split(area);
    header(f, m, rows[0]);
    if let Some(e) = &m.error {
        let msg = Paragraph::new(vec![
            Line::from(Span::styled(
                "meshgw daemon not running",
                Style::default().fg(Color::Red).add_modifier(Modifier::BOLD),
            )),
            Line::from(""),
            Line::from(e.clone()),
            Line::from(""),
            Line::from("Retrying every second. Start it with `systemctl start meshgw`; q quits."),
        ])
        .wrap(Wrap { trim: true })
        .block(Block::default().borders(Borders::ALL).title(" meshgw top "));
        let r = Rect {
            y: area.y + 1,
            height: area.height.saturating_sub(2),
            ..area
        };
        f.render_widget(msg, r);
    } else {
        let top = Layout::default()
            .direction(Direction::Horizontal)
            .constraints([Constraint::Percentage(50), Constraint::Percentage(50)])
            .split(rows[1]);
        clusters(f, m, top[0]);
        tunnels(f, m, top[1]);
        services(f, m, rows[2]);
        chart(f, m, rows[3]);
        flows(f, m, rows[4]);
    }
    footer(f, m, rows[5]);
    if m.help {
        help(f, area);
    } else if m.detail {
        backends(f, m, area);
    }
}

/// An overlay of at most `w` x `h` in the middle of `area`.
fn centered(area: Rect, w: u16, h: u16) -> Rect {
    let (w, h) = (area.width.min(w), area.height.min(h));
    Rect {
        x: area.x + (area.width - w) / 2,
        y: area.y + (area.height - h) / 2,
        width: w,
        height: h,
    }
}

fn vip_port(vip: std::net::IpAddr, port: u16) -> String {
    match vip {
        std::net::IpAddr::V6(a) => format!("[{a}]:{port}"),
        a => format!("{a}:{port}"),
    }
}

fn health_style(h: Health) -> Style {
    match h {
        Health::Up => Style::default().fg(Color::Green),
        Health::Failing => Style::default().fg(Color::Red).add_modifier(Modifier::BOLD),
        Health::Unknown => Style::default(),
    }
}

/// The selected service's backends: node, state in the Maglev table, health, traffic.
fn backends(f: &mut Frame<'_>, m: &Model, area: Rect) {
    let Some(svc) = m.selected_service() else {
        return;
    };
    let r = centered(area, 100, svc.backends.len() as u16 + 4);
    let rows: Vec<Row> = svc
        .backends
        .iter()
        .map(|b| {
            Row::new(vec![
                Cell::from(b.backend.clone()),
                Cell::from(b.node.to_string()),
                Cell::from(if b.active { "active" } else { "draining" }),
                Cell::from(b.health.name()).style(health_style(b.health)),
                Cell::from(format!("{}/{}", b.answered, b.answered + b.unanswered)),
                Cell::from(human(b.packets as f64)),
            ])
        })
        .collect();
    let t = Table::new(
        rows,
        [
            Constraint::Length(26),
            Constraint::Length(15),
            Constraint::Length(8),
            Constraint::Length(7),
            Constraint::Length(7),
            Constraint::Min(5),
        ],
    )
    .header(Row::new(["backend", "node", "maglev", "health", "answ", "pkts"]).style(bold()))
    .block(Block::default().borders(Borders::ALL).title(format!(
        " Backends of {} {}/{} (any key closes) ",
        svc.service,
        vip_port(svc.vip, svc.port),
        svc.proto
    )));
    f.render_widget(Clear, r);
    f.render_widget(t, r);
}

fn header(f: &mut Frame<'_>, m: &Model, r: Rect) {
    let text = match &m.snap {
        Some(s) if m.error.is_none() => {
            let (pps, dps) = m.history.back().copied().unwrap_or_default();
            format!(
                " meshgw top  {}  {} portals  {} pkt/s  {} drops/s  flows {}",
                s.status.gateway,
                s.status.portals.len(),
                human(pps),
                human(dps),
                s.flows.held
            )
        }
        _ => " meshgw top".to_string(),
    };
    f.render_widget(
        Paragraph::new(text).style(Style::default().add_modifier(Modifier::BOLD)),
        r,
    );
}

fn footer(f: &mut Frame<'_>, m: &Model, r: Rect) {
    let line = if m.editing {
        Line::from(vec![
            Span::styled(" filter: ", Style::default().fg(Color::Yellow)),
            Span::raw(format!("{}_", m.filter)),
            Span::raw("  (Enter apply, Esc clear)"),
        ])
    } else {
        Line::from(" q quit  ? help  tab pane  ↑↓/jk move  / filter flows")
    };
    f.render_widget(Paragraph::new(line), r);
}

fn clusters(f: &mut Frame<'_>, m: &Model, r: Rect) {
    let Some(s) = &m.snap else { return };
    let h = usize::from(r.height.saturating_sub(3));
    let sel = m.selection(Pane::Clusters);
    let list = &s.status.clusters;
    let rows: Vec<Row> = window(sel, list.len(), h)
        .map(|i| {
            let c = &list[i];
            let state = if !c.connected {
                "DOWN"
            } else if c.synced {
                "synced"
            } else {
                "syncing"
            };
            let age = c
                .last_event_age_s
                .map_or_else(|| "-".to_string(), |a| format!("{a}s"));
            Row::new(vec![
                c.name.clone(),
                state.to_string(),
                c.services.to_string(),
                c.nodes.to_string(),
                age,
            ])
            .style(selected(m, Pane::Clusters, i))
        })
        .collect();
    let title = if list.is_empty() {
        " Clusters (none: static services) ".to_string()
    } else {
        format!(" Clusters {} ", list.len())
    };
    let t = Table::new(
        rows,
        [
            Constraint::Min(8),
            Constraint::Length(7),
            Constraint::Length(4),
            Constraint::Length(5),
            Constraint::Length(5),
        ],
    )
    .header(Row::new(["cluster", "state", "svc", "nodes", "age"]).style(bold()))
    .block(block(m, Pane::Clusters, title));
    f.render_widget(t, r);
}

fn bold() -> Style {
    Style::default().add_modifier(Modifier::BOLD)
}

fn tunnels(f: &mut Frame<'_>, m: &Model, r: Rect) {
    let Some(s) = &m.snap else { return };
    let h = usize::from(r.height.saturating_sub(3));
    let sel = m.selection(Pane::Tunnels);
    let rows: Vec<Row> = window(sel, s.nodes.len(), h)
        .map(|i| {
            let n = &s.nodes[i];
            let rate = m.node_rate(i);
            let name = if n.node.is_empty() {
                n.address.clone()
            } else {
                n.node.clone()
            };
            Row::new(vec![
                name,
                match n.kind.as_str() {
                    "wireguard" => "wg".to_string(),
                    k => k.chars().take(5).collect(),
                },
                n.handshake_age_s
                    .map_or_else(|| "-".to_string(), |a| format!("{a}s")),
                format!("{}b/s", human(rate.bps)),
            ])
            .style(selected(m, Pane::Tunnels, i))
        })
        .collect();
    let t = Table::new(
        rows,
        [
            Constraint::Min(10),
            Constraint::Length(5),
            Constraint::Length(4),
            Constraint::Length(8),
        ],
    )
    .header(Row::new(["peer", "kind", "hs", "tx"]).style(bold()))
    .block(block(
        m,
        Pane::Tunnels,
        format!(" Tunnels {} ", s.nodes.len()),
    ));
    f.render_widget(t, r);
}

fn services(f: &mut Frame<'_>, m: &Model, r: Rect) {
    let Some(s) = &m.snap else { return };
    let h = usize::from(r.height.saturating_sub(3));
    let sel = m.selection(Pane::Services);
    let rows: Vec<Row> = window(sel, s.services.len(), h)
        .map(|i| {
            let svc = &s.services[i];
            let rate = m.service_rate(i);
            let ok = svc
                .backends
                .iter()
                .filter(|b| b.active && b.health != Health::Failing)
                .count();
            let be_style = if ok < svc.backends.len() {
                Style::default().fg(Color::Red).add_modifier(Modifier::BOLD)
            } else {
                Style::default()
            };
            let vip = vip_port(svc.vip, svc.port);
            Row::new(vec![
                Cell::from(svc.service.to_string()),
                Cell::from(format!("{vip}/{}", svc.proto)),
                Cell::from(format!("{ok}/{}", svc.backends.len())).style(be_style),
                Cell::from(svc.connections.to_string()),
                Cell::from(format!("{}/s", human(rate.pps))),
                Cell::from(format!("{}b/s", human(rate.bps))),
            ])
            .style(selected(m, Pane::Services, i))
        })
        .collect();
    let t = Table::new(
        rows,
        [
            Constraint::Min(12),
            Constraint::Length(22),
            Constraint::Length(5),
            Constraint::Length(5),
            Constraint::Length(7),
            Constraint::Length(8),
        ],
    )
    .header(Row::new(["service", "VIP", "be", "conn", "rate", "tput"]).style(bold()))
    .block(block(
        m,
        Pane::Services,
        format!(" Services {} ", s.services.len()),
    ));
    f.render_widget(t, r);
}

fn chart(f: &mut Frame<'_>, m: &Model, r: Rect) {
    let pps: Vec<(f64, f64)> = m
        .history
        .iter()
        .enumerate()
        .map(|(i, (p, _))| (i as f64, *p))
        .collect();
    let drops: Vec<(f64, f64)> = m
        .history
        .iter()
        .enumerate()
        .map(|(i, (_, d))| (i as f64, *d))
        .collect();
    let max = m
        .history
        .iter()
        .map(|(p, d)| p.max(*d))
        .fold(1.0f64, f64::max);
    let (pps_now, drops_now) = m.history.back().copied().unwrap_or_default();
    let data = vec![
        Dataset::default()
            .name(format!("pkt/s {}", human(pps_now)))
            .marker(Marker::Braille)
            .graph_type(GraphType::Line)
            .style(Style::default().fg(Color::Green))
            .data(&pps),
        Dataset::default()
            .name(format!("drops/s {}", human(drops_now)))
            .marker(Marker::Braille)
            .graph_type(GraphType::Line)
            .style(Style::default().fg(Color::Red))
            .data(&drops),
    ];
    let c = Chart::new(data)
        .block(Block::default().borders(Borders::ALL).title(format!(
            " Traffic  pkt/s {} (green)  drops/s {} (red) ",
            human(pps_now),
            human(drops_now)
        )))
        .x_axis(Axis::default().bounds([0.0, super::model::HISTORY as f64]))
        .y_axis(Axis::default().bounds([0.0, max * 1.1]))
        .legend_position(Some(ratatui::widgets::LegendPosition::TopLeft))
        .hidden_legend_constraints((Constraint::Percentage(100), Constraint::Percentage(100)));
    f.render_widget(c, r);
}

/// A flow line for a narrow pane: the verdict early, labels last (they are the longest).
fn compact(r: &crate::flows::FlowRecord) -> String {
    let t = clock(r.last_seen_ms);
    let mut s = format!(
        "{} {:<9} {}:{} -> {}:{} {}",
        &t[..8.min(t.len())],
        r.verdict.label(),
        r.src.addr,
        r.src.port,
        r.dst.addr,
        r.dst.port,
        r.proto
    );
    if let Some(svc) = &r.service {
        s.push_str(&format!(" {svc}"));
    }
    if let Some(reason) = &r.reason {
        s.push_str(&format!(" ({reason})"));
    }
    if r.src.identity != 0 {
        s.push_str(&format!(
            " id {} {}",
            r.src.identity,
            r.src.labels.join(",")
        ));
    }
    s
}

fn flows(f: &mut Frame<'_>, m: &Model, r: Rect) {
    let visible = m.visible_flows();
    let h = usize::from(r.height.saturating_sub(2));
    // The newest at the bottom, as a log scrolls; the selection is how far back the pane shows.
    let total = visible.len();
    let sel = m.selection(Pane::Flows).min(total.saturating_sub(1));
    let end = total.saturating_sub(sel);
    let start = end.saturating_sub(h);
    let lines: Vec<Line> = visible[start..end]
        .iter()
        .map(|r| {
            let style = if r.verdict == Verdict::Dropped {
                Style::default().fg(Color::Red)
            } else {
                Style::default()
            };
            Line::from(Span::styled(compact(r), style))
        })
        .collect();
    let title = if m.filter.is_empty() {
        format!(" Flows {total} ")
    } else {
        format!(" Flows {total} matching \"{}\" ", m.filter)
    };
    f.render_widget(Paragraph::new(lines).block(block(m, Pane::Flows, title)), r);
}

fn help(f: &mut Frame<'_>, area: Rect) {
    let r = centered(area, 60, 15);
    let text = vec![
        Line::from("tab / shift-tab   next / previous pane"),
        Line::from("↑ ↓  or  k j      move in the pane"),
        Line::from("/                 filter the flow pane (text)"),
        Line::from("enter / esc       apply / clear the filter"),
        Line::from("enter (services)  the service's backends and health"),
        Line::from("? or h            this help"),
        Line::from("q                 quit"),
        Line::from(""),
        Line::from("rate: packets/s client -> VIP; tput: bits/s"),
        Line::from("be: backends active and not failing / all"),
        Line::from("hs: tunnel handshake age (VXLAN has none)"),
    ];
    f.render_widget(Clear, r);
    f.render_widget(
        Paragraph::new(text).block(Block::default().borders(Borders::ALL).title(" Help ")),
        r,
    );
}
