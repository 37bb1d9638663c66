//! `name-addr` / `addr-spec` values: From, To, Contact, Route, Record-Route (RFC 3261
//! section 20.10).

use std::fmt;

use crate::grammar::{Scanner, is_token, is_ws, split_commas, unquote};
use crate::{HeaderError, Params, Uri};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NameAddr {
    /// The display name as written (a quoted one with its quotes).
    pub display: Option<String>,
    pub uri: Uri,
    /// Whether the URI was in `<...>`: written back the same way.
    pub angle: bool,
    pub params: Params,
}

impl NameAddr {
    pub fn new(uri: Uri) -> Self {
        Self {
            display: None,
            uri,
            angle: true,
            params: Params::default(),
        }
    }

    /// Every value of a multi-value header (Contact, Route, Record-Route).
    pub fn parse_all(header: &'static str, value: &str) -> Result<Vec<Self>, HeaderError> {
        split_commas(value)
            .into_iter()
            .map(|v| Self::parse(header, v))
            .collect()
    }

    /// One value; `header` names it in errors.
    pub fn parse(header: &'static str, value: &str) -> Result<Self, HeaderError> {
        let err = |r| HeaderError::new(header, r);
        let mut s = Scanner::new(value);
        s.skip_ws();
        let mut display = None;
        let angle;
        let uri_text;
        if s.peek() == Some(b'"') {
            display = Some(
                s.quoted()
                    .ok_or(err("unterminated quoted display name"))?
                    .to_owned(),
            );
            s.skip_ws();
            if !s.eat(b'<') {
                return Err(err("display name not followed by <URI>"));
            }
            angle = true;
        } else if s.peek() == Some(b'<') {
            s.eat(b'<');
            angle = true;
        } else {
            // Either `token LWS token ... <URI>` or a bare addr-spec.
            let rest = s.rest();
            if let Some(lt) = rest.find('<') {
                let name = rest[..lt].trim_end_matches([' ', '\t']);
                if !name.bytes().all(|c| is_token(c) || is_ws(c)) {
                    return Err(err("display name with non-token characters is not quoted"));
                }
                if !name.is_empty() {
                    display = Some(name.to_owned());
                }
                s = Scanner::new(&rest[lt + 1..]);
                angle = true;
            } else {
                angle = false;
            }
        }
        if angle {
            let inner = s.take_while(|c| c != b'>');
            if !s.eat(b'>') {
                return Err(err("'<' without '>'"));
            }
            uri_text = inner;
        } else {
            // RFC 3261 section 20: without <>, ';' starts header parameters, and a URI with
            // ',', ';' or '?' must be enclosed.
            uri_text = s.take_while(|c| c != b';' && c != b',' && !is_ws(c));
            if uri_text.contains('?') {
                return Err(err("URI with headers must be enclosed in <>"));
            }
        }
        let uri = Uri::parse(uri_text).map_err(err)?;
        let params = Params::parse_generic(&mut s).map_err(err)?;
        s.skip_ws();
        if !s.at_end() {
            return Err(err("junk after the URI"));
        }
        Ok(Self {
            display,
            uri,
            angle,
            params,
        })
    }

    /// The display name without quotes or escapes.
    pub fn display_name(&self) -> Option<String> {
        self.display.as_deref().map(unquote)
    }

    pub fn tag(&self) -> Option<&str> {
        self.params.value("tag")
    }
}

impl fmt::Display for NameAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(d) = &self.display {
            write!(f, "{d} ")?;
        }
        if self.angle || self.display.is_some() {
            write!(f, "<{}>", self.uri)?;
        } else {
            write!(f, "{}", self.uri)?;
        }
        write!(f, "{}", self.params)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoted_token_and_bare_forms() {
        let a = NameAddr::parse(
            "From",
            r#""J Rosenberg \\\""       <sip:jdrosen@example.com>  ;  tag = 98asjd8"#,
        )
        .unwrap();
        assert_eq!(a.display_name().as_deref(), Some(r#"J Rosenberg \""#));
        assert_eq!(a.tag(), Some("98asjd8"));
        let a = NameAddr::parse("To", "T. Watson <sip:t.watson@example.org>").unwrap();
        assert_eq!(a.display.as_deref(), Some("T. Watson"));
        let a = NameAddr::parse("To", "sip:user@example.com;tag=1").unwrap();
        assert!(!a.angle);
        assert_eq!(a.tag(), Some("1"));
        assert!(
            a.uri.params.is_empty(),
            "params of an addr-spec belong to the header"
        );
        // RFC 4475 section 3.1.1.6 (lwsdisp): no space before '<'.
        let a = NameAddr::parse("From", "caller<sip:caller@example.com>;tag=323").unwrap();
        assert_eq!(a.display.as_deref(), Some("caller"));
        assert_eq!(a.to_string(), "caller <sip:caller@example.com>;tag=323");
    }

    #[test]
    fn malformed_forms_are_refused() {
        // quotbal, badaspec, regbadct, baddn of RFC 4475.
        assert!(NameAddr::parse("To", r#""Mr. J. User <sip:j.user@example.com>"#).is_err());
        assert!(NameAddr::parse("To", r#""Mr. J. User " <sip:j.user @ example.com>"#).is_err());
        assert!(
            NameAddr::parse(
                "Contact",
                "sip:user@example.com?Route=%3Csip:sip.example.com%3E"
            )
            .is_err()
        );
        assert!(
            NameAddr::parse("From", "Bell, Alexander <sip:a.g.bell@example.com>;tag=43").is_err()
        );
        assert!(NameAddr::parse("To", "<sip:a@b").is_err());
    }

    #[test]
    fn contact_lists_split_at_top_level_commas() {
        let all = NameAddr::parse_all("Contact", r#""a,b" <sip:a@b>;q=0.5, <sip:c@d;lr>"#).unwrap();
        assert_eq!(all.len(), 2);
        assert!(all[1].uri.params.has("lr"));
    }
}
