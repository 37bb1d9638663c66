//! Call lifecycle events (created, media started, timed out, deleted) for whoever watches.
//!
//! Each subscriber has its own bounded queue, so that one that does not keep up loses only its
//! own events, never blocks the session layer or the other subscribers, and is told what it
//! lost: a front end acts on these events (a B2BUA sends BYE on `TimedOut`), so a silent gap
//! would leave a dialog up with no media relay behind it. When its queue is full, events for it
//! are counted instead, and one [`EventKind::Overflow`] takes their place in the queue once it
//! has room again, so the subscriber knows to re-read the state of the calls it tracks.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{SystemTime, UNIX_EPOCH};

use sluice_relay::clock::now_ns;

use super::Sessions;

/// Events a subscriber's queue holds before further ones are counted as missed: a watcher
/// stalled for several seconds at hundreds of calls per second (three or four events each)
/// loses nothing, and a stalled one costs under a megabyte.
pub const EVENT_QUEUE_LEN: usize = 4096;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    CallCreated,
    MediaStarted,
    TimedOut,
    Deleted,
    /// The SIP B2BUA's call records (`call_id` is the caller's Call-ID, `detail` a JSON
    /// object): a call started (caller, callee, the media call id), rang, was answered, and
    /// ended (the whole call record: reason, status, times, per-leg media).
    SipCallStarted,
    SipCallRinging,
    SipCallAnswered,
    SipCallEnded,
    /// This subscriber's queue was full and `missed` events for it were dropped, right here in
    /// the sequence; the calls they were about may have changed in any way. Not about a call:
    /// `call_id` and `tag` are empty, `detail` is the number.
    Overflow {
        missed: u64,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallEvent {
    pub kind: EventKind,
    pub call_id: String,
    pub tag: String,
    pub unix_ms: u64,
    pub detail: String,
}

/// A unix-ms wall-clock time for a monotonic `sluice_relay::clock::now_ns()` reading, on the
/// system clock; the session layer itself uses its injected clock ([`super::Clock::unix_ms_of`]).
pub fn unix_ms_of(mono_ns: u64) -> u64 {
    let now_unix = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis() as u64;
    let age_ms = now_ns().saturating_sub(mono_ns) / 1_000_000;
    now_unix.saturating_sub(age_ms)
}

/// The subscribers, each with its queue.
pub(super) struct EventHub {
    subscribers: Mutex<Vec<Weak<Queue>>>,
    queue_len: usize,
    next_id: AtomicU64,
    /// Events dropped from full queues, over all subscribers since start.
    missed: AtomicU64,
}

struct Queue {
    id: u64,
    state: Mutex<QueueState>,
    /// Wakes [`EventSubscriber::recv`]. `notify_one` keeps a permit when nobody waits, so an
    /// event queued between a reader's check and its wait is not slept through.
    ready: tokio::sync::Notify,
}

#[derive(Default)]
struct QueueState {
    events: VecDeque<CallEvent>,
    /// Dropped since the queue last had room; 0 outside an overflow episode.
    missed: u64,
    /// The time of the last dropped event, which the overflow event carries.
    missed_unix_ms: u64,
    /// The sessions are gone: nothing more will come after what is queued.
    closed: bool,
}

fn overflow(missed: u64, unix_ms: u64) -> CallEvent {
    CallEvent {
        kind: EventKind::Overflow { missed },
        call_id: String::new(),
        tag: String::new(),
        unix_ms,
        detail: missed.to_string(),
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Nothing panics while holding these; a poisoned queue is still a consistent queue.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl EventHub {
    pub(super) fn new(queue_len: usize) -> EventHub {
        EventHub {
            subscribers: Mutex::new(Vec::new()),
            queue_len: queue_len.max(1),
            next_id: AtomicU64::new(1),
            missed: AtomicU64::new(0),
        }
    }

    pub(super) fn subscribe(&self) -> EventSubscriber {
        let queue = Arc::new(Queue {
            id: self.next_id.fetch_add(1, Relaxed),
            state: Mutex::new(QueueState::default()),
            ready: tokio::sync::Notify::new(),
        });
        lock(&self.subscribers).push(Arc::downgrade(&queue));
        EventSubscriber { queue }
    }

    pub(super) fn missed(&self) -> u64 {
        self.missed.load(Relaxed)
    }

    /// Queues `ev` for every subscriber. Takes each queue's lock only to push, which a reader
    /// holds only to pop: a subscriber that never reads costs a counter increment, nothing more.
    pub(super) fn publish(&self, ev: &CallEvent) {
        let mut subs = lock(&self.subscribers);
        subs.retain(|w| w.strong_count() > 0);
        for q in subs.iter().filter_map(Weak::upgrade) {
            let mut st = lock(&q.state);
            if st.events.len() >= self.queue_len {
                if st.missed == 0 {
                    tracing::warn!(
                        subscriber = q.id,
                        queue = self.queue_len,
                        "an event subscriber is not keeping up; its events are dropped (and \
                         counted) until it reads"
                    );
                }
                st.missed += 1;
                st.missed_unix_ms = ev.unix_ms;
                self.missed.fetch_add(1, Relaxed);
                continue;
            }
            // The overflow event goes where the gap is, before anything that came after it; it
            // may take the queue one past its bound, which keeps that bound simple to state.
            if st.missed > 0 {
                let marker = overflow(std::mem::take(&mut st.missed), st.missed_unix_ms);
                st.events.push_back(marker);
            }
            st.events.push_back(ev.clone());
            drop(st);
            q.ready.notify_one();
        }
    }
}

impl Drop for EventHub {
    fn drop(&mut self) {
        for q in lock(&self.subscribers).iter().filter_map(Weak::upgrade) {
            lock(&q.state).closed = true;
            q.ready.notify_one();
        }
    }
}

/// One subscriber's events, in the order they happened. Dropping it unsubscribes.
pub struct EventSubscriber {
    queue: Arc<Queue>,
}

impl EventSubscriber {
    /// The next event, if one is queued. After the queued events of an overflow episode comes
    /// the [`EventKind::Overflow`] that ends it.
    pub fn try_recv(&mut self) -> Option<CallEvent> {
        lock(&self.queue.state).pop()
    }

    /// Waits for the next event; `None` once the sessions are gone and everything queued was
    /// read.
    pub async fn recv(&mut self) -> Option<CallEvent> {
        loop {
            {
                let mut st = lock(&self.queue.state);
                if let Some(ev) = st.pop() {
                    return Some(ev);
                }
                if st.closed {
                    return None;
                }
            }
            self.queue.ready.notified().await;
        }
    }
}

impl QueueState {
    fn pop(&mut self) -> Option<CallEvent> {
        if let Some(ev) = self.events.pop_front() {
            return Some(ev);
        }
        if self.missed > 0 {
            return Some(overflow(
                std::mem::take(&mut self.missed),
                self.missed_unix_ms,
            ));
        }
        None
    }
}

impl Sessions {
    /// Publishes a front end's event (the B2BUA's call records) to every subscriber, in order
    /// with the session layer's own.
    pub fn announce(&self, kind: EventKind, call_id: &str, detail: String) {
        self.emit(kind, call_id, "", detail);
    }

    pub(super) fn emit(&self, kind: EventKind, call_id: &str, tag: &str, detail: String) {
        let ev = CallEvent {
            kind,
            call_id: call_id.to_string(),
            tag: tag.to_string(),
            unix_ms: self.clock.unix_ms(),
            detail,
        };
        tracing::info!(event = ?ev.kind, call_id = %ev.call_id, tag = %ev.tag, detail = %ev.detail, "call event");
        self.events.publish(&ev);
    }
}
