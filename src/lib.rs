//! The `starkscale` command line.
//!
//! - [`cli`]: argument parsing and the commands (`prove-tile`, `verify-tile`, `bench kernel`,
//!   `worker`, `coordinator`, `submit`, `result`).
//! - [`client`]: the commands that talk to a running fleet.
//! - [`bench`]: the kernel benchmark and its JSON report.
//! - [`infer`]: `infer`, and the inference side of `commit` and `verify`.
//!
//! Proving lives in `starkscale-cairo`; input formats in `starkscale-common`.

pub mod bench;
pub mod cli;
pub mod client;
pub mod infer;
