//! File names: the stem of a path, and a free name in a folder that never replaces a file.

use std::path::{Path, PathBuf};

/// The stem of an input file, for naming what comes of it.
pub fn stem_of(path: &Path) -> String {
    path.file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "image".into())
}

/// A free name for `file_name` in `dir`: the name itself, or `{stem}_{tag}.{ext}` when a
/// different file already has it. Deterministic, so a re-run picks the same name.
pub fn free_name(dir: &Path, file_name: &str, tag: &str) -> PathBuf {
    let plain = dir.join(file_name);
    if !plain.exists() {
        return plain;
    }
    let path = Path::new(file_name);
    let stem = stem_of(path);
    match path.extension() {
        Some(ext) => dir.join(format!("{stem}_{tag}.{}", ext.to_string_lossy())),
        None => dir.join(format!("{stem}_{tag}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_names_keep_existing_files() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(
            free_name(dir.path(), "a.jpg", "dr000001"),
            dir.path().join("a.jpg")
        );
        std::fs::write(dir.path().join("a.jpg"), b"x").unwrap();
        assert_eq!(
            free_name(dir.path(), "a.jpg", "dr000001"),
            dir.path().join("a_dr000001.jpg")
        );
    }
}
