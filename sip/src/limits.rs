//! Size limits applied while parsing, before anything is allocated for a message.

/// Bounds on one message. The defaults fit any legitimate call signalling (a large INVITE
/// with SDP and a dozen Via hops is under 4 kB) and stop the cheap attacks: a 10,000-header
/// message or a 1 MB line costs nothing beyond the first rejected line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Start line, headers and body together.
    pub max_message: usize,
    /// Header fields (a folded header counts once).
    pub max_headers: usize,
    /// One line, folded continuation lines included.
    pub max_line: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            // The largest UDP payload; streams use the same bound per message.
            max_message: 65_535,
            max_headers: 256,
            max_line: 8_192,
        }
    }
}
