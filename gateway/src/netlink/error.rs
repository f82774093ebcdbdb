//! Errors of the rtnetlink reconcilers.

use std::io;

/// A failed rtnetlink operation. `op` always names the object concerned (for example
/// "add address 10.200.0.10/32 on ifindex 7"), so that a log line alone says what went wrong.
#[derive(Debug, thiserror::Error)]
pub enum NetlinkError {
    /// The rtnetlink socket could not be opened.
    #[error("cannot open an rtnetlink socket: {0}")]
    Socket(#[source] io::Error),
    /// `Netlink::connect` was called outside a tokio runtime.
    #[error("Netlink::connect needs a tokio runtime to drive the rtnetlink connection")]
    NoRuntime,
    /// The kernel refused a request; `source` carries its errno.
    #[error("{op}: {source}")]
    Kernel {
        /// What was attempted.
        op: String,
        /// The kernel's answer as an errno.
        #[source]
        source: io::Error,
    },
    /// The connection task is gone (its runtime shut down), so nothing can be sent.
    #[error("{op}: the rtnetlink connection is closed")]
    Closed {
        /// What was attempted.
        op: String,
    },
    /// The kernel did not answer in time. A message the decoder could not parse is dropped by
    /// the netlink stack, which would otherwise leave a single-answer request waiting forever.
    #[error("{op}: no answer from the kernel within {secs} s")]
    Timeout {
        /// What was attempted.
        op: String,
        /// The time allowed.
        secs: u64,
    },
    /// The kernel answered with something that does not fit the request.
    #[error("{op}: unexpected answer: {detail}")]
    Unexpected {
        /// What was attempted.
        op: String,
        /// What was wrong with the answer.
        detail: String,
    },
    /// A device exists under the requested name but is of another kind; it is left alone.
    #[error("device {name} exists but is a {found}, not a {wanted}")]
    WrongKind {
        /// The device name.
        name: String,
        /// The kind found (`veth`, `vxlan`, ... or `none`).
        found: String,
        /// The kind wanted.
        wanted: &'static str,
    },
    /// A desired object that the kernel cannot represent.
    #[error("invalid {what}: {reason}")]
    Invalid {
        /// The object (for example "route fd00:244:1::/64").
        what: String,
        /// Why it is rejected.
        reason: &'static str,
    },
}

impl NetlinkError {
    /// The errno of a kernel refusal, if this is one.
    pub fn errno(&self) -> Option<i32> {
        match self {
            NetlinkError::Kernel { source, .. } => source.raw_os_error(),
            _ => None,
        }
    }
}
