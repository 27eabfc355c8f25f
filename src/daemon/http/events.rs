//! `GET /api/v1/events`: server-sent events of job transitions, read from the journal's
//! event log. One task polls the log and fans each new event out to every client; a client
//! that reconnects with `Last-Event-ID` (or `?after=`) first gets what it missed.

use super::api::event_json;
use super::*;
use axum::extract::RawQuery;
use axum::response::sse::{Event, KeepAlive, Sse};
use futures_util::stream::{self, Stream, StreamExt};
use std::convert::Infallible;
use std::time::Duration;
use tokio::sync::broadcast;

/// How often the journal's event log is looked at.
const POLL: Duration = Duration::from_millis(200);
/// Events one client can fall behind by before it is told to reconnect.
const BACKLOG: usize = 4096;

/// The events as they come, one JSON text each with its id.
#[derive(Clone)]
pub(super) struct Feed {
    sender: broadcast::Sender<Arc<(i64, String)>>,
}

impl Feed {
    /// Starts the polling task on the current runtime.
    pub(super) fn start(pool: Arc<ReadPool>) -> Feed {
        let (sender, _) = broadcast::channel(BACKLOG);
        let feed = Feed { sender };
        let sending = feed.sender.clone();
        tokio::spawn(async move {
            let start_pool = Arc::clone(&pool);
            let mut last = tokio::task::spawn_blocking(move || {
                start_pool.with(|store| store.last_event_id().unwrap_or(0))
            })
            .await
            .unwrap_or(0);
            loop {
                tokio::time::sleep(POLL).await;
                if sending.receiver_count() == 0 {
                    let read_pool = Arc::clone(&pool);
                    last = tokio::task::spawn_blocking(move || {
                        read_pool.with(|store| store.last_event_id().unwrap_or(last))
                    })
                    .await
                    .unwrap_or(last);
                    continue;
                }
                let read_pool = Arc::clone(&pool);
                let after = last;
                let events = tokio::task::spawn_blocking(move || {
                    read_pool.with(|store| store.events_after(after, 1000))
                })
                .await;
                let Ok(Ok(events)) = events else {
                    continue;
                };
                for event in events {
                    last = event.id;
                    let text = event_json(&event).to_string();
                    let _ = sending.send(Arc::new((event.id, text)));
                }
            }
        });
        feed
    }
}

fn sse_event(id: i64, text: &str) -> Event {
    Event::default().event("job").id(id.to_string()).data(text)
}

pub(super) async fn stream(
    Shared(app): Shared<App>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let after = query_value(query.as_deref(), "after").or_else(|| {
        headers
            .get("last-event-id")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    });
    let after = match after {
        None => None,
        Some(text) => Some(text.trim().parse::<i64>().map_err(|_| {
            ApiError::bad_request("after (or Last-Event-ID) must be an event id, a number")
        })?),
    };
    // Subscribe first, then read the backlog: nothing falls between the two, and what
    // both hold is sent once (ids only go up).
    let live = app.feed.sender.subscribe();
    let backlog = match after {
        None => Vec::new(),
        Some(after) => {
            app.read(move |store| Ok(store.events_after(after, 10_000)?))
                .await?
        }
    };
    let mut sent = backlog.last().map(|e| e.id).or(after).unwrap_or(0);
    let first: Vec<Result<Event, Infallible>> = backlog
        .iter()
        .map(|e| Ok(sse_event(e.id, &event_json(e).to_string())))
        .collect();
    let live = stream::unfold(live, |mut live| async move {
        match live.recv().await {
            Ok(event) => Some((Some(event), live)),
            // Too far behind: the stream ends; the client reconnects with its
            // Last-Event-ID and gets the rest from the journal.
            Err(broadcast::error::RecvError::Lagged(_)) => Some((None, live)),
            Err(broadcast::error::RecvError::Closed) => None,
        }
    })
    .take_while(|event| std::future::ready(event.is_some()))
    .filter_map(move |event| {
        let event = event.and_then(|event| {
            let (id, text) = &*event;
            (*id > sent).then(|| {
                sent = *id;
                Ok(sse_event(*id, text))
            })
        });
        std::future::ready(event)
    });
    Ok(Sse::new(stream::iter(first).chain(live))
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15))))
}
