//! Peering between gateways: each announces the legacy prefixes behind it and the portal
//! services it serves, with the path of gateway ids they came through, over QUIC with mutual
//! TLS. [`proto`] and [`rib`] are the pure protocol; [`session`] runs it on quinn.

pub mod proto;
pub mod rib;
pub mod session;
pub mod tls;
