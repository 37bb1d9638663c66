//! The gRPC front end: translates `sluice.v1.Control` requests into [`Sessions`] calls and
//! session errors into status codes an operator (or a SIP proxy module) can act on.

use std::pin::Pin;
use std::sync::Arc;

use sluice_relay::latch::LatchMode;
use tokio::sync::broadcast::error::RecvError;
use tokio_stream::{Stream, wrappers::ReceiverStream};
use tonic::{Request, Response, Status};

use crate::codecs::{CodecList, TranscodeMode};
use crate::proto::{self, control_server::Control};
use crate::sdp::Direction;
use crate::session::{
    CallEvent, EventKind, Family, LegOptions, RtcpMuxMode, SessionError, Sessions, SrtpMode,
};

pub struct ControlService {
    sessions: Arc<Sessions>,
}

impl ControlService {
    pub fn new(sessions: Arc<Sessions>) -> Self {
        Self { sessions }
    }

    pub fn into_server(self) -> proto::control_server::ControlServer<Self> {
        proto::control_server::ControlServer::new(self)
    }
}

impl From<SessionError> for Status {
    fn from(e: SessionError) -> Status {
        let msg = e.to_string();
        match e {
            SessionError::BadSdp(_) | SessionError::BadRequest(_) | SessionError::Sdes(_) => {
                Status::invalid_argument(msg)
            }
            SessionError::NotFound(_) => Status::not_found(msg),
            SessionError::NoCodecBridge(_) => Status::failed_precondition(msg),
            SessionError::NoPorts(_) => Status::resource_exhausted(msg),
            SessionError::ShuttingDown | SessionError::Engine(_) => Status::unavailable(msg),
        }
    }
}

fn enum_value<E: TryFrom<i32>>(field: &str, v: i32) -> Result<E, Status> {
    E::try_from(v).map_err(|_| Status::invalid_argument(format!("{field}: unknown value {v}")))
}

/// Proto options to session options; absent options mean the server defaults.
pub fn leg_options(o: Option<proto::LegOptions>) -> Result<LegOptions, Status> {
    let mut out = LegOptions::default();
    let Some(o) = o else { return Ok(out) };
    out.family = match enum_value("address_family", o.address_family)? {
        proto::AddressFamily::Unspecified => Family::Auto,
        proto::AddressFamily::Ip4 => Family::V4,
        proto::AddressFamily::Ip6 => Family::V6,
    };
    if let Some(s) = o.strict_source {
        out.strict_source = s;
    }
    out.latching = match enum_value("latching", o.latching)? {
        proto::Latching::Unspecified | proto::Latching::Heuristic => LatchMode::Heuristic,
        proto::Latching::Off => LatchMode::Off,
        proto::Latching::Immediate => LatchMode::Immediate,
    };
    out.rtcp_mux = match enum_value("rtcp_mux", o.rtcp_mux)? {
        proto::RtcpMux::Unspecified => RtcpMuxMode::Default,
        proto::RtcpMux::Offer => RtcpMuxMode::Offer,
        proto::RtcpMux::Strip => RtcpMuxMode::Strip,
        proto::RtcpMux::Require => RtcpMuxMode::Require,
    };
    out.direction = match enum_value("direction", o.direction)? {
        proto::Direction::Unspecified => None,
        proto::Direction::Sendrecv => Some(Direction::SendRecv),
        proto::Direction::Sendonly => Some(Direction::SendOnly),
        proto::Direction::Recvonly => Some(Direction::RecvOnly),
        proto::Direction::Inactive => Some(Direction::Inactive),
    };
    out.srtp = match enum_value("srtp", o.srtp)? {
        proto::Srtp::Unspecified => SrtpMode::Default,
        proto::Srtp::Offer => SrtpMode::Offer,
        proto::Srtp::Strip => SrtpMode::Strip,
        proto::Srtp::Require => SrtpMode::Require,
    };
    out.codecs.mode = match enum_value("transcode", o.transcode)? {
        proto::Transcode::Unspecified => None,
        proto::Transcode::Auto => Some(TranscodeMode::Auto),
        proto::Transcode::Off => Some(TranscodeMode::Off),
    };
    out.codecs.transcode = CodecList::parse("codec_transcode", &o.codec_transcode)
        .map_err(Status::invalid_argument)?;
    out.codecs.strip =
        CodecList::parse("codec_strip", &o.codec_strip).map_err(Status::invalid_argument)?;
    out.codecs.mask =
        CodecList::parse("codec_mask", &o.codec_mask).map_err(Status::invalid_argument)?;
    Ok(out)
}

fn event(ev: CallEvent) -> proto::Event {
    let kind = match ev.kind {
        EventKind::CallCreated => proto::EventKind::CallCreated,
        EventKind::MediaStarted => proto::EventKind::MediaStarted,
        EventKind::TimedOut => proto::EventKind::TimedOut,
        EventKind::Deleted => proto::EventKind::Deleted,
    };
    proto::Event {
        kind: kind as i32,
        call_id: ev.call_id,
        tag: ev.tag,
        unix_ms: ev.unix_ms,
        detail: ev.detail,
    }
}

type EventStream = Pin<Box<dyn Stream<Item = Result<proto::Event, Status>> + Send>>;

#[tonic::async_trait]
impl Control for ControlService {
    async fn ping(
        &self,
        _: Request<proto::PingRequest>,
    ) -> Result<Response<proto::PingReply>, Status> {
        Ok(Response::new(proto::PingReply {
            result: "pong".into(),
            version: env!("CARGO_PKG_VERSION").into(),
        }))
    }

    async fn offer(
        &self,
        req: Request<proto::OfferRequest>,
    ) -> Result<Response<proto::SdpReply>, Status> {
        let r = req.into_inner();
        let opts = leg_options(r.options)?;
        let sdp = self.sessions.offer(&r.call_id, &r.from_tag, &r.sdp, opts)?;
        Ok(Response::new(proto::SdpReply { sdp }))
    }

    async fn answer(
        &self,
        req: Request<proto::AnswerRequest>,
    ) -> Result<Response<proto::SdpReply>, Status> {
        let r = req.into_inner();
        let opts = leg_options(r.options)?;
        let sdp = self
            .sessions
            .answer(&r.call_id, &r.from_tag, &r.to_tag, &r.sdp, opts)?;
        Ok(Response::new(proto::SdpReply { sdp }))
    }

    async fn delete(
        &self,
        req: Request<proto::DeleteRequest>,
    ) -> Result<Response<proto::DeleteReply>, Status> {
        let r = req.into_inner();
        let call = self.sessions.delete(&r.call_id, &r.from_tag, &r.to_tag)?;
        Ok(Response::new(proto::DeleteReply { call: Some(call) }))
    }

    async fn query(
        &self,
        req: Request<proto::QueryRequest>,
    ) -> Result<Response<proto::QueryReply>, Status> {
        let call = self.sessions.query(&req.into_inner().call_id)?;
        Ok(Response::new(proto::QueryReply { call: Some(call) }))
    }

    async fn list(
        &self,
        req: Request<proto::ListRequest>,
    ) -> Result<Response<proto::ListReply>, Status> {
        let call_ids = self.sessions.list(req.into_inner().limit as usize);
        Ok(Response::new(proto::ListReply { call_ids }))
    }

    async fn statistics(
        &self,
        _: Request<proto::StatisticsRequest>,
    ) -> Result<Response<proto::StatisticsReply>, Status> {
        Ok(Response::new(self.sessions.statistics()))
    }

    type WatchEventsStream = EventStream;

    async fn watch_events(
        &self,
        _: Request<proto::WatchEventsRequest>,
    ) -> Result<Response<EventStream>, Status> {
        let mut rx = self.sessions.subscribe();
        // Ends with shutdown: graceful shutdown waits for open streams.
        let closed = self.sessions.closed();
        let (tx, out) = tokio::sync::mpsc::channel(256);
        tokio::spawn(async move {
            tokio::pin!(closed);
            loop {
                let item = tokio::select! {
                    _ = &mut closed => return,
                    r = rx.recv() => r,
                };
                let msg = match item {
                    Ok(ev) => Ok(event(ev)),
                    Err(RecvError::Closed) => return,
                    Err(RecvError::Lagged(n)) => Err(Status::data_loss(format!(
                        "event watcher too slow: {n} events lost; reconnect and Query the calls \
                         you track"
                    ))),
                };
                let fatal = msg.is_err();
                if tx.send(msg).await.is_err() || fatal {
                    return;
                }
            }
        });
        let stream = ReceiverStream::new(out);
        Ok(Response::new(Box::pin(stream)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codecs::Codec;

    #[test]
    fn codec_options_map_and_unknown_names_are_invalid() {
        let o = leg_options(Some(proto::LegOptions {
            transcode: proto::Transcode::Auto as i32,
            codec_transcode: vec!["opus,PCMA".into()],
            codec_mask: vec!["pcmu".into()],
            ..Default::default()
        }))
        .unwrap();
        assert_eq!(o.codecs.mode, Some(TranscodeMode::Auto));
        assert_eq!(
            o.codecs.transcode.iter().collect::<Vec<_>>(),
            [Codec::Opus, Codec::Pcma]
        );
        assert!(o.codecs.mask.contains(Codec::Pcmu) && o.codecs.strip.is_empty());
        let err = leg_options(Some(proto::LegOptions {
            codec_strip: vec!["G729".into()],
            ..Default::default()
        }))
        .unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument);
        assert!(err.message().contains("G729"), "{}", err.message());
        let err = leg_options(Some(proto::LegOptions {
            transcode: 9,
            ..Default::default()
        }))
        .unwrap_err();
        assert!(err.message().contains("transcode"), "{}", err.message());
    }
}
