//! Files over HTTP: uploads into a rule's inbox, returns into its exchange, downloads of a
//! job's input, output and proxy, thumbnails, and a normalise rule's validation report.
//!
//! A received file is written next to where a person would drop it (temp file, fsync,
//! rename, never replacing anything) and then takes the dropped file's way: the intake
//! claims it and the journal and recipe take it from there.

use super::api::{job_id, job_json, load_job, path_text, PathText};
use super::*;
use crate::daemon::journal::{JobQuery, Kind, State};
use crate::io::decode;
use axum::body::{Body, Bytes};
use axum::extract::{FromRequest, RawQuery};
use std::path::Path;
use std::time::Duration;

/// How long an upload waits for its file to be claimed before answering 202.
const CLAIM_WAIT: Duration = Duration::from_secs(15);
/// The longest file name kept from a client (in bytes, before the extension).
const MAX_STEM_BYTES: usize = 120;
/// Thumbnails fit this square.
const THUMBNAIL_SIDE: u32 = 320;

/// A file name a client sent, made safe: its last path component only, no control
/// characters, no leading dots, at most [`MAX_STEM_BYTES`] of stem; `upload` when
/// nothing is left.
pub(super) fn safe_name(given: &str) -> String {
    let last = given.rsplit(['/', '\\']).next().unwrap_or("");
    let cleaned: String = last
        .chars()
        .filter(|c| !c.is_control())
        .map(|c| {
            if matches!(c, ':' | '*' | '?' | '"' | '<' | '>' | '|') {
                '_'
            } else {
                c
            }
        })
        .collect();
    let cleaned = cleaned.trim().trim_start_matches('.').trim().to_string();
    let (stem, ext) = match cleaned.rsplit_once('.') {
        Some((stem, ext)) if !stem.is_empty() && ext.len() <= 8 && !ext.is_empty() => {
            (stem.to_string(), Some(ext.to_string()))
        }
        _ => (cleaned.clone(), None),
    };
    let mut stem = stem;
    if stem.len() > MAX_STEM_BYTES {
        let mut cut = MAX_STEM_BYTES;
        while !stem.is_char_boundary(cut) {
            cut -= 1;
        }
        stem.truncate(cut);
    }
    if stem.trim().is_empty() {
        stem = "upload".into();
    }
    match ext {
        Some(ext) => format!("{stem}.{ext}"),
        None => stem,
    }
}

/// The extension darkroom writes for a sniffed image format.
fn extension_of(bytes: &[u8]) -> Option<&'static str> {
    use image::ImageFormat as F;
    match decode::sniff(bytes).ok()? {
        F::Png => Some("png"),
        F::Jpeg => Some("jpg"),
        F::Tiff => Some("tif"),
        F::WebP => Some("webp"),
        F::Gif => Some("gif"),
        _ => None,
    }
}

/// The name an upload is stored under in `dir`: the client's name made safe, an image
/// extension added when the name has none that `patterns` take, and a free name (never an
/// existing file's).
fn stored_name(dir: &Path, given: &str, bytes: &[u8], patterns: &[glob::Pattern]) -> PathBuf {
    let mut name = safe_name(given);
    let taken = patterns.is_empty() || patterns.iter().any(|p| p.matches(&name));
    if !taken {
        if let Some(ext) = extension_of(bytes) {
            name = format!("{name}.{ext}");
        }
    }
    let mut candidate = dir.join(&name);
    let mut n = 1;
    while candidate.exists() || candidate.symlink_metadata().is_ok() {
        n += 1;
        let path = Path::new(&name);
        let stem = path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        candidate = match path.extension() {
            Some(ext) => dir.join(format!("{stem}_{n}.{}", ext.to_string_lossy())),
            None => dir.join(format!("{stem}_{n}")),
        };
    }
    candidate
}

/// The body of an upload: the raw body, or the part named `file` of a multipart form (its
/// file name is the default name).
/// An error reading a body, over the size limit said in the config's words.
fn body_error(status: StatusCode, what: &str, detail: String) -> ApiError {
    if status == StatusCode::PAYLOAD_TOO_LARGE {
        return ApiError::new(
            status,
            "the file is larger than [daemon.limits] max_file_mib allows: send a smaller \
             file, or raise the limit in the daemon's config",
        );
    }
    ApiError::new(status, format!("{what}: {detail}"))
}

async fn received_file(request: Request) -> Result<(Bytes, Option<String>), ApiError> {
    let multipart = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("multipart/form-data"));
    if !multipart {
        let bytes = Bytes::from_request(request, &())
            .await
            .map_err(|e| body_error(e.status(), "cannot read the body", e.body_text()))?;
        return Ok((bytes, None));
    }
    let mut form = axum::extract::Multipart::from_request(request, &())
        .await
        .map_err(|e| body_error(e.status(), "not a multipart form", e.body_text()))?;
    let mut file = None;
    loop {
        let field = form
            .next_field()
            .await
            .map_err(|e| body_error(e.status(), "malformed multipart body", e.body_text()))?;
        let Some(field) = field else {
            break;
        };
        let part = field.name().unwrap_or("").to_string();
        if part != "file" || file.is_some() {
            return Err(ApiError::bad_request(format!(
                "unexpected part '{}' in the form: it takes exactly one part, `file` \
                 (`-F file=@photo.jpg`)",
                part.escape_default()
            )));
        }
        let name = field.file_name().map(str::to_string);
        let bytes = field.bytes().await.map_err(|e| {
            body_error(
                e.status(),
                "malformed multipart body: cannot read the `file` part",
                e.body_text(),
            )
        })?;
        file = Some((bytes, name));
    }
    file.ok_or_else(|| {
        ApiError::bad_request(
            "the multipart form has no part named `file`: send the image as \
             `-F file=@photo.jpg`, or as the raw body with ?name=photo.jpg",
        )
    })
}

/// Writes `bytes` as a new file in `dir` under the name [`stored_name`] chooses from
/// `given`, on the blocking pool. Two uploads of the same name at once both land: the one
/// that finds its name taken at the rename takes the next free one.
async fn store_new(
    dir: PathBuf,
    given: String,
    bytes: Bytes,
    patterns: Vec<glob::Pattern>,
) -> Result<PathBuf, ApiError> {
    tokio::task::spawn_blocking(move || {
        std::fs::create_dir_all(&dir)?;
        loop {
            let target = stored_name(&dir, &given, &bytes, &patterns);
            match crate::io::atomic::write_new(&target, &bytes) {
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(e),
                Ok(()) => return Ok(target),
            }
        }
    })
    .await
    .map_err(|e| ApiError::internal(format!("the write stopped: {e}")))?
    .map_err(|e| {
        ApiError::new(
            StatusCode::INSUFFICIENT_STORAGE,
            format!("cannot write the file: {e}"),
        )
    })
}

/// Waits for the job claimed from `path` (as the intake claims any dropped file).
async fn claimed_job(
    app: &App,
    rule: &str,
    kind: Kind,
    path: &Path,
) -> Result<Option<Job>, ApiError> {
    let deadline = tokio::time::Instant::now() + CLAIM_WAIT;
    loop {
        let query = JobQuery {
            rule: Some(rule.to_string()),
            kind: Some(kind),
            claimed_path: Some(path.to_path_buf()),
            limit: 1,
            ..JobQuery::default()
        };
        let found = app.read(move |store| Ok(store.jobs_page(&query)?)).await?;
        if let Some(job) = found.into_iter().next() {
            return Ok(Some(job));
        }
        if tokio::time::Instant::now() >= deadline {
            return Ok(None);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn limit_check(app: &App, bytes: &Bytes) -> Result<(), ApiError> {
    let limit = app.context.config().daemon.limits.max_file_bytes;
    if bytes.len() as u64 > limit {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "the file is {} bytes; [daemon.limits] max_file_mib allows {limit}",
                bytes.len()
            ),
        ));
    }
    if bytes.is_empty() {
        return Err(ApiError::bad_request(
            "the body is empty: send the image as the raw body or as the multipart part `file`",
        ));
    }
    Ok(())
}

/// `POST /api/v1/rules/{rule}/images?name=photo.jpg`: the image lands in the rule's inbox.
pub(super) async fn upload(
    Shared(app): Shared<App>,
    rule: PathText,
    RawQuery(query): RawQuery,
    request: Request,
) -> Result<Response, ApiError> {
    let rule_name = path_text(rule)?;
    let config = app.context.config();
    let Some(rule) = config.rule(&rule_name) else {
        return Err(ApiError::not_found(format!(
            "no rule '{rule_name}': the rules are {}",
            config
                .rules
                .iter()
                .map(|r| r.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        )));
    };
    let (bytes, part_name) = received_file(request).await?;
    limit_check(&app, &bytes)?;
    let given = query_value(query.as_deref(), "name")
        .filter(|n| !n.is_empty())
        .or(part_name)
        .unwrap_or_else(|| "upload".into());
    let target = store_new(rule.watch.clone(), given, bytes, rule.patterns.clone()).await?;
    let name = target
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    tracing::info!(rule = %rule.name, file = %target.display(), "received over HTTP");
    match claimed_job(&app, &rule.name, Kind::Input, &target).await? {
        Some(job) => {
            let location = format!("/api/v1/jobs/{}", job.id);
            let mut body = job_json(&job, &[], &config);
            body["name"] = json!(name);
            let mut response = (StatusCode::CREATED, Json(body)).into_response();
            if let Ok(value) = HeaderValue::from_str(&location) {
                response.headers_mut().insert(header::LOCATION, value);
            }
            Ok(response)
        }
        None => {
            let ask = format!(
                "/api/v1/jobs?rule={}&file={}",
                rule.name,
                percent_encode(&name)
            );
            Ok((
                StatusCode::ACCEPTED,
                Json(json!({
                    "id": null,
                    "rule": rule.name,
                    "name": name,
                    "state": "received",
                    "ask": ask,
                })),
            )
                .into_response())
        }
    }
}

fn percent_encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// `POST /api/v1/jobs/{id}/return`: the processed proxy of an original, written into the
/// rule's return folder under a name that starts with the proxy's (so it pairs by name,
/// with that job and no other).
pub(super) async fn give_return(
    Shared(app): Shared<App>,
    id: PathText,
    request: Request,
) -> Result<Response, ApiError> {
    let id = job_id(id)?;
    let (job, _, _) = load_job(&app, id).await?;
    let config = app.context.config();
    let folder = config
        .rule(&job.rule)
        .and_then(|r| r.recipe.return_folder().map(|f| f.path.to_path_buf()));
    let (Some(folder), Kind::Input) = (folder, job.kind) else {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            format!(
                "job {id} is not an original of a split-to-proxy rule: only those take a return"
            ),
        ));
    };
    let Some(proxy) = job.proxy_path.clone() else {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            format!(
                "job {id} has no proxy yet (it is {}): wait for awaiting-return",
                job.state.as_str()
            ),
        ));
    };
    let open = matches!(
        job.state,
        State::AwaitingReturn | State::Expired | State::Done
    ) && !job.closed;
    if !open {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            format!(
                "job {id} takes no return now (it is {}{}); retry it to make a new proxy",
                job.state.as_str(),
                if job.closed {
                    ", its return window closed"
                } else {
                    ""
                }
            ),
        ));
    }
    let (bytes, _) = received_file(request).await?;
    limit_check(&app, &bytes)?;
    let ext = extension_of(&bytes).unwrap_or("png");
    let stem = crate::io::names::stem_of(&proxy);
    let target = store_new(folder, format!("{stem}_http.{ext}"), bytes, Vec::new()).await?;
    tracing::info!(job = id, file = %target.display(), "return received over HTTP");
    let rule = job.rule.clone();
    let merge = claimed_job(&app, &rule, Kind::Return, &target).await?;
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({
            "id": id,
            "return_job": merge.as_ref().map(|m| m.id),
            "name": target.file_name().map(|n| n.to_string_lossy().into_owned()),
            "output": format!("/api/v1/jobs/{id}/output"),
        })),
    )
        .into_response())
}

fn content_type(path: &Path) -> &'static str {
    match path
        .extension()
        .map(|e| e.to_string_lossy().to_ascii_lowercase())
        .as_deref()
    {
        Some("png") => "image/png",
        Some("jpg" | "jpeg") => "image/jpeg",
        Some("tif" | "tiff") => "image/tiff",
        Some("webp") => "image/webp",
        Some("gif") => "image/gif",
        Some("json") => "application/json",
        Some("html") => "text/html; charset=utf-8",
        Some("txt") => "text/plain; charset=utf-8",
        _ => "application/octet-stream",
    }
}

/// Streams a file as the answer.
async fn send_file(path: &Path, what: &str) -> Result<Response, ApiError> {
    use tokio::io::AsyncReadExt;
    let file = tokio::fs::File::open(path).await.map_err(|e| {
        ApiError::not_found(format!(
            "the {what} is no longer at {}: {e}",
            path.display()
        ))
    })?;
    let length = file.metadata().await.map(|m| m.len()).ok();
    let stream = futures_util::stream::unfold(Some(file), |file| async move {
        let mut file = file?;
        let mut buffer = vec![0u8; 256 * 1024];
        match file.read(&mut buffer).await {
            Ok(0) => None,
            Ok(n) => {
                buffer.truncate(n);
                Some((Ok::<_, std::io::Error>(Bytes::from(buffer)), Some(file)))
            }
            Err(e) => Some((Err(e), None)),
        }
    });
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().replace(['"', '\\'], "_"))
        .unwrap_or_default();
    let mut response = Response::new(Body::from_stream(stream));
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(content_type(path)),
    );
    if let Some(length) = length {
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(length));
    }
    if let Ok(value) = HeaderValue::from_str(&format!("inline; filename=\"{name}\"")) {
        headers.insert(header::CONTENT_DISPOSITION, value);
    }
    Ok(response)
}

/// Which result of an original `output` serves: `?variant=N`, else the first done one.
fn output_path(job: &Job, children: &[Job], query: Option<&str>) -> Result<PathBuf, ApiError> {
    let variant = match query_value(query, "variant") {
        None => None,
        Some(text) => Some(text.parse::<u64>().map_err(|_| {
            ApiError::bad_request("variant must be a number (1 for the first return)")
        })?),
    };
    // A merge, or a one-step recipe's job, names its own output.
    if job.state == State::Done && children.is_empty() {
        if let Some(output) = &job.output_path {
            return Ok(output.clone());
        }
    }
    let done = children
        .iter()
        .filter(|c| c.state == State::Done && c.output_path.is_some())
        .find(|c| variant.is_none_or(|v| c.variant.map(u64::from) == Some(v)));
    match done {
        Some(child) => Ok(child.output_path.clone().expect("filtered")),
        None => Err(ApiError::not_found(format!(
            "job {} has no output yet (it is {}){}",
            job.id,
            job.state.as_str(),
            match job.state {
                State::AwaitingReturn => ": it waits for its processed proxy (POST .../return)",
                State::Failed | State::Cancelled => ": POST .../retry runs it again",
                _ => "",
            }
        ))),
    }
}

pub(super) async fn output(
    Shared(app): Shared<App>,
    id: PathText,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let id = job_id(id)?;
    let (job, children, _) = load_job(&app, id).await?;
    let path = output_path(&job, &children, query.as_deref())?;
    send_file(&path, "output").await
}

pub(super) async fn input(Shared(app): Shared<App>, id: PathText) -> Result<Response, ApiError> {
    let id = job_id(id)?;
    let (job, _, _) = load_job(&app, id).await?;
    send_file(&job.path, "input").await
}

pub(super) async fn proxy(Shared(app): Shared<App>, id: PathText) -> Result<Response, ApiError> {
    let id = job_id(id)?;
    let (job, _, _) = load_job(&app, id).await?;
    match (&job.proxy_path, job.closed) {
        (Some(path), false) => send_file(path, "proxy").await,
        (Some(_), true) => Err(ApiError::new(
            StatusCode::GONE,
            format!("job {id}'s return window closed and its proxy was removed"),
        )),
        (None, _) => Err(ApiError::not_found(format!(
            "job {id} has no proxy (it is {} of a {} job)",
            job.state.as_str(),
            job.kind.as_str()
        ))),
    }
}

/// `GET /jobs/{id}/thumbnail?of=input|output|proxy`: a JPEG that fits 320x320.
pub(super) async fn thumbnail(
    Shared(app): Shared<App>,
    id: PathText,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let id = job_id(id)?;
    let (job, children, _) = load_job(&app, id).await?;
    let of = query_value(query.as_deref(), "of").unwrap_or_else(|| "input".into());
    let path = match of.as_str() {
        "input" => job.path.clone(),
        "output" => output_path(&job, &children, None)?,
        "proxy" => job
            .proxy_path
            .clone()
            .filter(|_| !job.closed)
            .ok_or_else(|| ApiError::not_found(format!("job {id} has no proxy now")))?,
        other => {
            return Err(ApiError::bad_request(format!(
                "of='{other}': use input, output or proxy"
            )))
        }
    };
    let limits = app.context.config().daemon.limits;
    let jpeg = tokio::task::spawn_blocking(move || make_thumbnail(&path, &limits))
        .await
        .map_err(|e| ApiError::internal(format!("the thumbnail stopped: {e}")))??;
    Ok((
        [
            (header::CONTENT_TYPE, "image/jpeg"),
            (header::CACHE_CONTROL, "private, max-age=60"),
        ],
        jpeg,
    )
        .into_response())
}

fn make_thumbnail(path: &Path, limits: &decode::DecodeLimits) -> Result<Vec<u8>, ApiError> {
    let fit = |w: u32, h: u32| {
        let scale = (THUMBNAIL_SIDE as f64 / w.max(h).max(1) as f64).min(1.0);
        (
            ((w as f64 * scale).round() as u32).max(1),
            ((h as f64 * scale).round() as u32).max(1),
        )
    };
    let source = decode::load_for_proxy(path, limits, &fit).map_err(|e| {
        ApiError::not_found(format!(
            "no thumbnail: {} cannot be decoded: {e}",
            path.display()
        ))
    })?;
    let small = source
        .loaded
        .image
        .thumbnail(THUMBNAIL_SIDE, THUMBNAIL_SIDE)
        .to_rgb8();
    let mut jpeg = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut jpeg, 82)
        .encode_image(&small)
        .map_err(|e| ApiError::internal(format!("cannot encode the thumbnail: {e}")))?;
    Ok(jpeg)
}

/// `GET /api/v1/rules/{rule}/report`: a normalise rule's validation report (HTML).
pub(super) async fn report(Shared(app): Shared<App>, rule: PathText) -> Result<Response, ApiError> {
    let name = path_text(rule)?;
    let config = app.context.config();
    let Some(rule) = config.rule(&name) else {
        return Err(ApiError::not_found(format!("no rule '{name}'")));
    };
    if rule.recipe.name() != "normalise" {
        return Err(ApiError::not_found(format!(
            "rule '{name}' is {}: only normalise rules keep a validation report",
            rule.recipe.name()
        )));
    }
    let path = app
        .context
        .trees
        .metadata(&rule.name)
        .join("validation_report.html");
    if !path.exists() {
        return Err(ApiError::not_found(format!(
            "rule '{name}' has no report yet: it is written after the first image"
        )));
    }
    send_file(&path, "report").await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_names_cannot_leave_the_folder_or_grow_without_bound() {
        assert_eq!(safe_name("../../etc/passwd"), "passwd");
        assert_eq!(safe_name("..\\..\\boot.ini"), "boot.ini");
        assert_eq!(safe_name("a\0b.jpg"), "ab.jpg");
        assert_eq!(safe_name(".hidden.png"), "hidden.png");
        assert_eq!(safe_name(""), "upload");
        assert_eq!(safe_name(".."), "upload");
        assert_eq!(safe_name("/"), "upload");
        let long = format!("{}.jpg", "é".repeat(3000));
        let safe = safe_name(&long);
        assert!(safe.len() <= MAX_STEM_BYTES + 4, "{}", safe.len());
        assert!(safe.ends_with(".jpg"));
        assert_eq!(safe_name("what?.png"), "what_.png");
    }

    #[test]
    fn stored_names_never_replace_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let patterns = vec![glob::Pattern::new("*.png").unwrap()];
        let png = [0x89, b'P', b'N', b'G', 0x0d, 0x0a, 0x1a, 0x0a, 0, 0, 0, 0];
        let first = stored_name(dir.path(), "a.png", &png, &patterns);
        assert_eq!(first, dir.path().join("a.png"));
        std::fs::write(&first, b"x").unwrap();
        assert_eq!(
            stored_name(dir.path(), "a.png", &png, &patterns),
            dir.path().join("a_2.png")
        );
        assert_eq!(
            stored_name(dir.path(), "noext", &png, &patterns),
            dir.path().join("noext.png")
        );
    }
}
