use super::*;

/// The sysexits code of an invalid configuration.
pub const EX_CONFIG: i32 = 78;

/// Runs the daemon commands (serve, check-config, status); `None` for the one-shot ones.
/// Returns the exit code.
pub fn run_daemon_command(command: &Command) -> Option<i32> {
    use darkroom::daemon::{config::Config, logging, service, status};
    let load = |path: &std::path::Path| {
        darkroom::io::onnx::look_near_config(path);
        Config::load(path).map_err(|errors| {
            eprint!("darkroom: {errors}");
            EX_CONFIG
        })
    };
    Some(match command {
        Command::CheckConfig {
            path,
            config_option,
        } => match load(
            path.as_deref()
                .or(config_option.as_deref())
                .unwrap_or(std::path::Path::new(DEFAULT_CONFIG)),
        ) {
            Err(code) => code,
            Ok(config) => {
                for warning in &config.warnings {
                    eprintln!("darkroom: warning: {warning}");
                }
                println!(
                    "{}: ok ({} rule{}, root {})",
                    config.path.display(),
                    config.rules.len(),
                    if config.rules.len() == 1 { "" } else { "s" },
                    config.daemon.root.display()
                );
                for rule in &config.rules {
                    println!(
                        "  {}: {} watching {}",
                        rule.name,
                        rule.recipe.name(),
                        rule.watch.display()
                    );
                }
                0
            }
        },
        // `status` reads the journal; it never waits on a tool server.
        Command::Status { config } => match Config::load_offline(&config.path).map_err(|errors| {
            eprint!("darkroom: {errors}");
            EX_CONFIG
        }) {
            Err(code) => code,
            Ok(config) => match status::report(&config) {
                Ok(text) => {
                    print!("{text}");
                    0
                }
                Err(e) => {
                    eprintln!("darkroom: {e:#}");
                    1
                }
            },
        },
        Command::Journal {
            action: JournalAction::Migrate { config, to },
        } => match Config::load_offline(&config.path).map_err(|errors| {
            eprint!("darkroom: {errors}");
            EX_CONFIG
        }) {
            Err(code) => code,
            Ok(config) => migrate_journal(&config, to),
        },
        Command::Serve { config } => match load(&config.path) {
            Err(code) => code,
            Ok(config) => {
                let _guard = match logging::init(&config.daemon) {
                    Ok(guard) => guard,
                    Err(e) => {
                        eprintln!(
                            "darkroom: cannot write logs to {}: {e}",
                            config.daemon.log_dir.display()
                        );
                        return Some(73);
                    }
                };
                for warning in &config.warnings {
                    tracing::warn!("{warning}");
                }
                match service::serve(config) {
                    Ok(()) => 0,
                    Err(e) => {
                        tracing::error!(error = format!("{e:#}"), "darkroom stopped on an error");
                        1
                    }
                }
            }
        },
        _ => return None,
    })
}

/// `darkroom journal migrate`: the copy, and what to do next.
fn migrate_journal(config: &darkroom::daemon::config::Config, to: &str) -> i32 {
    use darkroom::daemon::journal::{self, Location};
    if let Err(e) = Location::parse(to) {
        eprintln!("darkroom: --to: {e}");
        return EX_CONFIG;
    }
    if config.daemon.shares_journal() {
        eprintln!(
            "darkroom: {} already names a PostgreSQL journal; migrate copies the SQLite journal of a single host",
            config.path.display()
        );
        return EX_CONFIG;
    }
    let sqlite = config.daemon.state_dir.join(journal::FILE_NAME);
    if !sqlite.is_file() {
        eprintln!(
            "darkroom: no journal at {}: nothing to migrate",
            sqlite.display()
        );
        return 1;
    }
    match journal::copy_sqlite_to_postgres(&config.daemon.state_dir, to) {
        Ok(copied) => {
            println!(
                "copied {} jobs, {} events and {} webhook positions from {} into {}",
                copied.jobs,
                copied.events,
                copied.deliveries,
                sqlite.display(),
                journal::redacted(to)
            );
            if copied.requeued > 0 {
                println!(
                    "{} jobs that were running are queued again",
                    copied.requeued
                );
            }
            println!(
                "next: set journal = \"{}\" in [daemon] of every host's config, then start the daemons",
                journal::redacted(to)
            );
            0
        }
        Err(e) => {
            eprintln!("darkroom: {e} (nothing was written)");
            1
        }
    }
}

/// Runs a parsed command line.
pub fn run(cli: Cli) -> Result<(), OpError> {
    let limits = cli.limits.resolve();
    // Commands that write named outputs never replace an existing file unless told
    // (normalise and validate add to a set and rewrite its reports by design).
    let writes_named_outputs = matches!(
        cli.command,
        Command::Split { .. }
            | Command::SplitWithProcessed { .. }
            | Command::Merge { .. }
            | Command::BatchSplit { .. }
            | Command::Upscale { .. }
            | Command::Enhance { .. }
    );
    if writes_named_outputs && !cli.overwrite {
        darkroom::io::atomic::keep_existing_files();
    }
    if matches!(
        cli.command,
        Command::Normalise { .. } | Command::BatchSplit { .. } | Command::Split { .. }
    ) && !darkroom::io::system::reuse_freed_memory()
    {
        tracing::debug!("the allocator kept its defaults (large buffers are mapped per image)");
    }
    match cli.command {
        Command::Serve { .. }
        | Command::CheckConfig { .. }
        | Command::Status { .. }
        | Command::Journal { .. } => {
            unreachable!("daemon commands run through run_daemon_command")
        }
        Command::Split {
            input,
            size,
            output_dir,
        } => {
            let out = ops::split::split(&input, size.target()?, output_dir.as_deref(), &limits)?;
            println!("{}", out.proxy_path.display());
            println!("{}", out.metadata_path.display());
        }
        Command::SplitWithProcessed {
            original,
            processed,
            size,
            refine,
            delta_image,
            delta_depth,
            proxy,
        } => {
            let options = ops::delta::DeltaOptions {
                refine,
                delta_path: delta_image,
                depth: DeltaDepth::from_bits(delta_depth).expect("parser allows 8 or 16"),
                proxy_path: proxy,
            };
            let out = ops::delta::split_with_processed(
                &original,
                &processed,
                size.target()?,
                &options,
                &limits,
            )?;
            println!("{}", out.delta_path.display());
            if let Some(refined) = out.refined_path {
                println!("{}", refined.display());
            }
        }
        Command::Merge {
            original,
            delta,
            refined_delta_image,
            upscale_method,
            models_dir,
            refined_upscale_method,
            output_image,
            cmd_timeout,
            force,
            method,
            guided_cell,
            guided_bins,
            guided_epsilon,
        } => {
            let method = match method {
                ops::merge::MergeMethod::Guided(defaults) => {
                    if guided_epsilon.is_nan() || guided_epsilon <= 0.0 {
                        return Err(OpError::Usage(format!(
                            "--guided-epsilon must be above 0 (got {guided_epsilon})"
                        )));
                    }
                    ops::merge::MergeMethod::Guided(GuidedParams {
                        cell: guided_cell,
                        bins: guided_bins,
                        epsilon: guided_epsilon,
                        ..defaults
                    })
                }
                additive => additive,
            };
            let options = ops::merge::MergeOptions {
                method,
                refined_delta: refined_delta_image,
                upscale_method,
                refined_upscale_method,
                output: output_image,
                command_timeout: Duration::from_secs(cmd_timeout),
                force,
                proxy: None,
                models_dir: models_dir
                    .or_else(|| std::env::var_os("DARKROOM_MODELS").map(PathBuf::from))
                    .unwrap_or_else(|| PathBuf::from("models")),
            };
            let header = image::ImageReader::open(&original)
                .ok()
                .and_then(|r| r.with_guessed_format().ok())
                .and_then(|r| r.into_dimensions().ok())
                .unwrap_or((0, 0));
            // Rows are counted in the upright frame, whichever side that is.
            let bar = progress::rows(u64::from(header.0.max(header.1)), "merging");
            let result = ops::merge::merge(&original, &delta, &options, &limits, &|rows, total| {
                bar.set_length(total);
                bar.inc(rows);
            });
            bar.finish_and_clear();
            println!("{}", result?.output_path.display());
        }
        Command::Compare {
            reference,
            candidate,
        } => {
            use darkroom::core::metrics;
            let load = |path: &PathBuf| {
                darkroom::io::decode::load(path, &limits).map_err(|e| OpError::decode(path, e))
            };
            let (a, b) = (load(&reference)?, load(&candidate)?);
            let mismatch = |e: metrics::SizeMismatch| OpError::mismatch(&candidate, e);
            let psnr = metrics::psnr(&a.image, &b.image).map_err(mismatch)?;
            let ssim = metrics::ssim(&a.image, &b.image).map_err(mismatch)?;
            let mse = metrics::mse(&a.image, &b.image).map_err(mismatch)?;
            println!("PSNR {psnr:.2} dB  SSIM {ssim:.4}  MSE {mse:.1}");
        }
        Command::Upscale {
            input,
            model,
            output,
            passes,
            target,
        } => {
            let (model_path, options) = model.resolve(output)?;
            let options = ops::upscale::UpscaleOptions {
                passes,
                target,
                ..options
            };
            let mut model = ops::upscale::load_model(&model_path, &options)?;
            let output = options
                .output
                .clone()
                .unwrap_or_else(|| ops::upscale::default_output(&input, &model, &options));
            refuse_existing_output(&output)?;
            let options = ops::upscale::UpscaleOptions {
                output: Some(output),
                ..options
            };
            let bar = progress::tiles(format!("upscaling x{}", model.scale));
            let result =
                ops::upscale::upscale(&input, &mut model, &options, &limits, &mut |done, total| {
                    progress::show_tiles(&bar, done, total);
                });
            bar.finish_and_clear();
            let out = result?;
            println!("{}", out.output_path.display());
        }
        Command::Enhance {
            input,
            model,
            output,
            via,
            size,
            merge_method,
        } => {
            let (model_path, options) = model.resolve(output)?;
            let via = match via.as_str() {
                "proxy" => ops::enhance::Via::Proxy {
                    size: size.unwrap_or(Target::pixels(1024, 1024)),
                    method: merge_method
                        .unwrap_or(ops::merge::MergeMethod::Guided(GuidedParams::default())),
                },
                _ if size.is_some() || merge_method.is_some() => {
                    return Err(OpError::Usage(
                        "--size and --merge-method only mean something with --via proxy".into(),
                    ))
                }
                _ => ops::enhance::Via::Full,
            };
            let mut model = ops::upscale::load_model(&model_path, &options)?;
            let output = options
                .output
                .clone()
                .unwrap_or_else(|| ops::enhance::default_output(&input, &model));
            refuse_existing_output(&output)?;
            let options = ops::upscale::UpscaleOptions {
                output: Some(output),
                ..options
            };
            let bar = progress::tiles(format!("enhancing via {}", via.name()));
            let result = ops::enhance::enhance(
                &input,
                &mut model,
                &via,
                &options,
                &limits,
                &mut |done, total| {
                    progress::show_tiles(&bar, done, total);
                },
            );
            bar.finish_and_clear();
            println!("{}", result?.output_path.display());
        }
        Command::Normalise {
            input_dir,
            out_dir,
            settings,
            upscale_model,
            models_dir,
            onnxruntime,
            jobs,
        } => normalise_command(
            &input_dir,
            &out_dir,
            &settings,
            upscale_model.as_deref(),
            models_dir,
            onnxruntime,
            jobs,
            &limits,
        )?,
        Command::Validate {
            dir,
            report_dir,
            duplicate_distance,
        } => {
            let report =
                ops::dataset_report::validate(&dir, report_dir.as_deref(), duplicate_distance)?;
            let (_, metadata) = ops::dataset_report::locate(&dir);
            let metadata = report_dir.unwrap_or(metadata);
            eprintln!(
                "validate: {} images, {} without caption, {} duplicate groups, {} problems",
                report.counts["images"],
                report.counts["without_caption"],
                report.duplicate_groups.len(),
                report.problems.len()
            );
            for p in report.problems.iter().take(20) {
                eprintln!("  {}: {}", p.file, p.problem);
            }
            if report.problems.len() > 20 {
                eprintln!(
                    "  ... and {} more (see the report)",
                    report.problems.len() - 20
                );
            }
            println!("{}", metadata.join("validation_report.html").display());
            if !report.is_clean() {
                return Err(OpError::Mismatch {
                    path: dir.display().to_string(),
                    reason: format!("{} problems found", report.problems.len()),
                });
            }
        }
        Command::BatchSplit {
            pattern,
            size,
            output_dir,
            jobs,
        } => {
            let files = ops::batch::expand(&pattern)?;
            if files.is_empty() {
                return Err(OpError::Usage(format!("no files match '{pattern}'")));
            }
            let bar = progress::files(files.len(), "splitting");
            let target = size.target()?;
            let run_batch = || {
                ops::batch::batch_split(&files, target, output_dir.as_deref(), &limits, &|_, _| {
                    bar.inc(1)
                })
            };
            let report = match jobs {
                Some(n) => rayon::ThreadPoolBuilder::new()
                    .num_threads(n.max(1))
                    .build()
                    .map_err(|e| OpError::Internal(e.to_string()))?
                    .install(run_batch),
                None => run_batch(),
            };
            bar.finish_and_clear();
            let failed: Vec<_> = report.failures().collect();
            eprintln!(
                "batch-split: {} succeeded, {} failed, {} total",
                report.succeeded(),
                failed.len(),
                report.results.len()
            );
            for (_, error) in &failed {
                eprintln!("  failed: {error}");
            }
            if !failed.is_empty() {
                return Err(OpError::External {
                    path: pattern,
                    reason: format!("{} of {} files failed", failed.len(), report.results.len()),
                });
            }
        }
    }
    Ok(())
}

/// `darkroom normalise`: the one-shot run with a progress bar.
#[allow(clippy::too_many_arguments)]
fn normalise_command(
    input_dir: &std::path::Path,
    out_dir: &std::path::Path,
    settings: &darkroom::ops::normalise::NormaliseSettings,
    upscale_model: Option<&str>,
    models_dir: Option<PathBuf>,
    onnxruntime: Option<PathBuf>,
    jobs: Option<usize>,
    limits: &DecodeLimits,
) -> Result<(), OpError> {
    use darkroom::ops::normalise;
    let mut options = settings.resolve().map_err(|problems| {
        let lines: Vec<String> = problems
            .iter()
            .map(|(key, e)| format!("--{}: {e}", key.replace('_', "-")))
            .collect();
        OpError::Usage(lines.join("\n"))
    })?;
    options.upscale_model_hint = normalise::UPSCALE_MODEL_HINT_FLAG;
    let inputs = normalise::list_images(input_dir).map_err(|e| OpError::Decode {
        path: input_dir.display().to_string(),
        source: darkroom::io::decode::DecodeError::Io(e),
    })?;
    if inputs.is_empty() {
        return Err(OpError::Usage(format!(
            "no images (.png .jpg .jpeg .tif .tiff .webp .gif) in {}",
            input_dir.display()
        )));
    }
    let model = match upscale_model {
        None => None,
        Some(name) => {
            let args = ModelArgs::for_normalise(name, models_dir, onnxruntime);
            let (path, options) = args.resolve(None)?;
            let mut model = ops::upscale::load_model(&path, &options)?;
            let context = options
                .context
                .unwrap_or_else(|| ops::upscale::recommended_context(&model.name));
            let tile = model
                .tile_side(options.tile, options.memory_budget, context)
                .map_err(ops::OpError::from)?;
            Some((std::sync::Mutex::new(model), tile, context))
        }
    };
    let upscaler = model.as_ref().map(|(model, tile, context)| {
        move |image: image::DynamicImage, factor: f64| {
            let mut model = model
                .lock()
                .map_err(|_| OpError::Internal("model lock poisoned".into()))?;
            let target = normalise::enlarged_size(&image, factor);
            let out = ops::upscale::upscale_to_cover(&image, &mut model, *tile, *context, target)
                .map_err(OpError::from)?;
            Ok((
                out,
                format!(
                    "{} x{} to {}x{}",
                    model.name, model.scale, target.0, target.1
                ),
            ))
        }
    });
    let bar = progress::files(inputs.len(), "normalising");
    let run = || {
        normalise::normalise_batch(
            &inputs,
            out_dir,
            &options,
            limits,
            upscaler.as_ref().map(|u| {
                u
                    as &(dyn Fn(
                        image::DynamicImage,
                        f64,
                    ) -> Result<(image::DynamicImage, String), OpError>
                          + Sync)
            }),
            &|_| bar.inc(1),
        )
    };
    let summary = match jobs {
        Some(n) => rayon::ThreadPoolBuilder::new()
            .num_threads(n.max(1))
            .build()
            .map_err(|e| OpError::Internal(e.to_string()))?
            .install(run),
        None => run(),
    }?;
    bar.finish_and_clear();
    let layout = normalise::SetLayout::under(out_dir);
    let report = ops::dataset_report::write_reports(&layout.images, &layout.metadata)?;
    eprintln!(
        "normalise: {} accepted, {} rejected ({} unreadable) of {}; the set now holds {} images",
        summary.accepted,
        summary.rejected,
        summary.failed,
        inputs.len(),
        report.counts["images"]
    );
    for record in summary.records.iter().filter(|r| r.verdict != "accepted") {
        eprintln!(
            "  rejected {}: {}",
            record.source.path,
            record.reasons.join("; ")
        );
    }
    println!(
        "{}",
        layout.metadata.join("validation_report.html").display()
    );
    Ok(())
}
