//! Tunnel transports of meshgw: how the gateway reaches the Cilium nodes over the mesh network.
//!
//! [`vxlan`]: the kernel VXLAN device in external (metadata) mode that Cilium's VTEP integration
//! talks to (UDP 8472, VNI 2). [`wireguard`]: tunnels to other gateways, the kernel module where
//! it exists, boringtun in user space where it does not. [`peering`]: the QUIC control channel
//! over which gateways exchange what they reach. [`mtu`]: tunnel MTUs from underlay MTUs.

pub mod mtu;
pub mod peering;
pub mod vxlan;
pub mod wireguard;

/// A failed tunnel device operation. `op` names the object concerned.
#[derive(Debug, thiserror::Error)]
pub enum TunnelError {
    /// The kernel (or the rtnetlink connection) refused a request.
    #[error("{op}: {source}")]
    Netlink {
        /// What was attempted.
        op: String,
        /// The rtnetlink error, with the kernel's errno when it has one.
        #[source]
        source: rtnetlink::Error,
    },
    /// The kernel did not answer in time (an answer the decoder cannot parse is dropped by the
    /// netlink stack, which would otherwise leave the request waiting forever).
    #[error("{op}: no answer from the kernel within {secs} s")]
    Timeout {
        /// What was attempted.
        op: String,
        /// The time allowed.
        secs: u64,
    },
    /// The device was not found right after its creation.
    #[error("device {0} vanished right after it was created")]
    Vanished(String),
    /// A device exists under the name but is not a VXLAN device; it is left alone.
    #[error("device {name} is a {found}, not a VXLAN device")]
    NotVxlan {
        /// The device name.
        name: String,
        /// Its kind.
        found: String,
    },
    /// The spec cannot describe a device.
    #[error("invalid VXLAN spec for {name:?}: {reason}")]
    InvalidSpec {
        /// The device name.
        name: String,
        /// What is wrong.
        reason: &'static str,
    },
}

impl TunnelError {
    /// The kernel's errno, if the kernel refused the request.
    pub fn errno(&self) -> Option<i32> {
        match self {
            TunnelError::Netlink {
                source: rtnetlink::Error::NetlinkError(e),
                ..
            } => Some(e.raw_code().saturating_abs()),
            _ => None,
        }
    }
}
