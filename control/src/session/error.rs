//! What a session request can fail with. One type for every request, so that a front end maps
//! failures to its protocol's answers in one place.

use sluice_relay::engine::EngineGone;

use crate::codecs::CodecError;
use crate::port_alloc::PortAllocError;
use crate::sdes::SdesError;
use crate::sdp::SdpError;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SessionError {
    #[error("bad SDP: {0}")]
    BadSdp(#[from] SdpError),
    #[error("SDES: {0}")]
    Sdes(#[from] SdesError),
    #[error("{0}")]
    BadRequest(String),
    #[error("call '{0}' not found (deleted, timed out, or never offered)")]
    NotFound(String),
    #[error("{0}")]
    NoPorts(#[from] PortAllocError),
    #[error("{0}")]
    Engine(#[from] EngineGone),
    #[error("sluice is shutting down and takes no new calls")]
    ShuttingDown,
    /// The answer's codec can be neither relayed nor transcoded to the offerer's (a SIP B2BUA
    /// answers 488).
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
