//! `sluice ctl`: the control API from a shell. Every reply is printed as JSON on stdout; errors
//! go to stderr with the gRPC code and exit status 1.

use std::io::Read;
use std::path::PathBuf;

use clap::{Args, Subcommand, ValueEnum};
use serde::Serialize;
use tokio_stream::StreamExt;

use crate::client::connect;
use crate::config::ControlAddr;
use crate::proto;

#[derive(Debug, Subcommand)]
pub enum Method {
    /// Check that sluice answers.
    Ping,
    /// Send the caller's SDP offer; prints the SDP to pass to the callee.
    Offer {
        #[arg(long)]
        call_id: String,
        #[arg(long)]
        from_tag: String,
        /// File holding the SDP, or - for stdin.
        #[arg(long)]
        sdp: PathBuf,
        #[command(flatten)]
        options: OptionArgs,
    },
    /// Send the callee's SDP answer; prints the SDP to pass back to the caller.
    Answer {
        #[arg(long)]
        call_id: String,
        #[arg(long)]
        from_tag: String,
        #[arg(long)]
        to_tag: String,
        #[arg(long)]
        sdp: PathBuf,
        #[command(flatten)]
        options: OptionArgs,
    },
    /// End a call and free its ports; prints its final counters.
    Delete {
        #[arg(long)]
        call_id: String,
        #[arg(long, default_value = "")]
        from_tag: String,
        #[arg(long, default_value = "")]
        to_tag: String,
    },
    /// Per-leg state and counters of a call.
    Query {
        #[arg(long)]
        call_id: String,
    },
    /// Calls in progress.
    List {
        #[arg(long, default_value_t = 0)]
        limit: u32,
    },
    /// Relay-wide counters.
    Statistics,
    /// Cap the number of calls: new offers beyond it are refused, calls in progress go on
    /// (0 drains this node; "none" lifts the cap).
    MaxSessions {
        /// A number, or none.
        limit: String,
    },
    /// The B2BUA's live SIP calls and the state of each.
    Calls,
    /// End a SIP call (by the id `calls` shows): CANCEL before the answer, BYE after it.
    Hangup { id: u64 },
    /// Print call events as JSON lines until interrupted (or --count events).
    Watch {
        #[arg(long)]
        count: Option<usize>,
    },
}

#[derive(Debug, Args)]
pub struct OptionArgs {
    #[arg(long, value_enum)]
    family: Option<FamilyArg>,
    /// Drop media from any source but the latched/SDP one (default true).
    #[arg(long)]
    strict_source: Option<bool>,
    /// The IP this side's signalling came from: media from other hosts than it or the SDP's
    /// is dropped and never latched.
    #[arg(long)]
    signalling_source: Option<String>,
    #[arg(long, value_enum)]
    latching: Option<LatchArg>,
    #[arg(long, value_enum)]
    rtcp_mux: Option<MuxArg>,
    /// Override this side's direction (hold: sendonly or inactive).
    #[arg(long, value_enum)]
    direction: Option<DirArg>,
    /// SRTP in the returned SDP: offer (SDES keys by sluice), strip (plain RTP), require (the
    /// incoming SDP must be SRTP; re-keyed).
    #[arg(long, value_enum)]
    srtp: Option<SrtpArg>,
    /// Transcoding (offers only): auto appends PCMU, PCMA and opus where the offer lacks them and
    /// transcodes when the answer picks one; off passes the codecs as they are.
    #[arg(long, value_enum)]
    transcode: Option<TranscodeArg>,
    /// Codecs to append to the offer instead of all missing ones, e.g. opus,PCMA.
    #[arg(long, value_delimiter = ',')]
    codec_transcode: Vec<String>,
    /// Codecs to remove from the offer and from use on this side.
    #[arg(long, value_delimiter = ',')]
    codec_strip: Vec<String>,
    /// Codecs to hide from the other side but keep using on this one (forces transcoding).
    #[arg(long, value_delimiter = ',')]
    codec_mask: Vec<String>,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum TranscodeArg {
    Auto,
    Off,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum SrtpArg {
    Offer,
    Strip,
    Require,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum FamilyArg {
    Ip4,
    Ip6,
}
#[derive(Debug, Clone, Copy, ValueEnum)]
enum LatchArg {
    Off,
    Immediate,
    Heuristic,
}
#[derive(Debug, Clone, Copy, ValueEnum)]
enum MuxArg {
    Offer,
    Strip,
    Require,
}
#[derive(Debug, Clone, Copy, ValueEnum)]
enum DirArg {
    Sendrecv,
    Sendonly,
    Recvonly,
    Inactive,
}

impl OptionArgs {
    fn to_proto(&self) -> proto::LegOptions {
        proto::LegOptions {
            address_family: match self.family {
                None => proto::AddressFamily::Unspecified,
                Some(FamilyArg::Ip4) => proto::AddressFamily::Ip4,
                Some(FamilyArg::Ip6) => proto::AddressFamily::Ip6,
            } as i32,
            strict_source: self.strict_source,
            latching: match self.latching {
                None => proto::Latching::Unspecified,
                Some(LatchArg::Off) => proto::Latching::Off,
                Some(LatchArg::Immediate) => proto::Latching::Immediate,
                Some(LatchArg::Heuristic) => proto::Latching::Heuristic,
            } as i32,
            rtcp_mux: match self.rtcp_mux {
                None => proto::RtcpMux::Unspecified,
                Some(MuxArg::Offer) => proto::RtcpMux::Offer,
                Some(MuxArg::Strip) => proto::RtcpMux::Strip,
                Some(MuxArg::Require) => proto::RtcpMux::Require,
            } as i32,
            direction: match self.direction {
                None => proto::Direction::Unspecified,
                Some(DirArg::Sendrecv) => proto::Direction::Sendrecv,
                Some(DirArg::Sendonly) => proto::Direction::Sendonly,
                Some(DirArg::Recvonly) => proto::Direction::Recvonly,
                Some(DirArg::Inactive) => proto::Direction::Inactive,
            } as i32,
            srtp: match self.srtp {
                None => proto::Srtp::Unspecified,
                Some(SrtpArg::Offer) => proto::Srtp::Offer,
                Some(SrtpArg::Strip) => proto::Srtp::Strip,
                Some(SrtpArg::Require) => proto::Srtp::Require,
            } as i32,
            transcode: match self.transcode {
                None => proto::Transcode::Unspecified,
                Some(TranscodeArg::Auto) => proto::Transcode::Auto,
                Some(TranscodeArg::Off) => proto::Transcode::Off,
            } as i32,
            // Names are checked by the server, which knows what it transcodes.
            codec_transcode: self.codec_transcode.clone(),
            codec_strip: self.codec_strip.clone(),
            codec_mask: self.codec_mask.clone(),
            signalling_source: self.signalling_source.clone().unwrap_or_default(),
        }
    }
}

fn read_sdp(path: &PathBuf) -> anyhow::Result<String> {
    let mut s = String::new();
    if path.as_os_str() == "-" {
        std::io::stdin().read_to_string(&mut s)?;
    } else {
        s = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("cannot read SDP file {}: {e}", path.display()))?;
    }
    Ok(s)
}

fn print<T: Serialize>(v: &T) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

/// Runs one method; errors carry the gRPC status for the caller to print.
pub async fn run(addr: &ControlAddr, method: Method) -> anyhow::Result<()> {
    let mut c = connect(addr).await?;
    let status = |s: tonic::Status| anyhow::anyhow!("{:?}: {}", s.code(), s.message());
    match method {
        Method::Ping => print(
            &c.ping(proto::PingRequest {})
                .await
                .map_err(status)?
                .into_inner(),
        ),
        Method::Offer {
            call_id,
            from_tag,
            sdp,
            options,
        } => {
            let req = proto::OfferRequest {
                call_id,
                from_tag,
                sdp: read_sdp(&sdp)?,
                options: Some(options.to_proto()),
            };
            print(&c.offer(req).await.map_err(status)?.into_inner())
        }
        Method::Answer {
            call_id,
            from_tag,
            to_tag,
            sdp,
            options,
        } => {
            let req = proto::AnswerRequest {
                call_id,
                from_tag,
                to_tag,
                sdp: read_sdp(&sdp)?,
                options: Some(options.to_proto()),
            };
            print(&c.answer(req).await.map_err(status)?.into_inner())
        }
        Method::Delete {
            call_id,
            from_tag,
            to_tag,
        } => {
            let req = proto::DeleteRequest {
                call_id,
                from_tag,
                to_tag,
            };
            print(&c.delete(req).await.map_err(status)?.into_inner())
        }
        Method::Query { call_id } => print(
            &c.query(proto::QueryRequest { call_id })
                .await
                .map_err(status)?
                .into_inner(),
        ),
        Method::List { limit } => print(
            &c.list(proto::ListRequest { limit })
                .await
                .map_err(status)?
                .into_inner(),
        ),
        Method::MaxSessions { limit } => {
            let max_sessions = match limit.as_str() {
                "none" => None,
                n => Some(n.parse::<u64>().map_err(|_| {
                    anyhow::anyhow!("max-sessions: expected a number or none, got '{n}'")
                })?),
            };
            print(
                &c.set_max_sessions(proto::SetMaxSessionsRequest { max_sessions })
                    .await
                    .map_err(status)?
                    .into_inner(),
            )
        }
        Method::Calls => print(
            &c.list_sip_calls(proto::ListSipCallsRequest {})
                .await
                .map_err(status)?
                .into_inner(),
        ),
        Method::Hangup { id } => print(
            &c.hangup_sip_call(proto::HangupSipCallRequest { id })
                .await
                .map_err(status)?
                .into_inner(),
        ),
        Method::Statistics => print(
            &c.statistics(proto::StatisticsRequest {})
                .await
                .map_err(status)?
                .into_inner(),
        ),
        Method::Watch { count } => {
            let mut stream = c
                .watch_events(proto::WatchEventsRequest {})
                .await
                .map_err(status)?
                .into_inner();
            let mut seen = 0;
            while let Some(ev) = stream.next().await {
                let ev = ev.map_err(status)?;
                println!("{}", serde_json::to_string(&ev)?);
                seen += 1;
                if count.is_some_and(|n| seen >= n) {
                    break;
                }
            }
            Ok(())
        }
    }
}
