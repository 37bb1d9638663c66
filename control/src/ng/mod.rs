//! rtpengine's ng control protocol, so Kamailio's and OpenSIPS' `rtpengine` modules drive
//! sluice unchanged: `<cookie> <bencoded dictionary>` over UDP (or TCP), one reply per request
//! with the same cookie.
//!
//! - [`bencode`]: the message encoding (JSON dictionaries accepted too);
//! - [`request`]: a message's command, identifiers and flags, parsed keys and `rtpp-flags` alike;
//! - [`cookie`]: the reply cache that makes a retransmitted request harmless;
//! - [`handler`]: a request against the media-session API, and its reply;
//! - [`server`] (UDP) and [`tcp`]: the sockets.

pub mod bencode;
pub mod cookie;
pub mod handler;
pub mod request;
pub mod server;
pub mod tcp;
