//! Identity-based policy at the gateway: CiliumNetworkPolicy files ([`cnp`]), gateway-local
//! identities ([`identity`]), and their compilation into the datapath's identity and policy
//! maps ([`compile`]).

pub mod cnp;
pub mod compile;
pub mod identity;

#[cfg(test)]
mod tests;
