//! What the per-stream core counted, as plain integers: the core never touches a shared
//! counter per packet. A driver adds the tally to the endpoint's [`EndpointCounters`] once per
//! batch (the engine) or when it holds something (a worker), with atomic adds, so two paths
//! counting one leg at once lose nothing.

use crate::srtp::SrtpError;
use crate::stats::EndpointCounters;

use super::Dropped;

/// Counts of one stream direction since the last flush.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Tally {
    /// Accepted packets (source checks passed) and their bytes as received.
    pub packets: u64,
    pub bytes: u64,
    /// Of those, RTCP.
    pub rtcp_packets: u64,
    pub rtcp_bytes: u64,
    pub dropped_wrong_source: u64,
    pub dropped_unconfirmed: u64,
    pub dropped_direction: u64,
    pub dropped_malformed: u64,
    pub dropped_no_peer: u64,
    pub send_errors: u64,
    pub srtp_auth_failures: u64,
    pub srtp_replayed: u64,
    pub rtcp_terminated: u64,
}

impl Tally {
    /// Counts a dropped packet under its reason.
    #[inline]
    pub fn count_drop(&mut self, d: Dropped) {
        let c = match d {
            Dropped::Malformed => &mut self.dropped_malformed,
            Dropped::WrongSource => &mut self.dropped_wrong_source,
            Dropped::Unconfirmed => &mut self.dropped_unconfirmed,
            Dropped::Direction => &mut self.dropped_direction,
            Dropped::NoPeer => &mut self.dropped_no_peer,
            Dropped::Unprotect(SrtpError::AuthFailed { .. }) => &mut self.srtp_auth_failures,
            Dropped::Unprotect(SrtpError::Replayed { .. } | SrtpError::TooOld { .. }) => {
                &mut self.srtp_replayed
            }
            Dropped::Unprotect(_) => &mut self.dropped_malformed,
            Dropped::Protect(_) | Dropped::NoTransmitContext | Dropped::TranscoderBroken => {
                &mut self.send_errors
            }
        };
        *c += 1;
    }

    /// Adds everything to `c` and starts over.
    pub fn flush_into(&mut self, c: &EndpointCounters) {
        let t = std::mem::take(self);
        if t == Tally::default() {
            return;
        }
        let add = |counter: &crate::stats::Counter, n: u64| {
            if n != 0 {
                counter.add(n);
            }
        };
        add(&c.packets, t.packets);
        add(&c.bytes, t.bytes);
        add(&c.rtcp_packets, t.rtcp_packets);
        add(&c.rtcp_bytes, t.rtcp_bytes);
        add(&c.dropped_wrong_source, t.dropped_wrong_source);
        add(&c.dropped_unconfirmed, t.dropped_unconfirmed);
        add(&c.dropped_direction, t.dropped_direction);
        add(&c.dropped_malformed, t.dropped_malformed);
        add(&c.dropped_no_peer, t.dropped_no_peer);
        add(&c.send_errors, t.send_errors);
        add(&c.srtp_auth_failures, t.srtp_auth_failures);
        add(&c.srtp_replayed, t.srtp_replayed);
        add(&c.rtcp_terminated, t.rtcp_terminated);
    }

    /// What a worker adds to the leg's counters: SRTP failures and terminated RTCP. Its packets,
    /// bytes and other drops are counted by the XDP program and the worker's own counters,
    /// which the control plane adds to the leg's (so they are not added here twice).
    #[inline]
    pub fn flush_worker_into(&mut self, c: &EndpointCounters) {
        let t = std::mem::take(self);
        if t.srtp_auth_failures != 0 {
            c.srtp_auth_failures.add(t.srtp_auth_failures);
        }
        if t.srtp_replayed != 0 {
            c.srtp_replayed.add(t.srtp_replayed);
        }
        if t.rtcp_terminated != 0 {
            c.rtcp_terminated.add(t.rtcp_terminated);
        }
    }
}
