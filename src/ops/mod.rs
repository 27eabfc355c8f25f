//! Operations on files: what `darkroom split`, `delta`, `merge` and `batch-split` do, and what
//! the daemon's recipes call. Each joins the pure core to the IO shell and reports failures
//! as [`OpError`], which names the file and says whether trying again can help.

pub mod batch;
pub mod dataset_report;
pub mod delta;
pub mod enhance;
pub mod merge;
pub mod model_pipeline;
pub mod normalise;
pub mod split;
pub mod upscale;

use crate::io::decode::DecodeError;
use crate::io::onnx::ModelError;
use crate::io::system;
use std::path::{Path, PathBuf};

/// Encodes `image` as `format` with what its input carried (ICC profile, EXIF, XMP and
/// IPTC), and writes it atomically (temp file, fsync, rename) to `path`.
pub fn write_image(
    path: &Path,
    image: &image::DynamicImage,
    format: crate::io::encode::OutputFormat,
    input: &crate::io::decode::LoadedImage,
) -> Result<(), OpError> {
    let bytes = crate::io::encode::encode(
        image,
        format,
        input.icc_profile.as_deref(),
        input.exif.as_deref(),
        &[],
    )
    .map_err(|e| OpError::write(path, e))?;
    let bytes = crate::io::xmp::embed(bytes, format, &input.packets, canvas_of(image));
    crate::io::atomic::write_atomic(path, &bytes).map_err(|e| OpError::write(path, e))
}

/// A failed operation, with the file it concerns.
#[derive(Debug, thiserror::Error)]
pub enum OpError {
    #[error("{path}: {source}")]
    Decode { path: String, source: DecodeError },
    #[error("{path}: cannot write: {reason}")]
    Write { path: String, reason: String },
    #[error("not enough free disk in {dir}: need {need}, have {have}")]
    DiskFull {
        dir: String,
        need: String,
        have: String,
    },
    #[error("{path}: {reason}")]
    Mismatch { path: String, reason: String },
    #[error("{path}: {reason}")]
    External { path: String, reason: String },
    /// The model side failed: no runtime, a model that does not load, a failed run. Never
    /// the image's fault, so always worth another try.
    #[error("{0}")]
    Model(#[from] crate::io::onnx::ModelError),
    /// A training-set image that failed quality control (reasons and scores in `details`).
    #[error("{path}: rejected: {reason}")]
    Rejected {
        path: String,
        reason: String,
        details: Box<serde_json::Value>,
    },
    /// A daemon job that ran past `job_timeout`.
    #[error("{path}: the job ran longer than job_timeout ({limit}) and was set aside")]
    TimedOut { path: String, limit: String },
    #[error("{0}")]
    Usage(String),
    #[error("internal error: {0}")]
    Internal(String),
}

/// How the CLI should exit for an error (sysexits.h numbers).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitKind {
    /// 65: the input data is bad.
    DataError = 65,
    /// 66: an input file is missing or unreadable.
    NoInput = 66,
    /// 73: an output could not be created.
    CantCreate = 73,
    /// 64: the command line is wrong.
    Usage = 64,
    /// 1: anything else.
    Failure = 1,
}

impl OpError {
    pub fn decode(path: &Path, source: DecodeError) -> Self {
        OpError::Decode {
            path: path.display().to_string(),
            source,
        }
    }

    pub fn write(path: &Path, reason: impl ToString) -> Self {
        OpError::Write {
            path: path.display().to_string(),
            reason: reason.to_string(),
        }
    }

    pub fn mismatch(path: &Path, reason: impl ToString) -> Self {
        OpError::Mismatch {
            path: path.display().to_string(),
            reason: reason.to_string(),
        }
    }

    /// True when retrying cannot help: the input itself is wrong.
    pub fn is_permanent(&self) -> bool {
        match self {
            OpError::Decode { source, .. } => source.is_permanent(),
            OpError::Mismatch { .. }
            | OpError::Usage(_)
            | OpError::Rejected { .. }
            | OpError::TimedOut { .. } => true,
            OpError::Write { .. }
            | OpError::DiskFull { .. }
            | OpError::External { .. }
            | OpError::Model(_)
            | OpError::Internal(_) => false,
        }
    }

    /// True when the input may only be incomplete (empty or truncated): see
    /// [`DecodeError::may_be_incomplete`].
    pub fn may_be_incomplete(&self) -> bool {
        matches!(self, OpError::Decode { source, .. } if source.may_be_incomplete())
    }

    pub fn exit_kind(&self) -> ExitKind {
        match self {
            OpError::Decode {
                source: DecodeError::Io(_),
                ..
            } => ExitKind::NoInput,
            OpError::Decode { .. } | OpError::Mismatch { .. } | OpError::Rejected { .. } => {
                ExitKind::DataError
            }
            OpError::Write { .. } | OpError::DiskFull { .. } => ExitKind::CantCreate,
            OpError::Usage(_) => ExitKind::Usage,
            OpError::Model(e) => match e {
                ModelError::BadModel { .. } => ExitKind::DataError,
                ModelError::Inference { .. } => ExitKind::Failure,
                ModelError::RuntimeMissing { .. }
                | ModelError::RuntimeBroken { .. }
                | ModelError::ProviderUnavailable { .. }
                | ModelError::DeviceUnusable { .. } => ExitKind::Usage,
            },
            OpError::External { .. } | OpError::Internal(_) | OpError::TimedOut { .. } => {
                ExitKind::Failure
            }
        }
    }
}

/// The output's canvas, as containers that describe it need it.
pub fn canvas_of(image: &image::DynamicImage) -> crate::io::xmp::Canvas {
    crate::io::xmp::Canvas {
        width: image.width(),
        height: image.height(),
        alpha: image.color().has_alpha(),
    }
}

/// Refuses to start when the folder's file system has less than `need` bytes free.
pub fn ensure_free_disk(dir: &Path, need: u64) -> Result<(), OpError> {
    let have = system::free_disk_bytes(dir).map_err(|e| OpError::write(dir, e))?;
    if have < need {
        return Err(OpError::DiskFull {
            dir: dir.display().to_string(),
            need: system::megabytes(need),
            have: system::megabytes(have),
        });
    }
    Ok(())
}

/// Warns when an operation is estimated to need more than half the available memory.
pub fn warn_if_memory_heavy(what: &str, estimated_bytes: u64) {
    if let Some(available) = system::available_memory_bytes() {
        if estimated_bytes > available / 2 {
            tracing::warn!(
                estimated = %system::megabytes(estimated_bytes),
                available = %system::megabytes(available),
                "{what} needs a large share of the available memory"
            );
        }
    }
}

/// `{dir}/{stem}{suffix}`, with `dir` defaulting to the input's own folder.
pub fn sibling_path(input: &Path, out_dir: Option<&Path>, suffix: &str) -> PathBuf {
    let stem = crate::io::names::stem_of(input);
    let name = format!("{stem}{suffix}");
    match out_dir {
        Some(dir) => dir.join(name),
        None => input.with_file_name(name),
    }
}

/// A short name for a pixel layout, as stored in metadata ("Rgb8", "La16", ...).
pub fn layout_name(image: &image::DynamicImage) -> String {
    format!("{:?}", image.color())
}
