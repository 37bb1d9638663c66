//! RFC 3261 section 25 character classes and a small scanner over an unfolded header value.

/// `token` characters (RFC 3261 section 25.1).
pub(crate) fn is_token(c: u8) -> bool {
    c.is_ascii_alphanumeric() || b"-.!%*_+`'~".contains(&c)
}

pub(crate) fn is_token_str(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(is_token)
}

/// Linear white space once folding is undone: SP and HTAB.
pub(crate) fn is_ws(c: u8) -> bool {
    c == b' ' || c == b'\t'
}

/// A cursor over one header value (already unfolded: no CR or LF inside).
pub(crate) struct Scanner<'a> {
    s: &'a str,
    pos: usize,
}

impl<'a> Scanner<'a> {
    pub(crate) fn new(s: &'a str) -> Self {
        Self { s, pos: 0 }
    }

    pub(crate) fn peek(&self) -> Option<u8> {
        self.s.as_bytes().get(self.pos).copied()
    }

    pub(crate) fn at_end(&self) -> bool {
        self.pos >= self.s.len()
    }

    pub(crate) fn rest(&self) -> &'a str {
        &self.s[self.pos..]
    }

    pub(crate) fn skip_ws(&mut self) {
        while self.peek().is_some_and(is_ws) {
            self.pos += 1;
        }
    }

    /// Consumes `c`, with optional white space before and after it (the `SWS c SWS` of the
    /// ABNF's SEMI, COLON, EQUAL, COMMA, SLASH).
    pub(crate) fn eat_sep(&mut self, c: u8) -> bool {
        let save = self.pos;
        self.skip_ws();
        if self.peek() == Some(c) {
            self.pos += 1;
            self.skip_ws();
            true
        } else {
            self.pos = save;
            false
        }
    }

    pub(crate) fn eat(&mut self, c: u8) -> bool {
        if self.peek() == Some(c) {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    pub(crate) fn take_while(&mut self, f: impl Fn(u8) -> bool) -> &'a str {
        let start = self.pos;
        while self.peek().is_some_and(&f) {
            self.pos += 1;
        }
        &self.s[start..self.pos]
    }

    pub(crate) fn token(&mut self) -> Option<&'a str> {
        let t = self.take_while(is_token);
        (!t.is_empty()).then_some(t)
    }

    /// A quoted-string starting at the cursor, returned as written (quotes included), so a
    /// message written back carries the same bytes. `None` when it is not terminated.
    pub(crate) fn quoted(&mut self) -> Option<&'a str> {
        let b = self.s.as_bytes();
        if b.get(self.pos) != Some(&b'"') {
            return None;
        }
        let start = self.pos;
        let mut i = self.pos + 1;
        while i < b.len() {
            match b[i] {
                // quoted-pair: any octet but CR and LF (RFC 3261 section 25.1).
                b'\\' if i + 1 < b.len() => i += 2,
                b'"' => {
                    self.pos = i + 1;
                    return Some(&self.s[start..self.pos]);
                }
                _ => i += 1,
            }
        }
        None
    }
}

/// The content of a quoted-string written with its quotes, escapes undone.
pub(crate) fn unquote(q: &str) -> String {
    let inner = q
        .strip_prefix('"')
        .and_then(|s| s.strip_suffix('"'))
        .unwrap_or(q);
    let mut out = String::with_capacity(inner.len());
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            if let Some(n) = chars.next() {
                out.push(n);
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Splits a header value at top-level commas: not inside a quoted string or `<...>`
/// (RFC 3261 section 7.3.1: several values of one header may share a line).
pub(crate) fn split_commas(s: &str) -> Vec<&str> {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let (mut start, mut i, mut in_q, mut in_angle) = (0, 0, false, false);
    while i < b.len() {
        match b[i] {
            b'\\' if in_q => i += 1,
            b'"' => in_q = !in_q,
            b'<' if !in_q => in_angle = true,
            b'>' if !in_q => in_angle = false,
            b',' if !in_q && !in_angle => {
                out.push(s[start..i].trim_matches([' ', '\t']));
                start = i + 1;
            }
            _ => {}
        }
        i += 1;
    }
    out.push(s[start..].trim_matches([' ', '\t']));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commas_inside_quotes_and_angles_do_not_split() {
        assert_eq!(
            split_commas(r#""a, b" <sip:x@y;p=a,b>;q=1 , sip:z@w"#),
            vec![r#""a, b" <sip:x@y;p=a,b>;q=1"#, "sip:z@w"]
        );
        assert_eq!(split_commas(r#""a\", b", c"#), vec![r#""a\", b""#, "c"]);
    }

    #[test]
    fn quoted_strings_keep_their_bytes_and_unquote_escapes() {
        let mut s = Scanner::new(r#""J Rosenberg \\\"" <sip:x>"#);
        let q = s.quoted().unwrap();
        assert_eq!(q, r#""J Rosenberg \\\"""#);
        assert_eq!(unquote(q), r#"J Rosenberg \""#);
        assert!(Scanner::new(r#""open"#).quoted().is_none());
    }
}
