use super::*;
use crate::core::geometry::Target;
use crate::recipes::model_job::ModelJob;
use crate::recipes::split_to_proxy::SplitToProxy;
use std::time::Duration;

/// The options of the first rule's recipe, as the recipe's own type.
fn options<T: 'static>(config: &Config) -> &T {
    config.rules[0]
        .recipe
        .as_any()
        .downcast_ref::<T>()
        .expect("the rule's recipe has these options")
}

fn parse(text: &str) -> Result<Config, ConfigErrors> {
    Config::parse(text, Path::new("/etc/darkroom/darkroom.toml"))
}

#[test]
fn merge_method_is_checked_and_an_external_delta_upscaler_means_additive() {
    let rule =
        |extra: &str| format!("[[rule]]\nname = \"p\"\nrecipe = \"split-to-proxy\"\n{extra}\n");
    let method = |config: &Config| options::<SplitToProxy>(config).merge_method.name();
    let config = parse(&rule("upscale_method = \"cmd(tool -i %i -o %o)\"")).unwrap();
    assert_eq!(method(&config), "additive");
    let config = parse(&rule("merge_method = \"additive\"")).unwrap();
    assert_eq!(method(&config), "additive");
    let errors = parse(&rule(
        "merge_method = \"guided\"\nupscale_method = \"cmd(tool -i %i -o %o)\"",
    ))
    .unwrap_err();
    assert!(
        errors.to_string().contains("rule[0] 'p'.merge_method"),
        "{errors}"
    );
    let errors = parse(&rule("merge_method = \"bilateral\"")).unwrap_err();
    assert!(errors.to_string().contains("use additive"), "{errors}");
}

#[test]
fn a_model_for_new_content_names_a_models_table_and_needs_the_guided_merge() {
    let models = format!(
        "[models.photo]\npath = \"{}/../shared/models/waifu2x-upconv7-photo-x2.onnx\"\n\n",
        env!("CARGO_MANIFEST_DIR")
    );
    let rule = |extra: &str| {
        format!("{models}[[rule]]\nname = \"p\"\nrecipe = \"split-to-proxy\"\n{extra}\n")
    };
    let config = parse(&rule("upscale_method = \"model:photo\"")).unwrap();
    let options = options::<SplitToProxy>(&config);
    assert_eq!(options.merge_method.name(), "guided");
    assert!(options
        .content_model
        .as_ref()
        .unwrap()
        .path
        .ends_with("waifu2x-upconv7-photo-x2.onnx"));
    // Both problems at once: no such table, and a model with the additive merge.
    let errors = parse(&rule(
        "upscale_method = \"model:film\"\nmerge_method = \"additive\"",
    ))
    .unwrap_err()
    .to_string();
    assert!(
        errors.contains("rule[0] 'p'.upscale_method")
            && errors.contains("no [models.film] table; models: photo"),
        "{errors}"
    );
    assert!(
        errors.contains("rule[0] 'p'.merge_method")
            && errors.contains("needs merge_method = \"guided\""),
        "{errors}"
    );
    let errors = parse(&rule("upscale_method = \"model:\""))
        .unwrap_err()
        .to_string();
    assert!(errors.contains("name the model after 'model:'"), "{errors}");
}

#[test]
fn enhance_rules_check_via_and_its_proxy_keys() {
    let models = format!(
        "[models.photo]\npath = \"{}/../shared/models/waifu2x-upconv7-photo-x2.onnx\"\n\n",
        env!("CARGO_MANIFEST_DIR")
    );
    let rule = |extra: &str| {
        format!(
            "{models}[[rule]]\nname = \"e\"\nrecipe = \"enhance\"\nmodel = \"photo\"\n{extra}\n"
        )
    };
    let config = parse(&rule("via = \"proxy\"\nsize = \"50%\"")).unwrap();
    assert_eq!(config.rules[0].recipe.name(), "enhance");
    let u = options::<ModelJob>(&config);
    assert_eq!(u.enhance.map(|v| v.name()), Some("proxy"));
    let errors = parse(&rule("via = \"sideways\"\nsize = \"50%\"\npasses = 2")).unwrap_err();
    let text = errors.to_string();
    assert!(text.contains("rule[0] 'e'.via"), "{text}");
    assert!(
        text.contains("passes"),
        "passes is not an enhance key: {text}"
    );
    let errors = parse(&rule("size = \"50%\"")).unwrap_err();
    assert!(
        errors.to_string().contains("rule[0] 'e'.size"),
        "size without via proxy: {errors}"
    );
}

#[test]
fn correction_keys_parse_for_model_rules_and_report_bad_values() {
    let models = format!(
        "[models.photo]\npath = \"{}/../shared/models/waifu2x-upconv7-photo-x2.onnx\"\n\n",
        env!("CARGO_MANIFEST_DIR")
    );
    let rule = |recipe: &str, extra: &str| {
        format!(
            "{models}[[rule]]\nname = \"m\"\nrecipe = \"{recipe}\"\nmodel = \"photo\"\n{extra}\n"
        )
    };
    let good = "white_balance = \"gray-world\"\nexposure = \"auto\"\ndeblock = true\ndenoise = \"bilateral:2,20\"\nsmooth = \"median:1\"";
    for recipe in ["upscale", "enhance"] {
        let config = parse(&rule(recipe, good)).unwrap();
        let u = options::<ModelJob>(&config);
        assert!(u.pre.white_balance && u.pre.deblock, "{recipe}");
        assert_eq!(
            u.pre.exposure,
            Some(crate::core::corrections::Exposure::Auto)
        );
        assert!(u.pre.denoise.is_some() && u.smooth.is_some(), "{recipe}");
    }
    let errors = parse(&rule(
        "upscale",
        "white_balance = \"daylight\"\nexposure = \"bright\"\ndenoise = \"nlm\"\nsmooth = \"median:9\"",
    ))
    .unwrap_err()
    .to_string();
    for key in ["white_balance", "exposure", "denoise", "smooth"] {
        assert!(
            errors.contains(&format!("rule[0] 'm'.{key}")),
            "{key}: {errors}"
        );
    }
}

#[test]
fn cudnn_search_is_heuristic_unless_set_and_a_wrong_word_is_reported() {
    let rule = "[[rule]]\nname = \"p\"\nrecipe = \"split-to-proxy\"\n";
    let config = parse(rule).unwrap();
    assert_eq!(
        config.runtime.cuda_conv_search,
        crate::io::onnx::ConvSearch::Heuristic
    );
    let config = parse(&format!(
        "[runtime]\ncuda_conv_search = \"exhaustive\"\n\n{rule}"
    ))
    .unwrap();
    assert_eq!(
        config.runtime.cuda_conv_search,
        crate::io::onnx::ConvSearch::Exhaustive
    );
    let errors = parse(&format!(
        "[runtime]\ncuda_conv_search = \"fastest\"\n\n{rule}"
    ))
    .unwrap_err()
    .to_string();
    assert!(
        errors.contains("line 2: runtime.cuda_conv_search: 'fastest': use heuristic or exhaustive"),
        "{errors}"
    );
}

#[test]
fn model_tables_take_auto_tiles_batches_ranges_and_a_scale() {
    let path = format!(
        "{}/../shared/models/waifu2x-upconv7-photo-x2.onnx",
        env!("CARGO_MANIFEST_DIR")
    );
    let config = parse(&format!(
        "[runtime]\nmemory_budget_mib = 2048\n\n[models.photo]\npath = \"{path}\"\ntile = \"auto\"\nbatch = 4\ninput_range = \"-1..1\"\nscale = 2\n\n[[rule]]\nname = \"p\"\nrecipe = \"split-to-proxy\"\n"
    ))
    .unwrap();
    let spec = &config.models["photo"];
    assert_eq!(spec.tile, crate::core::tiling::TileSize::Auto);
    assert_eq!((spec.batch, spec.scale), (4, Some(2)));
    assert_eq!(spec.range, crate::io::onnx::ValueRange::Signed);
    assert_eq!(config.runtime.memory_budget, Some(2 << 30));
    for (written, batch) in [("", 0), ("batch = \"auto\"\n", 0), ("batch = 64\n", 64)] {
        let rule = "[[rule]]\nname = \"p\"\nrecipe = \"split-to-proxy\"\n";
        let config = parse(&format!(
            "[models.photo]\npath = \"{path}\"\n{written}{rule}"
        ))
        .unwrap();
        assert_eq!(config.models["photo"].batch, batch, "{written}");
    }
    assert_eq!(crate::io::onnx::AUTO_BATCH, 0);
    let errors = parse(&format!(
        "[models.photo]\npath = \"{path}\"\nbatch = \"many\"\n"
    ))
    .unwrap_err()
    .to_string();
    assert!(
        errors.contains("or \"auto\" (4 on CUDA, 1 on the CPU)"),
        "{errors}"
    );
    let errors = parse(&format!(
        "[models.photo]\npath = \"{path}\"\ntile = \"big\"\nbatch = 0\ninput_range = \"0..2\"\nscale = 0\n"
    ))
    .unwrap_err()
    .to_string();
    for key in ["tile", "batch", "input_range", "scale"] {
        assert!(
            errors.contains(&format!("models.photo.{key}")),
            "{key}: {errors}"
        );
    }
    // A wrong value is quoted as it was written in the file, not as a Rust value.
    assert!(errors.contains("\"big\": a side in pixels"), "{errors}");
    assert!(errors.contains("0: 1 to 64 tiles per run"), "{errors}");
    assert!(!errors.contains("Integer("), "{errors}");
    // Every key that names a model table says which names exist.
    let errors = parse(&format!(
        "[models.photo]\npath = \"{path}\"\n\n[[rule]]\nname = \"u\"\nrecipe = \"upscale\"\nmodel = \"phot\"\ndenoise_model = \"clean\"\n\n[[rule]]\nname = \"n\"\nrecipe = \"normalise\"\nupscale_model = \"big\"\n"
    ))
    .unwrap_err()
    .to_string();
    for (key, name) in [
        ("'u'.model", "phot"),
        ("'u'.denoise_model", "clean"),
        ("'n'.upscale_model", "big"),
    ] {
        assert!(
            errors.contains(key)
                && errors.contains(&format!("no [models.{name}] table; models: photo")),
            "{key}: {errors}"
        );
    }
}

#[test]
fn a_minimal_rule_gets_the_documented_defaults() {
    let config = parse("[[rule]]\nname = \"photos\"\nrecipe = \"split-to-proxy\"\n").unwrap();
    assert_eq!(config.daemon.root, Path::new("/etc/darkroom/var"));
    assert_eq!(config.daemon.stability_window, Duration::from_secs(2));
    let rule = &config.rules[0];
    assert_eq!(rule.watch, Path::new("/etc/darkroom/var/inbox/photos"));
    assert_eq!(rule.originals, OriginalsPolicy::Move);
    let options = options::<SplitToProxy>(&config);
    assert_eq!(options.size, Target::pixels(1024, 1024));
    assert_eq!(
        options.exchange_in,
        Path::new("/etc/darkroom/var/exchange/in/photos")
    );
    assert_eq!(options.merge_method.name(), "guided");
}

#[test]
fn every_error_is_reported_at_once_with_keys_and_lines() {
    let text = "[daemon]\nworkers = 0\nstability_window = \"2 parsecs\"\n\n[[rule]]\nname = \"a\"\nrecipe = \"split-to-proxy\"\nsise = \"1024x1024\"\ndelta_depth = 12\n\n[[rule]]\nname = \"b\"\nrecipe = \"split-to-prxy\"\n";
    let errors = parse(text).unwrap_err().errors;
    let rendered: Vec<String> = errors.iter().map(|e| e.to_string()).collect();
    assert_eq!(errors.len(), 5, "{rendered:#?}");
    assert!(
        rendered[0].starts_with("line 2: daemon.workers"),
        "{rendered:#?}"
    );
    assert!(rendered[1].contains("daemon.stability_window") && rendered[1].contains("parsecs"));
    assert!(
        rendered[2].contains("line 8: rule[0] 'a'.sise")
            && rendered[2].contains("did you mean `size`")
    );
    assert!(rendered[3].contains("line 9: rule[0] 'a'.delta_depth"));
    assert!(
        rendered[4].contains("line 13: rule[1] 'b'.recipe")
            && rendered[4].contains("did you mean `split-to-proxy`")
    );
}

#[test]
fn toml_syntax_errors_carry_their_line() {
    let errors = parse("[daemon]\nworkers = \n").unwrap_err().errors;
    assert_eq!(errors.len(), 1);
    assert_eq!(errors[0].line, Some(2), "{}", errors[0]);
}

#[test]
fn overlapping_folders_are_refused() {
    let text = "[[rule]]\nname = \"a\"\nrecipe = \"split-to-proxy\"\nwatch = \"in\"\n[[rule]]\nname = \"a\"\nrecipe = \"split-to-proxy\"\nwatch = \"in/sub\"\n";
    let errors = parse(text).unwrap_err().errors;
    let rendered: Vec<String> = errors.iter().map(|e| e.to_string()).collect();
    assert!(
        rendered.iter().any(|e| e.contains("two rules share")),
        "{rendered:#?}"
    );
    assert!(
        rendered.iter().any(|e| e.contains("overlaps")),
        "{rendered:#?}"
    );
}

#[test]
fn durations_accept_units_and_bare_seconds() {
    let d = |v: toml::Value| parse_duration(&v).unwrap();
    assert_eq!(d("500ms".into()), Duration::from_millis(500));
    assert_eq!(d("1.5s".into()), Duration::from_millis(1500));
    assert_eq!(d("10m".into()), Duration::from_secs(600));
    assert_eq!(d("24h".into()), Duration::from_secs(86400));
    assert_eq!(d(toml::Value::Integer(3)), Duration::from_secs(3));
    assert!(parse_duration(&"-1s".into()).is_err());
    assert_eq!(d("365000d".into()), Duration::from_secs(365_000 * 86_400));
}

#[test]
fn a_duration_past_what_clocks_hold_is_a_problem_not_a_crash() {
    // Found by the config fuzz target: Duration::from_secs_f64 panicked on this.
    let huge = format!("1{}m", "0".repeat(100));
    let error = parse_duration(&huge.as_str().into()).unwrap_err();
    assert!(error.contains("at most 1000 years"), "{error}");
    assert!(parse_duration(&toml::Value::Integer(i64::MAX)).is_err());
    assert!(parse_duration(&"365001d".into()).is_err());
    let problems = Config::parse_offline(
        &format!("[daemon]\nroot = \"var\"\njob_timeout = \"{huge}\"\n"),
        Path::new("darkroom.toml"),
    )
    .unwrap_err()
    .to_string();
    assert!(problems.contains("daemon.job_timeout"), "{problems}");
}

#[test]
fn sizes_in_pixels_square_or_percent() {
    assert_eq!(parse_size("1024x768").unwrap(), Target::pixels(1024, 768));
    assert_eq!(parse_size("512").unwrap(), Target::pixels(512, 512));
    assert!(parse_size("25%").is_ok());
    assert!(parse_size("big").is_err());
}

#[test]
fn an_unknown_table_and_a_value_of_the_wrong_type_hide_nothing_else() {
    let text = "no_such_table = 1\n[sever]\nx = 1\n\n[daemon]\nworkers = -3\nmax_attempts = \"many\"\n\n[runtime]\nthreads = \"all\"\n\n[[rule]]\nname = \"a\"\nrecipe = \"split-to-proxy\"\nsize = \"banana\"\n";
    let errors = parse(text).unwrap_err().errors;
    let rendered: Vec<String> = errors.iter().map(|e| e.to_string()).collect();
    for needle in [
        "line 1: no_such_table: unknown table",
        "line 2: sever: unknown table; known tables: daemon, runtime, models, rule",
        "line 6: daemon.workers: invalid value: integer `-3`",
        "line 7: daemon.max_attempts: invalid type",
        "line 10: runtime.threads: invalid type",
        "line 15: rule[0] 'a'.size: 'banana' is not a size",
    ] {
        assert!(
            rendered.iter().any(|r| r.starts_with(needle)),
            "missing {needle}: {rendered:#?}"
        );
    }
    assert_eq!(errors.len(), 6, "{rendered:#?}");
}

#[test]
fn each_raw_table_lists_its_own_keys() {
    assert_eq!(
        fields_of::<RawRuleCommon>(),
        ["name", "recipe", "watch", "patterns", "originals"]
    );
    assert!(fields_of::<RawDaemon>().contains(&"incomplete_grace"));
    assert!(fields_of::<crate::ops::normalise::NormaliseSettings>().contains(&"min_sharpness"));
}

#[test]
fn a_tool_is_checked_with_every_problem_at_once() {
    let rule =
        |extra: &str| format!("[[rule]]\nname = \"p\"\nrecipe = \"split-to-proxy\"\n{extra}\n");
    let config = parse(&rule("tool = \"cmd(python3 grade.py %i %o)\"")).unwrap();
    assert!(matches!(
        options::<SplitToProxy>(&config).tool,
        Some(crate::recipes::tool::Tool::Command(_))
    ));
    let errors = parse(&rule(
        "tool = { comfyui = \"localhost:8188\", workflow = \"/nonexistent/grade.json\", timeot = \"1m\" }\nvia = \"whole\"",
    ))
    .unwrap_err()
    .to_string();
    for expected in [
        "tool.timeot: unknown key (did you mean `timeout`?)",
        "tool.comfyui: 'localhost:8188' is not an http:// address",
        "tool.workflow: cannot read /nonexistent/grade.json",
        "via: 'whole': use \"proxy\"",
    ] {
        assert!(errors.contains(expected), "{expected}\n{errors}");
    }
    let errors = parse(&rule("via = \"full\"")).unwrap_err().to_string();
    assert!(errors.contains("set tool as well"), "{errors}");
    let errors = parse(&rule("tool = 3")).unwrap_err().to_string();
    assert!(errors.contains("tool: is an integer"), "{errors}");
}

#[test]
fn the_journal_is_sqlite_unless_a_postgresql_url_is_given_and_bad_values_are_all_reported() {
    use crate::daemon::journal::Location;
    let rule = "[[rule]]\nname = \"p\"\nrecipe = \"split-to-proxy\"\n";
    let config = parse(rule).unwrap();
    assert_eq!(config.daemon.journal, Location::Sqlite);
    assert!(!config.daemon.host.is_empty());
    assert_eq!(config.daemon.lease_timeout, Duration::from_secs(15));
    let config = parse(&format!(
        "[daemon]\njournal = \"postgresql://dr:secret@db.lan/jobs\"\nhost = \"gpu1\"\nlease_timeout = \"5s\"\n\n{rule}"
    ))
    .unwrap();
    assert_eq!(
        config.daemon.journal,
        Location::Postgres("postgresql://dr:secret@db.lan/jobs".into())
    );
    assert_eq!(config.daemon.host, "gpu1");
    assert_eq!(config.daemon.lease_timeout, Duration::from_secs(5));
    let errors = parse(&format!(
        "[daemon]\njournal = \"mysql://dr:secret@db.lan/jobs\"\nhost = \"gpu 1\"\nlease_timeout = \"200ms\"\n\n{rule}"
    ))
    .unwrap_err()
    .to_string();
    assert!(errors.contains("daemon.journal: 'mysql://dr:***@db.lan/jobs' is neither \"sqlite\" nor a PostgreSQL URL"), "{errors}");
    assert!(
        !errors.contains("secret"),
        "a password never reaches a message: {errors}"
    );
    assert!(
        errors.contains("daemon.host: 'gpu 1' is not a host name"),
        "{errors}"
    );
    assert!(
        errors.contains("daemon.lease_timeout: must be at least 1s"),
        "{errors}"
    );
}

#[test]
fn roles_divide_a_shared_journal_s_work_and_are_checked() {
    let rule = "[[rule]]\nname = \"p\"\nrecipe = \"split-to-proxy\"\n";
    let config = parse(&format!(
        "[daemon]\njournal = \"postgresql://dr@db/jobs\"\nroles = [\"model\"]\n\n{rule}"
    ))
    .unwrap();
    let roles = config.daemon.roles;
    assert!(roles.model && !roles.cpu && !roles.intake);
    assert_eq!(roles.to_string(), "model");
    let errors = parse(&format!(
        "[daemon]\njournal = \"postgresql://dr@db/jobs\"\nroles = [\"gpu\"]\n\n{rule}"
    ))
    .unwrap_err()
    .to_string();
    assert!(
        errors.contains("'gpu' is not a role: use intake, cpu and model"),
        "{errors}"
    );
    assert!(
        errors.contains("a host needs at least one role"),
        "{errors}"
    );
    let errors = parse(&format!("[daemon]\nroles = [\"cpu\"]\n\n{rule}"))
        .unwrap_err()
        .to_string();
    assert!(
        errors.contains("roles divide the work between hosts that share a journal"),
        "{errors}"
    );
}

#[test]
fn devices_give_one_model_lane_each_and_bad_ones_are_reported() {
    let rule = "[[rule]]\nname = \"p\"\nrecipe = \"split-to-proxy\"\n";
    assert!(parse(rule).unwrap().runtime.devices.is_empty());
    let config = parse(&format!("[runtime]\ndevices = [0, 1, 3]\n\n{rule}")).unwrap();
    assert_eq!(config.runtime.devices, vec![0, 1, 3]);
    let errors = parse(&format!("[runtime]\ndevices = [0, 0, -1]\n\n{rule}"))
        .unwrap_err()
        .to_string();
    assert!(errors.contains("device 0 is listed twice"), "{errors}");
    assert!(errors.contains("-1 is not a CUDA device index"), "{errors}");
}
