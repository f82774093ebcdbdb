//! Reconcilers: each makes one part of the system match the desired state, idempotently (a second
//! run with the same desired state changes nothing), and finds its own objects after a restart.

pub mod bpf;
pub mod ct_gc;

/// What a reconcile pass changed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Changes {
    /// Objects added or updated.
    pub written: usize,
    /// Objects removed.
    pub removed: usize,
}

impl Changes {
    /// Whether nothing changed.
    pub fn is_empty(&self) -> bool {
        self.written == 0 && self.removed == 0
    }
}

impl std::ops::AddAssign for Changes {
    fn add_assign(&mut self, o: Changes) {
        self.written += o.written;
        self.removed += o.removed;
    }
}
