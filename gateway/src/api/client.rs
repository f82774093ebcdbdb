//! The client side: `meshgw status`, `flows` and `top` ask the daemon through here.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use super::{Reply, ReplyBody, Request, RequestBody, Snapshot, API_VERSION};
use crate::flows::{Filter, FlowRecord};

/// Why the daemon could not be asked.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Nothing listens on the socket.
    #[error("the meshgw daemon is not running (no control socket at {0})")]
    NotRunning(String),
    /// The socket exists but the daemon did not answer properly.
    #[error("control API {path}: {message}")]
    Protocol {
        /// The socket.
        path: String,
        /// What went wrong.
        message: String,
    },
}

/// A connection to the daemon.
pub struct Client {
    path: String,
    w: UnixStream,
    r: BufReader<UnixStream>,
}

impl Client {
    /// Connects to the socket at `path`.
    pub fn connect(path: &Path) -> Result<Client, ClientError> {
        let p = path.display().to_string();
        let s = UnixStream::connect(path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused => {
                ClientError::NotRunning(p.clone())
            }
            _ => ClientError::Protocol {
                path: p.clone(),
                message: e.to_string(),
            },
        })?;
        let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
        let r = s.try_clone().map_err(|e| ClientError::Protocol {
            path: p.clone(),
            message: e.to_string(),
        })?;
        Ok(Client {
            path: p,
            w: s,
            r: BufReader::new(r),
        })
    }

    fn err(&self, message: impl Into<String>) -> ClientError {
        ClientError::Protocol {
            path: self.path.clone(),
            message: message.into(),
        }
    }

    fn request(&mut self, body: RequestBody) -> Result<(), ClientError> {
        let mut line = serde_json::to_vec(&Request {
            version: API_VERSION,
            body,
        })
        .map_err(|e| self.err(e.to_string()))?;
        line.push(b'\n');
        self.w.write_all(&line).map_err(|e| self.err(e.to_string()))
    }

    fn reply(&mut self) -> Result<ReplyBody, ClientError> {
        let mut line = String::new();
        match self.r.read_line(&mut line) {
            Ok(0) => return Err(self.err("the daemon closed the connection")),
            Ok(_) => {}
            Err(e) => return Err(self.err(e.to_string())),
        }
        let rep: Reply =
            serde_json::from_str(&line).map_err(|e| self.err(format!("bad reply: {e}")))?;
        match rep.body {
            ReplyBody::Error { message } => Err(self.err(message)),
            b => Ok(b),
        }
    }

    /// The daemon's snapshot.
    pub fn status(&mut self) -> Result<Snapshot, ClientError> {
        self.request(RequestBody::Status)?;
        match self.reply()? {
            ReplyBody::Snapshot(s) => Ok(*s),
            other => Err(self.err(format!("unexpected reply {other:?}"))),
        }
    }

    /// Starts a flow listing; read it with [`Client::next_flow`].
    pub fn flows(&mut self, follow: bool, filter: Filter, limit: usize) -> Result<(), ClientError> {
        if follow {
            let _ = self.r.get_ref().set_read_timeout(None);
        }
        self.request(RequestBody::Flows {
            follow,
            filter,
            limit,
        })
    }

    /// The most recent `limit` flows passing `filter` (0: all), oldest first.
    pub fn recent_flows(
        &mut self,
        filter: Filter,
        limit: usize,
    ) -> Result<Vec<FlowRecord>, ClientError> {
        self.flows(false, filter, limit)?;
        let mut out = Vec::new();
        while let Some(f) = self.next_flow()? {
            out.push(f);
        }
        Ok(out)
    }

    /// The next flow of a listing, `None` at its end.
    pub fn next_flow(&mut self) -> Result<Option<FlowRecord>, ClientError> {
        match self.reply()? {
            ReplyBody::Flow(f) => Ok(Some(*f)),
            ReplyBody::End => Ok(None),
            other => Err(self.err(format!("unexpected reply {other:?}"))),
        }
    }
}
