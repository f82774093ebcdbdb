//! Datapath counters: one per-CPU `u64` slot per [`Counter`] in the `MGW_STATS` array.

/// What a counter slot counts. The discriminant is the array index.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Counter {
    /// Frames seen by the legacy program.
    LegacyRx = 0,
    /// Frames the legacy program handed to the kernel (not for a VIP, or not load-balanced).
    LegacyPass = 1,
    /// Packets to a VIP that were DNATed, encapsulated and redirected to the mesh.
    VipForwarded = 2,
    /// New flows (forward connection-tracking entries created).
    CtCreated = 3,
    /// Flows whose backend disappeared and were moved to a new one.
    CtReselected = 4,
    /// Dropped: the service has no backend.
    DropNoBackend = 5,
    /// Dropped: the FIB had no route or no neighbour for the backend's node.
    DropFibMiss = 6,
    /// Dropped: the packet could not be grown or written (adjust_head failed).
    DropHeadroom = 7,
    /// Passed: malformed or truncated frames (never rewritten).
    Malformed = 8,
    /// Passed: IP fragments to a VIP (not load-balanced, as in Katran).
    Fragment = 9,
    /// Frames seen by the mesh program.
    MeshRx = 10,
    /// VXLAN frames from known nodes.
    MeshVxlan = 11,
    /// Replies reverse-NATed, decapsulated and redirected to the legacy side.
    ReplyForwarded = 12,
    /// Frames the mesh program handed to the kernel.
    MeshPass = 13,
    /// Dropped: the FIB could not resolve the client for a reply and no MAC was recorded.
    DropReplyFib = 14,
    /// VXLAN packets from sources that are not known nodes (passed to the kernel).
    MeshUnknownNode = 15,
    /// Dropped: the encapsulated packet would exceed the mesh path's MTU (the FIB's MTU check).
    DropTooBig = 16,
    /// Dropped: the first packet of a flow was denied by policy (no connection is tracked).
    DropPolicy = 17,
    /// New flows a policy allowed (only counted while policy is enforced).
    PolicyAllowed = 18,
    /// New egress flows (endpoint -> legacy host) given a source port on an egress address.
    EgressCreated = 19,
    /// Egress packets translated, decapsulated and redirected to the legacy side.
    EgressForwarded = 20,
    /// Replies to egress flows translated back, encapsulated and redirected to the mesh.
    EgressReplied = 21,
    /// Dropped: no free source port on the egress address for a new flow.
    DropEgressPorts = 22,
    /// Dropped: the first packet of an endpoint's flow to the legacy network was denied by
    /// policy (egress direction).
    DropPolicyEgress = 23,
    /// Packets of established flows forwarded from the per-CPU flow cache (`MGW_FLOW_CACHE`):
    /// no service or connection-tracking lookup. Also counted in `VipForwarded`.
    FlowCacheHit = 24,
}

/// Slots in the counters array: room to grow, so that a release adding counters reuses the
/// pinned array of the previous one.
pub const COUNTER_SLOTS: u32 = 64;

/// Counters defined by this release.
pub const COUNTER_COUNT: usize = 25;

impl Counter {
    /// Every counter, in slot order.
    pub const ALL: [Counter; COUNTER_COUNT] = [
        Counter::LegacyRx,
        Counter::LegacyPass,
        Counter::VipForwarded,
        Counter::CtCreated,
        Counter::CtReselected,
        Counter::DropNoBackend,
        Counter::DropFibMiss,
        Counter::DropHeadroom,
        Counter::Malformed,
        Counter::Fragment,
        Counter::MeshRx,
        Counter::MeshVxlan,
        Counter::ReplyForwarded,
        Counter::MeshPass,
        Counter::DropReplyFib,
        Counter::MeshUnknownNode,
        Counter::DropTooBig,
        Counter::DropPolicy,
        Counter::PolicyAllowed,
        Counter::EgressCreated,
        Counter::EgressForwarded,
        Counter::EgressReplied,
        Counter::DropEgressPorts,
        Counter::DropPolicyEgress,
        Counter::FlowCacheHit,
    ];

    /// A stable snake_case name, for status output and metrics.
    pub const fn name(self) -> &'static str {
        match self {
            Counter::LegacyRx => "legacy_rx",
            Counter::LegacyPass => "legacy_pass",
            Counter::VipForwarded => "vip_forwarded",
            Counter::CtCreated => "ct_created",
            Counter::CtReselected => "ct_reselected",
            Counter::DropNoBackend => "drop_no_backend",
            Counter::DropFibMiss => "drop_fib_miss",
            Counter::DropHeadroom => "drop_headroom",
            Counter::Malformed => "malformed",
            Counter::Fragment => "fragment",
            Counter::MeshRx => "mesh_rx",
            Counter::MeshVxlan => "mesh_vxlan",
            Counter::ReplyForwarded => "reply_forwarded",
            Counter::MeshPass => "mesh_pass",
            Counter::DropReplyFib => "drop_reply_fib",
            Counter::MeshUnknownNode => "mesh_unknown_node",
            Counter::DropTooBig => "drop_too_big",
            Counter::DropPolicy => "drop_policy",
            Counter::PolicyAllowed => "policy_allowed",
            Counter::EgressCreated => "egress_created",
            Counter::EgressForwarded => "egress_forwarded",
            Counter::EgressReplied => "egress_replied",
            Counter::DropEgressPorts => "drop_egress_ports",
            Counter::DropPolicyEgress => "drop_policy_egress",
            Counter::FlowCacheHit => "flow_cache_hit",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_dense_and_in_order() {
        for (i, c) in Counter::ALL.iter().enumerate() {
            assert_eq!(*c as u32, i as u32, "{}", c.name());
        }
    }
}
