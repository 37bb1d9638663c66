//! One call through the B2BUA: leg A (sluice is the UAS) and leg B (sluice is the UAC), each
//! a dialog of its own, and the media session both share.

use std::time::Instant;

use sluice_sip::{Dialog, Message, Peer, TxId};

/// The side of a call a message belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Leg {
    /// The caller's side: sluice answers its INVITE.
    A,
    /// The callee's side: sluice sent the INVITE.
    B,
}

impl Leg {
    pub fn other(self) -> Leg {
        match self {
            Leg::A => Leg::B,
            Leg::B => Leg::A,
        }
    }

    /// The tag the media session knows this side by.
    pub fn media_tag(self) -> &'static str {
        match self {
            Leg::A => "a",
            Leg::B => "b",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallState {
    /// INVITE sent to B, nothing but 100 back.
    Calling,
    /// A provisional with a To tag from B relayed to A.
    Early,
    /// A asked to CANCEL: 487 sent to A, the CANCEL to B sent or waiting for B's first
    /// provisional (RFC 3261 9.1).
    Cancelling,
    /// 2xx relayed to A. A BYE from either side ends the call at once (its media is
    /// deleted); the BYE sent on to the other leg finishes in its own transaction.
    Confirmed,
}

impl CallState {
    pub fn as_str(self) -> &'static str {
        match self {
            CallState::Calling => "calling",
            CallState::Early => "early",
            CallState::Cancelling => "cancelling",
            CallState::Confirmed => "confirmed",
        }
    }
}

/// A 2xx sent to A and not yet ACKed: the UAS core retransmits it (RFC 3261 13.3.1.4).
#[derive(Debug)]
pub struct Unacked {
    pub response: Message,
    pub interval: std::time::Duration,
    pub next: Instant,
    pub give_up: Instant,
}

#[derive(Debug)]
pub struct Call {
    pub id: u64,
    /// The media session's call id.
    pub media_id: String,
    pub state: CallState,
    /// Which side offered first: `None` for a late offer (INVITE without SDP), where B's
    /// 2xx carries the offer and A's ACK the answer.
    pub offerer: Option<Leg>,
    // Leg A.
    pub a_invite: Message,
    pub a_tx: TxId,
    pub a_peer: Peer,
    pub a_call_id: String,
    pub a_remote_tag: String,
    /// The tag sluice gives A (one for every response: forks behind B are one dialog to A).
    pub a_tag: String,
    pub a_dialog: Option<Dialog>,
    pub a_unacked: Option<Unacked>,
    // Leg B.
    pub b_invite: Message,
    pub b_peer: Peer,
    /// The INVITE transaction towards the current route, and that route's place in
    /// `--route` (failover moves both on).
    pub b_tx: TxId,
    pub route_index: usize,
    pub b_call_id: String,
    /// Early (from a reliable provisional) until B's 2xx confirms it.
    pub b_dialog: Option<Dialog>,
    /// The To tag of the 2xx that won: later 2xx with it are retransmissions, others forks.
    pub b_answered_tag: Option<String>,
    /// A said it supports 100rel (RFC 3262): B's reliable provisionals pass through to it.
    pub a_100rel: bool,
    /// B sent a provisional: a CANCEL may go (RFC 3261 9.1).
    pub b_provisional: bool,
    /// B's INVITE (to the current route) got its final answer.
    pub b_final: bool,
    pub cancel_pending: bool,
    /// A late offer's ACK to B waits for A's ACK, which carries the answer.
    pub b_ack_pending: bool,
    /// An in-dialog INVITE in progress on this call (RFC 3261 14.1: a second one gets 491).
    pub reinvite_pending: bool,
    /// RFC 4028: the session interval the 2xx agreed, and when it was last refreshed.
    pub session_timer: Option<super::session_timer::SessionTimer>,
    // Record.
    pub started: Instant,
    pub rang: Option<Instant>,
    pub answered: Option<Instant>,
    pub caller: String,
    pub callee: String,
}

impl Call {
    pub fn dialog_mut(&mut self, leg: Leg) -> Option<&mut Dialog> {
        match leg {
            Leg::A => self.a_dialog.as_mut(),
            Leg::B => self.b_dialog.as_mut(),
        }
    }

    pub fn peer(&self, leg: Leg) -> Peer {
        match leg {
            Leg::A => self.a_peer,
            Leg::B => self.b_peer,
        }
    }
}
