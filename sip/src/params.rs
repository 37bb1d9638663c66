//! `;name=value` parameters of URIs and header values.

use std::fmt;

use crate::grammar::{Scanner, is_token};

/// Parameters in the order written. Names compare case-insensitively (RFC 3261 section 7.3.1);
/// values are kept as written (a quoted value with its quotes) so a message is written back
/// with the same bytes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Params(pub Vec<(String, Option<String>)>);

impl Params {
    /// The value of `name`: `Some(None)` for a parameter without a value.
    pub fn get(&self, name: &str) -> Option<Option<&str>> {
        self.0
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_deref())
    }

    pub fn value(&self, name: &str) -> Option<&str> {
        self.get(name).flatten()
    }

    pub fn has(&self, name: &str) -> bool {
        self.get(name).is_some()
    }

    /// Sets `name` (replacing an existing one, keeping its place).
    pub fn set(&mut self, name: &str, value: Option<&str>) {
        let value = value.map(str::to_owned);
        match self
            .0
            .iter_mut()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
        {
            Some(slot) => slot.1 = value,
            None => self.0.push((name.to_owned(), value)),
        }
    }

    pub fn remove(&mut self, name: &str) {
        self.0.retain(|(n, _)| !n.eq_ignore_ascii_case(name));
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Header parameters (`generic-param`, RFC 3261 section 25.1) from the cursor to the end
    /// of the value or the first character that cannot continue them.
    pub(crate) fn parse_generic(s: &mut Scanner<'_>) -> Result<Self, &'static str> {
        let mut out = Vec::new();
        while s.eat_sep(b';') {
            let name = s.token().ok_or("empty or non-token parameter name")?;
            let value = if s.eat_sep(b'=') {
                let v = if s.peek() == Some(b'"') {
                    s.quoted()
                        .ok_or("unterminated quoted parameter value")?
                        .to_owned()
                } else if s.peek() == Some(b'[') {
                    // An IPv6 reference as a gen-value (RFC 5118 section 4.5: received=[..]).
                    let v = s.take_while(|c| c != b']' && c != b';' && c != b',');
                    if !s.eat(b']') || v.len() < 3 {
                        return Err("bad IPv6 reference in a parameter value");
                    }
                    format!("{v}]")
                } else {
                    s.take_while(|c| is_token(c) || c == b':').to_owned()
                };
                if v.is_empty() {
                    return Err("parameter without a value after '='");
                }
                Some(v)
            } else {
                None
            };
            out.push((name.to_owned(), value));
        }
        Ok(Self(out))
    }
}

impl fmt::Display for Params {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (n, v) in &self.0 {
            match v {
                Some(v) => write!(f, ";{n}={v}")?,
                None => write!(f, ";{n}")?,
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generic_params_allow_whitespace_and_quoted_values() {
        let mut s = Scanner::new(" ; tag = 98asjd8 ;q=0.33; x=\"a;b\" ;lr");
        let p = Params::parse_generic(&mut s).unwrap();
        assert_eq!(p.value("TAG"), Some("98asjd8"));
        assert_eq!(p.value("x"), Some("\"a;b\""));
        assert_eq!(p.get("lr"), Some(None));
        assert!(s.at_end());
        assert_eq!(p.to_string(), ";tag=98asjd8;q=0.33;x=\"a;b\";lr");
    }

    #[test]
    fn empty_names_are_refused() {
        assert!(Params::parse_generic(&mut Scanner::new(";;")).is_err());
        assert!(Params::parse_generic(&mut Scanner::new(";a=")).is_err());
    }
}
