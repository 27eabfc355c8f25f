//! The watch-folder daemon: its settings and configuration, intake, the journal, the model
//! lane, the output trees, and the service loop that ties them to the recipes
//! (`crate::recipes`) (`darkroom serve`).

pub mod config;
pub mod http;
pub mod intake;
pub mod journal;
pub mod logging;
pub mod metrics;
pub mod model_lane;
pub mod notify;
pub mod pairing;
pub mod service;
pub mod settings;
pub mod status;
pub mod systemd;
pub mod trees;
