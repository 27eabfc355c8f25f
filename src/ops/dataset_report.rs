//! The reports of a training set: `quality_assessment.json` (every score, every verdict),
//! `validation_report.json` and the human `validation_report.html` (counts, formats,
//! resolution and bucket histograms, rejected list with reasons, duplicate groups, problems,
//! and a contact sheet of thumbnails with their scores).
//!
//! [`validate`] re-checks a set on disk (every file decoded, captions, sidecars against the
//! files, near-duplicates) and writes the same report; [`write_reports`] builds it from the
//! processing log alone, cheaply enough to run after every image the daemon files.

use super::normalise::{list_images, read_log, Record};
use super::OpError;
use crate::core::quality;
use crate::io::atomic;
use crate::io::decode::{self, DecodeLimits};
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// One image of the set as the report shows it.
#[derive(Debug, Clone, Serialize)]
pub struct ImageEntry {
    pub name: String,
    pub width: u32,
    pub height: u32,
    pub format: String,
    pub caption: bool,
    pub bucket: Option<String>,
    pub scores: Option<super::normalise::Scores>,
    pub thumbnail: Option<String>,
    pub source: Option<String>,
}

/// A rejected input.
#[derive(Debug, Clone, Serialize)]
pub struct Rejection {
    pub source: String,
    pub reasons: Vec<String>,
    pub scores: Option<super::normalise::Scores>,
    pub duplicate_of: Option<String>,
    pub thumbnail: Option<String>,
}

/// A problem found in the set.
#[derive(Debug, Clone, Serialize)]
pub struct Problem {
    pub file: String,
    pub problem: String,
}

/// The validation report.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub generated: String,
    pub darkroom_version: &'static str,
    pub images_dir: String,
    /// How the files were checked: `decoded` (darkroom validate) or `log` (after each image).
    pub checked: &'static str,
    pub counts: BTreeMap<&'static str, usize>,
    pub formats: BTreeMap<String, usize>,
    pub resolutions: BTreeMap<String, usize>,
    pub buckets: BTreeMap<String, usize>,
    pub rejected: Vec<Rejection>,
    pub duplicate_groups: Vec<Vec<String>>,
    pub problems: Vec<Problem>,
    pub images: Vec<ImageEntry>,
}

impl Report {
    pub fn is_clean(&self) -> bool {
        self.problems.is_empty()
    }
}

/// Where a set's images and metadata are: `DIR/images` + `DIR/metadata` (a one-shot run's
/// output), `processed/<rule>[/images]` + `metadata/<rule>` (the daemon's trees), or a bare
/// folder of images with `DIR/metadata`.
pub fn locate(dir: &Path) -> (PathBuf, PathBuf) {
    let named = |p: &Path, name: &str| p.file_name().is_some_and(|n| n == name);
    let (set, images) = if named(dir, "images") {
        (dir.parent().unwrap_or(dir).to_path_buf(), dir.to_path_buf())
    } else {
        (dir.to_path_buf(), dir.join("images"))
    };
    if let (Some(processed), Some(rule)) = (set.parent(), set.file_name()) {
        if named(processed, "processed") && images.is_dir() {
            let root = processed.parent().unwrap_or(processed);
            return (images, root.join("metadata").join(rule));
        }
    }
    if images.is_dir() {
        return (images, set.join("metadata"));
    }
    (dir.to_path_buf(), dir.join("metadata"))
}

/// Builds the report of the set from its processing log (no file decoded) and writes all
/// three report files. Used after every image in the daemon and at the end of a run.
pub fn write_reports(images_dir: &Path, metadata_dir: &Path) -> Result<Report, OpError> {
    let records = read_log(metadata_dir);
    let on_disk: std::collections::HashSet<String> = list_images(images_dir)
        .unwrap_or_default()
        .into_iter()
        .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .collect();
    let mut images = Vec::new();
    for record in records.iter().filter(|r| r.verdict == "accepted") {
        let Some(name) = &record.output else { continue };
        if !on_disk.contains(name) {
            continue;
        }
        let stem = crate::io::names::stem_of(Path::new(name));
        images.push(ImageEntry {
            name: name.clone(),
            width: record.width.unwrap_or(0),
            height: record.height.unwrap_or(0),
            format: extension_of(name),
            caption: images_dir.join(format!("{stem}.txt")).is_file(),
            bucket: record.bucket.clone(),
            scores: record.scores.clone(),
            thumbnail: record.thumbnail.clone(),
            source: Some(record.source.path.clone()),
        });
    }
    let report = assemble(images_dir, "log", images, &records, Vec::new(), Vec::new());
    write_all(metadata_dir, &records, &report)?;
    Ok(report)
}

/// Re-checks the set in `dir` (see [`locate`]): every image decoded, its format, size,
/// caption and sidecar (whose recorded SHA-256 and size must match the file), orphan
/// captions and sidecars, and near-duplicates among the images. Writes the reports into the
/// set's metadata folder (or `report_dir`).
pub fn validate(
    dir: &Path,
    report_dir: Option<&Path>,
    duplicate_distance: u32,
) -> Result<Report, OpError> {
    use rayon::prelude::*;
    let (images_dir, metadata_dir) = locate(dir);
    let metadata_dir = report_dir.map(Path::to_path_buf).unwrap_or(metadata_dir);
    let files = list_images(&images_dir).map_err(|e| OpError::Decode {
        path: images_dir.display().to_string(),
        source: decode::DecodeError::Io(e),
    })?;
    let records = read_log(&metadata_dir);
    let limits = DecodeLimits::default();
    let checked: Vec<(ImageEntry, Vec<Problem>, Option<u64>)> = files
        .par_iter()
        .map(|path| check_image(path, &images_dir, &limits))
        .collect();
    let mut problems = Vec::new();
    let mut images = Vec::new();
    let mut hashes = Vec::new();
    for (entry, mut found, hash) in checked {
        problems.append(&mut found);
        if let Some(h) = hash {
            hashes.push((entry.name.clone(), h));
        }
        images.push(entry);
    }
    // Captions and sidecars whose image is missing.
    let stems: std::collections::HashSet<String> = images
        .iter()
        .map(|i| crate::io::names::stem_of(Path::new(&i.name)))
        .collect();
    if let Ok(entries) = std::fs::read_dir(&images_dir) {
        for entry in entries.flatten() {
            let path = entry.path();
            let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
            let stem = crate::io::names::stem_of(&path);
            if matches!(ext, "txt" | "json") && !stem.starts_with('.') && !stems.contains(&stem) {
                problems.push(Problem {
                    file: file_name(&path),
                    problem: format!("orphan .{ext}: no image with this stem"),
                });
            }
        }
    }
    let groups = duplicate_groups(&hashes, duplicate_distance);
    for group in &groups {
        problems.push(Problem {
            file: group.join(", "),
            problem: format!(
                "near-duplicates (perceptual hashes within {duplicate_distance} bits)"
            ),
        });
    }
    let report = assemble(&images_dir, "decoded", images, &records, groups, problems);
    write_all(&metadata_dir, &records, &report)?;
    Ok(report)
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

fn extension_of(name: &str) -> String {
    let ext = Path::new(name)
        .extension()
        .map(|e| e.to_string_lossy().to_ascii_lowercase())
        .unwrap_or_default();
    match ext.as_str() {
        "jpeg" => "jpg".into(),
        "tiff" => "tif".into(),
        _ => ext,
    }
}

fn check_image(
    path: &Path,
    images_dir: &Path,
    limits: &DecodeLimits,
) -> (ImageEntry, Vec<Problem>, Option<u64>) {
    let name = file_name(path);
    let stem = crate::io::names::stem_of(path);
    let mut problems = Vec::new();
    let mut problem = |text: String| {
        problems.push(Problem {
            file: name.clone(),
            problem: text,
        })
    };
    let caption = images_dir.join(format!("{stem}.txt")).is_file();
    if !caption {
        problem("no caption (.txt)".into());
    }
    let sidecar: Option<Record> = std::fs::read_to_string(images_dir.join(format!("{stem}.json")))
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok());
    let mut entry = ImageEntry {
        name: name.clone(),
        width: 0,
        height: 0,
        format: extension_of(&name),
        caption,
        bucket: sidecar.as_ref().and_then(|s| s.bucket.clone()),
        scores: sidecar.as_ref().and_then(|s| s.scores.clone()),
        thumbnail: sidecar.as_ref().and_then(|s| s.thumbnail.clone()),
        source: sidecar.as_ref().map(|s| s.source.path.clone()),
    };
    let bytes = match decode::read_bounded(path, limits.max_file_bytes) {
        Ok(b) => b,
        Err(e) => {
            problem(format!("unreadable: {e}"));
            return (entry, problems, None);
        }
    };
    let loaded = match decode::decode_bytes(&bytes, limits) {
        Ok(l) => l,
        Err(e) => {
            problem(format!("does not decode: {e}"));
            return (entry, problems, None);
        }
    };
    let actual = format!("{:?}", loaded.format)
        .to_lowercase()
        .replace("jpeg", "jpg")
        .replace("tiff", "tif");
    if actual != entry.format {
        problem(format!(
            "the content is {actual} but the extension says {}",
            entry.format
        ));
    }
    entry.format = actual;
    entry.width = loaded.image.width();
    entry.height = loaded.image.height();
    match &sidecar {
        None => problem("no sidecar (.json)".into()),
        Some(s) => {
            if s.output_sha256.as_deref() != Some(loaded.sha256.as_str()) {
                problem(
                    "the file's SHA-256 differs from its sidecar's: changed after normalising"
                        .into(),
                );
            }
            if (s.width, s.height) != (Some(entry.width), Some(entry.height)) {
                problem(format!(
                    "size {}x{} differs from the sidecar's {}x{}",
                    entry.width,
                    entry.height,
                    s.width.unwrap_or(0),
                    s.height.unwrap_or(0)
                ));
            }
        }
    }
    let hash = quality::phash(&quality::Luma::of(&loaded.image));
    (entry, problems, Some(hash))
}

/// Groups of names whose hashes are within `distance` (single linkage), each sorted.
#[allow(clippy::needless_range_loop)]
fn duplicate_groups(hashes: &[(String, u64)], distance: u32) -> Vec<Vec<String>> {
    let n = hashes.len();
    let mut parent: Vec<usize> = (0..n).collect();
    fn root(parent: &mut [usize], mut i: usize) -> usize {
        while parent[i] != i {
            parent[i] = parent[parent[i]];
            i = parent[i];
        }
        i
    }
    for i in 0..n {
        for j in i + 1..n {
            if quality::hamming(hashes[i].1, hashes[j].1) <= distance {
                let (a, b) = (root(&mut parent, i), root(&mut parent, j));
                parent[a] = b;
            }
        }
    }
    let mut groups: BTreeMap<usize, Vec<String>> = BTreeMap::new();
    for i in 0..n {
        let r = root(&mut parent, i);
        groups.entry(r).or_default().push(hashes[i].0.clone());
    }
    let mut out: Vec<Vec<String>> = groups.into_values().filter(|g| g.len() > 1).collect();
    for g in &mut out {
        g.sort();
    }
    out.sort();
    out
}

fn assemble(
    images_dir: &Path,
    checked: &'static str,
    images: Vec<ImageEntry>,
    records: &[Record],
    mut duplicate_groups: Vec<Vec<String>>,
    problems: Vec<Problem>,
) -> Report {
    let mut formats = BTreeMap::new();
    let mut resolutions = BTreeMap::new();
    let mut buckets = BTreeMap::new();
    for image in &images {
        *formats.entry(image.format.clone()).or_insert(0) += 1;
        *resolutions
            .entry(format!("{}x{}", image.width, image.height))
            .or_insert(0) += 1;
        if let Some(b) = &image.bucket {
            *buckets.entry(b.clone()).or_insert(0) += 1;
        }
    }
    let rejected: Vec<Rejection> = records
        .iter()
        .filter(|r| r.verdict != "accepted")
        .map(|r| Rejection {
            source: r.source.path.clone(),
            reasons: r.reasons.clone(),
            scores: r.scores.clone(),
            duplicate_of: r.duplicate_of.clone(),
            thumbnail: r.thumbnail.clone(),
        })
        .collect();
    // Inputs rejected as near-duplicates join their kept image's group.
    let mut by_kept: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for r in &rejected {
        if let Some(kept) = &r.duplicate_of {
            by_kept
                .entry(kept.clone())
                .or_default()
                .push(format!("{} (rejected)", r.source));
        }
    }
    for (kept, mut others) in by_kept {
        let mut group = vec![kept];
        group.append(&mut others);
        duplicate_groups.push(group);
    }
    let mut counts = BTreeMap::new();
    counts.insert("images", images.len());
    counts.insert("captions", images.iter().filter(|i| i.caption).count());
    counts.insert(
        "without_caption",
        images.iter().filter(|i| !i.caption).count(),
    );
    counts.insert("rejected", rejected.len());
    counts.insert("inputs_logged", records.len());
    counts.insert("duplicate_groups", duplicate_groups.len());
    counts.insert("problems", problems.len());
    Report {
        generated: crate::io::clock::rfc3339(crate::io::clock::now()),
        darkroom_version: env!("CARGO_PKG_VERSION"),
        images_dir: images_dir.display().to_string(),
        checked,
        counts,
        formats,
        resolutions,
        buckets,
        rejected,
        duplicate_groups,
        problems,
        images,
    }
}

fn write_all(metadata_dir: &Path, records: &[Record], report: &Report) -> Result<(), OpError> {
    std::fs::create_dir_all(metadata_dir).map_err(|e| OpError::write(metadata_dir, e))?;
    let write = |name: &str, bytes: &[u8]| {
        let path = metadata_dir.join(name);
        atomic::write_atomic(&path, bytes).map_err(|e| OpError::write(&path, e))
    };
    let assessment = serde_json::json!({
        "generated": report.generated,
        "measures": {
            "sharpness": "variance of the 3x3 Laplacian of the output's luminance (8-bit levels squared)",
            "noise_sigma": "Immerkær (1996) fast noise estimate over non-edge pixels (Tai & Yang 2008) of the decoded source, 8-bit levels",
            "blockiness": "mean step across the source's 8x8 block boundaries / mean step inside blocks, minus 1",
            "clipped_dark": "share of output pixels with luminance 0",
            "clipped_bright": "share of output pixels with luminance 255",
            "phash": "64-bit DCT perceptual hash of the output",
        },
        "images": records.iter().map(|r| serde_json::json!({
            "id": r.id,
            "source": r.source.path,
            "sha256": r.source.sha256,
            "verdict": r.verdict,
            "reasons": r.reasons,
            "scores": r.scores,
            "output": r.output,
            "duplicate_of": r.duplicate_of,
        })).collect::<Vec<_>>(),
    });
    write(
        "quality_assessment.json",
        serde_json::to_string_pretty(&assessment)
            .expect("json")
            .as_bytes(),
    )?;
    write("validation_report.html", render_html(report).as_bytes())?;
    // Last, so that whoever sees a new validation_report.json also sees the HTML and the
    // assessment that go with it.
    write(
        "validation_report.json",
        serde_json::to_string_pretty(report)
            .expect("json")
            .as_bytes(),
    )
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn histogram_table(title: &str, map: &BTreeMap<String, usize>) -> String {
    let mut html = format!("<section><h2>{}</h2>", escape(title));
    if map.is_empty() {
        html.push_str("<p class=\"none\">none</p></section>");
        return html;
    }
    let max = map.values().copied().max().unwrap_or(1).max(1);
    html.push_str("<table>");
    for (key, count) in map {
        let width = count * 200 / max;
        html.push_str(&format!(
            "<tr><td>{}</td><td class=\"n\">{count}</td><td><span class=\"bar\" style=\"width:{width}px\"></span></td></tr>",
            escape(key)
        ));
    }
    html.push_str("</table></section>");
    html
}

fn scores_line(scores: &Option<super::normalise::Scores>) -> String {
    match scores {
        None => String::new(),
        Some(s) => format!(
            "sharpness {:.0} · noise {:.2} · blockiness {} · clipped {:.1}%",
            s.sharpness,
            s.noise_sigma,
            s.blockiness
                .map_or("n/a".to_string(), |b| format!("{b:.2}")),
            (s.clipped_dark + s.clipped_bright) * 100.0
        ),
    }
}

/// The human report: one self-contained page (thumbnails are files in `thumbs/`).
pub fn render_html(report: &Report) -> String {
    let mut html = String::from(
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <title>darkroom validation report</title><style>\
         body{font-family:system-ui,sans-serif;margin:24px;color:#222;background:#fafafa}\
         h1{font-size:22px}h2{font-size:17px;margin-top:28px}\
         table{border-collapse:collapse}td,th{padding:3px 10px;border-bottom:1px solid #ddd;text-align:left;vertical-align:top}\
         td.n{text-align:right}.bar{display:inline-block;height:10px;background:#4a7bd0}\
         .grid{display:flex;flex-wrap:wrap;gap:12px}\
         figure{margin:0;width:200px;background:#fff;border:1px solid #ddd;padding:6px}\
         figure img{max-width:192px;max-height:192px;display:block;margin:auto}\
         figcaption{font-size:11px;margin-top:4px;word-break:break-all}\
         .rejected figure{border-color:#d05050}.none{color:#888}.problem{color:#b00}\
         </style></head><body>\n",
    );
    html.push_str(&format!(
        "<h1>Validation report</h1><p>{} · generated {} by darkroom {} · checked: {}</p>",
        escape(&report.images_dir),
        escape(&report.generated),
        report.darkroom_version,
        report.checked
    ));
    html.push_str("<section><h2>Counts</h2><table id=\"counts\">");
    for (key, value) in &report.counts {
        html.push_str(&format!(
            "<tr><td>{}</td><td class=\"n\">{value}</td></tr>",
            key.replace('_', " ")
        ));
    }
    html.push_str("</table></section>");
    html.push_str(&histogram_table("Formats", &report.formats));
    html.push_str(&histogram_table("Resolutions", &report.resolutions));
    html.push_str(&histogram_table("Buckets", &report.buckets));
    html.push_str("<section><h2>Rejected</h2>");
    if report.rejected.is_empty() {
        html.push_str("<p class=\"none\">none</p>");
    } else {
        html.push_str(
            "<table id=\"rejected\"><tr><th>source</th><th>reasons</th><th>scores</th></tr>",
        );
        for r in &report.rejected {
            html.push_str(&format!(
                "<tr><td>{}</td><td>{}</td><td>{}</td></tr>",
                escape(&r.source),
                escape(&r.reasons.join("; ")),
                escape(&scores_line(&r.scores))
            ));
        }
        html.push_str("</table>");
    }
    html.push_str("</section><section><h2>Duplicate groups</h2>");
    if report.duplicate_groups.is_empty() {
        html.push_str("<p class=\"none\">none</p>");
    } else {
        html.push_str("<ul id=\"duplicates\">");
        for group in &report.duplicate_groups {
            html.push_str(&format!("<li>{}</li>", escape(&group.join(" ≈ "))));
        }
        html.push_str("</ul>");
    }
    html.push_str("</section><section><h2>Problems</h2>");
    if report.problems.is_empty() {
        html.push_str("<p class=\"none\">none</p>");
    } else {
        html.push_str("<ul id=\"problems\">");
        for p in &report.problems {
            html.push_str(&format!(
                "<li class=\"problem\">{}: {}</li>",
                escape(&p.file),
                escape(&p.problem)
            ));
        }
        html.push_str("</ul>");
    }
    html.push_str(
        "</section><section><h2>Contact sheet</h2><div class=\"grid\" id=\"contact-sheet\">",
    );
    for image in &report.images {
        let img = image
            .thumbnail
            .as_ref()
            .map(|t| {
                format!(
                    "<img src=\"{}\" alt=\"{}\">",
                    escape(t),
                    escape(&image.name)
                )
            })
            .unwrap_or_default();
        html.push_str(&format!(
            "<figure data-name=\"{}\">{img}<figcaption><b>{}</b><br>{}x{} {}{}<br>{}</figcaption></figure>",
            escape(&image.name),
            escape(&image.name),
            image.width,
            image.height,
            image.format,
            image.bucket.as_ref().map(|b| format!(" · bucket {b}")).unwrap_or_default(),
            escape(&scores_line(&image.scores))
        ));
    }
    html.push_str("</div></section>");
    let rejected_with_thumbs: Vec<&Rejection> = report
        .rejected
        .iter()
        .filter(|r| r.thumbnail.is_some())
        .collect();
    if !rejected_with_thumbs.is_empty() {
        html.push_str("<section class=\"rejected\"><h2>Rejected images</h2><div class=\"grid\">");
        for r in rejected_with_thumbs {
            html.push_str(&format!(
                "<figure><img src=\"{}\" alt=\"\"><figcaption><b>{}</b><br>{}</figcaption></figure>",
                escape(r.thumbnail.as_deref().unwrap_or("")),
                escape(&r.source),
                escape(&r.reasons.join("; "))
            ));
        }
        html.push_str("</div></section>");
    }
    html.push_str("\n</body></html>\n");
    html
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn duplicate_groups_link_transitively() {
        let hashes = vec![
            ("a".to_string(), 0u64),
            ("b".to_string(), 0b111),
            ("c".to_string(), 0b111_111),
            ("d".to_string(), u64::MAX),
        ];
        assert_eq!(duplicate_groups(&hashes, 3), vec![vec!["a", "b", "c"]]);
        assert!(duplicate_groups(&hashes, 2).is_empty());
    }

    #[test]
    fn layouts_are_found() {
        let dir = tempfile::tempdir().unwrap();
        let one_shot = dir.path().join("set");
        std::fs::create_dir_all(one_shot.join("images")).unwrap();
        assert_eq!(
            locate(&one_shot),
            (one_shot.join("images"), one_shot.join("metadata"))
        );
        let daemon = dir.path().join("processed").join("lora");
        std::fs::create_dir_all(daemon.join("images")).unwrap();
        let expected = (
            daemon.join("images"),
            dir.path().join("metadata").join("lora"),
        );
        assert_eq!(locate(&daemon), expected);
        assert_eq!(locate(&daemon.join("images")), expected);
    }

    #[test]
    fn html_escapes_names() {
        let report = assemble(
            Path::new("/x"),
            "log",
            Vec::new(),
            &[],
            vec![vec!["<a>".into(), "b&c".into()]],
            Vec::new(),
        );
        let html = render_html(&report);
        assert!(html.contains("&lt;a&gt; ≈ b&amp;c"));
        assert!(!html.contains("<a>"));
    }
}
