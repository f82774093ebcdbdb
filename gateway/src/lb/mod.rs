//! Load-balancing logic that runs in user space: Maglev tables and stable ids.

pub mod maglev;
