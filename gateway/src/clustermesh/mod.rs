//! The gateway as a read-only Cluster Mesh peer: Cilium's kvstore keys and values ([`kvstore`]),
//! each cluster's view of them ([`state`]), the etcd client that feeds it ([`client`]), the task
//! that runs one client per cluster ([`supervisor`]), and what becomes a portal ([`import`]).

pub mod client;
pub mod import;
pub mod kvstore;
pub mod state;
pub mod supervisor;
