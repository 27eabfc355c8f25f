//! darkroom: proxy round trips, upscaling and dataset preparation for images that
//! resolution-limited AI models cannot handle alone.
//!
//! [`core`] holds the pure pixel algorithms; [`io`] decodes, encodes and writes files
//! durably; [`ops`] are the operations (split, delta, merge, batch) that the CLI and the
//! daemon share.

pub mod core;
pub mod daemon;
pub mod io;
pub mod ops;
pub mod recipes;
