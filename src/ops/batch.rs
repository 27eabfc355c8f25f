//! `batch-split`: split every file a glob matches, in parallel, and report every failure
//! at the end. One bad file never stops the batch.

use super::split::{split, SplitOutput};
use super::OpError;
use crate::core::geometry::Target;
use crate::io::decode::DecodeLimits;
use rayon::prelude::*;
use std::path::{Path, PathBuf};

/// The outcome of a batch: every file with its result, in glob order.
#[derive(Debug)]
pub struct BatchReport {
    pub results: Vec<(PathBuf, Result<SplitOutput, OpError>)>,
}

impl BatchReport {
    pub fn failures(&self) -> impl Iterator<Item = (&PathBuf, &OpError)> {
        self.results
            .iter()
            .filter_map(|(p, r)| r.as_ref().err().map(|e| (p, e)))
    }

    pub fn succeeded(&self) -> usize {
        self.results.iter().filter(|(_, r)| r.is_ok()).count()
    }
}

/// Expands `pattern` to regular files, skipping darkroom's own outputs (`*_proxy*`, `*_merged*`).
pub fn expand(pattern: &str) -> Result<Vec<PathBuf>, OpError> {
    let paths = glob::glob(pattern)
        .map_err(|e| OpError::Usage(format!("bad glob pattern '{pattern}': {e}")))?;
    let mut files: Vec<PathBuf> = paths
        .filter_map(Result::ok)
        .filter(|p| p.is_file())
        .filter(|p| !is_darkroom_output(p))
        .collect();
    files.sort();
    Ok(files)
}

fn is_darkroom_output(path: &Path) -> bool {
    let stem = crate::io::names::stem_of(path);
    stem.ends_with("_proxy")
        || stem.contains("_proxy_delta")
        || stem.ends_with("_merged")
        || path
            .file_name()
            .is_some_and(|n| n.to_string_lossy().ends_with("_proxy_metadata.txt"))
}

/// Splits every file in `files`; `tick` is called once per finished file.
pub fn batch_split(
    files: &[PathBuf],
    target: Target,
    out_dir: Option<&Path>,
    limits: &DecodeLimits,
    tick: &(dyn Fn(&Path, bool) + Sync),
) -> BatchReport {
    let results = files
        .par_iter()
        .map(|path| {
            let result = split(path, target, out_dir, limits);
            tick(path, result.is_ok());
            (path.clone(), result)
        })
        .collect();
    BatchReport { results }
}
