//! Call lifecycle events (created, media started, timed out, deleted) broadcast to whoever
//! watches, and the wall-clock times they carry. The relay clock is monotonic, so events and
//! reports convert its readings here.

use std::time::{SystemTime, UNIX_EPOCH};

use sluice_relay::clock::now_ns;

use super::Sessions;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    CallCreated,
    MediaStarted,
    TimedOut,
    Deleted,
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

impl Sessions {
    pub(super) fn emit(&self, kind: EventKind, call_id: &str, tag: &str, detail: String) {
        let ev = CallEvent {
            kind,
            call_id: call_id.to_string(),
            tag: tag.to_string(),
            unix_ms: self.clock.unix_ms(),
            detail,
        };
        tracing::info!(event = ?ev.kind, call_id = %ev.call_id, tag = %ev.tag, detail = %ev.detail, "call event");
        // No subscriber is fine.
        let _ = self.events.send(ev);
    }
}
