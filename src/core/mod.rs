//! The pure pixel core: no file system, no processes, no clocks. Everything here takes
//! in-memory images and options and returns owned results, so the CLI, the daemon and the
//! benchmarks all call the same code.

pub mod adjust;
pub mod colour;
pub mod corrections;
pub mod dataset;
pub mod delta;
pub mod filters;
pub mod geometry;
pub mod guided;
pub mod merge;
pub mod metrics;
pub mod proxy;
pub mod quality;
pub mod resample;
pub mod signature;
pub mod tiling;
