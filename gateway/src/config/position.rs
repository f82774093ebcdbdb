//! From problems to positions: key paths, and their line and column in the file.

use std::fmt;
use std::ops::Range;

use toml_edit::{ImDocument, Item, Table, Value};

use super::Problem;

/// One step of a key path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Seg {
    /// A key.
    Key(String),
    /// An array index (zero-based).
    Idx(usize),
}

/// A key path like `service[0].backend[1].node`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KeyPath(pub Vec<Seg>);

impl KeyPath {
    /// This path extended by a key.
    pub fn key(&self, k: &str) -> KeyPath {
        let mut v = self.0.clone();
        v.push(Seg::Key(k.to_string()));
        KeyPath(v)
    }

    /// This path extended by an index.
    pub fn idx(&self, i: usize) -> KeyPath {
        let mut v = self.0.clone();
        v.push(Seg::Idx(i));
        KeyPath(v)
    }
}

impl fmt::Display for KeyPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, s) in self.0.iter().enumerate() {
            match s {
                Seg::Key(k) if i == 0 => write!(f, "{k}")?,
                Seg::Key(k) => write!(f, ".{k}")?,
                Seg::Idx(n) => write!(f, "[{n}]")?,
            }
        }
        Ok(())
    }
}

/// 1-based (line, column) of a byte offset.
pub fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let col = before
        .rfind('\n')
        .map_or(before.len(), |nl| before.len() - nl - 1)
        + 1;
    (line, col)
}

/// A problem at `path`, positioned by looking the path up in the document.
pub fn problem(
    text: &str,
    doc: Option<&ImDocument<&str>>,
    path: &KeyPath,
    message: String,
) -> Problem {
    let span = doc.and_then(|d| span_of(d.as_table(), &path.0));
    let (line, column) = match span {
        Some(r) => {
            let (l, c) = line_col(text, r.start);
            (Some(l), Some(c))
        }
        None => (None, None),
    };
    Problem {
        line,
        column,
        key: path.to_string(),
        message,
    }
}

fn span_of(table: &Table, path: &[Seg]) -> Option<Range<usize>> {
    let (Seg::Key(k), rest) = path.split_first()? else {
        return None;
    };
    let (key, item) = table.get_key_value(k)?;
    if rest.is_empty() {
        return key.span().or_else(|| item.span());
    }
    span_in_item(item, rest).or_else(|| key.span())
}

fn span_in_item(item: &Item, path: &[Seg]) -> Option<Range<usize>> {
    match (item, path.first()?) {
        (Item::Table(t), Seg::Key(_)) => span_of(t, path),
        (Item::ArrayOfTables(a), Seg::Idx(i)) => {
            let t = a.get(*i)?;
            if path.len() == 1 {
                return t.span();
            }
            span_of(t, &path[1..])
        }
        (Item::Value(v), _) => span_in_value(v, path),
        _ => None,
    }
}

fn span_in_value(v: &Value, path: &[Seg]) -> Option<Range<usize>> {
    match (v, path.first()?) {
        (Value::Array(a), Seg::Idx(i)) => {
            let e = a.get(*i)?;
            if path.len() == 1 {
                return e.span();
            }
            span_in_value(e, &path[1..]).or_else(|| e.span())
        }
        (Value::InlineTable(t), Seg::Key(k)) => {
            let (key, val) = t.get_key_value(k)?;
            let val = val.as_value()?;
            if path.len() == 1 {
                return key.span().or_else(|| val.span());
            }
            span_in_value(val, &path[1..]).or_else(|| key.span())
        }
        _ => None,
    }
}

/// The key path of the innermost key whose key or value span contains `offset`.
fn path_at(table: &Table, offset: usize, prefix: &KeyPath) -> Option<KeyPath> {
    for (k, item) in table.iter() {
        let (key, _) = table.get_key_value(k)?;
        let here = prefix.key(k);
        if key.span().is_some_and(|s| s.contains(&offset)) {
            return Some(here);
        }
        match item {
            Item::Table(t) => {
                if let Some(p) = path_at(t, offset, &here) {
                    return Some(p);
                }
            }
            Item::ArrayOfTables(a) => {
                for (i, t) in a.iter().enumerate() {
                    if let Some(p) = path_at(t, offset, &here.idx(i)) {
                        return Some(p);
                    }
                }
            }
            Item::Value(v) => {
                if v.span().is_some_and(|s| s.contains(&offset)) {
                    return Some(inline_path_at(v, offset, here));
                }
            }
            Item::None => {}
        }
    }
    None
}

fn inline_path_at(v: &Value, offset: usize, here: KeyPath) -> KeyPath {
    match v {
        Value::Array(a) => {
            for (i, e) in a.iter().enumerate() {
                if e.span().is_some_and(|s| s.contains(&offset)) {
                    return inline_path_at(e, offset, here.idx(i));
                }
            }
            here
        }
        Value::InlineTable(t) => {
            for (k, e) in t.iter() {
                let Some((key, _)) = t.get_key_value(k) else {
                    continue;
                };
                if key.span().is_some_and(|s| s.contains(&offset)) {
                    return here.key(k);
                }
                if e.span().is_some_and(|s| s.contains(&offset)) {
                    return inline_path_at(e, offset, here.key(k));
                }
            }
            here
        }
        _ => here,
    }
}

/// A syntax or type error from the TOML parser, with its position and, where the document still
/// parses as TOML, the key path it is at.
pub fn from_toml_error(text: &str, e: &toml::de::Error) -> Problem {
    let (line, column, key) = match e.span() {
        Some(span) => {
            let (l, c) = line_col(text, span.start);
            let key = ImDocument::parse(text)
                .ok()
                .and_then(|d| path_at(d.as_table(), span.start, &KeyPath::default()))
                .map(|p| p.to_string())
                .unwrap_or_default();
            (Some(l), Some(c), key)
        }
        None => (None, None, String::new()),
    };
    Problem {
        line,
        column,
        key,
        message: e.message().trim().replace('\n', " "),
    }
}
