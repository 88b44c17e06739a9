//! The `starkscale` command line.
//!
//! - [`cli`]: argument parsing and the commands (`prove-tile`, `verify-tile`, `bench kernel`,
//!   `worker`, `coordinator`, `submit`, `result`).
//! - [`access`]: `access files` and `access rules`, the accounts of a deployment.
//! - [`check`]: what a client verifies before it believes a result.
//! - [`client`]: the commands that talk to a running fleet.
//! - [`bench`]: the kernel benchmark and its JSON report.
//! - [`infer`]: `infer`, and the inference side of `commit` and `verify`.
//!
//! Proving lives in `starkscale-cairo`; input formats in `starkscale-common`.

pub mod access;
pub mod bench;
pub mod check;
pub mod cli;
pub mod client;
pub mod infer;
