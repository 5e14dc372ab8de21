//! Establishment: from a [`Remote`](crate::Remote) and a [`Configuration`](crate::Configuration)
//! to one ready transient. [`selection`] turns transport properties into candidate protocol
//! stacks, [`racing`] races candidates (its decisions are the sans-IO core in `race`),
//! [`attempt`] establishes one candidate, and [`association`] remembers what a remote taught
//! us (sessions, racing outcomes) for the next carrier.

pub(crate) mod association;
pub(crate) mod attempt;

pub(crate) mod race;
pub(crate) mod racing;
pub(crate) mod report;
pub(crate) mod resolution;
pub(crate) mod selection;
pub(crate) mod sessions;
