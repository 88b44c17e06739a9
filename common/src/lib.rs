//! Types shared by every STARKScale crate.
//!
//! - [`tensor`]: integer matrices and vectors ([`Matrix`], [`Vector`]) with their [`Dtype`],
//!   loaded from JSON arrays or NumPy `.npy` files with range and shape checks.
//! - [`job`]: the job format ([`JobSpec`]), its validation and its JSON Schema.
//! - [`plan`]: how a matrix is cut into tiles ([`TilePlan`]) and how tall tiles should be.
//!
//! Nothing here touches the proving stack; `starkscale-cairo` owns that.

pub mod job;
pub mod plan;
pub mod tensor;

pub use job::{JobError, JobLimits, JobSpec};
pub use plan::{TilePlan, TileSpec};
pub use tensor::{Dtype, Matrix, TensorError, Vector};
