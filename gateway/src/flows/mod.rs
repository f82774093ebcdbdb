//! Flows: the records the datapath's events become ([`record`]), the bounded table that
//! aggregates them ([`table`]), and `meshgw flows` ([`cli`]).

pub mod cli;
pub mod record;
pub mod table;

pub use record::{Filter, FlowRecord, Verdict};
pub use table::{FlowTable, Names};
