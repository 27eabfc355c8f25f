//! `[http]` (the daemon's HTTP listener: API, dashboard, metrics) and `[[notify]]` (webhooks).

use super::*;

/// Where the listener binds unless `[http] listen` says otherwise.
pub(crate) const DEFAULT_LISTEN: &str = "127.0.0.1:8480";
/// A bearer token shorter than this is refused: it would be guessable.
const MIN_TOKEN_CHARS: usize = 16;

/// The `[http]` table, resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpSettings {
    /// Where to listen; `None` when `listen = ""` turns the listener off.
    pub listen: Option<std::net::SocketAddr>,
    /// The bearer token every request must carry (required off loopback).
    pub token: Option<String>,
}

impl Default for HttpSettings {
    fn default() -> Self {
        HttpSettings {
            listen: DEFAULT_LISTEN.parse().ok(),
            token: None,
        }
    }
}

/// What a webhook can be told about: a job's end.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum NotifyEvent {
    Done,
    Failed,
    GaveUp,
    Expired,
    Cancelled,
}

impl NotifyEvent {
    pub const ALL: [NotifyEvent; 5] = [
        NotifyEvent::Done,
        NotifyEvent::Failed,
        NotifyEvent::GaveUp,
        NotifyEvent::Expired,
        NotifyEvent::Cancelled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            NotifyEvent::Done => "done",
            NotifyEvent::Failed => "failed",
            NotifyEvent::GaveUp => "gave-up",
            NotifyEvent::Expired => "expired",
            NotifyEvent::Cancelled => "cancelled",
        }
    }

    pub fn parse(text: &str) -> Option<NotifyEvent> {
        NotifyEvent::ALL.into_iter().find(|e| e.as_str() == text)
    }
}

/// One `[[notify]]` table: a URL that hears of jobs' ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotifyTarget {
    pub url: String,
    pub events: Vec<NotifyEvent>,
    /// Signs each body with HMAC-SHA256 (`X-Darkroom-Signature: sha256=<hex>`).
    pub secret: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawHttp {
    pub(crate) listen: Option<String>,
    pub(crate) token: Option<String>,
    pub(crate) token_file: Option<PathBuf>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawNotify {
    pub(crate) url: Option<String>,
    pub(crate) events: Option<Vec<String>>,
    pub(crate) secret: Option<String>,
    pub(crate) secret_file: Option<PathBuf>,
}

/// A secret given inline or in a file (trailing newline dropped); both at once is a problem.
fn secret_of(
    inline: Option<String>,
    file: Option<PathBuf>,
    key: &str,
    base: &Path,
    line: usize,
    problems: &mut Problems,
) -> Option<String> {
    match (inline, file) {
        (Some(_), Some(_)) => {
            problems.push(
                key,
                Some(line),
                format!("give {key} or {key}_file, not both"),
            );
            None
        }
        (Some(text), None) => Some(text),
        (None, Some(file)) => {
            let path = resolve_path(base, &file);
            match std::fs::read_to_string(&path) {
                Ok(text) => Some(text.trim_end_matches(['\n', '\r']).to_string()),
                Err(e) => {
                    problems.push(
                        format!("{key}_file"),
                        Some(line),
                        format!("cannot read {}: {e}", path.display()),
                    );
                    None
                }
            }
        }
        (None, None) => None,
    }
}

pub(crate) fn resolve_http(
    table: Option<toml::Spanned<toml::Table>>,
    base: &Path,
    problems: &mut Problems,
) -> HttpSettings {
    let Some(spanned) = table else {
        return HttpSettings::default();
    };
    let line = problems.line_of(spanned.span().start);
    let raw: RawHttp = read_table(spanned.into_inner(), "http", line, problems);
    let listen_text = raw.listen.unwrap_or_else(|| DEFAULT_LISTEN.into());
    let listen = if listen_text.trim().is_empty() {
        None
    } else {
        match listen_text.trim().parse::<std::net::SocketAddr>() {
            Ok(address) => Some(address),
            Err(_) => {
                problems.push(
                    "http.listen",
                    Some(line),
                    format!(
                        "'{listen_text}' is not an address and port: use e.g. \"127.0.0.1:8480\", \
                         \"[::1]:8480\", \"0.0.0.0:8480\" (with a token), or \"\" to turn the \
                         listener off"
                    ),
                );
                None
            }
        }
    };
    let token = secret_of(
        raw.token,
        raw.token_file,
        "http.token",
        base,
        line,
        problems,
    );
    if let Some(token) = &token {
        if token.chars().count() < MIN_TOKEN_CHARS
            || token.chars().any(|c| c.is_whitespace() || c.is_control())
        {
            problems.push(
                "http.token",
                Some(line),
                format!(
                    "must be at least {MIN_TOKEN_CHARS} characters with no spaces: generate one \
                     with `openssl rand -hex 32`"
                ),
            );
        }
    }
    if let Some(address) = listen {
        if !address.ip().is_loopback() && token.is_none() {
            problems.push(
                "http.listen",
                Some(line),
                format!(
                    "{address} is reachable from other machines: set [http] token (or \
                     token_file) so that every request must carry `Authorization: Bearer \
                     <token>`, or listen on 127.0.0.1"
                ),
            );
        }
    }
    HttpSettings { listen, token }
}

pub(crate) fn resolve_notify(
    tables: Vec<toml::Spanned<toml::Table>>,
    base: &Path,
    problems: &mut Problems,
) -> Vec<NotifyTarget> {
    let mut targets: Vec<NotifyTarget> = Vec::new();
    for (index, spanned) in tables.into_iter().enumerate() {
        let line = problems.line_of(spanned.span().start);
        let label = format!("notify[{index}]");
        let raw: RawNotify = read_table(spanned.into_inner(), &label, line, problems);
        let url = raw.url.unwrap_or_default();
        let scheme_ok = url.starts_with("http://") || url.starts_with("https://");
        if !scheme_ok || url.len() <= "https://".len() {
            problems.push(
                format!("{label}.url"),
                Some(line),
                format!("'{url}' is not an http:// or https:// URL to POST each notification to"),
            );
        } else if targets.iter().any(|t| t.url == url) {
            problems.push(
                format!("{label}.url"),
                Some(line),
                format!("{url} is already a [[notify]] target: merge their events"),
            );
        }
        let mut events = Vec::new();
        match raw.events {
            None => events.extend(NotifyEvent::ALL),
            Some(names) => {
                for name in names {
                    match NotifyEvent::parse(&name) {
                        Some(event) if !events.contains(&event) => events.push(event),
                        Some(_) => {}
                        None => problems.push(
                            format!("{label}.events"),
                            Some(line),
                            format!(
                                "'{name}' is not an event: use {}",
                                NotifyEvent::ALL.map(NotifyEvent::as_str).join(", ")
                            ),
                        ),
                    }
                }
            }
        }
        let secret = secret_of(
            raw.secret,
            raw.secret_file,
            &format!("{label}.secret"),
            base,
            line,
            problems,
        );
        targets.push(NotifyTarget {
            url,
            events,
            secret,
        });
    }
    targets
}
