//! Command-line interface: argument definitions and the glue from arguments to operations.

mod progress;
mod run;

pub use run::{run, run_daemon_command};

use clap::{Args, Parser, Subcommand};
use darkroom::core::corrections::{Bilateral, Exposure, PreFilters, Smoothing};
use darkroom::core::delta::DeltaDepth;
use darkroom::core::geometry::{Extent, Target};
use darkroom::core::guided::GuidedParams;
use darkroom::io::decode::DecodeLimits;
use darkroom::io::external::UpscaleMethod;
use darkroom::ops::{self, OpError};
use std::path::PathBuf;
use std::time::Duration;

const AFTER_HELP: &str = "\
The proxy round trip:
  darkroom split photo.jpg 1024 1024            # photo_proxy.png + photo_proxy_metadata.txt
  (run photo_proxy.png through your model -> photo_processed.png)
  darkroom delta photo.jpg photo_processed.png 1024 1024 --refine
  darkroom merge photo.jpg photo_proxy_delta.png \\
      --refined-delta-image photo_proxy_delta_refined.png --output-image photo_final.png

The watch-folder daemon (the same round trip, hands-off):
  darkroom serve --config config/darkroom.toml  # drop images into var/inbox/photos/
  darkroom check-config config/darkroom.toml    # every config problem at once
  darkroom status --config config/darkroom.toml # queue, waiting proxies, failures

No command replaces an existing output unless given --overwrite.

Exit codes: 0 ok, 1 failure, 2 bad arguments, 64 bad usage (options that do not go
together, an unknown model), 65 bad input data, 66 input missing or unreadable, 73 output
cannot be written or already exists (or disk full), 78 invalid config (serve, check-config,
status).";

/// darkroom: take high-resolution images through resolution-limited AI models and back.
#[derive(Debug, Parser)]
#[command(name = "darkroom", version, about, long_about = None, after_help = AFTER_HELP)]
pub struct Cli {
    /// More log detail (-v debug, -vv trace). RUST_LOG overrides.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,
    /// Only warnings and errors.
    #[arg(short, long, global = true)]
    pub quiet: bool,
    /// Replace output files that already exist (without it, a command refuses, naming the
    /// file, and writes nothing over it).
    #[arg(long, global = true)]
    pub overwrite: bool,
    #[command(flatten)]
    pub limits: LimitArgs,
    #[command(subcommand)]
    pub command: Command,
}

/// Limits on what an input file may cost to decode.
#[derive(Debug, Args)]
pub struct LimitArgs {
    /// Refuse images with more pixels than this (megapixels), before decoding.
    #[arg(long, global = true, default_value_t = 268.0, value_name = "MP")]
    pub max_megapixels: f64,
    /// Refuse files larger than this (MiB) without reading them.
    #[arg(long, global = true, default_value_t = 1024, value_name = "MiB")]
    pub max_file_mib: u64,
    /// Cap on the decoder's allocations (MiB).
    #[arg(long, global = true, default_value_t = 4096, value_name = "MiB")]
    pub max_alloc_mib: u64,
}

impl LimitArgs {
    pub fn resolve(&self) -> DecodeLimits {
        DecodeLimits {
            max_file_bytes: self.max_file_mib << 20,
            max_pixels: (self.max_megapixels * 1e6) as u64,
            max_alloc_bytes: self.max_alloc_mib << 20,
            ..DecodeLimits::default()
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Downscale an original into a model-sized proxy.
    ///
    /// The upright image (EXIF orientation applied) is scaled by min(WIDTH/w, HEIGHT/h)
    /// with an anti-aliased Lanczos3 filter and centre-padded with black to exactly
    /// WIDTHxHEIGHT (percent targets are not padded). Writes {stem}_proxy.png (8-bit, with
    /// the original's ICC profile and the metadata embedded) and {stem}_proxy_metadata.txt.
    ///
    /// Example: darkroom split photo.jpg 1024 1024
    #[command(
        after_help = "Examples:\n  darkroom split photo.jpg 1024 1024\n  darkroom split photo.jpg 25% 25%"
    )]
    Split {
        /// The high-resolution original (PNG, JPEG, TIFF or WebP; the content decides).
        input: PathBuf,
        #[command(flatten)]
        size: SizeArgs,
        /// Write outputs here instead of beside the input.
        #[arg(long, value_name = "DIR")]
        output_dir: Option<PathBuf>,
    },
    /// Compute the delta between the proxy and the model's processed proxy.
    ///
    /// The proxy is rebuilt from the original (or read with --proxy), then
    /// delta = clip(processed - proxy + 127, 0, 255) is written as {stem}_proxy_delta.png.
    /// --refine also writes {stem}_proxy_delta_refined.png, which carries what the 8-bit
    /// delta clipped. --delta-depth 16 writes a 16-bit delta (32768 + 128 x change) that
    /// never clips.
    #[command(
        visible_alias = "delta",
        after_help = "Example:\n  darkroom delta photo.jpg photo_processed.png 1024 1024 --refine"
    )]
    SplitWithProcessed {
        /// The high-resolution original the proxy was made from.
        original: PathBuf,
        /// The model's output for the proxy (same size as the proxy).
        processed: PathBuf,
        #[command(flatten)]
        size: SizeArgs,
        /// Also write the refined delta.
        #[arg(long)]
        refine: bool,
        /// Path of the main delta (the refined one gets a _refined suffix beside it).
        #[arg(long = "delta-image", alias = "delta_image", value_name = "PATH")]
        delta_image: Option<PathBuf>,
        /// Bits per sample of the delta: 8 (imgproxyproc format) or 16 (never clips).
        #[arg(long = "delta-depth", alias = "delta_depth", default_value_t = 8, value_parser = parse_depth)]
        delta_depth: u8,
        /// Use this proxy file instead of rebuilding the proxy from the original.
        #[arg(long, value_name = "PATH")]
        proxy: Option<PathBuf>,
    },
    /// Apply delta(s) to the full-resolution original.
    ///
    /// --method additive (default, as imgproxyproc): the delta's unpadded area is cut out
    /// before resizing, resized to the original's size (float Lanczos3, or an external
    /// upscaler with cmd(...)), and added in the original's own encoding and bit depth (one
    /// 8-bit step is 257 at 16 bits).
    ///
    /// --method guided: the proxy is rebuilt from the original, the model's change is fitted
    /// as local colour maps (affine plus a tone-curve term) in windows of the proxy, and those
    /// maps are applied to the original's own pixels, so its fine texture gets the new
    /// contrast and colour and edges keep no halo; what the maps cannot explain (new
    /// content) is added as with the additive method. Better by 4-12 dB on grades, relights
    /// and local contrast edits (see the README's table).
    ///
    /// Alpha and the ICC profile of the original are kept. The output format follows
    /// --output-image's extension: .png (default), .tif, .webp (lossless), .jpg (quality 95).
    #[command(
        after_help = "Examples:\n  darkroom merge photo.jpg photo_proxy_delta.png\n  darkroom merge photo.jpg photo_proxy_delta.png --refined-delta-image photo_proxy_delta_refined.png --method guided\n  darkroom merge photo.jpg photo_proxy_delta.png --refined-delta-image photo_proxy_delta_refined.png --output-image out.tif\n  darkroom merge photo.jpg photo_proxy_delta.png --upscale-method 'cmd(realesrgan -i %i -o %o -s 4)'"
    )]
    Merge {
        /// The high-resolution original.
        original: PathBuf,
        /// The delta written by `darkroom delta` (or imgproxyproc).
        delta: PathBuf,
        /// A refined delta to apply after the main one.
        #[arg(
            long = "refined-delta-image",
            alias = "refined_delta_image",
            value_name = "PATH"
        )]
        refined_delta_image: Option<PathBuf>,
        /// basic (float Lanczos3), cmd(program ... %i ... %o ...) (additive), or
        /// model:NAME (guided: a super-resolution ONNX model enlarges what the model
        /// painted new, instead of Lanczos3; NAME is a path or a model in --models-dir).
        #[arg(
            long = "upscale-method",
            alias = "upscale_method",
            default_value = "basic",
            value_name = "METHOD"
        )]
        upscale_method: UpscaleMethod,
        /// Where model:NAME looks for NAME.onnx (default: $DARKROOM_MODELS, else ./models).
        #[arg(long, value_name = "DIR")]
        models_dir: Option<PathBuf>,
        /// Method for the refined delta (default: --upscale-method).
        #[arg(
            long = "refined-upscale-method",
            alias = "refined_upscale_method",
            value_name = "METHOD"
        )]
        refined_upscale_method: Option<UpscaleMethod>,
        /// Output path (default {stem}_merged.png beside the original).
        #[arg(
            long = "output-image",
            alias = "output_image",
            short = 'o',
            value_name = "PATH"
        )]
        output_image: Option<PathBuf>,
        /// Seconds an external upscaler may run before it is killed.
        #[arg(
            long = "cmd-timeout",
            alias = "cmd_timeout",
            default_value_t = 600,
            value_name = "SECONDS"
        )]
        cmd_timeout: u64,
        /// Merge even if the metadata says the original file differs from the one split.
        #[arg(long)]
        force: bool,
        /// additive (imgproxyproc's merge) or guided (local colour maps; see above).
        #[arg(long, default_value = "additive", value_name = "METHOD")]
        method: ops::merge::MergeMethod,
        /// Guided: proxy pixels per cell of the grid of colour maps (smaller follows
        /// faster-varying edits, larger fits more robustly).
        #[arg(long, default_value_t = GuidedParams::default().cell, value_name = "PIXELS", value_parser = clap::value_parser!(u32).range(1..))]
        guided_cell: u32,
        /// Guided: luminance levels of the grid, black to white (more = dark and bright
        /// pixels of one area get more separate maps).
        #[arg(long, default_value_t = GuidedParams::default().bins, value_name = "LEVELS", value_parser = clap::value_parser!(u32).range(2..=256))]
        guided_bins: u32,
        /// Guided: ridge weight in 8-bit levels squared (larger = colours that vary little
        /// lean more on the coarser map around them).
        #[arg(long, default_value_t = GuidedParams::default().epsilon, value_name = "LEVELS2")]
        guided_epsilon: f32,
    },
    /// Split every image a glob matches, in parallel on all cores.
    ///
    /// Quote the pattern so darkroom, not the shell, expands it. darkroom's own outputs
    /// (*_proxy*, *_merged*) are skipped. A summary lists every failure; the exit code is
    /// non-zero if any file failed, but one bad file never stops the batch.
    #[command(after_help = "Example:\n  darkroom batch-split \"shoot/*.jpg\" 1024 1024")]
    BatchSplit {
        /// Glob pattern, e.g. "photos/*.jpg" or "**/*.png".
        pattern: String,
        #[command(flatten)]
        size: SizeArgs,
        /// Write outputs here instead of beside each input.
        #[arg(long, value_name = "DIR")]
        output_dir: Option<PathBuf>,
        /// Parallel jobs (default: one per core).
        #[arg(long, short = 'j')]
        jobs: Option<usize>,
    },
    /// Prepare a LoRA / diffusion training set from a folder of images.
    ///
    /// Every image is oriented, converted to sRGB, cropped and resized to the preset by the
    /// mode, scored (sharpness, noise, JPEG blockiness, clipping, perceptual hash) and either
    /// accepted into OUT_DIR/images (with a .json sidecar, and a .txt caption copied from a
    /// same-stem .txt beside the source or made from --caption-template) or rejected with its
    /// reasons into OUT_DIR/failed (a copy; inputs are never changed). A source too small
    /// for the preset is rejected unless --upscale-model enlarges it. OUT_DIR/metadata gets
    /// processing_log.jsonl, quality_assessment.json, validation_report.json and
    /// validation_report.html (open it in a browser: histograms, rejects, duplicates,
    /// contact sheet). Running again into the same OUT_DIR adds to the set.
    #[command(
        visible_alias = "normalize",
        after_help = "Examples:\n  darkroom normalise shoot/ lora-set/ --preset sdxl --mode bucket\n  darkroom normalise shoot/ lora-set/ --preset sd15 --mode thirds --caption-template \"photo of {stem}\"\n  darkroom normalise art/ set/ --mode pad --pad-colour white --format jpg --quality 92 --min-sharpness off"
    )]
    Normalise {
        /// Folder of source images (PNG, JPEG, TIFF, WebP; not recursive).
        input_dir: PathBuf,
        /// The set's folder: images/, metadata/, failed/.
        out_dir: PathBuf,
        #[command(flatten)]
        settings: Box<darkroom::ops::normalise::NormaliseSettings>,
        /// Enlarge sources too small for the preset with this model (file, or name in
        /// --models-dir) instead of rejecting them.
        #[arg(long, value_name = "MODEL", help_heading = "Too-small sources")]
        upscale_model: Option<String>,
        /// Where named models live (default: $DARKROOM_MODELS, else ./models).
        #[arg(long, value_name = "DIR", help_heading = "Too-small sources")]
        models_dir: Option<PathBuf>,
        /// libonnxruntime.so to load (default: found automatically).
        #[arg(long, value_name = "PATH", help_heading = "Too-small sources")]
        onnxruntime: Option<PathBuf>,
        /// Parallel jobs (default: one per core).
        #[arg(long, short = 'j')]
        jobs: Option<usize>,
    },
    /// Re-check a training set and write its validation report.
    ///
    /// DIR is a set made by `darkroom normalise` (DIR/images), a daemon rule's
    /// processed/<rule> folder, or any folder of images. Every image is decoded; its format,
    /// size, caption (.txt) and sidecar (.json, whose SHA-256 and size must match the file)
    /// are checked, orphan captions and sidecars and near-duplicates are listed. Writes
    /// validation_report.json and .html (and quality_assessment.json) into the set's metadata
    /// folder. Exits 0 when the set is clean, 65 when problems were found.
    #[command(
        after_help = "Examples:\n  darkroom validate lora-set/\n  darkroom validate /var/lib/darkroom/processed/lora"
    )]
    Validate {
        /// The set's folder.
        dir: PathBuf,
        /// Write the reports here instead of the set's metadata folder.
        #[arg(long, value_name = "DIR")]
        report_dir: Option<PathBuf>,
        /// Images whose perceptual hashes differ in at most this many bits are duplicates.
        #[arg(long, default_value_t = 8, value_name = "BITS")]
        duplicate_distance: u32,
    },
    /// Upscale an image with a super-resolution ONNX model, tile by tile.
    ///
    /// The image is cut into tiles (--tile, in input pixels) read with --context pixels of
    /// their neighbours, so no seam shows; each tile runs through the model on ONNX Runtime
    /// (found automatically: ORT_DYLIB_PATH, beside the binary, ./.venv, python3). Alpha is
    /// upscaled without halos, grey stays grey, 16-bit stays 16-bit, the ICC profile is kept.
    /// Writes {stem}_x{N}_{model}.png beside the input (N: the scale to the power of --passes;
    /// {stem}_{W}x{H}_{model}.png with --target) unless --output is given; an existing file
    /// is never replaced without --overwrite.
    #[command(
        after_help = "Examples:\n  darkroom upscale photo.png --model waifu2x-upconv7-photo-x2\n  darkroom upscale sprite.png --model realesr-animevideov3-x4 --tile 128 --output big.png\n  darkroom upscale photo.png --model ./my-model.onnx --tile 0   # whole image at once\n\nModels named without a path are looked up as NAME.onnx in --models-dir\n(default $DARKROOM_MODELS, else ./models)."
    )]
    Upscale {
        /// The image to upscale.
        input: PathBuf,
        #[command(flatten)]
        model: ModelArgs,
        /// Output path (its extension picks the format).
        #[arg(long, short)]
        output: Option<PathBuf>,
        /// Run the model this many times, 1 to 4 (a x2 model twice gives x4).
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=4))]
        passes: u32,
        /// Exact output size WxH: enough passes to reach it, then Lanczos3 to it.
        #[arg(long, value_name = "WxH", value_parser = ops::upscale::parse_target)]
        target: Option<(u32, u32)>,
    },
    /// Enhance an image with an image-to-image ONNX model, at the image's own size.
    ///
    /// --via full (default): the model runs on the whole image, tile by tile with context as
    /// upscale does, so no seam shows. --via proxy: the model runs on a proxy of --size and
    /// its change comes back to full resolution through the merge (--merge-method guided by
    /// default, or additive), for models trained at low resolution or too slow for the full
    /// image. A model that enlarges (any super-resolution network) is brought back to the
    /// input's size with Lanczos3, so a x2 restoration model works as an enhancer.
    /// Writes {stem}_enhanced_{model}.png beside the input unless --output is given.
    #[command(
        after_help = "Examples:\n  darkroom enhance photo.png --model waifu2x-upconv7-photo-x2\n  darkroom enhance scan.jpg --model ./restore.onnx --via proxy --size 1024x1024\n  darkroom enhance scan.jpg --model ./restore.onnx --via proxy --merge-method additive -o out.tif"
    )]
    Enhance {
        /// The image to enhance.
        input: PathBuf,
        #[command(flatten)]
        model: ModelArgs,
        /// Output path (its extension picks the format).
        #[arg(long, short)]
        output: Option<PathBuf>,
        /// full (the whole image, tiled) or proxy (a proxy, merged back).
        #[arg(long, default_value = "full", value_parser = ["full", "proxy"])]
        via: String,
        /// --via proxy: the proxy size, WxH in pixels (aspect kept) or a percentage
        /// [default: 1024x1024].
        #[arg(long, value_name = "WxH|N%")]
        size: Option<Target>,
        /// --via proxy: guided (colour maps, see `merge --help`) or additive [default: guided].
        #[arg(long, value_name = "METHOD")]
        merge_method: Option<ops::merge::MergeMethod>,
    },
    /// Compare two images of the same size: PSNR, SSIM and MSE over RGB in 8-bit units.
    ///
    /// Judge models and settings: compare an upscale with the original it was downscaled
    /// from, or two runs with each other.
    #[command(
        after_help = "Example:\n  darkroom compare original.png upscaled.png\n  PSNR 33.84 dB  SSIM 0.9621  MSE 26.9"
    )]
    Compare {
        /// The reference image.
        reference: PathBuf,
        /// The image to judge.
        candidate: PathBuf,
    },
    /// Run the watch-folder daemon in the foreground (what the systemd unit runs).
    ///
    /// Watches every rule's inbox, claims files once they are whole, runs their recipe and
    /// files the results under the config's root (processed/, metadata/, failed/). Logs go
    /// to stderr (journald-friendly) and to daily files in the log folder. SIGHUP reloads the
    /// config (a bad one is rejected and the old one kept); SIGTERM or SIGINT finishes
    /// running jobs (up to shutdown_timeout) and exits.
    #[command(
        after_help = "Examples:\n  darkroom serve                                  # config/darkroom.toml\n  darkroom serve --config /etc/darkroom/darkroom.toml\n\nExit codes: 0 stopped cleanly, 78 the config is invalid, 1 anything else."
    )]
    Serve {
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Check a config file and report every problem at once, with keys and lines.
    #[command(
        after_help = "Examples:\n  darkroom check-config                           # config/darkroom.toml\n  darkroom check-config /etc/darkroom/darkroom.toml\n  darkroom check-config --config /etc/darkroom/darkroom.toml   # as serve and status take it\n\nExit codes: 0 valid, 78 invalid."
    )]
    CheckConfig {
        /// The TOML config to check [default: config/darkroom.toml].
        #[arg(value_name = "PATH", conflicts_with = "config_option")]
        path: Option<PathBuf>,
        /// The same, written the way `serve` and `status` take it.
        #[arg(
            long = "config",
            short = 'c',
            value_name = "PATH",
            id = "config_option"
        )]
        config_option: Option<PathBuf>,
    },
    /// Show the daemon's queue from its journal: jobs by state, proxies awaiting their
    /// return and for how long, held returns and recent failures. Works while it runs.
    #[command(after_help = "Example:\n  darkroom status --config /etc/darkroom/darkroom.toml")]
    Status {
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Work on the daemon's journal itself.
    Journal {
        #[command(subcommand)]
        action: JournalAction,
    },
}

/// What `darkroom journal` does.
#[derive(Debug, Subcommand)]
pub enum JournalAction {
    /// Copy a single host's SQLite journal (the one its config names) into an empty
    /// PostgreSQL database, so that several hosts can share it: every job, its state, its
    /// event log and the webhooks' positions, with their ids. Jobs that were running are
    /// queued again. Stop the daemon first; afterwards set `journal` in [daemon] of every
    /// host's config to the same URL.
    #[command(
        after_help = "Example:\n  systemctl stop darkroom\n  darkroom journal migrate --config /etc/darkroom/darkroom.toml --to postgresql://darkroom@db.lan/darkroom\n\nExit codes: 0 copied, 78 the config is invalid, 1 the copy failed (nothing was written)."
    )]
    Migrate {
        #[command(flatten)]
        config: ConfigArg,
        /// The PostgreSQL database to copy into (postgresql://user[:password]@host[:port]/database).
        #[arg(long, value_name = "URL")]
        to: String,
    },
}

/// The config a daemon command reads when none is named, relative to where it runs.
pub const DEFAULT_CONFIG: &str = "config/darkroom.toml";

/// `--config PATH` of the daemon commands.
#[derive(Debug, Args)]
pub struct ConfigArg {
    /// The daemon's TOML config (relative paths in it are relative to its folder; it also
    /// says where the journal is).
    #[arg(
        long = "config",
        short = 'c',
        default_value = DEFAULT_CONFIG,
        value_name = "PATH"
    )]
    pub path: PathBuf,
}

/// The model and how it runs: shared by upscale and enhance.
#[derive(Debug, Args)]
pub struct ModelArgs {
    /// Model file, or a name in --models-dir.
    #[arg(long, short)]
    model: String,
    /// Tile size in input pixels; 0 = the whole image in one run; auto = the largest tile
    /// that fits --memory-budget-mib (the model's working memory is measured once).
    #[arg(long, default_value = "256", value_name = "N|auto")]
    tile: darkroom::core::tiling::TileSize,
    /// Memory one model run may use, for --tile auto (default: a quarter of the available
    /// memory; 4096 on CUDA).
    #[arg(long, value_name = "MIB")]
    memory_budget_mib: Option<u64>,
    /// Context pixels around each tile (default: the model's recommended context).
    #[arg(long)]
    context: Option<u32>,
    /// Where named models live (default: $DARKROOM_MODELS, else ./models).
    #[arg(long, value_name = "DIR")]
    models_dir: Option<PathBuf>,
    /// libonnxruntime.so to load (default: found automatically).
    #[arg(long, value_name = "PATH")]
    onnxruntime: Option<PathBuf>,
    /// ONNX Runtime threads (0 = one per core).
    #[arg(long, default_value_t = 0)]
    threads: usize,
    /// Execution provider: auto (CUDA when available, else CPU), cpu, or cuda (required).
    #[arg(long, default_value = "auto")]
    provider: darkroom::io::onnx::Provider,
    /// On CUDA, how cuDNN picks a convolution algorithm for each new tile shape:
    /// heuristic (at once), or exhaustive (times every algorithm once per shape, seconds
    /// each; worth it only for many images of one size).
    #[arg(long, default_value = "heuristic", value_name = "heuristic|exhaustive")]
    cuda_conv_search: darkroom::io::onnx::ConvSearch,
    /// Tiles stacked into one model run (same-size tiles only), 1 to 64, or auto: 4 on
    /// CUDA, where it fills the GPU, and 1 on a CPU, where more is no faster. A batch that
    /// fails is rerun one tile at a time.
    #[arg(long, default_value = "auto", value_name = "N|auto", value_parser = parse_batch)]
    batch: usize,
    /// The value range of the model's tensors: 0..1 (the shipped models), -1..1 or 0..255.
    #[arg(
        long,
        default_value = "0..1",
        value_name = "RANGE",
        allow_hyphen_values = true
    )]
    input_range: darkroom::io::onnx::ValueRange,
    /// Before the model: gray-world white balance (the three channel means made equal).
    #[arg(long, help_heading = "Corrections")]
    white_balance: bool,
    /// Before the model: exposure, `auto` (median to mid-grey) or stops like +0.5.
    #[arg(
        long,
        value_name = "auto|STOPS",
        allow_hyphen_values = true,
        help_heading = "Corrections"
    )]
    exposure: Option<Exposure>,
    /// Before the model: smooth JPEG block steps (small steps on the 8x8 grid only).
    #[arg(long, help_heading = "Corrections")]
    deblock: bool,
    /// Before the model: edge-preserving denoise, bilateral[:SIGMA_PIXELS,SIGMA_LEVELS].
    #[arg(long, value_name = "bilateral[:S,R]", help_heading = "Corrections")]
    denoise: Option<Bilateral>,
    /// Before the model (after --denoise): an ONNX denoiser, a model file or a name in
    /// --models-dir, run at the image's size (one that enlarges is brought back).
    #[arg(long, value_name = "MODEL", help_heading = "Corrections")]
    denoise_model: Option<String>,
    /// After the model: median[:RADIUS] or bilateral[:S,R] against GAN swirls.
    #[arg(
        long,
        value_name = "median[:R]|bilateral[:S,R]",
        help_heading = "Corrections"
    )]
    smooth: Option<Smoothing>,
    /// After the model (and --smooth): unsharp mask AMOUNT[,RADIUS[,THRESHOLD]] (e.g. 0.5,1.0,2).
    #[arg(
        long,
        value_name = "AMOUNT[,RADIUS[,THRESHOLD]]",
        help_heading = "Corrections"
    )]
    sharpen: Option<darkroom::core::filters::Unsharp>,
}

impl ModelArgs {
    /// Defaults for a model that only enlarges too-small sources.
    fn for_normalise(
        model: &str,
        models_dir: Option<PathBuf>,
        onnxruntime: Option<PathBuf>,
    ) -> ModelArgs {
        ModelArgs {
            model: model.to_string(),
            tile: darkroom::core::tiling::TileSize::Fixed(256),
            memory_budget_mib: None,
            context: None,
            models_dir,
            onnxruntime,
            threads: 0,
            provider: darkroom::io::onnx::Provider::default(),
            cuda_conv_search: darkroom::io::onnx::ConvSearch::default(),
            batch: darkroom::io::onnx::AUTO_BATCH,
            input_range: darkroom::io::onnx::ValueRange::Unit,
            white_balance: false,
            exposure: None,
            deblock: false,
            denoise: None,
            denoise_model: None,
            smooth: None,
            sharpen: None,
        }
    }

    /// The model's path and the run options (passes, target and sharpen left at defaults).
    fn resolve(
        &self,
        output: Option<PathBuf>,
    ) -> Result<(PathBuf, ops::upscale::UpscaleOptions), OpError> {
        let models_dir = self
            .models_dir
            .clone()
            .or_else(|| std::env::var_os("DARKROOM_MODELS").map(PathBuf::from))
            .unwrap_or_else(|| PathBuf::from("models"));
        let path = ops::upscale::resolve_model(&self.model, &models_dir)?;
        let denoise_model = self
            .denoise_model
            .as_deref()
            .map(|name| ops::upscale::resolve_model(name, &models_dir))
            .transpose()?;
        Ok((
            path,
            ops::upscale::UpscaleOptions {
                output,
                tile: self.tile,
                memory_budget: self.memory_budget_mib.map(|mib| mib << 20),
                context: self.context,
                runtime: self.onnxruntime.clone(),
                threads: self.threads,
                passes: 1,
                target: None,
                sharpen: self.sharpen,
                provider: self.provider,
                pre: PreFilters {
                    white_balance: self.white_balance,
                    exposure: self.exposure,
                    deblock: self.deblock,
                    denoise: self.denoise,
                },
                smooth: self.smooth,
                denoise_model,
                batch: self.batch,
                conv_search: self.cuda_conv_search,
                range: self.input_range,
            },
        ))
    }
}

/// WIDTH and HEIGHT of a proxy, as two arguments (imgproxyproc's form) or as one `WxH`.
#[derive(Debug, Args)]
pub struct SizeArgs {
    /// Proxy width: pixels (512) or percent of the original (25%); or both sides as one
    /// argument, WxH (512x512), with HEIGHT left out.
    #[arg(value_name = "WIDTH", value_parser = parse_first_size)]
    pub width: FirstSize,
    /// Proxy height: pixels (512) or percent of the original (25%).
    #[arg(value_name = "HEIGHT")]
    pub height: Option<Extent>,
}

/// The first size argument: a width, or both sides as `WxH`.
#[derive(Debug, Clone, Copy)]
pub enum FirstSize {
    Width(Extent),
    Both(Extent, Extent),
}

fn parse_first_size(text: &str) -> Result<FirstSize, String> {
    match text.split_once(['x', 'X']) {
        Some((w, h)) => {
            let side = |t: &str| t.parse::<Extent>().map_err(|e| e.to_string());
            Ok(FirstSize::Both(side(w)?, side(h)?))
        }
        None => text
            .parse::<Extent>()
            .map(FirstSize::Width)
            .map_err(|e| e.to_string()),
    }
}

impl SizeArgs {
    fn target(&self) -> Result<Target, OpError> {
        let (width, height) = match (self.width, self.height) {
            (FirstSize::Width(width), Some(height)) => (width, height),
            (FirstSize::Both(width, height), None) => (width, height),
            (FirstSize::Width(width), None) => {
                return Err(OpError::Usage(format!(
                    "the proxy size needs WIDTH and HEIGHT as two arguments ({width} {width}), or both as one: {width}x{width}"
                )))
            }
            (FirstSize::Both(..), Some(_)) => {
                return Err(OpError::Usage(
                    "the proxy size is given twice: either WxH (512x512) or WIDTH HEIGHT (512 512)"
                        .into(),
                ))
            }
        };
        Ok(Target { width, height })
    }
}

/// Refuses before any work when `output` exists and `--overwrite` was not given.
fn refuse_existing_output(output: &std::path::Path) -> Result<(), OpError> {
    darkroom::io::atomic::check_may_replace(output).map_err(|e| OpError::write(output, e))
}

fn parse_depth(text: &str) -> Result<u8, String> {
    match text {
        "8" => Ok(8),
        "16" => Ok(16),
        _ => Err("the delta depth is 8 or 16".into()),
    }
}

/// `--batch`: 1 to 64 tiles per run, or `auto`.
fn parse_batch(text: &str) -> Result<usize, String> {
    match text.trim() {
        "auto" => Ok(darkroom::io::onnx::AUTO_BATCH),
        n => n
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=darkroom::io::onnx::MAX_BATCH).contains(n))
            .ok_or_else(|| {
                let most = darkroom::io::onnx::MAX_BATCH;
                format!("'{text}': 1 to {most} tiles per run, or auto")
            }),
    }
}
