//! External upscalers: `cmd(program -i %i -o %o ...)`, as in imgproxyproc.
//!
//! The delta is written to a private temp folder, the program runs in its own process group
//! with a timeout (the whole group is killed when it expires), its stderr is kept for the
//! error message, and the temp folder is removed on every path out, failure included.

use crate::io::decode::{self, DecodeLimits};
use crate::io::png_encode::{self, PngOptions};
use image::DynamicImage;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::str::FromStr;
use std::time::Duration;
use wait_timeout::ChildExt;

/// How a delta is brought to full resolution.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UpscaleMethod {
    /// darkroom's own float Lanczos3 (the default).
    Basic,
    /// An external program; `%i` and `%o` are replaced by the input and output paths.
    Command(CommandTemplate),
    /// A super-resolution ONNX model, run in-process, for the guided merge's new content
    /// (`model:<name>`: a `[models.<name>]` table in the daemon, a model name or path in the
    /// CLI).
    Model(String),
}

/// A parsed `cmd(...)` template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandTemplate {
    pub words: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MethodParseError {
    #[error("unknown upscale method '{0}': use 'basic', 'cmd(program -i %i -o %o ...)' or 'model:<name>'")]
    Unknown(String),
    #[error("'{0}': name the model after 'model:'")]
    NoModel(String),
    #[error("'{0}': the command must be closed with ')' and quoted like a shell command line")]
    Malformed(String),
    #[error("'{0}': the command needs both %i (input file) and %o (output file)")]
    MissingPlaceholders(String),
}

impl FromStr for UpscaleMethod {
    type Err = MethodParseError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let trimmed = text.trim();
        if trimmed.eq_ignore_ascii_case("basic") || trimmed.eq_ignore_ascii_case("lanczos") {
            return Ok(UpscaleMethod::Basic);
        }
        if let Some(name) = trimmed.strip_prefix("model:") {
            let name = name.trim();
            if name.is_empty() {
                return Err(MethodParseError::NoModel(text.into()));
            }
            return Ok(UpscaleMethod::Model(name.to_string()));
        }
        let Some(inner) = trimmed.strip_prefix("cmd(") else {
            return Err(MethodParseError::Unknown(text.into()));
        };
        let inner = inner
            .strip_suffix(')')
            .ok_or_else(|| MethodParseError::Malformed(text.into()))?;
        let words = shlex::split(inner).ok_or_else(|| MethodParseError::Malformed(text.into()))?;
        if words.is_empty() {
            return Err(MethodParseError::Malformed(text.into()));
        }
        if !words.iter().any(|w| w.contains("%i")) || !words.iter().any(|w| w.contains("%o")) {
            return Err(MethodParseError::MissingPlaceholders(text.into()));
        }
        Ok(UpscaleMethod::Command(CommandTemplate { words }))
    }
}

impl std::fmt::Display for UpscaleMethod {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            UpscaleMethod::Basic => write!(f, "basic"),
            UpscaleMethod::Model(name) => write!(f, "model:{name}"),
            UpscaleMethod::Command(t) => write!(
                f,
                "cmd({})",
                shlex::try_join(t.words.iter().map(String::as_str)).unwrap_or_default()
            ),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ExternalError {
    #[error("cannot prepare the external upscaler's temp files: {0}")]
    TempFiles(std::io::Error),
    #[error(
        "external command '{program}' could not start: {source} (is it installed and on PATH?)"
    )]
    Spawn {
        program: String,
        source: std::io::Error,
    },
    #[error("external command '{program}' failed ({status}): {stderr}")]
    Failed {
        program: String,
        status: String,
        stderr: String,
    },
    #[error("external command '{program}' did not finish within {seconds} s and was killed")]
    TimedOut { program: String, seconds: u64 },
    #[error("external command '{program}' exited successfully but wrote no output file")]
    NoOutput { program: String },
    #[error("external command '{program}' wrote an unreadable output: {source}")]
    BadOutput {
        program: String,
        source: decode::DecodeError,
    },
    #[error("external command '{program}' returned {got_w}x{got_h}, which does not have the aspect of the expected {want_w}x{want_h}")]
    WrongShape {
        program: String,
        got_w: u32,
        got_h: u32,
        want_w: u32,
        want_h: u32,
    },
}

impl CommandTemplate {
    fn program(&self) -> String {
        self.words[0].clone()
    }

    /// Runs the program on `input` and returns its output image, checked to have the aspect
    /// of `expected` (within 2%); the caller resamples it to the exact size.
    pub fn run(
        &self,
        input: &DynamicImage,
        expected: (u32, u32),
        timeout: Duration,
        limits: &DecodeLimits,
    ) -> Result<DynamicImage, ExternalError> {
        let output = self.run_any_size(input, timeout, limits)?;
        let (got_w, got_h) = (output.width(), output.height());
        let want = f64::from(expected.0) / f64::from(expected.1);
        let got = f64::from(got_w) / f64::from(got_h);
        // Rounding in the tool can shift the aspect by a pixel on either side.
        let slack = 2.0 / f64::from(got_w.min(got_h)) + 0.02;
        if (got / want - 1.0).abs() > slack {
            return Err(ExternalError::WrongShape {
                program: self.program(),
                got_w,
                got_h,
                want_w: expected.0,
                want_h: expected.1,
            });
        }
        Ok(output)
    }

    /// Runs the program on `input` and returns its output image, whatever its size.
    pub fn run_any_size(
        &self,
        input: &DynamicImage,
        timeout: Duration,
        limits: &DecodeLimits,
    ) -> Result<DynamicImage, ExternalError> {
        let program = self.program();
        let dir = tempfile::Builder::new()
            .prefix("darkroom-cmd-")
            .tempdir()
            .map_err(ExternalError::TempFiles)?;
        let in_path = dir.path().join("input.png");
        let out_path = dir.path().join("output.png");
        let bytes = png_encode::encode(input, None, &[], &PngOptions::default())
            .map_err(|e| ExternalError::TempFiles(std::io::Error::other(e.to_string())))?;
        std::fs::write(&in_path, bytes).map_err(ExternalError::TempFiles)?;
        let stderr_path = dir.path().join("stderr.txt");
        let stderr_file = std::fs::File::create(&stderr_path).map_err(ExternalError::TempFiles)?;
        let args: Vec<String> = self.words[1..]
            .iter()
            .map(|w| {
                w.replace("%i", &in_path.to_string_lossy())
                    .replace("%o", &out_path.to_string_lossy())
            })
            .collect();
        let mut child = Command::new(&program)
            .args(&args)
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr_file)
            .process_group(0)
            .spawn()
            .map_err(|source| ExternalError::Spawn {
                program: program.clone(),
                source,
            })?;
        let status = match child.wait_timeout(timeout) {
            Ok(Some(status)) => status,
            Ok(None) | Err(_) => {
                // SAFETY: kill(2) on the child's own process group; no memory is involved.
                unsafe {
                    libc::kill(-(child.id() as i32), libc::SIGKILL);
                }
                let _ = child.kill();
                let _ = child.wait();
                return Err(ExternalError::TimedOut {
                    program,
                    seconds: timeout.as_secs(),
                });
            }
        };
        if !status.success() {
            let stderr = std::fs::read_to_string(&stderr_path).unwrap_or_default();
            let tail: String = stderr
                .trim()
                .lines()
                .rev()
                .take(5)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect::<Vec<_>>()
                .join(" | ");
            return Err(ExternalError::Failed {
                program,
                status: status.to_string(),
                stderr: if tail.is_empty() {
                    "(no stderr output)".into()
                } else {
                    tail.chars().take(600).collect()
                },
            });
        }
        if !out_path.exists() {
            return Err(ExternalError::NoOutput { program });
        }
        let loaded = decode::load(&out_path, limits)
            .map_err(|source| ExternalError::BadOutput { program, source })?;
        Ok(loaded.image)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_basic_and_commands() {
        assert_eq!(
            "basic".parse::<UpscaleMethod>().unwrap(),
            UpscaleMethod::Basic
        );
        let m: UpscaleMethod = "cmd(realesrgan -i %i -o %o -s 4)".parse().unwrap();
        assert_eq!(
            m,
            UpscaleMethod::Command(CommandTemplate {
                words: ["realesrgan", "-i", "%i", "-o", "%o", "-s", "4"]
                    .map(String::from)
                    .to_vec()
            })
        );
        assert!(matches!(
            "cmd(x -i %i)".parse::<UpscaleMethod>(),
            Err(MethodParseError::MissingPlaceholders(_))
        ));
        assert!(matches!(
            "cmd(x -i %i -o %o".parse::<UpscaleMethod>(),
            Err(MethodParseError::Malformed(_))
        ));
        assert!(matches!(
            "bicubic".parse::<UpscaleMethod>(),
            Err(MethodParseError::Unknown(_))
        ));
    }

    /// Runs a `cmd(...)` template on a small delta with the given timeout.
    fn run_template(template: &str, timeout: Duration) -> Result<DynamicImage, ExternalError> {
        let UpscaleMethod::Command(t) = template.parse().unwrap() else {
            unreachable!("a cmd(...) template")
        };
        t.run(
            &DynamicImage::new_rgb8(4, 4),
            (8, 8),
            timeout,
            &Default::default(),
        )
    }

    #[test]
    fn a_failing_command_reports_its_stderr() {
        let err = run_template(
            "cmd(sh -c 'echo broken model >&2; exit 3' %i %o)",
            Duration::from_secs(20),
        )
        .unwrap_err();
        assert!(err.to_string().contains("broken model"), "{err}");
    }

    #[test]
    fn a_hanging_command_is_killed_at_the_timeout() {
        let err = run_template(
            "cmd(sh -c 'sleep 30; true' %i %o)",
            Duration::from_millis(300),
        )
        .unwrap_err();
        assert!(matches!(err, ExternalError::TimedOut { .. }), "{err}");
    }
}
