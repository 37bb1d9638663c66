//! What a session request can fail with. One type for every request, so that a front end maps
//! failures to its protocol's answers in one place.

use sluice_relay::engine::EngineGone;

use crate::codecs::CodecError;
use crate::port_alloc::PortAllocError;
use crate::sdes::SdesError;
use crate::sdp::SdpError;

/// Why a request failed. Each variant is one answer a front end gives; the messages are
/// written for the operator and can be passed on as they are.
///
/// The answers each front end is expected to give (gRPC is what `grpc.rs` does; the others are
/// what the ng-protocol front end and the SIP B2BUA should do, so that callers of all three see
/// the same failure the same way). SIP: 400 Bad Request, 481 Call/Transaction Does Not Exist,
/// 488 Not Acceptable Here, 500 Server Internal Error, 503 Service Unavailable.
///
/// | Variant         | gRPC code             | SIP status | ng `error-reason`     |
/// |-----------------|-----------------------|------------|-----------------------|
/// | `BadSdp`        | `INVALID_ARGUMENT`    | 400        | "Failed to parse SDP" |
/// | `Sdes`          | `INVALID_ARGUMENT`    | 488        | the message           |
/// | `BadRequest`    | `INVALID_ARGUMENT`    | 488        | the message           |
/// | `NoCodecBridge` | `FAILED_PRECONDITION` | 488        | the message           |
/// | `NoPorts`       | `RESOURCE_EXHAUSTED`  | 503        | "Ran out of ports"    |
/// | `SessionLimit`  | `RESOURCE_EXHAUSTED`  | 503        | "Parallel session limit reached", or `result: load limit` to a client that supports it |
/// | `Overloaded`    | `RESOURCE_EXHAUSTED`  | 503        | "CPU usage limit exceeded" / "Load limit exceeded", or `result: load limit` |
/// | `NotFound`      | `NOT_FOUND`           | 481        | "Unknown call-id"     |
/// | `ShuttingDown`  | `UNAVAILABLE`         | 503        | the message           |
/// | `Engine`        | `UNAVAILABLE`         | 500        | the message           |
///
/// The quoted ng strings are rtpengine's own. "Ran out of ports" must be exact: Kamailio's
/// rtpengine module compares the error-reason with it to send the request to its next media
/// relay. A SIP front end should also put the message in a Warning
/// header (code 399), where the other side's operator can read it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SessionError {
    /// The SDP does not parse: `line` (1-based; 0 for the document as a whole, e.g. a missing
    /// line) and `reason` say where and why.
    #[error("bad SDP: {0}")]
    BadSdp(#[from] SdpError),
    /// An a=crypto line sluice must use (to terminate SRTP) has a suite it does not support or a
    /// key that does not decode.
    #[error("SDES: {0}")]
    Sdes(#[from] SdesError),
    /// The request cannot be served as asked: a missing or malformed field, an option value
    /// sluice does not know, an option the SDP does not meet (rtcp-mux or SRTP required, codec
    /// lists on SRTP it cannot decrypt), or a request that does not fit the call's state (tags
    /// of another dialog, an answer without an offer, m= lines removed or added).
    #[error("{0}")]
    BadRequest(String),
    /// No such call: deleted, timed out, or never offered.
    #[error("call '{0}' not found (deleted, timed out, or never offered)")]
    NotFound(String),
    /// No relay port could be taken: the range is in use, or none of the free ports would bind.
    /// Nothing of the request was kept.
    #[error("{0}")]
    NoPorts(#[from] PortAllocError),
    /// `--max-sessions` (or a runtime cap, 0 to drain) is reached: no new call, calls in
    /// progress go on. The message starts with rtpengine's words, which Kamailio and OpenSIPS
    /// match to send the call to their next media relay.
    #[error("Parallel session limit reached ({0} calls)")]
    SessionLimit(u64),
    /// `--max-cpu` or `--max-load` is exceeded: no new call until the host is less busy.
    #[error("{0}")]
    Overloaded(#[from] crate::load::Overload),
    /// The relay thread is gone; no request can succeed any more.
    #[error("{0}")]
    Engine(#[from] EngineGone),
    /// Shutdown has begun: new offers are refused while calls in progress end.
    #[error("sluice is shutting down and takes no new calls")]
    ShuttingDown,
    /// The answer's codec can be neither relayed nor transcoded to the offerer's; the message
    /// names the codecs of both sides.
    #[error("{0}")]
    NoCodecBridge(String),
}

impl From<CodecError> for SessionError {
    fn from(e: CodecError) -> SessionError {
        match e {
            CodecError::BadOption(m) => SessionError::BadRequest(m),
            CodecError::NoBridge(m) => SessionError::NoCodecBridge(m),
        }
    }
}

pub(super) fn bad(msg: impl Into<String>) -> SessionError {
    SessionError::BadRequest(msg.into())
}

impl SessionError {
    /// The SIP status a front end answers with (the table above).
    pub fn sip_status(&self) -> u16 {
        match self {
            SessionError::BadSdp(_) => 400,
            SessionError::Sdes(_)
            | SessionError::BadRequest(_)
            | SessionError::NoCodecBridge(_) => 488,
            SessionError::NotFound(_) => 481,
            SessionError::NoPorts(_)
            | SessionError::SessionLimit(_)
            | SessionError::Overloaded(_)
            | SessionError::ShuttingDown => 503,
            SessionError::Engine(_) => 500,
        }
    }

    /// Says which m= line (0-based `i`) the error is about.
    pub(super) fn in_line(self, i: usize) -> SessionError {
        match self {
            SessionError::NoCodecBridge(m) => {
                SessionError::NoCodecBridge(format!("m= line {}: {m}", i + 1))
            }
            SessionError::BadRequest(m) => {
                SessionError::BadRequest(format!("m= line {}: {m}", i + 1))
            }
            e => e,
        }
    }
}
