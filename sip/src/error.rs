//! What can be wrong with bytes that claim to be SIP, in words an operator can act on.

/// The layer that objects to a message: framing and grammar faults are found while parsing;
/// a bad value inside one known header only when that header is read ([`HeaderError`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Over a configured limit (size, header count, line length).
    Limits,
    /// The body cannot be delimited: Content-Length absent on a stream, repeated, negative,
    /// not a number, or larger than what arrived.
    Framing,
    /// The request or status line is malformed.
    StartLine,
    /// A header line is malformed (no colon, bad field name, not UTF-8).
    HeaderLine,
}

/// Bytes that cannot be turned into a message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("message of {len} bytes is over the {max}-byte limit")]
    TooLarge { len: usize, max: usize },
    #[error("a line is over the {max}-byte limit")]
    LineTooLong { max: usize },
    #[error("more than {max} header fields")]
    TooManyHeaders { max: usize },
    #[error("bad start line: {0}")]
    StartLine(&'static str),
    #[error("bad header line: {0}")]
    HeaderLine(&'static str),
    #[error("header section not terminated by an empty line")]
    Unterminated,
    #[error("bad Content-Length: {0}")]
    ContentLength(&'static str),
    #[error("body shorter than Content-Length ({declared} declared, {present} present)")]
    BodyTruncated { declared: usize, present: usize },
}

impl ParseError {
    pub fn fault(&self) -> Fault {
        match self {
            Self::TooLarge { .. } | Self::LineTooLong { .. } | Self::TooManyHeaders { .. } => {
                Fault::Limits
            }
            Self::StartLine(_) => Fault::StartLine,
            Self::HeaderLine(_) => Fault::HeaderLine,
            Self::Unterminated | Self::ContentLength(_) | Self::BodyTruncated { .. } => {
                Fault::Framing
            }
        }
    }
}

/// A known header whose value does not follow its grammar.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("bad {header} header: {reason}")]
pub struct HeaderError {
    /// The header's canonical name (`Via`, `CSeq`, ...).
    pub header: &'static str,
    pub reason: &'static str,
}

impl HeaderError {
    pub(crate) fn new(header: &'static str, reason: &'static str) -> Self {
        Self { header, reason }
    }
}
