//! # testbed — scenario suites for postsock in the simulator
//!
//! The library behind the `postsock` command: scenario files ([`scenario`]), the application
//! programs they run ([`workload`]), one run ([`runner`]) and whole suites ([`suite`]).

pub mod bench;
pub mod bench_idle;
pub mod bench_scale;
pub mod bench_sim;
pub mod chaos;
pub mod compare;
pub mod diff;
pub mod invariants;
pub mod locate;
pub mod natmatrix;
pub mod runner;
pub mod scenario;
pub mod suite;
pub mod workload;

pub use runner::{run, run_with, RunOptions, RunOutcome};
pub use scenario::{Scenario, ScenarioError};
