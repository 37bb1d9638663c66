//! What a front end can show about calls and the relay: per-leg stream state and counters of one
//! call, and relay-wide statistics. Counters of both paths (userspace and kernel) are summed here
//! so that no front end has to know a stream moved.

use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use sluice_relay::xdp::FlowCounters;

use crate::kernel::KernelPath;
use crate::proto;

use super::events::unix_ms_of;
use super::model::{Call, State, Stream};
use super::offload::kernel_counters;
use super::srtp::SideCrypto;

pub(super) fn call_info(call: &Call, kernel: Option<&dyn KernelPath>) -> proto::CallInfo {
    let legs = (0..2)
        .map(|k| proto::LegInfo {
            tag: call.tags[k].clone(),
            streams: call
                .streams
                .iter()
                .enumerate()
                .map(|(i, s)| stream_info(i, s, k, kernel_counters(s, k, kernel)))
                .collect(),
        })
        .collect();
    proto::CallInfo {
        call_id: call.call_id.clone(),
        created_unix_ms: call.created_unix_ms,
        last_signal_unix_ms: unix_ms_of(call.last_signal_ns),
        legs,
    }
}

fn stream_info(i: usize, s: &Stream, k: usize, kc: FlowCounters) -> proto::StreamInfo {
    let side = &s.sides[k];
    let c = &side.counters;
    let fmt = |a: Option<SocketAddr>| a.map(|a| a.to_string()).unwrap_or_default();
    let last = c.last_packet_ns.load(Relaxed).max(kc.last_seen_ns);
    proto::StreamInfo {
        index: i as u32,
        media: s.media.clone(),
        local_address: side.local_ip.to_string(),
        local_rtp_port: side.rtp_port as u32,
        local_rtcp_port: if side.rtcp_mux {
            side.rtp_port
        } else {
            side.rtcp_port.unwrap_or(side.rtp_port)
        } as u32,
        sdp_peer: fmt(side.sdp_rtp),
        latched_peer: fmt(c.latched_rtp()),
        direction: side.direction.as_str().into(),
        rtcp_mux: side.rtcp_mux,
        strict_source: side.latch.strict_source,
        packets: c.packets.load(Relaxed) + kc.packets,
        bytes: c.bytes.load(Relaxed) + kc.bytes,
        rtcp_packets: c.rtcp_packets.load(Relaxed),
        dropped_wrong_source: c.dropped_wrong_source.load(Relaxed)
            + c.dropped_unconfirmed.load(Relaxed)
            + kc.dropped_wrong_source,
        dropped_direction: c.dropped_direction.load(Relaxed),
        dropped_malformed: c.dropped_malformed.load(Relaxed),
        last_packet_unix_ms: if last == 0 { 0 } else { unix_ms_of(last) },
        rtp_lost: c.rtp_lost.load(Relaxed),
        jitter_ms: c.jitter_ms(),
        userspace_packets: c.packets.load(Relaxed),
        userspace_bytes: c.bytes.load(Relaxed),
        kernel_packets: kc.packets,
        kernel_bytes: kc.bytes,
        ssrc: c.ssrc.load(Relaxed),
        dropped_unconfirmed: c.dropped_unconfirmed.load(Relaxed),
        dropped_no_peer: c.dropped_no_peer.load(Relaxed),
        forwarded: c.forwarded.load(Relaxed) + kc.packets,
        kernel_forwarded: !s.kernel.is_empty(),
        srtp: match &side.crypto {
            SideCrypto::Plain => "plain".into(),
            SideCrypto::Passthrough => "passthrough".into(),
            SideCrypto::Terminated { rx, .. } => rx.suite.sdes_name().into(),
        },
        srtp_auth_failures: c.srtp_auth_failures.load(Relaxed),
        srtp_replayed: c.srtp_replayed.load(Relaxed),
        transcoded: s.transcode.is_some(),
        codec: side.codec.clone(),
        payload_type: s
            .transcode
            .as_ref()
            .map_or(-1, |t| i32::from(t.formats[k].pt)),
        rtcp_terminated: c.rtcp_terminated.load(Relaxed),
        transcoded_out: c.transcoded_out.load(Relaxed),
        transcode_concealed: c.transcode_concealed.load(Relaxed),
        transcode_fec_recovered: c.transcode_fec.load(Relaxed),
        transcode_dtmf: c.transcode_dtmf.load(Relaxed),
        transcode_dropped: c.transcode_dropped.load(Relaxed),
        opus_fec_loss_pct: c.transcode_fec_loss_pct.load(Relaxed),
        reported_loss_pct: c.reported_loss_pct().map_or(-1, i32::from),
    }
}

impl State {
    pub(super) fn statistics(&self, uptime: Duration) -> proto::StatisticsReply {
        let (mut packets, mut bytes, mut dropped) =
            (self.totals.packets, self.totals.bytes, self.totals.dropped);
        let mut kernel_flows = 0;
        let mut kernel_packets = 0;
        for call in self.calls.values() {
            for s in &call.streams {
                kernel_flows += s.kernel.len() as u64;
                for (k, side) in s.sides.iter().enumerate() {
                    let kc = kernel_counters(s, k, self.kernel.as_deref());
                    packets += side.counters.forwarded.load(Relaxed) + kc.packets;
                    bytes += side.counters.forwarded_bytes.load(Relaxed) + kc.bytes;
                    dropped += side.counters.dropped() + kc.dropped();
                    kernel_packets += kc.packets;
                }
            }
        }
        proto::StatisticsReply {
            uptime_secs: uptime.as_secs(),
            calls_current: self.calls.len() as u64,
            calls_total: self.totals.calls,
            calls_timed_out: self.totals.timed_out,
            ports_in_use: self.ports.in_use() as u64,
            ports_free: self.ports.free() as u64,
            packets_relayed: packets,
            bytes_relayed: bytes,
            packets_dropped: dropped,
            forwarding_path: match &self.kernel {
                Some(k) => format!("userspace+{}", k.describe()),
                None => "userspace".into(),
            },
            kernel_flows,
            kernel_packets: self.totals.kernel_packets + kernel_packets,
            workers: self
                .kernel
                .as_ref()
                .map(|k| k.worker_stats())
                .unwrap_or_default()
                .iter()
                .map(|w| proto::WorkerInfo {
                    index: w.worker as u32,
                    cpu: w.cpu.map_or(-1, |c| c as i32),
                    rx: w.rx_packets,
                    tx: w.tx_packets + w.tx_socket_packets,
                    dropped: w.dropped(),
                    transform_errors: w.transform_errors,
                    load_permille: w.load_permille as u32,
                    tx_ring: w.tx_packets,
                    tx_kernel: w.tx_socket_packets,
                })
                .collect(),
            kernel_features: self
                .kernel
                .as_ref()
                .map(|k| k.kernel_features())
                .unwrap_or_default()
                .into_iter()
                .map(|f| proto::KernelFeature {
                    name: f.name.into(),
                    available: f.available,
                    used: f.used,
                    without: f.without.into(),
                })
                .collect(),
        }
    }
}
