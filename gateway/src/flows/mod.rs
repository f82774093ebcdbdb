//! Flows: the records the datapath's events become ([`record`]), the bounded table that
//! aggregates them ([`table`]), the backends' passive health they show ([`health`]), and
//! `meshgw flows` ([`cli`]).

pub mod cli;
pub mod health;
pub mod record;
pub mod table;

pub use record::{Filter, FlowRecord, Verdict};
pub use table::{FlowTable, Names};
