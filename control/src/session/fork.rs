//! Forking: one INVITE offered to several callees at once (a proxy forwarding it to several
//! targets, RFC 3261 16.6), each answering in an early dialog of its own, with its own to-tag
//! (RFC 3261 12.1). Front ends tell the
//! branches apart by a label, as rtpengine's ng protocol does with `via-branch`.
//!
//! Each branch gets its own sockets facing its callee; the caller's side is shared, since the
//! caller was given one relay address in its offer's answers. The call's streams hold one
//! branch at a time (side 1), the one the last request named: only it is relayed, both ways,
//! since the caller can play one media stream and must hear the callee that answered last. The
//! others are parked in `Call::forks` with everything decided for them (tag, addresses, codecs,
//! keys), their sockets open and silent, and swapped back in when a request names them. A
//! final answer confirms its branch and closes the others; so does deleting them one by one.
//!
//! Only the first offerer's offers fork (a forked INVITE with SDP); once a branch is confirmed,
//! labels are ignored, since every later transaction (re-INVITEs) has a Via branch of its own.

use sluice_relay::engine::{Command, EndpointConfig};

use super::engine::{configure, srtp_command};
use super::error::{SessionError, bad};
use super::model::{BranchState, Call, Fork, Side, State};
use super::offload::unkernelize;

impl State {
    /// Makes the branch `label` the one the call's streams hold, before an offer from side
    /// `o`; true when the label is new and the offer opens it.
    pub(super) fn branch_for_offer(
        &mut self,
        call_id: &str,
        o: usize,
        label: &str,
    ) -> Result<bool, SessionError> {
        let Some(call) = self.calls.get(call_id) else {
            return Ok(false);
        };
        if label.is_empty() || call.confirmed || call.branch == label {
            return Ok(false);
        }
        if o != 0 {
            return Err(bad(format!(
                "an offer from tag '{}' cannot open branch '{label}' of call '{call_id}': only \
                 the first offerer's offers fork",
                call.tags[o]
            )));
        }
        match call.forks.iter().position(|f| f.label == label) {
            Some(i) => {
                self.switch_branch(call_id, i);
                Ok(false)
            }
            None => Ok(true),
        }
    }

    /// Makes the branch `label` the one the call's streams hold, before its answer.
    pub(super) fn branch_for_answer(
        &mut self,
        call_id: &str,
        label: &str,
    ) -> Result<(), SessionError> {
        let call = self
            .calls
            .get(call_id)
            .ok_or_else(|| SessionError::NotFound(call_id.into()))?;
        if label.is_empty() || call.confirmed || call.branch == label {
            return Ok(());
        }
        let i = call
            .forks
            .iter()
            .position(|f| f.label == label)
            .ok_or_else(|| {
                bad(format!(
                    "call '{call_id}' has no branch '{label}' (never offered, or released)"
                ))
            })?;
        self.switch_branch(call_id, i);
        Ok(())
    }

    /// Parks the branch the call holds and puts `sides` (fresh ones, one per stream, from
    /// `new_side`) in its place as branch `label`; the offer then fills them in.
    pub(super) fn open_fork(
        &mut self,
        call_id: &str,
        label: &str,
        sides: Vec<(Side, Command)>,
    ) -> Result<(), SessionError> {
        let mut cmds = Vec::new();
        let mut fresh = Vec::with_capacity(sides.len());
        for (mut side, add) in sides {
            side.reused = None;
            self.by_endpoint
                .insert(side.endpoint, (call_id.to_string(), 1));
            cmds.push(add);
            fresh.push(side);
        }
        let call = self.calls.get_mut(call_id).expect("forks open on calls");
        let mut parked = BranchState {
            sides: fresh,
            transcode: call.streams.iter().map(|_| None).collect(),
            disabled: call.streams.iter().map(|s| s.offer_disabled).collect(),
            ..BranchState::default()
        };
        swap_branch(call, &mut parked);
        park(call, &parked, &mut cmds);
        let label = std::mem::replace(&mut call.branch, label.to_string());
        call.forks.push(Fork {
            label,
            state: parked,
        });
        for cmd in cmds {
            self.plane.send(cmd)?;
        }
        Ok(())
    }

    /// Swaps the parked branch `forks[i]` in, parking the one the call held.
    fn switch_branch(&mut self, call_id: &str, i: usize) {
        let Some(call) = self.calls.get_mut(call_id) else {
            return;
        };
        // Kernel flows name the sockets of the branch that is leaving.
        unkernelize(
            call,
            self.kernel.as_deref_mut(),
            &mut self.flow_ids,
            self.plane.as_mut(),
        );
        let Fork { label, mut state } = call.forks.remove(i);
        swap_branch(call, &mut state);
        let mut cmds = Vec::new();
        park(call, &state, &mut cmds);
        for s in &call.streams {
            cmds.extend([configure(s, 0), configure(s, 1)]);
            cmds.extend([srtp_command(s, 0), srtp_command(s, 1)]);
            if let Some(t) = &s.transcode {
                for k in 0..2 {
                    cmds.push(Command::SetTranscode {
                        id: s.sides[k].endpoint,
                        plan: Some(t.plans[k].clone()),
                    });
                }
            }
        }
        let previous = std::mem::replace(&mut call.branch, label);
        call.forks.push(Fork {
            label: previous,
            state,
        });
        for cmd in cmds {
            if let Err(e) = self.plane.send(cmd) {
                tracing::error!(error = %e, "cannot switch branches");
            }
        }
    }

    /// A final answer: the branch the call holds is the call's, the others go.
    pub(super) fn confirm_branch(&mut self, call_id: &str) {
        self.release_forks(call_id);
        if let Some(call) = self.calls.get_mut(call_id) {
            call.confirmed = true;
        }
    }

    /// Closes every parked branch of the call.
    pub(super) fn release_forks(&mut self, call_id: &str) {
        let forks = match self.calls.get_mut(call_id) {
            Some(call) => std::mem::take(&mut call.forks),
            None => return,
        };
        for mut f in forks {
            for side in &mut f.state.sides {
                self.retire_side(side);
            }
        }
    }

    /// Ends branch `label` of a call that has others; false when it is the call's only one
    /// (the caller then ends the call).
    pub(super) fn delete_branch(
        &mut self,
        call_id: &str,
        label: &str,
    ) -> Result<bool, SessionError> {
        let call = self
            .calls
            .get(call_id)
            .ok_or_else(|| SessionError::NotFound(call_id.into()))?;
        if call.branch == label {
            if call.forks.is_empty() {
                return Ok(false);
            }
            // The branch parked last is the one that last had a request: it takes over.
            let last = call.forks.len() - 1;
            self.switch_branch(call_id, last);
        }
        let call = self.calls.get_mut(call_id).expect("checked above");
        let i = call
            .forks
            .iter()
            .position(|f| f.label == label)
            .ok_or_else(|| bad(format!("call '{call_id}' has no branch '{label}'")))?;
        let mut gone = call.forks.remove(i);
        for side in &mut gone.state.sides {
            self.retire_side(side);
        }
        Ok(true)
    }
}

/// Exchanges the branch the call holds with `other`.
fn swap_branch(call: &mut Call, other: &mut BranchState) {
    std::mem::swap(&mut call.tags[1], &mut other.tag);
    std::mem::swap(&mut call.sdp_versions, &mut other.sdp_versions);
    std::mem::swap(&mut call.media_started[1], &mut other.media_started);
    for (i, s) in call.streams.iter_mut().enumerate() {
        std::mem::swap(&mut s.sides[1], &mut other.sides[i]);
        std::mem::swap(&mut s.transcode, &mut other.transcode[i]);
        std::mem::swap(&mut s.disabled, &mut other.disabled[i]);
        s.settle = None;
        s.kernel_failed = false;
    }
}

/// Silences a parked branch's sockets; its transcoding plans, and the caller's towards it, go
/// (the branch that comes in installs its own).
fn park(call: &Call, parked: &BranchState, cmds: &mut Vec<Command>) {
    for (i, side) in parked.sides.iter().enumerate() {
        let caller = call.streams[i].sides[0].endpoint;
        cmds.push(Command::Configure {
            id: side.endpoint,
            config: EndpointConfig {
                partner: Some(caller),
                latch: side.latch,
                sends: false,
                receives: false,
                rtcp_mux: side.rtcp_mux,
                clock_rate: side.clock_rate,
            },
            signalling: None,
        });
        if parked.transcode[i].is_some() {
            for id in [side.endpoint, caller] {
                cmds.push(Command::SetTranscode { id, plan: None });
            }
        }
    }
}
