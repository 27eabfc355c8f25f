//! ONNX Runtime, loaded at run time (`ort` with `load-dynamic`), and image-to-image models.
//!
//! The library is looked for, in order: an explicit path (config `[runtime] onnxruntime` or
//! `--onnxruntime`), `ORT_DYLIB_PATH`, beside the executable, the project's `.venv` made by
//! `scripts/setup-venv`, and the site-packages of `python3` (the `onnxruntime` or
//! `onnxruntime-gpu` wheel). Where it was found is logged. When it is not found, model work
//! fails with one line that says how to install it, and nothing else is affected.

use crate::core::tiling::{self, Planar, Rect};
use ort::session::Session;
use ort::value::{TensorElementType, TensorRef, ValueType};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// How to install the runtime, for error messages.
pub const INSTALL_HINT: &str =
    "install it with `scripts/setup-venv` (pip install onnxruntime==1.31.1 into ./.venv), \
     or `pip install onnxruntime==1.31.1` (onnxruntime-gpu for CUDA), or point ORT_DYLIB_PATH \
     at libonnxruntime.so";

/// Model and runtime errors.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ModelError {
    #[error("ONNX Runtime not found (looked at: {looked}); {hint}")]
    RuntimeMissing { looked: String, hint: &'static str },
    #[error("ONNX Runtime at {path} cannot be loaded: {reason}")]
    RuntimeBroken { path: String, reason: String },
    #[error("model {path}: {reason}")]
    BadModel { path: String, reason: String },
    #[error("model {path}: inference failed: {reason}")]
    Inference { path: String, reason: String },
    #[error("the CUDA execution provider was requested but cannot be used: {reason}; install onnxruntime-gpu==1.31.1 with CUDA 13 and cuDNN 9, or use provider \"auto\" or \"cpu\"")]
    ProviderUnavailable { reason: String },
}

/// Which execution provider runs the models.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Provider {
    /// CUDA when the library has it and a GPU answers, else the CPU (and the log says why).
    #[default]
    Auto,
    Cpu,
    /// CUDA or an error: never a silent fallback.
    Cuda,
}

impl std::str::FromStr for Provider {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text.trim().to_ascii_lowercase().as_str() {
            "auto" => Ok(Provider::Auto),
            "cpu" => Ok(Provider::Cpu),
            "cuda" | "gpu" => Ok(Provider::Cuda),
            _ => Err(format!("'{text}': use auto, cpu or cuda")),
        }
    }
}

/// The loaded runtime.
pub struct Runtime {
    pub library: PathBuf,
    pub environment: ort::environment::Environment,
}

static RUNTIME: OnceLock<Result<Runtime, ModelError>> = OnceLock::new();

fn library_in(dir: &Path) -> Option<PathBuf> {
    let exact = dir.join("libonnxruntime.so.1.31.1");
    if exact.is_file() {
        return Some(exact);
    }
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
        .ok()?
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .map(|n| n.to_string_lossy())
                .is_some_and(|n| n.starts_with("libonnxruntime.so") && !n.contains("providers"))
        })
        .collect();
    found.sort();
    found.pop()
}

fn venv_library(root: &Path) -> Option<PathBuf> {
    let lib = root.join(".venv").join("lib");
    for entry in std::fs::read_dir(lib).ok()?.flatten() {
        let capi = entry
            .path()
            .join("site-packages")
            .join("onnxruntime")
            .join("capi");
        if let Some(found) = library_in(&capi) {
            return Some(found);
        }
    }
    None
}

fn python_library() -> Option<PathBuf> {
    let out = std::process::Command::new("python3")
        .args([
            "-c",
            "import importlib.util, os; s = importlib.util.find_spec('onnxruntime'); print(os.path.dirname(s.origin) if s else '')",
        ])
        .stderr(std::process::Stdio::null())
        .output()
        .ok()?;
    let dir = String::from_utf8(out.stdout).ok()?;
    let dir = dir.trim();
    if dir.is_empty() {
        return None;
    }
    library_in(&Path::new(dir).join("capi"))
}

/// Finds the ONNX Runtime library; returns it and where it looked.
pub fn locate(explicit: Option<&Path>) -> (Option<PathBuf>, Vec<String>) {
    let mut looked = Vec::new();
    if let Some(path) = explicit {
        looked.push(format!("configured {}", path.display()));
        return (path.is_file().then(|| path.to_path_buf()), looked);
    }
    if let Some(path) = std::env::var_os("ORT_DYLIB_PATH") {
        let path = PathBuf::from(path);
        looked.push(format!("ORT_DYLIB_PATH={}", path.display()));
        return (path.is_file().then_some(path), looked);
    }
    if let Some(dir) = std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(Path::to_path_buf))
    {
        looked.push(format!("beside the executable ({})", dir.display()));
        if let Some(found) = library_in(&dir) {
            return (Some(found), looked);
        }
        for ancestor in dir.ancestors().skip(1).take(4) {
            if let Some(found) = venv_library(ancestor) {
                return (Some(found), looked);
            }
        }
        looked.push("the project's .venv".into());
    }
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    if let Some(found) = venv_library(manifest) {
        return (Some(found), looked);
    }
    looked.push("python3's site-packages".into());
    (python_library(), looked)
}

/// Loads the runtime once per process (later calls return the same result).
pub fn runtime(explicit: Option<&Path>) -> Result<&'static Runtime, ModelError> {
    RUNTIME
        .get_or_init(|| {
            let (found, looked) = locate(explicit);
            let Some(library) = found else {
                return Err(ModelError::RuntimeMissing {
                    looked: looked.join(", "),
                    hint: INSTALL_HINT,
                });
            };
            let broken = |reason: String| ModelError::RuntimeBroken {
                path: library.display().to_string(),
                reason,
            };
            let builder = ort::init_from(&library).map_err(|e| broken(e.to_string()))?;
            let environment = builder
                .with_name("darkroom")
                .build()
                .map_err(|e| broken(e.to_string()))?;
            tracing::info!(library = %library.display(), "ONNX Runtime loaded");
            Ok(Runtime {
                library,
                environment,
            })
        })
        .as_ref()
        .map_err(Clone::clone)
}

/// An image-to-image model: NCHW, 3 channels in and out, float32, values in 0..1.
pub struct Model {
    pub path: PathBuf,
    pub name: String,
    pub sha256: String,
    pub scale: u32,
    pub input_name: String,
    pub output_name: String,
    /// The execution provider that runs it.
    pub provider: String,
    session: Session,
}

fn tensor_info(value: &ValueType) -> Option<(TensorElementType, Vec<i64>)> {
    match value {
        ValueType::Tensor { ty, shape, .. } => Some((*ty, shape.to_vec())),
        _ => None,
    }
}

impl Model {
    /// Loads and checks a model file.
    pub fn load(
        path: &Path,
        runtime: &Runtime,
        threads: usize,
        provider: Provider,
    ) -> Result<Model, ModelError> {
        let bad = |reason: String| ModelError::BadModel {
            path: path.display().to_string(),
            reason,
        };
        let bytes = std::fs::read(path).map_err(|e| bad(format!("cannot read: {e}")))?;
        let sha256 = crate::io::decode::sha256_hex(&bytes);
        let mut builder = Session::builder(&runtime.environment)
            .map_err(|e| bad(e.to_string()))?
            .with_intra_threads(threads.max(1))
            .map_err(|e| bad(e.to_string()))?;
        let mut provider_name = "CPU";
        if provider != Provider::Cpu {
            let cuda = ort::ep::CUDA::default().build().error_on_failure();
            match builder.with_execution_providers([cuda]) {
                Ok(with_cuda) => {
                    builder = with_cuda;
                    provider_name = "CUDA";
                }
                Err(e) => {
                    let reason = e.to_string();
                    if provider == Provider::Cuda {
                        return Err(ModelError::ProviderUnavailable { reason });
                    }
                    builder = e.recover();
                    // A GPU build whose CUDA libraries fail to load would otherwise fall
                    // back to the CPU silently: say so loudly. The CPU wheel has no CUDA.
                    let gpu_build = runtime
                        .library
                        .parent()
                        .is_some_and(|d| d.join("libonnxruntime_providers_cuda.so").is_file());
                    if gpu_build {
                        tracing::warn!(model = %path.display(), %reason, "the CUDA provider failed to load; running on the CPU");
                    } else {
                        tracing::info!(model = %path.display(), "this ONNX Runtime has no CUDA provider; running on the CPU");
                    }
                }
            }
        }
        let session = builder
            .commit_from_memory(&bytes)
            .map_err(|e| bad(format!("not a valid ONNX model: {e}")))?;
        let (input, output) = match (session.inputs(), session.outputs()) {
            ([input], [output, ..]) => (input, output),
            (inputs, outputs) => {
                return Err(bad(format!(
                    "expected one image input and an image output, found {} inputs and {} outputs",
                    inputs.len(),
                    outputs.len()
                )))
            }
        };
        for (role, outlet) in [("input", input), ("output", output)] {
            match tensor_info(outlet.dtype()) {
                Some((TensorElementType::Float32, shape)) if shape.len() == 4 && (shape[1] == 3 || shape[1] < 0) => {}
                Some((TensorElementType::Float16, _)) => {
                    return Err(bad(format!(
                        "its {role} '{}' is float16; darkroom runs float32 image models (convert it, or export with fp32 inputs)",
                        outlet.name()
                    )))
                }
                other => {
                    return Err(bad(format!(
                        "its {role} '{}' is {other:?}; darkroom needs an image-to-image network with float32 NCHW tensors of 3 channels",
                        outlet.name()
                    )))
                }
            }
        }
        let input_name = input.name().to_string();
        let output_name = output.name().to_string();
        let declared_scale = session
            .metadata()
            .ok()
            .and_then(|m| m.custom("scale"))
            .and_then(|s| s.trim().parse::<u32>().ok());
        let name = path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "model".into());
        let mut model = Model {
            path: path.to_path_buf(),
            name,
            sha256,
            scale: declared_scale.unwrap_or(1),
            input_name,
            output_name,
            provider: provider_name.into(),
            session,
        };
        // Probe: one small run gives the real scale (and fails early on a broken graph).
        let probe = Planar::new(3, 16, 16);
        let out = model.run(&probe)?;
        if out.width % 16 != 0 || out.height % 16 != 0 || out.width != out.height || out.width == 0
        {
            return Err(bad(format!(
                "a 16x16 input gave {}x{}: not an integer upscale",
                out.width, out.height
            )));
        }
        let scale = out.width / 16;
        if declared_scale.is_some_and(|d| d != scale) {
            tracing::warn!(model = %path.display(), declared = ?declared_scale, measured = scale, "the model's scale metadata is wrong; using the measured scale");
        }
        model.scale = scale;
        Ok(model)
    }

    /// Runs the model on one planar RGB tile (values 0..1); returns the raw output.
    pub fn run(&mut self, tile: &Planar) -> Result<Planar, ModelError> {
        self.run_with(tile, |data, width, height| Planar {
            channels: 3,
            width,
            height,
            data: data.to_vec(),
        })
    }

    /// Runs the model on one tile and hands the raw planar output (and its width and
    /// height) to `take`, without copying it first.
    pub fn run_with<T>(
        &mut self,
        tile: &Planar,
        take: impl FnOnce(&[f32], u32, u32) -> T,
    ) -> Result<T, ModelError> {
        let fail = |reason: String| ModelError::Inference {
            path: self.path.display().to_string(),
            reason,
        };
        let shape = [1usize, 3, tile.height as usize, tile.width as usize];
        let input = TensorRef::from_array_view((shape, tile.data.as_slice()))
            .map_err(|e| fail(e.to_string()))?;
        let outputs = self
            .session
            .run(ort::inputs![self.input_name.as_str() => input])
            .map_err(|e| fail(e.to_string()))?;
        let value = outputs
            .get(&self.output_name)
            .ok_or_else(|| fail("no output".into()))?;
        let (shape, data) = value
            .try_extract_tensor::<f32>()
            .map_err(|e| fail(e.to_string()))?;
        if shape.len() != 4 || shape[1] != 3 {
            return Err(fail(format!("unexpected output shape {:?}", &shape[..])));
        }
        Ok(take(data, shape[3] as u32, shape[2] as u32))
    }

    /// Upscales a whole planar RGB image tile by tile (see [`tiling`]); `progress` gets
    /// (tiles done, tiles in all). A tile that fails is split in four and retried, down to
    /// 32 px, before the error is returned.
    pub fn upscale(
        &mut self,
        image: &Planar,
        tile: u32,
        context: u32,
        progress: &mut dyn FnMut(usize, usize),
    ) -> Result<Planar, ModelError> {
        let s = self.scale;
        let mut out = Planar::new(3, image.width * s, image.height * s);
        let tiles = tiling::plan(image.width, image.height, tile, context);
        let total = tiles.len();
        for (done, t) in tiles.iter().enumerate() {
            self.run_core(image, t.core, context, &mut out)?;
            progress(done + 1, total);
        }
        out.clamp_unit();
        Ok(out)
    }

    fn run_core(
        &mut self,
        image: &Planar,
        core: Rect,
        context: u32,
        out: &mut Planar,
    ) -> Result<(), ModelError> {
        let s = self.scale;
        let input = tiling::expand(core, context, image.width, image.height);
        let from = Rect {
            x: (core.x - input.x) * s,
            y: (core.y - input.y) * s,
            width: core.width * s,
            height: core.height * s,
        };
        let pasted = self.run_with(&image.crop(input), |data, width, height| {
            out.paste_slice(data, width, height, from, core.x * s, core.y * s)
        });
        match pasted {
            Ok(Ok(())) => Ok(()),
            Ok(Err(reason)) => Err(ModelError::Inference {
                path: self.path.display().to_string(),
                reason,
            }),
            Err(e) if core.width > 32 && core.height > 32 => {
                tracing::warn!(error = %e, tile = ?core, "tile failed; retrying it as four smaller tiles");
                for part in tiling::quarter(core) {
                    self.run_core(image, part, context, out)?;
                }
                Ok(())
            }
            Err(e) => Err(e),
        }
    }
}
