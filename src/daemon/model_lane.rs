//! The model lane: one thread owns every ONNX Runtime session (loaded once, then reused) and
//! runs the model work of all jobs, one at a time, as one GPU (or the CPU's inference
//! threads) can. Decoding, encoding and file moves of other jobs go on meanwhile in the
//! worker threads, which hand images to the lane and wait for the result. With several CUDA
//! devices (`[runtime] devices`) there is one such thread per device, each with its own
//! sessions, and each image goes to the lane with the least work waiting. A lane whose
//! device cannot be used hands its image back, takes no more work while another lane can,
//! and the image runs on another lane.

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
    /// Tiles per run it ran with (`auto` resolved; 1 after a batch failed).
    pub batch: usize,
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
    reply: Sender<Answer>,
}

/// A lane's answer to an upscale request.
enum Answer {
    Done(Result<LaneResult, ModelError>),
    /// The lane's device cannot be used: the image back, to run on another lane.
    Refused(DynamicImage, ModelError),
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

impl Lane {
    /// Its device has not failed.
    fn usable(&self) -> bool {
        self.state.lock().map_or(true, |s| s.device_error.is_none())
    }
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
    /// Why this lane's device cannot be used. Such a lane takes no work while another lane
    /// can, until the daemon restarts.
    pub device_error: Option<String>,
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
            if let Err(ModelError::DeviceUnusable { device, reason }) = result {
                if s.device_error.is_none() {
                    tracing::error!(
                        device,
                        %reason,
                        "CUDA device {device} cannot be used: its model lane takes no more work while another lane can; compare [runtime] devices with `nvidia-smi -L`"
                    );
                }
                s.device_error = Some(reason.clone());
            }
        }
    }
}

/// Whether `error` says the lane's device, not the model or the image, is at fault.
fn device_unusable(error: &ModelError) -> bool {
    matches!(error, ModelError::DeviceUnusable { .. })
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
    /// turn. Lanes whose device cannot be used are passed over while another lane can run.
    fn least_busy(&self) -> &Lane {
        let count = self.lanes.len();
        let start = self.turn.fetch_add(1, Ordering::Relaxed) % count;
        let in_turn = || (0..count).map(|i| &self.lanes[(start + i) % count]);
        let usable = in_turn().filter(|l| l.usable());
        let lanes: Vec<&Lane> = if self.any_usable() {
            usable.collect()
        } else {
            in_turn().collect()
        };
        lanes
            .into_iter()
            .min_by_key(|l| l.waiting.load(Ordering::SeqCst))
            .expect("at least one lane")
    }

    /// Whether some lane's device has not failed.
    fn any_usable(&self) -> bool {
        self.lanes.iter().any(Lane::usable)
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
        let gone = || ModelError::Inference {
            path: spec.path.display().to_string(),
            reason: "the model lane stopped".into(),
        };
        let mut image = image;
        loop {
            let (reply, answer) = mpsc::channel();
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
            match result? {
                Answer::Done(result) => return result,
                // That lane has marked itself: another lane, if one is left, runs it.
                Answer::Refused(back, error) => {
                    if !self.any_usable() {
                        return Err(error);
                    }
                    image = back;
                }
            }
        }
    }

    /// Asks for the scale of `spec`'s model without waiting: the lane loads it (after the
    /// work queued before) and calls `reply`.
    pub fn probe(&self, spec: &ModelSpec, runtime: &RuntimeSettings, reply: ScaleReply) {
        // A lane whose device cannot be used has marked itself before it answers: ask
        // another, while one is left.
        let lanes = self.clone();
        let (again_spec, again_runtime) = (spec.clone(), runtime.clone());
        let reply: ScaleReply = Box::new(move |result| match result {
            Err(e) if device_unusable(&e) && lanes.any_usable() => {
                lanes.probe(&again_spec, &again_runtime, reply)
            }
            result => reply(result),
        });
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
            for request in receiver {
                match request {
                    Request::Upscale(request) => {
                        let busy = Busy::start(&lane_state, &request.spec.name);
                        let result = serve(&mut sessions, &request, device);
                        let name = &request.spec.name;
                        busy.end(&result, sessions.get(&request.spec.path), name);
                        let answer = match result {
                            Err(e) if device_unusable(&e) => Answer::Refused(request.image, e),
                            result => Answer::Done(result),
                        };
                        let _ = request.reply.send(answer);
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
    device: Option<i32>,
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
    device: Option<i32>,
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
        batch: model.options.batch,
        seconds: started.elapsed().as_secs_f64(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fail_device(lanes: &ModelLane, index: usize) {
        lanes.lanes[index].state.lock().unwrap().device_error = Some("invalid device".into());
    }

    #[test]
    fn work_goes_round_the_lanes_and_passes_over_a_failed_device() {
        let lanes = ModelLane::start(&[0, 1, 2]);
        let picked = |lanes: &ModelLane| {
            let lane = lanes.least_busy();
            lane.state.lock().unwrap().device
        };
        let mut seen: Vec<Option<i32>> = (0..3).map(|_| picked(&lanes)).collect();
        seen.sort();
        assert_eq!(
            seen,
            [Some(0), Some(1), Some(2)],
            "equally idle lanes take turns"
        );

        fail_device(&lanes, 1);
        assert!(lanes.any_usable());
        for _ in 0..12 {
            assert_ne!(
                picked(&lanes),
                Some(1),
                "a failed device's lane gets no work"
            );
        }

        // With every device failed, requests still go somewhere: each lane tries again and
        // answers with its own reason, rather than the work waiting for ever.
        fail_device(&lanes, 0);
        fail_device(&lanes, 2);
        assert!(!lanes.any_usable());
        let mut seen: Vec<Option<i32>> = (0..3).map(|_| picked(&lanes)).collect();
        seen.sort();
        assert_eq!(seen, [Some(0), Some(1), Some(2)]);
    }
}
