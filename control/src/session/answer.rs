//! The SDP answer to a pending offer: decides SRTP and codecs per stream (relay, transcode, or
//! refuse), completes each side's state, and writes the SDP the offerer gets back.

use sluice_relay::engine::Command;

use crate::codecs::{self, Decision};
use crate::sdp::Sdp;

use super::engine::{clock_rate, configure, srtp_command};
use super::error::{SessionError, bad};
use super::model::{State, StreamTranscode, set_version};
use super::offload::unkernelize;
use super::options::{Family, LegOptions, RtcpMuxMode, latch_config};
use super::srtp::{SideCrypto, srtp_answer, with_srtp};

impl State {
    pub(super) fn answer(
        &mut self,
        call_id: &str,
        from_tag: &str,
        to_tag: &str,
        answer: &Sdp,
        answer_text: &str,
        opts: LegOptions,
    ) -> Result<String, SessionError> {
        let (opus_complexity, opus_bitrate) = (self.cfg.opus_complexity, self.cfg.opus_bitrate);
        let call = self
            .calls
            .get_mut(call_id)
            .ok_or_else(|| SessionError::NotFound(call_id.into()))?;
        // An answer after the answer (the 200 after a 183 with SDP) belongs to the same offer
        // and updates what the first one set up; the relay ports stay, as they were given in
        // the offer.
        let o = call.pending_offer.or(call.answered_offer).ok_or_else(|| {
            bad(format!(
                "call '{call_id}' has no offer waiting for an answer"
            ))
        })?;
        let a = 1 - o;
        if call.tags[o] != from_tag {
            return Err(bad(format!(
                "from_tag '{from_tag}' is not the offerer's tag '{}' of call '{call_id}'",
                call.tags[o]
            )));
        }
        if !call.tags[a].is_empty() && call.tags[a] != to_tag {
            return Err(bad(format!(
                "to_tag '{to_tag}' differs from the answerer's tag '{}' of call '{call_id}' \
                 (an answer from another branch of a forked offer names its branch)",
                call.tags[a]
            )));
        }
        if answer.media.len() != call.streams.len() {
            return Err(bad(format!(
                "the answer has {} m= lines but the offer had {}; RFC 3264 6 requires the same \
                 number",
                answer.media.len(),
                call.streams.len()
            )));
        }
        if opts.family != Family::Auto {
            let v6 = opts.family == Family::V6;
            if call
                .streams
                .iter()
                .any(|s| s.sides[o].local_ip.is_ipv6() != v6)
            {
                return Err(bad(
                    "the address family of the answer's relay address was fixed by the offer; \
                     set address_family in the offer instead",
                ));
            }
        }
        for (i, m) in answer.media.iter().enumerate() {
            if opts.rtcp_mux == RtcpMuxMode::Require && !m.is_disabled() && !m.rtcp_mux() {
                return Err(bad(format!(
                    "m= line {} ({}) of the answer lacks a=rtcp-mux, which the rtcp_mux REQUIRE \
                     option demands",
                    i + 1,
                    m.media
                )));
            }
            if !m.is_disabled() && answer.media_connection(i).is_none() {
                return Err(bad(format!("m= line {} has no connection address", i + 1)));
            }
        }
        let mut answer_crypto = Vec::with_capacity(answer.media.len());
        for (i, m) in answer.media.iter().enumerate() {
            let sa = &call.streams[i].sides[a];
            answer_crypto.push(if m.is_disabled() {
                SideCrypto::Plain
            } else {
                srtp_answer(i, m, &sa.offered_keys, opts.srtp)?
            });
        }
        let mut decisions = Vec::with_capacity(answer.media.len());
        for (i, m) in answer.media.iter().enumerate() {
            let s = &call.streams[i];
            let decided = match &s.codecs {
                Some(oc) if !m.is_disabled() && !s.disabled => {
                    let (mut d, back) = codecs::decide(oc, m, [s.ssrcs[o], s.ssrcs[a]])
                        .map_err(|e| SessionError::from(e).in_line(i))?;
                    if let Decision::Transcode(t) = &mut d {
                        for p in &mut t.plans {
                            p.opus.complexity = opus_complexity;
                            p.opus.bitrate =
                                opus_bitrate.min(p.opus.max_average_bitrate.unwrap_or(u32::MAX));
                        }
                    }
                    if matches!(d, Decision::Transcode(_))
                        && answer_crypto[i] == SideCrypto::Passthrough
                    {
                        return Err(bad(format!(
                            "m= line {} of the answer needs transcoding but is SRTP that sluice \
                             did not offer and cannot decrypt",
                            i + 1
                        )));
                    }
                    Some((d, back))
                }
                _ => None,
            };
            decisions.push(decided);
        }
        let had_transcode: Vec<bool> = call.streams.iter().map(|s| s.transcode.is_some()).collect();
        call.tags[a] = to_tag.to_string();
        call.last_signal_ns = self.clock.now_ns();
        call.pending_offer = None;
        call.answered_offer = Some(o);
        unkernelize(
            call,
            self.kernel.as_deref_mut(),
            &mut self.flow_ids,
            self.plane.as_mut(),
        );
        let mut out = answer.clone();
        let first_ip = call.streams.first().map(|s| s.sides[o].local_ip);
        for (i, m) in out.media.iter_mut().enumerate() {
            let stream = &mut call.streams[i];
            {
                let sa = &mut stream.sides[a];
                sa.sdp_rtp = answer.rtp_endpoint(i);
                sa.sdp_rtcp = answer.rtcp_endpoint(i);
                sa.direction = opts.direction.unwrap_or_else(|| answer.direction(i));
                sa.rtcp_mux = sa.offered_mux && m.rtcp_mux();
                sa.latch = latch_config(&opts);
                sa.signalling_source = opts.signalling_source.or(sa.signalling_source);
                sa.crypto = std::mem::take(&mut answer_crypto[i]);
            }
            {
                let so = &mut stream.sides[o];
                // The relay terminates rtcp-mux per side, so the offerer gets mux if it asked for
                // it, whatever the answerer chose.
                so.rtcp_mux = so.rtcp_mux && opts.rtcp_mux != RtcpMuxMode::Strip;
            }
            stream.disabled = m.is_disabled() || stream.offer_disabled;
            if stream.disabled {
                m.set_port(0);
                stream.transcode = None;
                continue;
            }
            match decisions[i].take() {
                Some((Decision::Transcode(t), back)) => {
                    *m = back;
                    let [from_o, from_a] = t.plans;
                    let mut formats = [t.offerer; 2];
                    formats[a] = t.answerer;
                    let mut plans = [from_o.clone(), from_o];
                    plans[a] = from_a;
                    for (k, side) in stream.sides.iter_mut().enumerate() {
                        side.clock_rate = formats[k].codec.clock_rate();
                        side.codec = codecs::codec_label(formats[k].codec);
                    }
                    stream.transcode = Some(StreamTranscode { formats, plans });
                }
                decided => {
                    if let Some((_, back)) = decided {
                        *m = back;
                    }
                    stream.transcode = None;
                    let codec = codecs::relayed_codec(&answer.media[i]).unwrap_or_default();
                    for side in stream.sides.iter_mut() {
                        side.clock_rate = clock_rate(answer, i);
                        side.codec = codec.clone();
                    }
                }
            }
            let so = &stream.sides[o];
            if m.connection.is_some()
                || answer.connection.is_none()
                || first_ip != Some(so.local_ip)
            {
                m.set_connection(so.local_ip);
            }
            m.set_port(so.rtp_port);
            m.set_rtcp_mux(so.rtcp_mux);
            m.set_rtcp(if so.rtcp_mux {
                None
            } else {
                so.rtcp_port.map(|p| (p, so.local_ip))
            });
            if let Some(d) = opts.direction {
                m.set_direction(d);
            }
            match &so.crypto {
                SideCrypto::Terminated { tx, .. } => {
                    m.proto = with_srtp(&m.proto, true);
                    m.remove_attributes("crypto");
                    m.push_attribute(tx.to_attribute());
                }
                SideCrypto::Plain => {
                    m.proto = with_srtp(&m.proto, false);
                    m.remove_attributes("crypto");
                }
                SideCrypto::Passthrough => {}
            }
        }
        if let Some(ip) = first_ip {
            out.set_session_connection(ip);
        }
        set_version(&mut call.sdp_versions[o], &mut out, answer_text);
        let mut cmds = Vec::new();
        for (i, s) in call.streams.iter().enumerate() {
            cmds.push(configure(s, a));
            cmds.push(configure(s, o));
            cmds.push(srtp_command(s, a));
            cmds.push(srtp_command(s, o));
            if s.transcode.is_some() || had_transcode[i] {
                for k in [a, o] {
                    cmds.push(Command::SetTranscode {
                        id: s.sides[k].endpoint,
                        plan: s.transcode.as_ref().map(|t| t.plans[k].clone()),
                    });
                }
            }
        }
        for cmd in cmds {
            self.plane.send(cmd)?;
        }
        Ok(out.to_string())
    }
}
