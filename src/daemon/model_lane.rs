//! The model lane: one thread owns every ONNX Runtime session (loaded once, then reused) and
//! runs the model work of all jobs, one at a time, as one GPU (or the CPU's inference
//! threads) can. Decoding, encoding and file moves of other jobs go on meanwhile in the
//! worker threads, which hand images to the lane and wait for the result. With several CUDA
//! devices (`[runtime] devices`) there is one such thread per device, each with its own
//! sessions, and each image goes to the lane with the least work waiting.

use crate::daemon::settings::{ModelSpec, RuntimeSettings};
use crate::io::onnx::{self, LoadOptions, Model, ModelError};
use crate::ops::upscale::upscale_passes;
use image::DynamicImage;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{self, Sender};
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// What the daemon knows of a model's scale (it names upscale outputs `{stem}_x{scale}_...`).
#[derive(Debug, Clone, PartialEq)]
pub enum ScaleKnown {
    /// The lane is loading the model; its jobs wait.
    Probing,
    Known(u32),
    /// The model cannot be loaded: its jobs run and fail with the reason.
    Unavailable,
}

/// What the lane returns for one image.
pub struct LaneResult {
    pub image: DynamicImage,
    pub model_sha256: String,
    pub scale: u32,
    pub provider: String,
    /// The tile side it ran with (`auto` resolved).
    pub tile: u32,
    pub tiles: usize,
    pub seconds: f64,
}

struct UpscaleRequest {
    spec: ModelSpec,
    runtime: RuntimeSettings,
    passes: u32,
    target: Option<(u32, u32)>,
    /// `target` is a least size to cover with whole passes, not an exact size.
    cover: bool,
    image: DynamicImage,
    reply: Sender<Result<LaneResult, ModelError>>,
}

/// Called with a model's scale once the lane has loaded it.
pub type ScaleReply = Box<dyn FnOnce(Result<u32, ModelError>) + Send>;

enum Request {
    Upscale(UpscaleRequest),
    /// Load the model (as its first job would) and report its scale.
    Probe {
        spec: ModelSpec,
        runtime: RuntimeSettings,
        reply: ScaleReply,
    },
}

/// One lane thread: its queue, what it is doing, and the requests sent and not yet answered.
struct Lane {
    sender: Sender<Request>,
    state: Arc<Mutex<LaneState>>,
    waiting: AtomicUsize,
}

/// A handle to the lane threads; clone it freely.
#[derive(Clone)]
pub struct ModelLane {
    lanes: Arc<Vec<Lane>>,
    /// Where the next look for the least busy lane starts: among equally busy lanes, turns
    /// go round.
    turn: Arc<AtomicUsize>,
}

/// What the lane is doing, for the dashboard, `/readyz` and the metrics.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct LaneState {
    /// The lane thread is running.
    pub alive: bool,
    /// The model running now, if any.
    pub busy_with: Option<String>,
    /// Seconds spent running models (loading included), all told.
    pub busy_seconds: f64,
    pub runs: u64,
    /// The execution provider of the last model loaded (`CPUExecutionProvider`, ...).
    pub provider: Option<String>,
    /// Models loaded and kept, by config name.
    pub loaded: Vec<String>,
    /// The last load or run error.
    pub last_error: Option<String>,
    /// The CUDA device of this lane (`None`: the default one).
    pub device: Option<i32>,
}

/// Marks the lane busy until dropped, adding the time to its total.
struct Busy<'a> {
    state: &'a Mutex<LaneState>,
    started: Instant,
}

impl<'a> Busy<'a> {
    fn start(state: &'a Mutex<LaneState>, model: &str) -> Busy<'a> {
        if let Ok(mut s) = state.lock() {
            s.busy_with = Some(model.to_string());
        }
        Busy {
            state,
            started: Instant::now(),
        }
    }

    fn end<T>(self, result: &Result<T, ModelError>, model: Option<&Model>, name: &str) {
        if let Ok(mut s) = self.state.lock() {
            s.busy_with = None;
            s.busy_seconds += self.started.elapsed().as_secs_f64();
            s.runs += 1;
            if let Some(model) = model {
                s.provider = Some(model.provider.clone());
                if !s.loaded.iter().any(|n| n == name) {
                    s.loaded.push(name.to_string());
                }
            }
            s.last_error = result.as_ref().err().map(|e| e.to_string());
        }
    }
}

impl ModelLane {
    /// Starts one lane thread per CUDA device of `devices` (one on the default device when
    /// empty). Nothing is loaded until the first request.
    pub fn start(devices: &[i32]) -> ModelLane {
        let devices: Vec<Option<i32>> = if devices.is_empty() {
            vec![None]
        } else {
            devices.iter().copied().map(Some).collect()
        };
        let lanes = devices.into_iter().map(start_lane).collect();
        ModelLane {
            lanes: Arc::new(lanes),
            turn: Arc::new(AtomicUsize::new(0)),
        }
    }

    /// Each lane's state, in device order.
    pub fn lane_states(&self) -> Vec<LaneState> {
        self.lanes
            .iter()
            .map(|l| l.state.lock().map(|s| s.clone()).unwrap_or_default())
            .collect()
    }

    /// What the lanes are doing now, as one: alive when all are, the first model running,
    /// times and runs summed, the models loaded on any.
    pub fn state(&self) -> LaneState {
        let states = self.lane_states();
        let mut all = LaneState {
            alive: states.iter().all(|s| s.alive),
            ..LaneState::default()
        };
        for state in states {
            all.busy_with = all.busy_with.or(state.busy_with);
            all.busy_seconds += state.busy_seconds;
            all.runs += state.runs;
            all.provider = all.provider.or(state.provider);
            all.last_error = all.last_error.or(state.last_error);
            for name in state.loaded {
                if !all.loaded.contains(&name) {
                    all.loaded.push(name);
                }
            }
        }
        all
    }

    /// The lane with the least work sent and not yet answered; among equals, the next in
    /// turn.
    fn least_busy(&self) -> &Lane {
        let count = self.lanes.len();
        let start = self.turn.fetch_add(1, Ordering::Relaxed) % count;
        (0..count)
            .map(|i| &self.lanes[(start + i) % count])
            .min_by_key(|l| l.waiting.load(Ordering::SeqCst))
            .expect("at least one lane")
    }

    /// Runs `image` through the model of `spec` on the lane and waits for the result.
    pub fn upscale(
        &self,
        spec: &ModelSpec,
        runtime: &RuntimeSettings,
        (passes, target): (u32, Option<(u32, u32)>),
        image: DynamicImage,
    ) -> Result<LaneResult, ModelError> {
        self.run(spec, runtime, (passes, target, false), image)
    }

    /// Enlarges `image` with as many passes of `spec`'s model as cover `target`, without
    /// resizing after (normalise's enlarger: its own resize makes the final size).
    pub fn enlarge(
        &self,
        spec: &ModelSpec,
        runtime: &RuntimeSettings,
        target: (u32, u32),
        image: DynamicImage,
    ) -> Result<LaneResult, ModelError> {
        self.run(spec, runtime, (1, Some(target), true), image)
    }

    fn run(
        &self,
        spec: &ModelSpec,
        runtime: &RuntimeSettings,
        (passes, target, cover): (u32, Option<(u32, u32)>, bool),
        image: DynamicImage,
    ) -> Result<LaneResult, ModelError> {
        let (reply, answer) = mpsc::channel();
        let gone = || ModelError::Inference {
            path: spec.path.display().to_string(),
            reason: "the model lane stopped".into(),
        };
        let lane = self.least_busy();
        lane.waiting.fetch_add(1, Ordering::SeqCst);
        let result = lane
            .sender
            .send(Request::Upscale(UpscaleRequest {
                spec: spec.clone(),
                runtime: runtime.clone(),
                passes,
                target,
                cover,
                image,
                reply,
            }))
            .map_err(|_| gone())
            .and_then(|()| answer.recv().map_err(|_| gone()));
        lane.waiting.fetch_sub(1, Ordering::SeqCst);
        result?
    }

    /// Asks for the scale of `spec`'s model without waiting: the lane loads it (after the
    /// work queued before) and calls `reply`.
    pub fn probe(&self, spec: &ModelSpec, runtime: &RuntimeSettings, reply: ScaleReply) {
        let request = Request::Probe {
            spec: spec.clone(),
            runtime: runtime.clone(),
            reply,
        };
        // Every lane would find the same scale: the first one that is free enough loads it.
        if let Err(mpsc::SendError(Request::Probe { spec, reply, .. })) =
            self.least_busy().sender.send(request)
        {
            reply(Err(ModelError::Inference {
                path: spec.path.display().to_string(),
                reason: "the model lane stopped".into(),
            }));
        }
    }
}

/// Starts the thread of one lane, on `device`.
fn start_lane(device: Option<i32>) -> Lane {
    let (sender, receiver) = mpsc::channel::<Request>();
    let state = Arc::new(Mutex::new(LaneState {
        alive: true,
        device,
        ..LaneState::default()
    }));
    let lane_state = Arc::clone(&state);
    let name = match device {
        Some(d) => format!("darkroom-model-lane-{d}"),
        None => "darkroom-model-lane".into(),
    };
    std::thread::Builder::new()
        .name(name)
        .spawn(move || {
            let mut sessions: HashMap<PathBuf, Model> = HashMap::new();
            let device = device.unwrap_or(0);
            for request in receiver {
                match request {
                    Request::Upscale(request) => {
                        let busy = Busy::start(&lane_state, &request.spec.name);
                        let result = serve(&mut sessions, &request, device);
                        let name = &request.spec.name;
                        busy.end(&result, sessions.get(&request.spec.path), name);
                        let _ = request.reply.send(result);
                    }
                    Request::Probe {
                        spec,
                        runtime,
                        reply,
                    } => {
                        let busy = Busy::start(&lane_state, &spec.name);
                        let result =
                            session(&mut sessions, &spec, &runtime, device).map(|m| m.scale);
                        busy.end(&result, sessions.get(&spec.path), &spec.name);
                        reply(result)
                    }
                }
            }
            if let Ok(mut s) = lane_state.lock() {
                s.alive = false;
            }
        })
        .expect("spawning a model lane");
    Lane {
        sender,
        state,
        waiting: AtomicUsize::new(0),
    }
}

/// The session of `spec`'s model on `device`, loaded on first use and kept.
fn session<'a>(
    sessions: &'a mut HashMap<PathBuf, Model>,
    spec: &ModelSpec,
    settings: &RuntimeSettings,
    device: i32,
) -> Result<&'a mut Model, ModelError> {
    if !sessions.contains_key(&spec.path) {
        let runtime = onnx::runtime(settings.onnxruntime.as_deref())?;
        let options = LoadOptions {
            threads: LoadOptions::threads_or_cores(settings.threads),
            provider: settings.provider,
            range: spec.range,
            batch: spec.batch,
            expected_scale: spec.scale,
            conv_search: settings.cuda_conv_search,
            device,
        };
        let started = Instant::now();
        let model = Model::load(&spec.path, runtime, options)?;
        tracing::info!(
            model = %spec.name,
            device,
            path = %spec.path.display(),
            scale = model.scale,
            provider = %model.provider,
            seconds = format!("{:.3}", started.elapsed().as_secs_f64()),
            "model loaded"
        );
        sessions.insert(spec.path.clone(), model);
    }
    Ok(sessions.get_mut(&spec.path).expect("inserted above"))
}

fn serve(
    sessions: &mut HashMap<PathBuf, Model>,
    request: &UpscaleRequest,
    device: i32,
) -> Result<LaneResult, ModelError> {
    let spec = &request.spec;
    let model = session(sessions, spec, &request.runtime, device)?;
    let started = Instant::now();
    let tile = model.tile_side(spec.tile, request.runtime.memory_budget, spec.context)?;
    let tiles = crate::core::tiling::plan(
        request.image.width(),
        request.image.height(),
        tile,
        spec.context,
    )
    .len();
    let image = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        match (request.cover, request.target) {
            (true, Some(target)) => crate::ops::upscale::upscale_to_cover(
                &request.image,
                model,
                tile,
                spec.context,
                target,
            ),
            _ => upscale_passes(
                &request.image,
                model,
                tile,
                spec.context,
                request.passes,
                request.target,
                &mut |_, _| {},
            ),
        }
    }))
    .unwrap_or_else(|_| {
        Err(ModelError::Inference {
            path: spec.path.display().to_string(),
            reason: "the model run panicked".into(),
        })
    })?;
    Ok(LaneResult {
        image,
        model_sha256: model.sha256.clone(),
        scale: model.scale,
        provider: model.provider.clone(),
        tile,
        tiles,
        seconds: started.elapsed().as_secs_f64(),
    })
}
