//! An SDP offer from either side: checks everything the request can be refused for before any
//! port is taken, creates the streams new m= lines need, and writes the SDP the answerer gets
//! (relay addresses, rtcp-mux, SDES keys sluice offers, codecs it can transcode).

use rand::RngCore;

use crate::codecs;
use crate::sdes::{OFFERED, SdesKey};
use crate::sdp::Sdp;

use super::engine::{clock_rate, configure, srtp_command};
use super::error::{SessionError, bad};
use super::model::{Call, State, Stream, set_version};
use super::options::{Family, LegOptions, RtcpMuxMode, SrtpMode, latch_config};
use super::srtp::{SideCrypto, is_savp, srtp_incoming, with_srtp};

impl State {
    /// `branch` names the branch of a new call; with `new_fork`, the offer opens that branch
    /// beside the call's others (see `fork`).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn offer(
        &mut self,
        call_id: &str,
        from_tag: &str,
        o: usize,
        branch: &str,
        new_fork: bool,
        offer: &Sdp,
        offer_text: &str,
        opts: LegOptions,
    ) -> Result<String, SessionError> {
        let a = 1 - o;
        let existing = self.calls.get(call_id).map_or(0, |c| c.streams.len());
        let mode = opts.codecs.mode.unwrap_or(self.cfg.transcode);
        // Check everything that can fail for a reason of the request before any port is taken.
        let mut ips = Vec::with_capacity(offer.media.len());
        let mut rewrites = Vec::with_capacity(offer.media.len());
        for (i, m) in offer.media.iter().enumerate() {
            // SRTP relayed untouched is opaque to sluice: there is nothing it could transcode.
            let opaque = opts.srtp == SrtpMode::Default && is_savp(&m.proto);
            // Payload types are kept stable towards the same answerer only: what the other side
            // offered before says nothing about this offer's appended codecs.
            let previous = self
                .calls
                .get(call_id)
                .filter(|c| c.pending_offer.or(c.answered_offer) == Some(o))
                .and_then(|c| c.streams.get(i))
                .and_then(|s| s.codecs.as_ref());
            rewrites.push(if opaque {
                if opts.codecs.has_lists() && !m.is_disabled() {
                    return Err(bad(format!(
                        "m= line {} is SRTP relayed end to end ({}), which sluice cannot                          transcode; drop the codec options or terminate SRTP with an srtp option",
                        i + 1,
                        m.proto
                    )));
                }
                None
            } else {
                codecs::rewrite_offer(m, &opts.codecs, mode, previous)?
            });
            if opts.rtcp_mux == RtcpMuxMode::Require && !m.is_disabled() && !m.rtcp_mux() {
                return Err(bad(format!(
                    "m= line {} ({}) lacks a=rtcp-mux, which the rtcp_mux REQUIRE option demands",
                    i + 1,
                    m.media
                )));
            }
            if !m.is_disabled() {
                srtp_incoming(m, opts.srtp)?;
            }
            let offer_v6 = offer.media_connection(i).map(|ip| ip.is_ipv6());
            if !m.is_disabled() && offer_v6.is_none() {
                return Err(bad(format!("m= line {} has no connection address", i + 1)));
            }
            let own_v6 = offer_v6.unwrap_or(false);
            let other_v6 = match opts.family {
                Family::Auto => own_v6,
                Family::V4 => false,
                Family::V6 => true,
            };
            ips.push((self.relay_ip(own_v6)?, self.relay_ip(other_v6)?));
        }
        if offer.media.len() < existing {
            return Err(bad(format!(
                "the offer has {} m= lines but the call already has {existing}; RFC 3264 8 \
                 forbids removing m= lines (set the port to 0 instead)",
                offer.media.len()
            )));
        }
        let forked = self.calls.get(call_id).is_some_and(|c| !c.forks.is_empty());
        if (new_fork || forked) && offer.media.len() != existing {
            return Err(bad(format!(
                "the offer has {} m= lines but the call's branches were offered {existing}: the \
                 branches of a forked INVITE share one offer until one of them is confirmed",
                offer.media.len()
            )));
        }
        // A new branch gets sockets of its own for every stream, facing its endpoint.
        let mut fork_sides = Vec::new();
        if new_fork {
            for &(_, other_ip) in &ips {
                match self.new_side(other_ip, true) {
                    Ok(made) => fork_sides.push(made),
                    Err(e) => {
                        for (side, _) in &mut fork_sides {
                            self.release_side(side);
                        }
                        return Err(e);
                    }
                }
            }
        }
        // New streams: bind everything first, roll back on failure.
        let mut new_streams = Vec::new();
        let mut adds = Vec::new();
        for (i, m) in offer.media.iter().enumerate().skip(existing) {
            let (own_ip, other_ip) = ips[i];
            let pair_o = opts.rtcp_mux != RtcpMuxMode::Require;
            let made = self.new_side(own_ip, pair_o).and_then(|(mut so, co)| {
                match self.new_side(other_ip, true) {
                    Ok((sa, ca)) => Ok((so, co, sa, ca)),
                    Err(e) => {
                        self.release_side(&mut so);
                        Err(e)
                    }
                }
            });
            match made {
                Ok((so, co, sa, ca)) => {
                    adds.push(co);
                    adds.push(ca);
                    let sides = if o == 0 { [so, sa] } else { [sa, so] };
                    new_streams.push(Stream {
                        media: m.media.clone(),
                        sides,
                        disabled: false,
                        offer_disabled: false,
                        kernel: Vec::new(),
                        settle: None,
                        kernel_failed: false,
                        codecs: None,
                        transcode: None,
                        ssrcs: [self.rng.next_u32(), self.rng.next_u32()],
                    });
                }
                Err(e) => {
                    for s in &mut new_streams {
                        for side in &mut s.sides {
                            self.release_side(side);
                        }
                    }
                    // Sockets in `adds` close when it drops.
                    return Err(e);
                }
            }
        }
        for cmd in adds {
            self.plane.send(cmd)?;
        }
        for side in new_streams.iter_mut().flat_map(|s| s.sides.iter_mut()) {
            side.reused = None;
        }
        // A signalling event: media goes back through userspace, where latching runs again.
        self.unkernelize_call(call_id);
        if new_fork {
            self.open_fork(call_id, branch, fork_sides)?;
        }
        let now = self.clock.now_ns();
        let created_unix_ms = self.clock.unix_ms();
        let call = self
            .calls
            .entry(call_id.to_string())
            .or_insert_with(|| Call {
                call_id: call_id.to_string(),
                tags: [from_tag.to_string(), String::new()],
                streams: Vec::new(),
                created_unix_ms,
                last_signal_ns: now,
                pending_offer: None,
                answered_offer: None,
                sdp_versions: [None, None],
                media_started: [false; 2],
                branch: branch.to_string(),
                forks: Vec::new(),
                confirmed: false,
            });
        if call.streams.is_empty() {
            self.totals.calls += 1;
        }
        for s in &new_streams {
            for (k, side) in s.sides.iter().enumerate() {
                self.by_endpoint
                    .insert(side.endpoint, (call_id.to_string(), k));
            }
        }
        call.streams.extend(new_streams);
        call.last_signal_ns = now;
        call.pending_offer = Some(o);
        call.answered_offer = None;

        let mut out = offer.clone();
        for (i, m) in out.media.iter_mut().enumerate() {
            let stream = &mut call.streams[i];
            stream.media = m.media.clone();
            stream.codecs = match rewrites[i].take() {
                Some((media, codecs)) => {
                    *m = media;
                    Some(codecs)
                }
                None => None,
            };
            let offered_mux = m.rtcp_mux();
            {
                let so = &mut stream.sides[o];
                so.sdp_rtp = offer.rtp_endpoint(i);
                so.sdp_rtcp = offer.rtcp_endpoint(i);
                so.direction = opts.direction.unwrap_or_else(|| offer.direction(i));
                // RFC 5761 5.1.1: until the answer, the offerer may send RTCP either way and
                // accepts it on the RTP port if it offered mux.
                so.rtcp_mux = offered_mux && opts.rtcp_mux != RtcpMuxMode::Strip;
                so.latch = latch_config(&opts);
                so.signalling_source = opts.signalling_source.or(so.signalling_source);
                // A transcoded stream keeps each side's codec clock until the answer decides.
                if stream.transcode.is_none() {
                    so.clock_rate = clock_rate(offer, i);
                }
            }
            let mux_out = match opts.rtcp_mux {
                RtcpMuxMode::Default => offered_mux,
                RtcpMuxMode::Offer | RtcpMuxMode::Require => true,
                RtcpMuxMode::Strip => false,
            };
            let clock = stream.sides[o].clock_rate;
            stream.disabled = m.is_disabled();
            stream.offer_disabled = stream.disabled;
            if m.is_disabled() {
                continue;
            }
            // SDES: what the offerer sends, then what the answerer is offered.
            let incoming = srtp_incoming(m, opts.srtp)?;
            let so = &mut stream.sides[o];
            so.crypto = match incoming {
                Some(rx) if opts.srtp != SrtpMode::Default => {
                    // Keep our key across re-offers that keep the suite: re-keying on every
                    // session refresh would make the endpoint reset its contexts for nothing.
                    let tx = match &so.crypto {
                        SideCrypto::Terminated { tx, .. }
                            if tx.suite == rx.suite && tx.tag == rx.tag =>
                        {
                            tx.clone()
                        }
                        _ => SdesKey::generate_with(&mut self.rng, rx.tag, rx.suite),
                    };
                    SideCrypto::Terminated { rx, tx }
                }
                Some(_) => SideCrypto::Passthrough,
                None => SideCrypto::Plain,
            };
            let transcoding = stream.transcode.is_some();
            let sa = &mut stream.sides[a];
            sa.offered_mux = mux_out;
            if !transcoding {
                sa.clock_rate = clock;
            }
            match opts.srtp {
                SrtpMode::Default => sa.offered_keys.clear(),
                SrtpMode::Offer | SrtpMode::Require => {
                    m.proto = with_srtp(&m.proto, true);
                    m.remove_attributes("crypto");
                    let keys: Vec<SdesKey> = OFFERED
                        .iter()
                        .enumerate()
                        .map(|(t, &suite)| {
                            sa.offered_keys
                                .iter()
                                .find(|k| k.suite == suite)
                                .cloned()
                                .unwrap_or_else(|| {
                                    SdesKey::generate_with(&mut self.rng, t as u32 + 1, suite)
                                })
                        })
                        .collect();
                    for k in &keys {
                        m.push_attribute(k.to_attribute());
                    }
                    sa.offered_keys = keys;
                }
                SrtpMode::Strip => {
                    m.proto = with_srtp(&m.proto, false);
                    m.remove_attributes("crypto");
                    sa.offered_keys.clear();
                }
            }
            if m.connection.is_some() || offer.connection.is_none() || ips[0].1 != sa.local_ip {
                m.set_connection(sa.local_ip);
            }
            m.set_port(sa.rtp_port);
            m.set_rtcp_mux(mux_out);
            m.set_rtcp(sa.rtcp_port.map(|p| (p, sa.local_ip)));
            if let Some(d) = opts.direction {
                m.set_direction(d);
            }
        }
        if let Some((_, other_ip)) = ips.first() {
            out.set_session_connection(*other_ip);
        }
        set_version(&mut call.sdp_versions[a], &mut out, offer_text);
        // The offerer starts sending once it has the answer, but early media from the callee may
        // come before: open both latching windows now (the callee's without an SDP address yet).
        let mut cmds = Vec::new();
        for s in &call.streams {
            cmds.push(configure(s, o));
            cmds.push(configure(s, a));
            cmds.push(srtp_command(s, o));
            cmds.push(srtp_command(s, a));
        }
        for cmd in cmds {
            self.plane.send(cmd)?;
        }
        Ok(out.to_string())
    }
}
