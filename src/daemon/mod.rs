//! The watch-folder daemon: configuration, intake, the journal, recipes, the output trees,
//! and the service loop that ties them together (`darkroom serve`).

pub mod config;
pub mod intake;
pub mod journal;
pub mod logging;
pub mod model_lane;
pub mod normalise_job;
pub mod pairing;
pub mod round_trip;
pub mod service;
pub mod status;
pub mod systemd;
pub mod trees;
pub mod upscale_job;
