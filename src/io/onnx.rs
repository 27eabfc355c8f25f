//! ONNX Runtime, loaded at run time (`ort` with `load-dynamic`), and image-to-image models.
//!
//! The library is looked for, in order: an explicit path (config `[runtime] onnxruntime` or
//! `--onnxruntime`), `ORT_DYLIB_PATH`, beside the executable, the project's `.venv-cuda` or
//! `.venv` made by `scripts/setup-venv [--cuda]` (beside the daemon's config or in the
//! working directory), and the site-packages of `python3` (the `onnxruntime` or
//! `onnxruntime-gpu` wheel). Where it was found is logged. When it is not found, model work
//! fails with one line that says how to install it, and nothing else is affected. For CUDA,
//! the CUDA and cuDNN libraries pip installed beside `onnxruntime-gpu` are loaded first.

use crate::core::tiling::{self, Planar, Rect, Tile};
use ort::session::Session;
use ort::value::{TensorElementType, TensorRef, ValueType};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// How to install the runtime, for error messages.
pub const INSTALL_HINT: &str =
    "install it with `scripts/setup-venv` (pip install onnxruntime==1.31.1 into ./.venv; \
     `scripts/setup-venv --cuda` for onnxruntime-gpu), or `pip install onnxruntime==1.31.1`, \
     or point ORT_DYLIB_PATH at libonnxruntime.so";

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
    /// A CUDA device named in `[runtime] devices` that this ONNX Runtime (a GPU build)
    /// cannot run on: absent, hidden by `CUDA_VISIBLE_DEVICES`, or failed.
    #[error("CUDA device {device} cannot be used: {reason}; compare [runtime] devices with what `nvidia-smi -L` lists (numbered within CUDA_VISIBLE_DEVICES)")]
    DeviceUnusable { device: i32, reason: String },
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

/// How cuDNN picks its convolution algorithm for each new input shape on CUDA.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ConvSearch {
    /// cuDNN's heuristics: no time spent per new shape.
    #[default]
    Heuristic,
    /// Time every algorithm the first time a shape is seen (seconds per shape), then use
    /// the fastest: pays off only when every image and tile has one of a few shapes.
    Exhaustive,
}

impl std::str::FromStr for ConvSearch {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text.trim().to_ascii_lowercase().as_str() {
            "heuristic" => Ok(ConvSearch::Heuristic),
            "exhaustive" => Ok(ConvSearch::Exhaustive),
            _ => Err(format!("'{text}': use heuristic or exhaustive")),
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

/// The venvs looked for under a root, in order: the GPU wheel's (`scripts/setup-venv
/// --cuda`), then the CPU wheel's.
const VENVS: [&str; 2] = [".venv-cuda", ".venv"];

fn venv_library(venv: &Path) -> Option<PathBuf> {
    for entry in std::fs::read_dir(venv.join("lib")).ok()?.flatten() {
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

/// The config's folder, where a `.venv-cuda` or `.venv` beside it is looked for.
static CONFIG_DIR: OnceLock<PathBuf> = OnceLock::new();

/// Makes [`locate`] look for a `.venv` beside the config at `config_path` (and one or two
/// folders above it). The first call wins.
pub fn look_near_config(config_path: &Path) {
    if let Some(dir) = std::path::absolute(config_path)
        .ok()
        .and_then(|p| p.parent().map(Path::to_path_buf))
    {
        let _ = CONFIG_DIR.set(dir);
    }
}

/// Finds the ONNX Runtime library; returns it and where it looked, in this order: the
/// explicit path, `ORT_DYLIB_PATH`, beside the executable, a `.venv-cuda` or `.venv` beside
/// the config (and up to two folders above it) or in the working directory, python3's
/// site-packages.
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
    }
    // The project's .venv (scripts/setup-venv): beside the config or one or two folders
    // above it (config/darkroom.toml in a checkout), then in the working directory.
    let mut roots: Vec<PathBuf> = CONFIG_DIR
        .get()
        .map(|dir| dir.ancestors().take(3).map(Path::to_path_buf).collect())
        .unwrap_or_default();
    roots.extend(std::env::current_dir().ok());
    for root in &roots {
        for venv in VENVS.map(|name| root.join(name)) {
            looked.push(format!("{}", venv.display()));
            if let Some(found) = venv_library(&venv) {
                return (Some(found), looked);
            }
        }
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

/// The element type of a model's image tensors, read from the model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Precision {
    Float32,
    Float16,
}

/// The range of pixel values a model's tensors use (darkroom works in 0..1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ValueRange {
    /// 0..1, the convention of the shipped models.
    #[default]
    Unit,
    /// -1..1 (many GAN and diffusion-era networks).
    Signed,
    /// 0..255.
    Byte,
}

impl ValueRange {
    fn to_model(self, v: f32) -> f32 {
        match self {
            ValueRange::Unit => v,
            ValueRange::Signed => v * 2.0 - 1.0,
            ValueRange::Byte => v * 255.0,
        }
    }

    fn to_unit(self, v: f32) -> f32 {
        match self {
            ValueRange::Unit => v,
            ValueRange::Signed => (v + 1.0) * 0.5,
            ValueRange::Byte => v / 255.0,
        }
    }
}

impl std::str::FromStr for ValueRange {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text.trim().replace(' ', "").as_str() {
            "0..1" | "0-1" | "0,1" => Ok(ValueRange::Unit),
            "-1..1" | "-1-1" | "-1,1" => Ok(ValueRange::Signed),
            "0..255" | "0-255" | "0,255" => Ok(ValueRange::Byte),
            _ => Err(format!("'{text}': use \"0..1\", \"-1..1\" or \"0..255\"")),
        }
    }
}

/// `batch` for "as the provider runs best": [`CUDA_BATCH`] tiles per run on CUDA, one on the
/// CPU, where stacking gains nothing.
pub const AUTO_BATCH: usize = 0;

/// The most tiles per run a `batch` setting may ask for.
pub const MAX_BATCH: usize = 64;

/// Tiles per run that `AUTO_BATCH` gives on CUDA. Every tile window then has one shape,
/// which ONNX Runtime and cuDNN set up once: 4.4x faster than one tile per run on images of
/// many sizes on an H200 (docs/performance.md).
pub const CUDA_BATCH: usize = 4;

/// How a model is loaded and run.
#[derive(Debug, Clone, Copy)]
pub struct LoadOptions {
    /// Intra-op threads (at least 1).
    pub threads: usize,
    pub provider: Provider,
    /// The range the model's tensors use.
    pub range: ValueRange,
    /// Tiles per run (same-size tiles are stacked on the batch axis), or [`AUTO_BATCH`].
    pub batch: usize,
    /// The scale the configuration says the model has: checked against the probe.
    pub expected_scale: Option<u32>,
    /// cuDNN's convolution algorithm choice (CUDA only).
    pub conv_search: ConvSearch,
    /// The CUDA device to run on (its index, as `nvidia-smi` numbers them within
    /// `CUDA_VISIBLE_DEVICES`), when the configuration names one; `None`: device 0.
    /// A named device that cannot be used is an error, never a quiet move to the CPU.
    pub device: Option<i32>,
}

impl LoadOptions {
    /// `configured` intra-op threads, or one per core for 0.
    pub fn threads_or_cores(configured: usize) -> usize {
        if configured == 0 {
            std::thread::available_parallelism().map_or(1, |n| n.get())
        } else {
            configured
        }
    }
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions {
            threads: LoadOptions::threads_or_cores(0),
            provider: Provider::Auto,
            range: ValueRange::Unit,
            batch: AUTO_BATCH,
            expected_scale: None,
            conv_search: ConvSearch::default(),
            device: None,
        }
    }
}

/// An image-to-image model: NCHW, 3 channels in and out, float32 or float16.
pub struct Model {
    pub path: PathBuf,
    pub name: String,
    pub sha256: String,
    pub scale: u32,
    pub input_name: String,
    pub output_name: String,
    pub input_precision: Precision,
    pub output_precision: Precision,
    /// The execution provider that runs it ("CUDA" or "CPU"; "CPU" after a fallback).
    pub provider: String,
    /// How it was loaded; `batch` drops to 1 when a batch fails.
    pub options: LoadOptions,
    runtime: &'static Runtime,
    session: Session,
    /// Working memory per input pixel, once measured (see [`Model::bytes_per_pixel`]).
    bytes_per_pixel: Option<f64>,
}

/// The memory a model run may use when none is configured: a quarter of the memory
/// available now on a CPU, 4 GiB on a GPU (whose size ONNX Runtime does not tell).
pub fn default_memory_budget(provider: &str) -> u64 {
    if provider == "CUDA" {
        return 4 << 30;
    }
    crate::io::system::available_memory_bytes()
        .map_or(1 << 30, |available| (available / 4).max(256 << 20))
}

fn tensor_info(value: &ValueType) -> Option<(TensorElementType, Vec<i64>)> {
    match value {
        ValueType::Tensor { ty, shape, .. } => Some((*ty, shape.to_vec())),
        _ => None,
    }
}

/// The CUDA 13 and cuDNN 9 libraries that ONNX Runtime's CUDA provider needs, as pip's
/// `onnxruntime-gpu[cuda,cudnn]` lays them out in site-packages (the order matters:
/// cuBLAS needs cuBLASLt loaded first).
const PIP_CUDA_LIBRARIES: [&str; 7] = [
    "nvidia/cu13/lib/libcublasLt.so.13",
    "nvidia/cu13/lib/libcublas.so.13",
    "nvidia/cu13/lib/libnvrtc.so.13",
    "nvidia/cu13/lib/libcurand.so.10",
    "nvidia/cu13/lib/libcufft.so.12",
    "nvidia/cu13/lib/libcudart.so.13",
    "nvidia/cudnn/lib/libcudnn.so.9",
];

/// Loads the CUDA libraries that pip installed beside an `onnxruntime-gpu` package, as its
/// Python `preload_dlls()` does, so that a venv made with `pip install
/// onnxruntime-gpu[cuda,cudnn]==1.31.1` runs on CUDA with no system CUDA toolkit and no
/// `LD_LIBRARY_PATH`. A library pip did not install is left to the loader's own search
/// (a system CUDA toolkit). Runs once per process.
fn preload_pip_cuda_libraries(ort_library: &Path) {
    static DONE: OnceLock<()> = OnceLock::new();
    DONE.get_or_init(|| {
        // .../site-packages/onnxruntime/capi/libonnxruntime.so.1.31.1
        let Some(site_packages) = ort_library.ancestors().nth(3) else {
            return;
        };
        let mut loaded = Vec::new();
        for relative in PIP_CUDA_LIBRARIES {
            let path = site_packages.join(relative);
            if !path.is_file() {
                continue;
            }
            let Ok(c_path) = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()) else {
                continue;
            };
            // SAFETY: dlopen with a valid C string; the handle is kept for the process's
            // life (never dlclosed), as the provider library links against it by soname.
            let handle = unsafe { libc::dlopen(c_path.as_ptr(), libc::RTLD_NOW | libc::RTLD_GLOBAL) };
            if handle.is_null() {
                // SAFETY: dlerror returns null or a C string valid until the next dl call.
                let reason = unsafe { libc::dlerror() };
                let reason = if reason.is_null() {
                    String::new()
                } else {
                    // SAFETY: non-null, from dlerror just above, read before any other dl call.
                    unsafe { std::ffi::CStr::from_ptr(reason) }
                        .to_string_lossy()
                        .into_owned()
                };
                tracing::warn!(library = %path.display(), %reason, "could not load a CUDA library that pip installed; the CUDA provider may not start");
            } else {
                loaded.push(relative.rsplit('/').next().unwrap_or(relative));
            }
        }
        if !loaded.is_empty() {
            tracing::debug!(from = %site_packages.display(), libraries = ?loaded, "loaded pip's CUDA libraries");
        }
    });
}

/// Builds a session on `provider` (CUDA falling back to the CPU, loudly, under `Auto`).
fn build_session(
    path: &Path,
    bytes: &[u8],
    runtime: &Runtime,
    threads: usize,
    provider: Provider,
    conv_search: ConvSearch,
    device: Option<i32>,
) -> Result<(Session, &'static str), ModelError> {
    let bad = |reason: String| ModelError::BadModel {
        path: path.display().to_string(),
        reason,
    };
    let mut builder = Session::builder(&runtime.environment)
        .map_err(|e| bad(e.to_string()))?
        .with_intra_threads(threads.max(1))
        .map_err(|e| bad(e.to_string()))?;
    let mut provider_name = "CPU";
    if provider != Provider::Cpu {
        preload_pip_cuda_libraries(&runtime.library);
        let search = match conv_search {
            ConvSearch::Heuristic => ort::ep::cuda::ConvAlgorithmSearch::Heuristic,
            ConvSearch::Exhaustive => ort::ep::cuda::ConvAlgorithmSearch::Exhaustive,
        };
        let cuda = ort::ep::CUDA::default()
            .with_device_id(device.unwrap_or(0))
            .with_conv_algorithm_search(search)
            .build()
            .error_on_failure();
        match builder.with_execution_providers([cuda]) {
            Ok(with_cuda) => {
                builder = with_cuda;
                provider_name = "CUDA";
            }
            Err(e) => {
                let reason = e.to_string();
                let gpu_build = runtime
                    .library
                    .parent()
                    .is_some_and(|d| d.join("libonnxruntime_providers_cuda.so").is_file());
                if let (Some(device), true) = (device, gpu_build) {
                    return Err(ModelError::DeviceUnusable { device, reason });
                }
                if provider == Provider::Cuda {
                    return Err(ModelError::ProviderUnavailable { reason });
                }
                builder = e.recover();
                // A GPU build whose CUDA libraries fail to load would otherwise fall
                // back to the CPU silently: say so loudly. The CPU wheel has no CUDA.
                if gpu_build {
                    tracing::warn!(model = %path.display(), %reason, "the CUDA provider failed to load; running on the CPU");
                } else {
                    tracing::info!(model = %path.display(), "this ONNX Runtime has no CUDA provider; running on the CPU");
                }
            }
        }
    }
    let session = builder
        .commit_from_memory(bytes)
        .map_err(|e| bad(format!("not a valid ONNX model: {e}")))?;
    Ok((session, provider_name))
}

impl Model {
    /// Loads and checks a model file, then probes its scale with one small run.
    pub fn load(
        path: &Path,
        runtime: &'static Runtime,
        options: LoadOptions,
    ) -> Result<Model, ModelError> {
        let bad = |reason: String| ModelError::BadModel {
            path: path.display().to_string(),
            reason,
        };
        let bytes = std::fs::read(path).map_err(|e| bad(format!("cannot read: {e}")))?;
        let sha256 = crate::io::hash::sha256_hex(&bytes);
        let (session, provider_name) = build_session(
            path,
            &bytes,
            runtime,
            options.threads,
            options.provider,
            options.conv_search,
            options.device,
        )?;
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
        let mut precisions = [Precision::Float32; 2];
        for (i, (role, outlet)) in [("input", input), ("output", output)]
            .into_iter()
            .enumerate()
        {
            let (ty, shape) = match tensor_info(outlet.dtype()) {
                Some(info) => info,
                None => {
                    return Err(bad(format!(
                        "its {role} '{}' is not a tensor; darkroom needs an image-to-image network with NCHW tensors of 3 channels",
                        outlet.name()
                    )))
                }
            };
            precisions[i] = match ty {
                TensorElementType::Float32 => Precision::Float32,
                TensorElementType::Float16 => Precision::Float16,
                other => {
                    return Err(bad(format!(
                    "its {role} '{}' is {other:?}; darkroom runs float32 or float16 image networks",
                    outlet.name()
                )))
                }
            };
            if shape.len() != 4 || !(shape[1] == 3 || shape[1] < 0) {
                return Err(bad(format!(
                    "its {role} '{}' has shape {shape:?}; darkroom needs an image-to-image network with NCHW tensors of 3 channels",
                    outlet.name()
                )));
            }
        }
        let input_name = input.name().to_string();
        let output_name = output.name().to_string();
        let declared_scale = session
            .metadata()
            .ok()
            .and_then(|m| m.custom("scale"))
            .and_then(|s| s.trim().parse::<u32>().ok());
        let name = crate::io::names::stem_of(path);
        let mut model = Model {
            path: path.to_path_buf(),
            name,
            sha256,
            scale: declared_scale.unwrap_or(1),
            input_name,
            output_name,
            input_precision: precisions[0],
            output_precision: precisions[1],
            provider: provider_name.into(),
            options: LoadOptions {
                batch: match options.batch {
                    AUTO_BATCH if provider_name == "CUDA" => CUDA_BATCH,
                    AUTO_BATCH => 1,
                    n => n,
                },
                ..options
            },
            runtime,
            session,
            bytes_per_pixel: None,
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
        if let Some(expected) = options.expected_scale.filter(|&e| e != scale) {
            return Err(bad(format!(
                "the configuration says scale {expected}, but a 16x16 input gave {}x{} (scale {scale}): fix `scale` or remove it",
                out.width, out.height
            )));
        }
        if declared_scale.is_some_and(|d| d != scale) {
            tracing::warn!(model = %path.display(), declared = declared_scale.unwrap_or(0), measured = scale, "the model's scale metadata is wrong; using the measured scale");
        }
        model.scale = scale;
        Ok(model)
    }

    /// Runs the model on one planar RGB tile (values 0..1); returns the raw output.
    pub fn run(&mut self, tile: &Planar) -> Result<Planar, ModelError> {
        self.run_batch_with(std::slice::from_ref(tile), |data, _, width, height| {
            Planar {
                channels: 3,
                width,
                height,
                data: data.to_vec(),
            }
        })
    }

    /// Runs the model once on `tiles` (all of one size) stacked on the batch axis and hands
    /// the raw planar output (the tiles one after another, values 0..1 as darkroom counts
    /// them), the count, and each output's width and height to `take`.
    pub fn run_batch_with<T>(
        &mut self,
        tiles: &[Planar],
        take: impl FnOnce(&[f32], usize, u32, u32) -> T,
    ) -> Result<T, ModelError> {
        let fail = |reason: String| ModelError::Inference {
            path: self.path.display().to_string(),
            reason,
        };
        let Some(first) = tiles.first() else {
            return Err(fail("no tiles to run".into()));
        };
        let (n, width, height) = (tiles.len(), first.width, first.height);
        if tiles
            .iter()
            .any(|t| (t.width, t.height, t.channels) != (width, height, 3))
        {
            return Err(fail("the tiles of a batch differ in size".into()));
        }
        let range = self.options.range;
        let shape = [n, 3, height as usize, width as usize];
        let stacked: Vec<f32>;
        let samples: &[f32] = if n == 1 && range == ValueRange::Unit {
            &first.data
        } else {
            stacked = tiles
                .iter()
                .flat_map(|t| t.data.iter().map(|&v| range.to_model(v)))
                .collect();
            &stacked
        };
        let halves: Vec<half::f16>;
        let outputs = match self.input_precision {
            Precision::Float32 => {
                let input = TensorRef::from_array_view((shape, samples))
                    .map_err(|e| fail(e.to_string()))?;
                self.session
                    .run(ort::inputs![self.input_name.as_str() => input])
            }
            Precision::Float16 => {
                halves = samples.iter().map(|&v| half::f16::from_f32(v)).collect();
                let input = TensorRef::from_array_view((shape, halves.as_slice()))
                    .map_err(|e| fail(e.to_string()))?;
                self.session
                    .run(ort::inputs![self.input_name.as_str() => input])
            }
        }
        .map_err(|e| fail(e.to_string()))?;
        let value = outputs
            .get(&self.output_name)
            .ok_or_else(|| fail("no output".into()))?;
        let converted: Vec<f32>;
        let (shape, data): (Vec<i64>, &[f32]) = match self.output_precision {
            Precision::Float32 => {
                let (shape, data) = value
                    .try_extract_tensor::<f32>()
                    .map_err(|e| fail(e.to_string()))?;
                if range == ValueRange::Unit {
                    (shape.to_vec(), data)
                } else {
                    converted = data.iter().map(|&v| range.to_unit(v)).collect();
                    (shape.to_vec(), &converted)
                }
            }
            Precision::Float16 => {
                let (shape, data) = value
                    .try_extract_tensor::<half::f16>()
                    .map_err(|e| fail(e.to_string()))?;
                converted = data.iter().map(|v| range.to_unit(v.to_f32())).collect();
                (shape.to_vec(), &converted)
            }
        };
        if shape.len() != 4 || shape[0] != n as i64 || shape[1] != 3 {
            return Err(fail(format!(
                "unexpected output shape {shape:?} for a batch of {n}"
            )));
        }
        Ok(take(data, n, shape[3] as u32, shape[2] as u32))
    }

    /// Upscales a whole planar RGB image tile by tile (see [`tiling`]), `options.batch`
    /// same-size tiles per run; `progress` gets (tiles done, tiles in all). A failed batch is
    /// run tile by tile (and later batches hold one tile); a failed tile is split in four and
    /// retried, down to 32 px; on CUDA, a 32-px tile that still fails moves the model to the
    /// CPU for good. Each step is logged.
    pub fn upscale(
        &mut self,
        image: &Planar,
        tile: u32,
        context: u32,
        progress: &mut dyn FnMut(usize, usize),
    ) -> Result<Planar, ModelError> {
        let s = self.scale;
        let mut out = Planar::new(3, image.width * s, image.height * s);
        let mut tiles = tiling::plan(image.width, image.height, tile, context);
        if self.options.batch > 1 {
            tiling::one_window_size(&mut tiles, image.width, image.height);
        }
        let total = tiles.len();
        let mut done = 0;
        for group in tiling::batches(&tiles, self.options.batch) {
            self.run_tiles(image, &group, context, &mut out)?;
            done += group.len();
            progress(done, total);
        }
        // Values are as the model gives them; the caller clamps as it quantises.
        Ok(out)
    }

    fn run_tiles(
        &mut self,
        image: &Planar,
        group: &[Tile],
        context: u32,
        out: &mut Planar,
    ) -> Result<(), ModelError> {
        let s = self.scale;
        let inputs: Vec<Planar> = group.iter().map(|t| image.crop(t.input)).collect();
        let pasted = self.run_batch_with(&inputs, |data, n, width, height| {
            let per = data.len() / n.max(1);
            for (i, t) in group.iter().enumerate() {
                let from = Rect {
                    x: (t.core.x - t.input.x) * s,
                    y: (t.core.y - t.input.y) * s,
                    width: t.core.width * s,
                    height: t.core.height * s,
                };
                out.paste_slice(
                    &data[i * per..(i + 1) * per],
                    width,
                    height,
                    from,
                    t.core.x * s,
                    t.core.y * s,
                )?;
            }
            Ok(())
        });
        match pasted {
            Ok(Ok(())) => Ok(()),
            Ok(Err(reason)) => Err(ModelError::Inference {
                path: self.path.display().to_string(),
                reason,
            }),
            Err(e) => self.recover(image, group, context, out, e),
        }
    }

    /// What to do when a run fails: smaller batches, then smaller tiles, then the CPU.
    fn recover(
        &mut self,
        image: &Planar,
        group: &[Tile],
        context: u32,
        out: &mut Planar,
        error: ModelError,
    ) -> Result<(), ModelError> {
        if group.len() > 1 {
            tracing::warn!(%error, tiles = group.len(), "a batch of tiles failed; running one tile at a time from now on");
            self.options.batch = 1;
            for t in group {
                self.run_tiles(image, std::slice::from_ref(t), context, out)?;
            }
            return Ok(());
        }
        let core = group[0].core;
        if core.width > 32 && core.height > 32 {
            tracing::warn!(%error, tile = %format!("{}x{} at {},{}", core.width, core.height, core.x, core.y), "tile failed; retrying it as four tiles of half the side");
            for part in tiling::quarter(core) {
                let tile = Tile {
                    core: part,
                    input: tiling::expand(part, context, image.width, image.height),
                };
                self.run_tiles(image, &[tile], context, out)?;
            }
            return Ok(());
        }
        if self.provider == "CUDA" {
            tracing::warn!(%error, model = %self.path.display(), "CUDA failed even on a small tile; the model runs on the CPU from now on");
            self.move_to_cpu()?;
            return self.run_tiles(image, group, context, out);
        }
        Err(error)
    }

    /// Working memory one run needs per input pixel, measured once: the rise of this
    /// process's peak resident size over a 64x64 run, on a CPU session (a GPU holds the same
    /// tensors). At least the input and output tensors themselves.
    pub fn bytes_per_pixel(&mut self) -> Result<f64, ModelError> {
        if let Some(known) = self.bytes_per_pixel {
            return Ok(known);
        }
        const SIDE: u32 = 64;
        let probe = Planar::new(3, SIDE, SIDE);
        let mut cpu_copy = None;
        if self.provider != "CPU" {
            let session = self.cpu_session()?;
            cpu_copy = Some(std::mem::replace(&mut self.session, session));
        }
        let reset = crate::io::system::reset_peak_resident();
        let before = crate::io::system::resident_bytes();
        let ran = self.run(&probe);
        let after = crate::io::system::resident_bytes();
        if let Some(session) = cpu_copy {
            self.session = session;
        }
        ran?;
        let pixels = f64::from(SIDE * SIDE);
        let measured = match (before, after) {
            (Some((rss, _)), Some((_, peak))) if reset => peak.saturating_sub(rss) as f64,
            (Some((rss, _)), Some((rss_after, _))) => rss_after.saturating_sub(rss) as f64,
            _ => 0.0,
        } / pixels;
        let tensors = 4.0 * 3.0 * (1.0 + f64::from(self.scale * self.scale));
        let per_pixel = measured.max(tensors);
        tracing::info!(
            model = %self.name,
            bytes_per_pixel = per_pixel.round(),
            "measured the model's working memory"
        );
        self.bytes_per_pixel = Some(per_pixel);
        Ok(per_pixel)
    }

    /// The tile side to run with: `tile` itself, or for `auto` the largest tile whose
    /// window fits `budget` (default [`default_memory_budget`]) with a 2x margin (the slope between
    /// 64- and 128-px runs was up to 1.55x the 64-px figure for the shipped models).
    pub fn tile_side(
        &mut self,
        tile: tiling::TileSize,
        budget: Option<u64>,
        context: u32,
    ) -> Result<u32, ModelError> {
        match tile {
            tiling::TileSize::Fixed(side) => Ok(side),
            tiling::TileSize::Auto => {
                let budget = budget.unwrap_or_else(|| default_memory_budget(&self.provider));
                let per_pixel = self.bytes_per_pixel()? * 2.0;
                let side = tiling::tile_for_budget(budget, per_pixel, context);
                tracing::info!(model = %self.name, budget_mib = budget >> 20, tile = side, "tile size from the memory budget");
                Ok(side)
            }
        }
    }

    /// A new session of this model on the CPU provider (same threads).
    fn cpu_session(&self) -> Result<Session, ModelError> {
        let bytes = std::fs::read(&self.path).map_err(|e| ModelError::BadModel {
            path: self.path.display().to_string(),
            reason: format!("cannot read: {e}"),
        })?;
        let (session, _) = build_session(
            &self.path,
            &bytes,
            self.runtime,
            self.options.threads,
            Provider::Cpu,
            self.options.conv_search,
            self.options.device,
        )?;
        Ok(session)
    }

    /// Rebuilds the session on the CPU provider for good.
    fn move_to_cpu(&mut self) -> Result<(), ModelError> {
        self.session = self.cpu_session()?;
        self.provider = "CPU".into();
        self.options.provider = Provider::Cpu;
        Ok(())
    }
}
