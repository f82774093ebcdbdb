//! The gateway as a read-only Cluster Mesh peer: Cilium's kvstore keys and values ([`kvstore`])
//! and each cluster's view of them ([`state`]).

pub mod import;
pub mod kvstore;
pub mod state;
