//! The gRPC front end: translates `sluice.v1.Control` requests into [`Sessions`] calls, the
//! session layer's reports into reply messages, and session errors into status codes an operator
//! (or a SIP proxy module) can act on. It only maps: what a request may ask and what a reply
//! says are the session layer's to decide.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;

use sluice_relay::latch::LatchMode;
use tokio_stream::{Stream, wrappers::ReceiverStream};
use tonic::{Request, Response, Status};

use crate::codecs::TranscodeMode;
use crate::proto::{self, control_server::Control};
use crate::sdp::Direction;
use crate::session::{
    CallEvent, CallReport, CodecRequest, EventKind, Family, KernelFeatureReport, LegOptions,
    LegReport, QualityPoint, RtcpMuxMode, SessionError, Sessions, SrtpMode, SrtpReport, Statistics,
    StreamReport, WorkerReport,
};

pub struct ControlService {
    sessions: Arc<Sessions>,
    /// The B2BUA of each `--sip` socket (none without SIP).
    sip: Vec<crate::b2bua::Shared>,
}

impl ControlService {
    pub fn new(sessions: Arc<Sessions>) -> Self {
        Self {
            sessions,
            sip: Vec::new(),
        }
    }

    /// Serves the SIP calls of these B2BUAs too (ListSipCalls, HangupSipCall, statistics).
    pub fn with_sip(mut self, sip: Vec<crate::b2bua::Shared>) -> Self {
        self.sip = sip;
        self
    }

    fn sip_statistics(&self) -> Option<proto::SipStatistics> {
        if self.sip.is_empty() {
            return None;
        }
        let mut out = proto::SipStatistics::default();
        for b in &self.sip {
            let b = crate::b2bua::lock(b);
            let c = b.counters();
            let (calls, transactions) = b.live();
            out.calls_current += calls as u64;
            out.transactions += transactions as u64;
            out.calls_total += c.calls_started;
            out.calls_answered += c.calls_answered;
            out.calls_failed += c.calls_failed;
            out.malformed += c.malformed;
            out.rejected += c.rejected;
        }
        Some(out)
    }

    pub fn into_server(self) -> proto::control_server::ControlServer<Self> {
        proto::control_server::ControlServer::new(self)
    }
}

/// The gRPC column of [`SessionError`]'s table. Every variant is named, so that adding one does
/// not compile until it is given a code here.
impl From<SessionError> for Status {
    fn from(e: SessionError) -> Status {
        let msg = e.to_string();
        match e {
            SessionError::BadSdp(_) | SessionError::BadRequest(_) | SessionError::Sdes(_) => {
                Status::invalid_argument(msg)
            }
            SessionError::NotFound(_) => Status::not_found(msg),
            SessionError::NoCodecBridge(_) => Status::failed_precondition(msg),
            SessionError::NoPorts(_)
            | SessionError::SessionLimit(_)
            | SessionError::Overloaded(_) => Status::resource_exhausted(msg),
            SessionError::ShuttingDown | SessionError::Engine(_) => Status::unavailable(msg),
        }
    }
}

fn enum_value<E: TryFrom<i32>>(field: &str, v: i32) -> Result<E, Status> {
    E::try_from(v).map_err(|_| Status::invalid_argument(format!("{field}: unknown value {v}")))
}

/// Proto options to session options; absent options mean the server defaults. Only proto
/// enums are decoded here: what the values may be is the session layer's to check.
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
    if !o.signalling_source.is_empty() {
        out.signalling_source = Some(o.signalling_source.parse().map_err(|_| {
            Status::invalid_argument(format!(
                "signalling_source '{}' is not an IP address",
                o.signalling_source
            ))
        })?);
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
    out.codecs = CodecRequest {
        mode: match enum_value("transcode", o.transcode)? {
            proto::Transcode::Unspecified => None,
            proto::Transcode::Auto => Some(TranscodeMode::Auto),
            proto::Transcode::Off => Some(TranscodeMode::Off),
        },
        transcode: &o.codec_transcode,
        strip: &o.codec_strip,
        mask: &o.codec_mask,
        append_only_listed: false,
    }
    .parse()?;
    Ok(out)
}

fn event(ev: CallEvent) -> proto::Event {
    let kind = match ev.kind {
        EventKind::CallCreated => proto::EventKind::CallCreated,
        EventKind::MediaStarted => proto::EventKind::MediaStarted,
        EventKind::TimedOut => proto::EventKind::TimedOut,
        EventKind::Deleted => proto::EventKind::Deleted,
        EventKind::SipCallStarted => proto::EventKind::SipCallStarted,
        EventKind::SipCallRinging => proto::EventKind::SipCallRinging,
        EventKind::SipCallAnswered => proto::EventKind::SipCallAnswered,
        EventKind::SipCallEnded => proto::EventKind::SipCallEnded,
        // The detail is the number missed, which the session layer writes there already.
        EventKind::Overflow { .. } => proto::EventKind::Overflow,
    };
    proto::Event {
        kind: kind as i32,
        call_id: ev.call_id,
        tag: ev.tag,
        unix_ms: ev.unix_ms,
        detail: ev.detail,
    }
}

/// Absent values are the proto3 defaults ("" for addresses and names, 0 for times, -1 for
/// numbers where 0 is a valid value), as sluice.proto documents them.
pub fn call_info(r: &CallReport) -> proto::CallInfo {
    proto::CallInfo {
        call_id: r.call_id.clone(),
        created_unix_ms: r.created_unix_ms,
        last_signal_unix_ms: r.last_signal_unix_ms,
        legs: r.legs.iter().map(leg_info).collect(),
    }
}

fn leg_info(r: &LegReport) -> proto::LegInfo {
    proto::LegInfo {
        tag: r.tag.clone().unwrap_or_default(),
        streams: r.streams.iter().map(stream_info).collect(),
    }
}

fn quality_point(p: &QualityPoint) -> proto::QualityPoint {
    proto::QualityPoint {
        mos: p.mos,
        reported_unix_ms: p.reported_unix_ms,
        loss_pct: p.loss_pct,
        jitter_ms: p.jitter_ms,
        rtt_us: p.rtt_us,
        rtt_leg_us: p.rtt_leg_us,
    }
}

fn stream_info(r: &StreamReport) -> proto::StreamInfo {
    let addr = |a: Option<SocketAddr>| a.map(|a| a.to_string()).unwrap_or_default();
    proto::StreamInfo {
        index: r.index as u32,
        media: r.media.clone(),
        local_address: r.local_rtp.ip().to_string(),
        local_rtp_port: r.local_rtp.port().into(),
        local_rtcp_port: r.local_rtcp.port().into(),
        sdp_peer: addr(r.sdp_peer),
        latched_peer: addr(r.latched_peer),
        direction: r.direction.as_str().into(),
        rtcp_mux: r.rtcp_mux,
        strict_source: r.strict_source,
        packets: r.packets,
        bytes: r.bytes,
        rtcp_packets: r.rtcp_packets,
        dropped_wrong_source: r.dropped_wrong_source,
        dropped_direction: r.dropped_direction,
        dropped_malformed: r.dropped_malformed,
        last_packet_unix_ms: r.last_packet_unix_ms.unwrap_or(0),
        rtp_lost: r.rtp_lost,
        jitter_ms: r.jitter_ms,
        userspace_packets: r.userspace_packets,
        userspace_bytes: r.userspace_bytes,
        kernel_packets: r.kernel_packets,
        kernel_bytes: r.kernel_bytes,
        ssrc: r.ssrc,
        dropped_unconfirmed: r.dropped_unconfirmed,
        dropped_no_peer: r.dropped_no_peer,
        forwarded: r.forwarded,
        kernel_forwarded: r.kernel_forwarded,
        srtp: match r.srtp {
            SrtpReport::Plain => "plain".into(),
            SrtpReport::Passthrough => "passthrough".into(),
            SrtpReport::Terminated(suite) => suite.sdes_name().into(),
        },
        srtp_auth_failures: r.srtp_auth_failures,
        srtp_replayed: r.srtp_replayed,
        transcoded: r.transcoded,
        codec: r.codec.clone().unwrap_or_default(),
        payload_type: r.payload_type.map_or(-1, i32::from),
        rtcp_terminated: r.rtcp_terminated,
        transcoded_out: r.transcoded_out,
        transcode_concealed: r.transcode_concealed,
        transcode_fec_recovered: r.transcode_fec_recovered,
        transcode_dtmf: r.transcode_dtmf,
        transcode_dropped: r.transcode_dropped,
        opus_fec_loss_pct: r.opus_fec_loss_pct,
        reported_loss_pct: r.reported_loss_pct.map_or(-1, i32::from),
        quality: r.quality.as_ref().map(|q| proto::StreamQuality {
            ssrc: q.ssrc,
            samples: q.samples,
            average: q.average.as_ref().map(quality_point),
            lowest: q.lowest.as_ref().map(quality_point),
            highest: q.highest.as_ref().map(quality_point),
            latest: Some(quality_point(&q.latest)),
        }),
    }
}

pub fn statistics_reply(s: &Statistics) -> proto::StatisticsReply {
    proto::StatisticsReply {
        uptime_secs: s.uptime.as_secs(),
        calls_current: s.calls_current,
        calls_total: s.calls_total,
        calls_timed_out: s.calls_timed_out,
        ports_in_use: s.ports_in_use,
        ports_free: s.ports_free,
        packets_relayed: s.packets_relayed,
        bytes_relayed: s.bytes_relayed,
        packets_dropped: s.packets_dropped,
        forwarding_path: match &s.kernel_path {
            Some(k) => format!("userspace+{k}"),
            None => "userspace".into(),
        },
        kernel_flows: s.kernel_flows,
        kernel_packets: s.kernel_packets,
        workers: s.workers.iter().map(worker_info).collect(),
        kernel_features: s.kernel_features.iter().map(kernel_feature).collect(),
        max_sessions: s.max_sessions,
        sip: None,
    }
}

fn worker_info(w: &WorkerReport) -> proto::WorkerInfo {
    proto::WorkerInfo {
        index: w.index as u32,
        cpu: w.cpu.map_or(-1, |c| c as i32),
        rx: w.rx,
        tx: w.tx,
        dropped: w.dropped,
        transform_errors: w.transform_errors,
        load_permille: w.load_permille as u32,
        tx_ring: w.tx_ring,
        tx_kernel: w.tx_kernel,
    }
}

fn kernel_feature(f: &KernelFeatureReport) -> proto::KernelFeature {
    proto::KernelFeature {
        name: f.name.into(),
        available: f.available,
        used: f.used,
        without: f.without.unwrap_or_default().into(),
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
        Ok(Response::new(proto::DeleteReply {
            call: Some(call_info(&call)),
        }))
    }

    async fn query(
        &self,
        req: Request<proto::QueryRequest>,
    ) -> Result<Response<proto::QueryReply>, Status> {
        let call = self.sessions.query(&req.into_inner().call_id)?;
        Ok(Response::new(proto::QueryReply {
            call: Some(call_info(&call)),
        }))
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
        let mut reply = statistics_reply(&self.sessions.statistics());
        reply.sip = self.sip_statistics();
        Ok(Response::new(reply))
    }

    async fn list_sip_calls(
        &self,
        _: Request<proto::ListSipCallsRequest>,
    ) -> Result<Response<proto::ListSipCallsReply>, Status> {
        let mut calls = Vec::new();
        for b in &self.sip {
            calls.extend(
                crate::b2bua::lock(b)
                    .calls()
                    .into_iter()
                    .map(|c| proto::SipCall {
                        id: c.id,
                        state: c.state.into(),
                        caller: c.caller,
                        callee: c.callee,
                        a_call_id: c.a_call_id,
                        b_call_id: c.b_call_id,
                        media_call_id: c.media_id,
                    }),
            );
        }
        Ok(Response::new(proto::ListSipCallsReply { calls }))
    }

    async fn hangup_sip_call(
        &self,
        req: Request<proto::HangupSipCallRequest>,
    ) -> Result<Response<proto::HangupSipCallReply>, Status> {
        let id = req.into_inner().id;
        let now = std::time::Instant::now();
        for b in &self.sip {
            if crate::b2bua::lock(b).hangup(id, now) {
                return Ok(Response::new(proto::HangupSipCallReply {}));
            }
        }
        Err(Status::not_found(format!(
            "no SIP call {id} (ended, or never started)"
        )))
    }

    async fn set_max_sessions(
        &self,
        req: Request<proto::SetMaxSessionsRequest>,
    ) -> Result<Response<proto::SetMaxSessionsReply>, Status> {
        let max = req.into_inner().max_sessions;
        let previous = self.sessions.set_max_sessions(max);
        tracing::info!(max_sessions = ?max, ?previous, "session limit set through the control API");
        Ok(Response::new(proto::SetMaxSessionsReply {
            previous,
            calls_current: self.sessions.statistics().calls_current,
        }))
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
                let ev = tokio::select! {
                    _ = &mut closed => return,
                    ev = rx.recv() => ev,
                };
                // A client slower than the events fills its subscriber queue, not this channel's
                // sender: the session layer then counts what it misses and says so in an
                // EVENT_KIND_OVERFLOW event, and the stream goes on.
                let Some(ev) = ev else { return };
                if tx.send(Ok(event(ev))).await.is_err() {
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

    #[test]
    fn a_signalling_source_must_be_an_ip_address() {
        let opts = |src: &str| {
            leg_options(Some(proto::LegOptions {
                signalling_source: src.into(),
                ..Default::default()
            }))
        };
        assert_eq!(
            opts("203.0.113.9").unwrap().signalling_source,
            Some("203.0.113.9".parse().unwrap())
        );
        assert_eq!(opts("").unwrap().signalling_source, None);
        let e = opts("pbx.example").unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
        assert!(e.message().contains("signalling_source"), "{e:?}");
    }
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

    /// A watcher that fell behind learns how much it missed in the stream itself.
    #[test]
    fn overflow_is_event_kind_5_with_the_missed_count() {
        let ev = event(CallEvent {
            kind: EventKind::Overflow { missed: 5904 },
            call_id: String::new(),
            tag: String::new(),
            unix_ms: 1_700_000_000_000,
            detail: "5904".into(),
        });
        assert_eq!(ev.kind, 5);
        assert_eq!(ev.kind, proto::EventKind::Overflow as i32);
        assert_eq!(
            (ev.call_id.as_str(), ev.detail.as_str(), ev.unix_ms),
            ("", "5904", 1_700_000_000_000)
        );
    }

    /// Drops every command: the mapping tests need calls, not media.
    struct NoPlane;
    impl crate::session::MediaPlane for NoPlane {
        fn send(
            &mut self,
            _: sluice_relay::engine::Command,
        ) -> Result<(), sluice_relay::engine::EngineGone> {
            Ok(())
        }
    }

    /// What the session layer leaves unknown reaches clients as sluice.proto's documented
    /// defaults, so replies read as they did when the session layer built them itself.
    #[test]
    fn reports_map_unknowns_to_the_proto_defaults() {
        let sessions = Sessions::new(
            crate::session::SessionConfig {
                media_ips: vec!["127.0.0.1".parse().unwrap()],
                port_low: 24000,
                port_high: 24099,
                timeout: std::time::Duration::from_secs(60),
                transcode: TranscodeMode::Auto,
                opus_complexity: 5,
                opus_bitrate: 32000,
                socket_pool: 0,
            },
            crate::session::SessionEnv::system(),
            Box::new(NoPlane),
            None,
        )
        .unwrap();
        let sdp = "v=0\r\no=a 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n\
                   m=audio 4000 RTP/AVP 0\r\n";
        sessions
            .offer("c", "a", sdp, LegOptions::default())
            .unwrap();
        let info = call_info(&sessions.query("c").unwrap());
        let (caller, callee) = (&info.legs[0], &info.legs[1]);
        assert_eq!((caller.tag.as_str(), callee.tag.as_str()), ("a", ""));
        let s = &caller.streams[0];
        assert_eq!(s.local_address, "127.0.0.1");
        assert_eq!(s.local_rtcp_port, s.local_rtp_port + 1);
        assert_eq!(s.sdp_peer, "127.0.0.1:4000");
        assert_eq!(s.latched_peer, "");
        assert_eq!(
            (s.direction.as_str(), s.srtp.as_str()),
            ("sendrecv", "plain")
        );
        assert_eq!(
            (s.last_packet_unix_ms, s.payload_type, s.reported_loss_pct),
            (0, -1, -1)
        );
        assert_eq!(callee.streams[0].sdp_peer, "");

        let stats = statistics_reply(&sessions.statistics());
        assert_eq!(stats.forwarding_path, "userspace");
        assert_eq!((stats.calls_current, stats.ports_in_use), (1, 4));
        let with_xdp = statistics_reply(&Statistics {
            kernel_path: Some("xdp-native on eth0".into()),
            workers: vec![WorkerReport {
                index: 1,
                cpu: None,
                rx: 10,
                tx: 9,
                dropped: 1,
                transform_errors: 0,
                load_permille: 250,
                tx_ring: 8,
                tx_kernel: 1,
            }],
            kernel_features: vec![
                KernelFeatureReport {
                    name: "bpf_xdp_adjust_meta",
                    available: true,
                    used: true,
                    without: None,
                },
                KernelFeatureReport {
                    name: "mmapable arrays",
                    available: false,
                    used: false,
                    without: Some("no route cache"),
                },
            ],
            ..sessions.statistics()
        });
        assert_eq!(with_xdp.forwarding_path, "userspace+xdp-native on eth0");
        let w = &with_xdp.workers[0];
        assert_eq!((w.index, w.cpu, w.tx, w.load_permille), (1, -1, 9, 250));
        let without: Vec<_> = with_xdp
            .kernel_features
            .iter()
            .map(|f| f.without.as_str())
            .collect();
        assert_eq!(without, ["", "no route cache"]);
    }

    #[test]
    fn each_session_error_has_its_status_code() {
        use crate::port_alloc::PortAllocError;
        use tonic::Code;
        let cases = [
            (
                SessionError::BadSdp(crate::sdp::SdpError {
                    line: 2,
                    reason: "bogus".into(),
                }),
                Code::InvalidArgument,
            ),
            (
                SessionError::Sdes(crate::sdes::SdesError::UnsupportedSuite("F8_128".into())),
                Code::InvalidArgument,
            ),
            (SessionError::BadRequest("x".into()), Code::InvalidArgument),
            (
                SessionError::NoCodecBridge("x".into()),
                Code::FailedPrecondition,
            ),
            (
                SessionError::NoPorts(PortAllocError::Exhausted {
                    low: 1000,
                    high: 1003,
                    capacity: 4,
                }),
                Code::ResourceExhausted,
            ),
            (SessionError::NotFound("c".into()), Code::NotFound),
            (SessionError::SessionLimit(0), Code::ResourceExhausted),
            (
                SessionError::Overloaded(crate::load::Overload::Cpu {
                    used: 95.0,
                    max: 90.0,
                }),
                Code::ResourceExhausted,
            ),
            (SessionError::ShuttingDown, Code::Unavailable),
            (
                SessionError::Engine(sluice_relay::engine::EngineGone),
                Code::Unavailable,
            ),
        ];
        for (e, code) in cases {
            let msg = e.to_string();
            let status = Status::from(e);
            assert_eq!((status.code(), status.message()), (code, msg.as_str()));
        }
    }
}
