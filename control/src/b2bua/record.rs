//! What a call leaves behind: one record when it ends (the `--cdr` JSON line), and a summary
//! while it lives (`sluice ctl calls`).

use serde::Serialize;

use super::call::Call;
use crate::session::CallReport;

/// One ended call. Times are milliseconds from the INVITE.
#[derive(Debug, Clone, Serialize)]
pub struct CallRecord {
    pub call: u64,
    pub caller: String,
    pub callee: String,
    /// The caller's Call-ID and the one sluice gave leg B.
    pub a_call_id: String,
    pub b_call_id: String,
    /// The SIP status that decided the call: 200 for an answered call, else the failure.
    pub code: u16,
    pub reason: String,
    pub ring_ms: Option<u64>,
    pub answer_ms: Option<u64>,
    /// From the answer to the end (0 for an unanswered call).
    pub duration_ms: u64,
    /// Per-leg packets and bytes relayed, from the media session.
    pub media: Option<serde_json::Value>,
}

impl CallRecord {
    pub(super) fn of(call: &Call, reason: &str, code: u16, media: Option<CallReport>) -> Self {
        let now = std::time::Instant::now();
        let since = |t: Option<std::time::Instant>| {
            t.map(|t| t.saturating_duration_since(call.started).as_millis() as u64)
        };
        Self {
            call: call.id,
            caller: call.caller.clone(),
            callee: call.callee.clone(),
            a_call_id: call.a_call_id.clone(),
            b_call_id: call.b_call_id.clone(),
            code,
            reason: reason.to_owned(),
            ring_ms: since(call.rang),
            answer_ms: since(call.answered),
            duration_ms: call
                .answered
                .map(|a| now.saturating_duration_since(a).as_millis() as u64)
                .unwrap_or(0),
            media: media.map(|r| media_json(&r)),
        }
    }
}

fn media_json(r: &CallReport) -> serde_json::Value {
    let legs: Vec<_> = r
        .legs
        .iter()
        .map(|l| {
            serde_json::json!({
                "tag": l.tag,
                "streams": l.streams.iter().map(|s| serde_json::json!({
                    "packets": s.packets,
                    "bytes": s.bytes,
                    "codec": s.codec,
                    "transcoded": s.transcoded,
                })).collect::<Vec<_>>(),
            })
        })
        .collect();
    serde_json::json!({ "legs": legs })
}

/// A live call, for `sluice ctl calls`.
#[derive(Debug, Clone, Serialize)]
pub struct CallSummary {
    pub id: u64,
    pub state: &'static str,
    pub caller: String,
    pub callee: String,
    pub a_call_id: String,
    pub b_call_id: String,
    pub media_id: String,
}

impl CallSummary {
    pub(super) fn of(c: &Call) -> Self {
        Self {
            id: c.id,
            state: c.state.as_str(),
            caller: c.caller.clone(),
            callee: c.callee.clone(),
            a_call_id: c.a_call_id.clone(),
            b_call_id: c.b_call_id.clone(),
            media_id: c.media_id.clone(),
        }
    }
}
