//! The daemon's HTTP listener (`[http] listen`): the JSON API under `/api/v1`, server-sent
//! events, the dashboard, `/metrics`, `/healthz` and `/readyz`.
//!
//! It runs on a tokio runtime of its own thread; pixel work never runs here (thumbnails go
//! to tokio's blocking pool). It reads the journal through read-only connections of its own
//! and never writes it: a file it receives lands in the rule's folder by temp file and
//! rename, and takes the same way as a dropped one (intake, claim, recipe), and a retry or
//! a cancel is a [`Command`] that the main thread carries out.
//!
//! Every request passes [`guard`]: the bearer token when one is set, the `Host` header on a
//! token-less listener (DNS rebinding), and for state-changing calls proof that the request
//! did not come from a page of another site (a custom header or a JSON body, which a
//! cross-site form cannot send without a CORS preflight this server never grants).

use crate::daemon::config::Config;
use crate::daemon::journal::{Job, Opening, SqlStore, Store};
use crate::daemon::metrics::Metrics;
use crate::daemon::model_lane::ModelLane;
use crate::daemon::trees::Trees;
use anyhow::Context as _;
use axum::extract::{Request, State as Shared};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};

mod api;
mod assets;
mod events;
mod files;

/// The header a script or the dashboard sends with every state-changing request (any
/// value): a page of another site cannot send it without a preflight, which is refused.
pub const REQUEST_HEADER: &str = "x-darkroom-request";
/// The cookie the dashboard keeps the token in after `/?token=...` (HttpOnly, SameSite=Strict).
const TOKEN_COOKIE: &str = "darkroom_token";

/// What the main thread is asked to do for a request.
pub enum Command {
    /// Run a failed or cancelled job again from the start.
    Retry {
        job: i64,
        reply: tokio::sync::oneshot::Sender<Result<Job, Refusal>>,
    },
    /// Stop a job that has not finished; its input is set aside.
    Cancel {
        job: i64,
        reply: tokio::sync::oneshot::Sender<Result<Job, Refusal>>,
    },
}

/// Why the main thread did not carry out a [`Command`].
#[derive(Debug, Clone)]
pub enum Refusal {
    NotFound(String),
    /// Not in a state that allows it; the text says what would.
    Conflict(String),
    Internal(String),
}

/// What the listener knows of the daemon, shared with its main thread.
pub struct Context {
    /// The config in force (replaced on reload).
    pub config: Arc<RwLock<Arc<Config>>>,
    pub metrics: Arc<Metrics>,
    pub lane: ModelLane,
    pub trees: Trees,
    /// The watchers are up (false while a reload failed to start them, or while stopping).
    pub watching: AtomicBool,
    /// Sends a command to the main thread; false once it is gone.
    pub commands: Box<dyn Fn(Command) -> bool + Send + Sync>,
}

impl Context {
    pub fn config(&self) -> Arc<Config> {
        Arc::clone(&self.config.read().unwrap_or_else(|p| p.into_inner()))
    }
}

/// The running listener.
pub struct Listener {
    pub address: SocketAddr,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Listener {
    fn drop(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Read-only journal connections for the handlers, used on tokio's blocking pool.
struct ReadPool {
    connections: Vec<Mutex<SqlStore>>,
    next: AtomicUsize,
}

impl ReadPool {
    fn open(journal: &Opening, size: usize) -> anyhow::Result<ReadPool> {
        let mut connections = Vec::new();
        for _ in 0..size {
            let store = journal.open_reader("http").with_context(|| {
                format!(
                    "cannot open the journal {} for reading",
                    journal.location.describe(&journal.state_dir)
                )
            })?;
            connections.push(Mutex::new(store));
        }
        Ok(ReadPool {
            connections,
            next: AtomicUsize::new(0),
        })
    }

    fn with<T>(&self, read: impl FnOnce(&dyn Store) -> T) -> T {
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let count = self.connections.len();
        for offset in 0..count {
            if let Ok(store) = self.connections[(start + offset) % count].try_lock() {
                return read(&*store);
            }
        }
        let store = self.connections[start % count]
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        read(&*store)
    }
}

/// What every handler gets.
#[derive(Clone)]
struct App {
    context: Arc<Context>,
    pool: Arc<ReadPool>,
    feed: events::Feed,
    token: Option<Arc<str>>,
    /// The listener's own address (the `Host` check on a token-less listener).
    address: SocketAddr,
}

impl App {
    /// Runs a journal read on the blocking pool.
    async fn read<T: Send + 'static>(
        &self,
        read: impl FnOnce(&dyn Store) -> anyhow::Result<T> + Send + 'static,
    ) -> Result<T, ApiError> {
        let pool = Arc::clone(&self.pool);
        tokio::task::spawn_blocking(move || pool.with(read))
            .await
            .map_err(|e| ApiError::internal(format!("the journal read stopped: {e}")))?
            .map_err(|e| ApiError::internal(format!("{e:#}")))
    }

    /// Sends a command to the main thread and waits for its answer.
    async fn command(
        &self,
        make: impl FnOnce(tokio::sync::oneshot::Sender<Result<Job, Refusal>>) -> Command,
    ) -> Result<Job, ApiError> {
        let (reply, answer) = tokio::sync::oneshot::channel();
        if !(self.context.commands)(make(reply)) {
            return Err(ApiError::unavailable("the daemon is stopping"));
        }
        match answer.await {
            Err(_) => Err(ApiError::unavailable("the daemon is stopping")),
            Ok(Ok(job)) => Ok(job),
            Ok(Err(Refusal::NotFound(text))) => Err(ApiError::new(StatusCode::NOT_FOUND, text)),
            Ok(Err(Refusal::Conflict(text))) => Err(ApiError::new(StatusCode::CONFLICT, text)),
            Ok(Err(Refusal::Internal(text))) => Err(ApiError::internal(text)),
        }
    }
}

/// An error answer: its status and a JSON body `{"error": "..."}` that says what to do.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            message: message.into(),
        }
    }

    fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, message)
    }

    fn not_found(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, message)
    }

    fn internal(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, message)
    }

    fn unavailable(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if self.status.is_server_error() {
            tracing::error!(status = self.status.as_u16(), error = %self.message, "HTTP request failed");
        }
        error_response(self.status, &self.message)
    }
}

fn error_response(status: StatusCode, message: &str) -> Response {
    let mut response = (status, Json(json!({ "error": message }))).into_response();
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// Binds `address` and serves on a thread of its own until the [`Listener`] is dropped.
pub fn start(
    address: SocketAddr,
    token: Option<String>,
    context: Arc<Context>,
) -> anyhow::Result<Listener> {
    let config = context.config();
    let state_dir = config.daemon.state_dir.clone();
    let listener = std::net::TcpListener::bind(address).map_err(|e| {
        anyhow::anyhow!(
            "cannot listen on {address} for the API and dashboard: {e}. Set [http] listen to \
             a free address (\"127.0.0.1:8481\"), or to \"\" to turn the listener off"
        )
    })?;
    listener.set_nonblocking(true)?;
    let bound = listener.local_addr()?;
    let pool = Arc::new(ReadPool::open(&config.daemon.journal_opening(), 4)?);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .max_blocking_threads(16)
        .thread_name("darkroom-http")
        .enable_all()
        .build()
        .context("cannot start the HTTP runtime")?;
    let (shutdown, stop) = tokio::sync::oneshot::channel::<()>();
    let feed = {
        let _entered = runtime.enter();
        events::Feed::start(Arc::clone(&pool))
    };
    let app = App {
        context,
        pool,
        feed,
        token: token.map(Arc::from),
        address: bound,
    };
    let router = router(app);
    let thread = std::thread::Builder::new()
        .name("darkroom-http".into())
        .spawn(move || {
            runtime.block_on(async move {
                let listener = match tokio::net::TcpListener::from_std(listener) {
                    Ok(listener) => listener,
                    Err(e) => {
                        tracing::error!(error = %e, "the HTTP listener cannot start");
                        return;
                    }
                };
                let served = axum::serve(listener, router)
                    .with_graceful_shutdown(async {
                        let _ = stop.await;
                    })
                    .await;
                if let Err(e) = served {
                    tracing::error!(error = %e, "the HTTP listener stopped");
                }
            });
            runtime.shutdown_timeout(std::time::Duration::from_secs(2));
        })
        .context("cannot start the HTTP thread")?;
    // What a script or a test needs when the port was chosen by the system (`:0`).
    let _ = std::fs::write(state_dir.join("http.address"), format!("{bound}\n"));
    Ok(Listener {
        address: bound,
        shutdown: Some(shutdown),
        thread: Some(thread),
    })
}

fn router(app: App) -> axum::Router {
    use axum::routing::{get, post};
    let upload_limit = app.context.config().daemon.limits.max_file_bytes;
    // A multipart body carries its boundaries and part headers besides the file.
    let body_limit = usize::try_from(upload_limit.saturating_add(64 * 1024)).unwrap_or(usize::MAX);
    axum::Router::new()
        .route("/", get(assets::dashboard))
        .route("/dashboard.js", get(assets::script))
        .route("/dashboard.css", get(assets::style))
        .route("/healthz", get(api::healthz))
        .route("/readyz", get(api::readyz))
        .route("/metrics", get(api::metrics))
        .route("/api/v1/openapi.json", get(assets::openapi))
        .route("/api/v1/status", get(api::status))
        .route("/api/v1/rules", get(api::rules))
        .route("/api/v1/rules/{rule}/images", post(files::upload))
        .route("/api/v1/rules/{rule}/report", get(files::report))
        .route("/api/v1/jobs", get(api::jobs))
        .route("/api/v1/jobs/{id}", get(api::job))
        .route("/api/v1/jobs/{id}/input", get(files::input))
        .route("/api/v1/jobs/{id}/output", get(files::output))
        .route("/api/v1/jobs/{id}/proxy", get(files::proxy))
        .route("/api/v1/jobs/{id}/thumbnail", get(files::thumbnail))
        .route("/api/v1/jobs/{id}/return", post(files::give_return))
        .route("/api/v1/jobs/{id}/retry", post(api::retry))
        .route("/api/v1/jobs/{id}/cancel", post(api::cancel))
        .route("/api/v1/events", get(events::stream))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::extract::DefaultBodyLimit::max(body_limit))
        .layer(axum::middleware::from_fn_with_state(app.clone(), guard))
        .layer(axum::middleware::map_response(json_errors))
        .with_state(app)
}

async fn not_found(uri: axum::http::Uri) -> ApiError {
    ApiError::not_found(format!(
        "no such endpoint: {}; the API is described at /api/v1/openapi.json",
        uri.path()
    ))
}

async fn method_not_allowed(method: Method, uri: axum::http::Uri) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        format!(
            "{method} is not allowed on {}; /api/v1/openapi.json lists each endpoint's methods",
            uri.path()
        ),
    )
}

/// Error answers the framework makes itself (a body over the limit, a malformed path
/// parameter) become JSON like every other error.
async fn json_errors(response: Response) -> Response {
    let status = response.status();
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return response;
    }
    let message = match status {
        StatusCode::PAYLOAD_TOO_LARGE => {
            "the body is larger than [daemon.limits] max_file_mib allows".to_string()
        }
        _ => format!(
            "{}: see /api/v1/openapi.json for what this endpoint takes",
            status.canonical_reason().unwrap_or("error")
        ),
    };
    let mut answer = error_response(status, &message);
    if let Some(allow) = response.headers().get(header::ALLOW) {
        answer.headers_mut().insert(header::ALLOW, allow.clone());
    }
    answer
}

/// Compares two byte strings in time that does not depend on where they differ.
fn same_secret(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn cookie_token(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == TOKEN_COOKIE)
        .map(|(_, value)| value.to_string())
}

/// The host part of a `Host` header (`127.0.0.1:8480`, `[::1]:8480`, `localhost`).
fn host_name(host: &str) -> &str {
    if let Some(rest) = host.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    host.rsplit_once(':').map_or(host, |(name, _)| name)
}

/// Authentication, the `Host` check and cross-site protection, before any handler.
async fn guard(Shared(app): Shared<App>, request: Request, next: Next) -> Response {
    let headers = request.headers();
    let path = request.uri().path().to_string();
    if let Some(token) = &app.token {
        let bearer = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim);
        let query_token = (path == "/" && request.method() == Method::GET)
            .then(|| query_value(request.uri().query(), "token"))
            .flatten();
        let cookie = cookie_token(headers);
        let presented = bearer
            .map(str::to_string)
            .or(cookie)
            .or(query_token.clone());
        let ok = presented
            .as_deref()
            .is_some_and(|p| same_secret(p.as_bytes(), token.as_bytes()));
        if path != "/healthz" && !ok {
            let mut response = error_response(
                StatusCode::UNAUTHORIZED,
                "this listener needs its token: send `Authorization: Bearer <token>` (the \
                 [http] token of the daemon's config), or open /?token=<token> once in a browser",
            );
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"darkroom\""),
            );
            return response;
        }
        if query_token.is_some() && ok {
            // The dashboard keeps the token in a cookie and drops it from the address bar.
            let cookie = format!("{TOKEN_COOKIE}={token}; Path=/; HttpOnly; SameSite=Strict");
            let mut response = StatusCode::SEE_OTHER.into_response();
            response
                .headers_mut()
                .insert(header::LOCATION, HeaderValue::from_static("/"));
            if let Ok(value) = HeaderValue::from_str(&cookie) {
                response.headers_mut().insert(header::SET_COOKIE, value);
            }
            return response;
        }
    } else {
        // Without a token only loopback listens: a page of any site could still reach it
        // through a DNS name that resolves to 127.0.0.1, so the Host must name this machine.
        let host = headers
            .get(header::HOST)
            .and_then(|v| v.to_str().ok())
            .map(host_name);
        let local = |name: &str| {
            name.eq_ignore_ascii_case("localhost")
                || name
                    .parse::<std::net::IpAddr>()
                    .is_ok_and(|ip| ip.is_loopback() || ip == app.address.ip())
        };
        if !host.is_some_and(local) {
            return error_response(
                StatusCode::MISDIRECTED_REQUEST,
                "the Host header must name this machine (localhost, 127.0.0.1 or [::1]); to \
                 reach darkroom by another name, set [http] token and listen on that address",
            );
        }
    }
    let changes_state = !matches!(
        *request.method(),
        Method::GET | Method::HEAD | Method::OPTIONS
    );
    if changes_state {
        let fetch_site = headers
            .get("sec-fetch-site")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("none");
        let json_body = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("application/json"));
        let marked = headers.contains_key(REQUEST_HEADER) || json_body;
        let cross_site = matches!(fetch_site, "cross-site" | "same-site");
        if cross_site || !marked {
            return error_response(
                StatusCode::FORBIDDEN,
                &format!(
                    "{} requests must carry the header `X-Darkroom-Request: 1` (any value) and \
                     come from this server's own pages: this keeps pages of other sites from \
                     acting through your browser",
                    request.method()
                ),
            );
        }
    }
    let mut response = next.run(request).await;
    let headers = response.headers_mut();
    headers.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    headers.insert("x-frame-options", HeaderValue::from_static("DENY"));
    headers.insert("referrer-policy", HeaderValue::from_static("same-origin"));
    response
}

/// One value of a query string, percent-decoded.
fn query_value(query: Option<&str>, name: &str) -> Option<String> {
    query?
        .split('&')
        .filter_map(|pair| pair.split_once('=').or(Some((pair, ""))))
        .find(|(key, _)| *key == name)
        .map(|(_, value)| percent_decode(value))
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = bytes
                    .get(i + 1..i + 3)
                    .filter(|h| h.iter().all(u8::is_ascii_hexdigit))
                    .and_then(|h| std::str::from_utf8(h).ok())
                    .and_then(|h| u8::from_str_radix(h, 16).ok());
                if let Some(byte) = hex {
                    out.push(byte);
                    i += 3;
                    continue;
                }
                out.push(b'%');
            }
            byte => out.push(byte),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Where the journal's paths are shown relative to: the root of the trees.
fn shown_path(config: &Config, path: &std::path::Path) -> String {
    path.strip_prefix(&config.daemon.root)
        .map(|p| p.to_path_buf())
        .unwrap_or_else(|_| PathBuf::from(path))
        .display()
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_and_queries_are_read_as_browsers_send_them() {
        assert_eq!(host_name("127.0.0.1:8480"), "127.0.0.1");
        assert_eq!(host_name("[::1]:8480"), "::1");
        assert_eq!(host_name("localhost"), "localhost");
        assert_eq!(
            query_value(Some("a=1&name=my%20photo+1.jpg"), "name").as_deref(),
            Some("my photo 1.jpg")
        );
        assert_eq!(
            query_value(Some("name=%zz%4"), "name").as_deref(),
            Some("%zz%4")
        );
        assert_eq!(query_value(Some("x"), "x").as_deref(), Some(""));
        assert!(same_secret(b"abc", b"abc"));
        assert!(!same_secret(b"abc", b"abd"));
        assert!(!same_secret(b"abc", b"abcd"));
    }
}
