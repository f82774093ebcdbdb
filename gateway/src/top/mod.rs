//! `meshgw top`: the console dashboard. [`model`] holds the state, [`view`] draws it; this
//! module owns the terminal and asks the daemon for a snapshot and the recent flows every
//! second.

pub mod model;
pub mod view;

use std::io::Stdout;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Result;
use ratatui::backend::CrosstermBackend;
use ratatui::crossterm::event::{self, Event, KeyCode, KeyEventKind, KeyModifiers};
use ratatui::crossterm::execute;
use ratatui::crossterm::terminal::{
    disable_raw_mode, enable_raw_mode, EnterAlternateScreen, LeaveAlternateScreen,
};
use ratatui::Terminal;

use crate::api::client::Client;
use crate::flows::Filter;
use model::{Action, Key, Model};

const REFRESH: Duration = Duration::from_secs(1);

/// Restores the terminal however the dashboard ends (error or panic included).
struct Restore;

impl Drop for Restore {
    fn drop(&mut self) {
        let _ = disable_raw_mode();
        let _ = execute!(std::io::stdout(), LeaveAlternateScreen);
    }
}

fn key(k: event::KeyEvent) -> Option<Key> {
    if k.modifiers.contains(KeyModifiers::CONTROL) && k.code == KeyCode::Char('c') {
        return Some(Key::Interrupt);
    }
    Some(match k.code {
        KeyCode::Char(c) => Key::Char(c),
        KeyCode::Up => Key::Up,
        KeyCode::Down => Key::Down,
        KeyCode::Tab => Key::Tab,
        KeyCode::BackTab => Key::BackTab,
        KeyCode::Enter => Key::Enter,
        KeyCode::Esc => Key::Esc,
        KeyCode::Backspace => Key::Backspace,
        _ => return None,
    })
}

/// Asks the daemon; a failure leaves the connection closed, to be opened again next time.
fn poll(socket: &Path, conn: &mut Option<Client>, m: &mut Model) {
    if conn.is_none() {
        match Client::connect(socket) {
            Ok(c) => *conn = Some(c),
            Err(e) => return m.apply_error(e.to_string()),
        }
    }
    let Some(c) = conn.as_mut() else { return };
    let r = c
        .status()
        .and_then(|s| Ok((s, c.recent_flows(Filter::default(), model::FLOWS)?)));
    match r {
        Ok((s, flows)) => {
            m.apply_snapshot(s);
            m.apply_flows(flows);
        }
        Err(e) => {
            *conn = None;
            m.apply_error(e.to_string());
        }
    }
}

/// Runs the dashboard against the daemon at `socket` until q.
pub fn run(socket: &Path) -> Result<()> {
    enable_raw_mode()?;
    let _restore = Restore;
    let mut out = std::io::stdout();
    execute!(out, EnterAlternateScreen)?;
    let mut term: Terminal<CrosstermBackend<Stdout>> = Terminal::new(CrosstermBackend::new(out))?;
    term.clear()?;
    let mut m = Model::default();
    let mut conn = None;
    let mut next = Instant::now();
    loop {
        if Instant::now() >= next {
            poll(socket, &mut conn, &mut m);
            next = Instant::now() + REFRESH;
            term.draw(|f| view::draw(f, &m))?;
        }
        let wait = next.saturating_duration_since(Instant::now());
        if !event::poll(wait)? {
            continue;
        }
        match event::read()? {
            Event::Key(k) if k.kind != KeyEventKind::Release => {
                if let Some(k) = key(k) {
                    if m.on_key(k) == Action::Quit {
                        break;
                    }
                }
            }
            // ratatui resizes its buffers on the next draw.
            Event::Resize(_, _) => {}
            _ => continue,
        }
        term.draw(|f| view::draw(f, &m))?;
    }
    Ok(())
}
