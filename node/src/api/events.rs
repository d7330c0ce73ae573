//! The local API's event log: the node's events with monotonic ids, the
//! last [`KEPT`] of them kept, so a client can resume where it stopped and
//! see when events it missed are gone (Syncthing's event API is the model).
//!
//! Ids keep increasing across restarts of the node: the highest id that
//! may have been handed out is kept in [`IDS_FILE`] in the data directory,
//! and each run continues after it. A client resuming with an id from an
//! earlier run is told that the events after it are gone.

use std::{
    collections::VecDeque,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::Duration,
};

use futures::Stream;
use serde::Serialize;
use serde_json::Value;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::warn;

/// Events kept for clients to resume from.
pub(crate) const KEPT: usize = 4096;

/// File in the data directory holding the highest event id that may have
/// been handed out (decimal).
pub(crate) const IDS_FILE: &str = "api-event-ids";

/// Ids recorded as taken ahead of use: [`IDS_FILE`] is written once per
/// this many events. After a crash the next run starts past the whole
/// recorded block, so ids never repeat.
const ID_BLOCK: u64 = 4096;

/// How long a stream waits for events in one go.
const STREAM_WAIT: Duration = Duration::from_secs(60);

/// One event as handed out.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub(crate) struct Entry {
    /// Monotonic for the life of the data directory.
    pub(crate) id: u64,
    /// When the node saw it, ms since the epoch.
    pub(crate) ts_ms: u64,
    /// The node event (`{"event": "delivered", …}`).
    pub(crate) event: Value,
}

/// What [`EventLog::since`] answers.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub(crate) struct Page {
    pub(crate) events: Vec<Entry>,
    /// The id of the newest event (before the first of this run: the
    /// highest id of earlier runs, 0 for a new data directory).
    pub(crate) last_id: u64,
    /// Events after `since` no longer kept.
    pub(crate) dropped: u64,
    /// Where to continue from: the last event's id, or past the gap when
    /// the page holds no event.
    #[serde(skip)]
    pub(crate) resume: u64,
}

#[derive(Debug)]
struct Log {
    kept: VecDeque<Entry>,
    next_id: u64,
    /// The first id of this run.
    first_id: u64,
    /// Ids up to this one are recorded in [`IDS_FILE`] as taken.
    recorded: u64,
}

/// The event log.
#[derive(Debug)]
pub(crate) struct EventLog {
    log: Mutex<Log>,
    new: Notify,
    cap: usize,
    /// Where the ids taken are recorded; `None`: nowhere (ids from 1).
    ids_file: Option<PathBuf>,
}

/// Reads the highest id recorded in `path` (0 when there is none).
fn read_recorded(path: &Path) -> u64 {
    match std::fs::read_to_string(path) {
        Ok(text) => text.trim().parse().unwrap_or_else(|e| {
            warn!(file = %path.display(), error = %e, "event ids file unreadable; ids start again from 1");
            0
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
        Err(e) => {
            warn!(file = %path.display(), error = %e, "event ids file unreadable; ids start again from 1");
            0
        }
    }
}

fn write_recorded(path: &Path, id: u64) {
    if let Err(e) = super::write_private(path, id.to_string().as_bytes()) {
        warn!(file = %path.display(), error = %e, "could not record the event ids taken; after a restart ids may repeat");
    }
}

impl EventLog {
    /// A log that keeps `cap` events, with ids from 1, recorded nowhere.
    #[cfg(test)]
    pub(crate) fn new(cap: usize) -> Self {
        Self::with_ids(cap, 0, None)
    }

    /// A log that keeps `cap` events, with ids continuing after those
    /// recorded in [`IDS_FILE`] in the data directory `dir`.
    pub(crate) fn open(cap: usize, dir: &Path) -> Self {
        let path = dir.join(IDS_FILE);
        let recorded = read_recorded(&path);
        Self::with_ids(cap, recorded, Some(path))
    }

    fn with_ids(cap: usize, recorded: u64, ids_file: Option<PathBuf>) -> Self {
        Self {
            log: Mutex::new(Log {
                kept: VecDeque::new(),
                next_id: recorded + 1,
                first_id: recorded + 1,
                recorded,
            }),
            new: Notify::new(),
            cap: cap.max(1),
            ids_file,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Log> {
        self.log.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Appends an event; returns its id.
    pub(crate) fn push(&self, ts_ms: u64, event: Value) -> u64 {
        let id = {
            let mut log = self.lock();
            let id = log.next_id;
            if id > log.recorded {
                // Recorded before it is handed out: a run after a crash
                // starts past it.
                log.recorded = id + ID_BLOCK - 1;
                if let Some(path) = &self.ids_file {
                    write_recorded(path, log.recorded);
                }
            }
            log.next_id += 1;
            if log.kept.len() == self.cap {
                log.kept.pop_front();
            }
            log.kept.push_back(Entry { id, ts_ms, event });
            id
        };
        self.new.notify_waiters();
        id
    }

    /// Records the ids actually handed out, so that the next run continues
    /// right after them (a client then learns exactly how many events it
    /// missed across the restart). Called as the API stops.
    pub(crate) fn close(&self) {
        let mut log = self.lock();
        let last = log.next_id - 1;
        if let Some(path) = &self.ids_file {
            if last != log.recorded {
                write_recorded(path, last);
                log.recorded = last;
            }
        }
    }

    /// Up to `limit` events after `since`. `since` 0 (no position) reads
    /// from the oldest kept; so does a `since` beyond the newest id (one
    /// this data directory never handed out). A `since` from an earlier run
    /// counts that run's later events as dropped.
    pub(crate) fn since(&self, since: u64, limit: usize) -> Page {
        let log = self.lock();
        let last_id = log.next_id - 1;
        let since = if since == 0 || since > last_id {
            log.first_id - 1
        } else {
            since
        };
        let first_kept = log.kept.front().map_or(log.next_id, |e| e.id);
        let dropped = first_kept.saturating_sub(since + 1);
        let events: Vec<Entry> = log
            .kept
            .iter()
            .filter(|e| e.id > since)
            .take(limit)
            .cloned()
            .collect();
        let resume = events.last().map_or(since + dropped, |e| e.id);
        Page {
            events,
            last_id,
            dropped,
            resume,
        }
    }

    /// As [`EventLog::since`], waiting up to `wait` for a first event.
    pub(crate) async fn since_wait(&self, since: u64, limit: usize, wait: Duration) -> Page {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let notified = self.new.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let page = self.since(since, limit);
            if !page.events.is_empty() || tokio::time::Instant::now() >= deadline {
                return page;
            }
            tokio::select! {
                _ = &mut notified => {}
                _ = tokio::time::sleep_until(deadline) => {}
            }
        }
    }
}

/// What an event stream hands out.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Item {
    /// This many events after the reader's position were no longer kept
    /// when it came to them.
    Gap(u64),
    /// The next event.
    Event(Entry),
}

/// The events after `since`, as they come, until `cancel`. Each gap shows
/// as one [`Item::Gap`] where it is: at the start (a `since` whose next
/// events are gone) and midway (a reader so slow that the log let go of
/// events before it read them).
pub(crate) fn stream(
    log: Arc<EventLog>,
    since: u64,
    cancel: CancellationToken,
) -> impl Stream<Item = Item> + Send + 'static {
    let first = log.since(since, 0);
    let mut pending = VecDeque::new();
    if first.dropped > 0 {
        pending.push_back(Item::Gap(first.dropped));
    }
    let state = (log, first.resume, pending, cancel);
    futures::stream::unfold(state, |(log, mut cursor, mut pending, cancel)| async move {
        loop {
            if let Some(item) = pending.pop_front() {
                return Some((item, (log, cursor, pending, cancel)));
            }
            let page = tokio::select! {
                p = log.since_wait(cursor, 100, STREAM_WAIT) => p,
                _ = cancel.cancelled() => return None,
            };
            if page.dropped > 0 {
                pending.push_back(Item::Gap(page.dropped));
            }
            cursor = page.resume;
            pending.extend(page.events.into_iter().map(Item::Event));
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt;
    use serde_json::json;

    #[test]
    fn ids_are_monotonic_and_resume_after_any_id() {
        let log = EventLog::new(10);
        for i in 0..5 {
            assert_eq!(log.push(i, json!({ "event": "x", "i": i })), i + 1);
        }
        let page = log.since(0, 100);
        assert_eq!(page.events.len(), 5);
        assert_eq!(page.last_id, 5);
        assert_eq!(page.dropped, 0);
        let page = log.since(3, 100);
        let ids: Vec<u64> = page.events.iter().map(|e| e.id).collect();
        assert_eq!(ids, vec![4, 5]);
        let page = log.since(5, 100);
        assert!(page.events.is_empty());
        assert_eq!(page.last_id, 5);
        let page = log.since(1, 2);
        let ids: Vec<u64> = page.events.iter().map(|e| e.id).collect();
        assert_eq!(ids, vec![2, 3]);
    }

    #[test]
    fn a_gap_is_counted_when_events_are_no_longer_kept() {
        let log = EventLog::new(3);
        for i in 0..10 {
            log.push(i, json!({ "i": i }));
        }
        // Kept: 8, 9, 10. A client at 4 missed 5, 6, 7.
        let page = log.since(4, 100);
        assert_eq!(page.dropped, 3);
        let ids: Vec<u64> = page.events.iter().map(|e| e.id).collect();
        assert_eq!(ids, vec![8, 9, 10]);
        assert_eq!(log.since(7, 100).dropped, 0);
        assert_eq!(log.since(0, 100).dropped, 7);
    }

    #[test]
    fn an_id_never_handed_out_reads_from_the_oldest_kept() {
        let log = EventLog::new(10);
        log.push(0, json!({}));
        let page = log.since(500, 100);
        assert_eq!(page.events.len(), 1);
        assert_eq!(page.events[0].id, 1);
        assert_eq!(page.dropped, 0);
    }

    #[test]
    fn ids_continue_across_runs_and_an_old_since_sees_the_gap() {
        let dir = tempfile::tempdir().unwrap();
        let first = EventLog::open(10, dir.path());
        for i in 0..5 {
            first.push(i, json!({ "i": i }));
        }
        first.close();
        // A clean stop: the next run continues right after, and a client
        // at 3 learns it missed 4 and 5.
        let second = EventLog::open(10, dir.path());
        assert_eq!(second.since(0, 100).last_id, 5);
        let page = second.since(3, 100);
        assert_eq!((page.dropped, page.events.len(), page.resume), (2, 0, 5));
        assert_eq!(second.push(9, json!({})), 6);
        let page = second.since(3, 100);
        assert_eq!(page.dropped, 2);
        assert_eq!(page.events[0].id, 6);
        // A client that had read everything missed nothing.
        assert_eq!(second.since(5, 100).dropped, 0);
        // A new client (no position) sees this run's events, no gap.
        assert_eq!(second.since(0, 100).dropped, 0);
        // A crash (no close): the next run starts past every id recorded,
        // never below one handed out.
        for i in 0..3 {
            second.push(i, json!({}));
        }
        drop(second);
        let third = EventLog::open(10, dir.path());
        let id = third.push(0, json!({}));
        assert!(id > 9, "{id}");
        assert!(third.since(9, 100).dropped > 0);
    }

    #[tokio::test]
    async fn a_waiting_reader_wakes_on_a_new_event() {
        let log = Arc::new(EventLog::new(10));
        let reader = {
            let log = log.clone();
            tokio::spawn(async move { log.since_wait(0, 10, Duration::from_secs(60)).await })
        };
        tokio::task::yield_now().await;
        log.push(1, json!({ "event": "x" }));
        let page = tokio::time::timeout(Duration::from_secs(30), reader)
            .await
            .expect("woke")
            .unwrap();
        assert_eq!(page.events.len(), 1);
    }

    async fn next(s: &mut (impl Stream<Item = Item> + Unpin)) -> Item {
        tokio::time::timeout(Duration::from_secs(30), s.next())
            .await
            .expect("an item in time")
            .expect("the stream goes on")
    }

    fn id(item: Item) -> u64 {
        match item {
            Item::Event(e) => e.id,
            gap => panic!("an event expected, not {gap:?}"),
        }
    }

    #[tokio::test]
    async fn a_stream_shows_a_gap_where_a_slow_reader_lost_events() {
        let log = Arc::new(EventLog::new(3));
        let cancel = CancellationToken::new();
        let mut s = Box::pin(stream(log.clone(), 0, cancel.clone()));
        log.push(0, json!({ "i": 1 }));
        assert_eq!(id(next(&mut s).await), 1);
        // The reader reads nothing while ten events come; three are kept.
        for i in 2..=11 {
            log.push(0, json!({ "i": i }));
        }
        assert_eq!(next(&mut s).await, Item::Gap(7));
        for want in 9..=11 {
            assert_eq!(id(next(&mut s).await), want);
        }
        // Caught up: no gap when it keeps up.
        log.push(0, json!({ "i": 12 }));
        assert_eq!(id(next(&mut s).await), 12);
        cancel.cancel();
        assert!(s.next().await.is_none());
    }

    #[tokio::test]
    async fn a_stream_from_an_earlier_run_starts_with_its_gap() {
        let dir = tempfile::tempdir().unwrap();
        let first = EventLog::open(10, dir.path());
        for i in 0..4 {
            first.push(i, json!({}));
        }
        first.close();
        let second = Arc::new(EventLog::open(10, dir.path()));
        let mut s = Box::pin(stream(second.clone(), 1, CancellationToken::new()));
        // Shown at once, before any event of this run.
        assert_eq!(next(&mut s).await, Item::Gap(3));
        second.push(0, json!({}));
        assert_eq!(id(next(&mut s).await), 5);
    }
}
