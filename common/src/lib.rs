//! Types shared by every STARKScale crate.
//!
//! - [`tensor`]: integer matrices and vectors ([`Matrix`], [`Vector`]) with their [`Dtype`],
//!   loaded from JSON arrays or NumPy `.npy` files with range and shape checks.
//!
//! Nothing here touches the proving stack; `starkscale-cairo` owns that.

pub mod tensor;

pub use tensor::{Dtype, Matrix, TensorError, Vector};
