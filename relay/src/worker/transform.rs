//! What a worker does to a flow's UDP payload between receiving and sending it: nothing
//! ([`Transform::Identity`]), or a [`PayloadTransform`] such as SRTP protect/unprotect (or a
//! transcoder) plugged in by the control plane per flow.

use crate::handover::FlowHandover;

/// Bytes a transform may add to a payload: the largest SRTP/SRTCP growth (16-byte GCM tag or
/// 10-byte HMAC tag, 4-byte SRTCP index, and an MKI of up to 10 bytes, as RFC 3711 allows). The
/// worker keeps at least this much tailroom in every frame; larger growth fails with
/// [`TransformError::NoRoom`].
pub const MAX_GROWTH: usize = 16 + 4 + 10;

/// Why a transform refused a packet. The worker drops the packet and counts it by kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TransformError {
    #[error("payload malformed or too short for the transform")]
    Malformed,
    /// E.g. an SRTP auth tag that does not verify.
    #[error("authentication failed")]
    AuthFailed,
    /// E.g. an SRTP index already seen or older than the replay window.
    #[error("replayed packet")]
    Replay,
    #[error("no room in the frame to grow the payload")]
    NoRoom,
    #[error("{0}")]
    Other(&'static str),
}

/// A per-flow payload rewrite run by the worker that owns the flow, on the payload in place.
///
/// Called once per packet on the worker's thread: it must not block, and should not allocate.
/// State (keys, rollover counters, replay windows) lives in the implementing value, which the
/// worker owns exclusively, so no locks are needed.
pub trait PayloadTransform: Send {
    /// `buf[..len]` is the UDP payload as received; `buf.len()` is the room available (at
    /// least `len + MAX_GROWTH`). Rewrite it in place and return the new payload length
    /// (`<= buf.len()`), or an error to drop the packet.
    fn apply(&mut self, buf: &mut [u8], len: usize, now_ns: u64) -> Result<usize, TransformError>;

    /// Where the per-stream state stands when the flow is removed, for the path that takes the
    /// stream back (see [`crate::handover`]). Stateless transforms hand back nothing.
    fn handover(&self) -> FlowHandover {
        FlowHandover::default()
    }
}

/// A per-flow transform that takes packets in and gives packets out on its own schedule (a
/// transcoder: repacketization turns one packet into several or several into one, and a reorder
/// window holds packets back). Its output leaves through the flow's fallback UDP socket.
///
/// Like [`PayloadTransform`], owned by one worker and called on its thread only; no blocking,
/// no allocation per packet.
pub trait StreamTransform: Send {
    /// Takes one received UDP payload.
    fn push(&mut self, payload: &[u8], now_ns: u64) -> Result<(), TransformError>;
    /// Writes the next UDP payload to send into `out` and returns its length.
    fn pull(&mut self, out: &mut [u8]) -> Option<usize>;
    /// When [`StreamTransform::handle_timeout`] must run next (monotonic ns).
    fn poll_timeout(&self) -> Option<u64>;
    fn handle_timeout(&mut self, now_ns: u64);
    /// As [`PayloadTransform::handover`].
    fn handover(&self) -> FlowHandover {
        FlowHandover::default()
    }
}

/// A flow's transform.
pub enum Transform {
    /// The payload is forwarded unchanged (plain relaying through a worker).
    Identity,
    Custom(Box<dyn PayloadTransform>),
    Stream(Box<dyn StreamTransform>),
}

impl std::fmt::Debug for Transform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Transform::Identity => f.write_str("Identity"),
            Transform::Custom(_) => f.write_str("Custom(..)"),
            Transform::Stream(_) => f.write_str("Stream(..)"),
        }
    }
}

impl Transform {
    pub fn custom(t: impl PayloadTransform + 'static) -> Self {
        Transform::Custom(Box::new(t))
    }

    /// What the flow hands back when it is removed.
    pub fn handover(&self) -> FlowHandover {
        match self {
            Transform::Identity => FlowHandover::default(),
            Transform::Custom(t) => t.handover(),
            Transform::Stream(t) => t.handover(),
        }
    }

    #[inline]
    pub(crate) fn apply(
        &mut self,
        buf: &mut [u8],
        len: usize,
        now_ns: u64,
    ) -> Result<usize, TransformError> {
        match self {
            Transform::Identity => Ok(len),
            Transform::Custom(t) => {
                let n = t.apply(buf, len, now_ns)?;
                if n > buf.len() {
                    return Err(TransformError::NoRoom);
                }
                Ok(n)
            }
            // The worker drives stream transforms itself (push, then pull).
            Transform::Stream(_) => Err(TransformError::Other("stream transform applied in place")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Lying;
    impl PayloadTransform for Lying {
        fn apply(&mut self, buf: &mut [u8], _: usize, _: u64) -> Result<usize, TransformError> {
            Ok(buf.len() + 1)
        }
    }

    #[test]
    fn identity_keeps_the_length_and_a_bad_length_is_refused() {
        let mut buf = [1u8; 64];
        assert_eq!(Transform::Identity.apply(&mut buf, 20, 0), Ok(20));
        assert_eq!(
            Transform::custom(Lying).apply(&mut buf, 20, 0),
            Err(TransformError::NoRoom)
        );
    }
}
