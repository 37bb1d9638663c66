//! Sans-IO SIP (RFC 3261).
//!
//! Parsers and state machines only: they take bytes and time (`now` passed in) and return
//! messages, actions and deadlines. This crate opens no socket, reads no clock and depends on
//! nothing of sluice, so every behaviour is tested deterministically; transports and the B2BUA
//! live in `sluice-control`.

pub mod dialog;
pub mod error;
mod grammar;
pub mod header;
pub mod limits;
pub mod locate;
pub mod message;
pub mod method;
pub mod name_addr;
pub mod params;
pub mod parse;
pub mod response;
pub mod transaction;
pub mod uri;
pub mod validate;
pub mod via;

pub use dialog::{Dialog, DialogId, InDialogError};
pub use error::{Fault, HeaderError, ParseError};
pub use header::{Header, HeaderName};
pub use limits::Limits;
pub use locate::{HostsFile, Naptr, Resolver, Srv, locate};
pub use message::{CSeq, Message, StartLine};
pub use method::Method;
pub use name_addr::NameAddr;
pub use params::Params;
pub use parse::{Frame, frame_stream, parse_datagram};
pub use response::{default_reason, response_for};
pub use transaction::{
    Peer, TimerConfig, TransactionLayer, Transmit, Transport, TxCounters, TxError, TxEvent, TxId,
};
pub use uri::{Host, Scheme, Uri};
pub use validate::{Rejection, validate_request, validate_response};
pub use via::Via;
