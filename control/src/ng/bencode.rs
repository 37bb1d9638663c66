//! Bencode, the encoding of rtpengine's ng control protocol: integers, byte strings, lists and
//! dictionaries (keys sorted on output, as the format requires). ng clients may also send a JSON
//! dictionary in its place ([`Value::from_json`]).
//!
//! Decoding is bounded: nesting depth, element count and total size are limited, so a hostile
//! datagram costs at most its own length in work, and every fault is an error naming its byte
//! offset, never a panic.

use std::collections::BTreeMap;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    Int(i64),
    Bytes(Vec<u8>),
    List(Vec<Value>),
    Dict(BTreeMap<Vec<u8>, Value>),
}

/// ng messages are flat dictionaries with short lists; deeper nesting is an attack.
pub const MAX_DEPTH: usize = 16;
/// Values (of any kind) in one message: rtpengine's flags lists are tens long.
pub const MAX_ITEMS: usize = 65_536;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("bencode: {reason} at byte {at}")]
pub struct DecodeError {
    pub at: usize,
    pub reason: &'static str,
}

impl DecodeError {
    /// The input stopped inside a value: on a stream, more bytes may complete it.
    pub fn is_truncation(&self) -> bool {
        matches!(self.reason, ENDS_EARLY | "string runs past the end")
    }
}

const ENDS_EARLY: &str = "input ends early";

impl Value {
    pub fn str(s: &str) -> Self {
        Value::Bytes(s.as_bytes().to_vec())
    }

    pub fn dict<'a>(entries: impl IntoIterator<Item = (&'a str, Value)>) -> Self {
        Value::Dict(
            entries
                .into_iter()
                .map(|(k, v)| (k.as_bytes().to_vec(), v))
                .collect(),
        )
    }

    /// A dictionary's entry.
    pub fn get(&self, key: &str) -> Option<&Value> {
        match self {
            Value::Dict(d) => d.get(key.as_bytes()),
            _ => None,
        }
    }

    /// A dictionary entry as text, if present and a string (lossy UTF-8).
    pub fn get_str(&self, key: &str) -> Option<String> {
        match self.get(key)? {
            Value::Bytes(b) => Some(String::from_utf8_lossy(b).into_owned()),
            _ => None,
        }
    }

    /// The value as text if it is a string.
    pub fn as_text(&self) -> Option<String> {
        match self {
            Value::Bytes(b) => Some(String::from_utf8_lossy(b).into_owned()),
            _ => None,
        }
    }

    pub fn encode(&self, out: &mut Vec<u8>) {
        match self {
            Value::Int(i) => {
                out.push(b'i');
                out.extend_from_slice(i.to_string().as_bytes());
                out.push(b'e');
            }
            Value::Bytes(b) => {
                out.extend_from_slice(b.len().to_string().as_bytes());
                out.push(b':');
                out.extend_from_slice(b);
            }
            Value::List(l) => {
                out.push(b'l');
                l.iter().for_each(|v| v.encode(out));
                out.push(b'e');
            }
            Value::Dict(d) => {
                out.push(b'd');
                for (k, v) in d {
                    out.extend_from_slice(k.len().to_string().as_bytes());
                    out.push(b':');
                    out.extend_from_slice(k);
                    v.encode(out);
                }
                out.push(b'e');
            }
        }
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.encode(&mut out);
        out
    }

    /// Decodes exactly one value that spans all of `input`.
    pub fn decode(input: &[u8]) -> Result<Value, DecodeError> {
        let (v, used) = Value::decode_prefix(input)?;
        if used != input.len() {
            return Err(DecodeError {
                at: used,
                reason: "trailing bytes after the value",
            });
        }
        Ok(v)
    }

    /// Decodes the value at the start of `input` and says how many bytes it took: on a stream
    /// a bencoded value delimits itself.
    pub fn decode_prefix(input: &[u8]) -> Result<(Value, usize), DecodeError> {
        let mut d = Decoder {
            input,
            pos: 0,
            items: 0,
        };
        let v = d.value(0)?;
        Ok((v, d.pos))
    }

    /// A JSON object as the equivalent bencode dictionary (ng accepts either): strings become
    /// byte strings, integers integers, booleans "yes"/"no" as rtpengine reads them.
    pub fn from_json(input: &[u8]) -> Result<Value, String> {
        let j: serde_json::Value =
            serde_json::from_slice(input).map_err(|e| format!("JSON: {e}"))?;
        fn conv(j: serde_json::Value, depth: usize) -> Result<Value, String> {
            if depth > MAX_DEPTH {
                return Err(format!("JSON nested deeper than {MAX_DEPTH}"));
            }
            Ok(match j {
                serde_json::Value::String(s) => Value::Bytes(s.into_bytes()),
                serde_json::Value::Number(n) => match n.as_i64() {
                    Some(i) => Value::Int(i),
                    None => Value::Bytes(n.to_string().into_bytes()),
                },
                serde_json::Value::Bool(b) => Value::str(if b { "yes" } else { "no" }),
                serde_json::Value::Null => Value::Bytes(Vec::new()),
                serde_json::Value::Array(a) => Value::List(
                    a.into_iter()
                        .map(|v| conv(v, depth + 1))
                        .collect::<Result<_, _>>()?,
                ),
                serde_json::Value::Object(o) => Value::Dict(
                    o.into_iter()
                        .map(|(k, v)| Ok((k.into_bytes(), conv(v, depth + 1)?)))
                        .collect::<Result<_, String>>()?,
                ),
            })
        }
        match conv(j, 0)? {
            d @ Value::Dict(_) => Ok(d),
            _ => Err("JSON message is not an object".into()),
        }
    }
}

struct Decoder<'a> {
    input: &'a [u8],
    pos: usize,
    items: usize,
}

impl Decoder<'_> {
    fn err(&self, reason: &'static str) -> DecodeError {
        DecodeError {
            at: self.pos,
            reason,
        }
    }

    fn value(&mut self, depth: usize) -> Result<Value, DecodeError> {
        if depth > MAX_DEPTH {
            return Err(self.err("nested too deep"));
        }
        self.items += 1;
        if self.items > MAX_ITEMS {
            return Err(self.err("too many values"));
        }
        let Some(&tag) = self.input.get(self.pos) else {
            return Err(self.err(ENDS_EARLY));
        };
        match tag {
            b'i' => {
                self.pos += 1;
                let at = self.pos;
                let digits = self.until(b'e')?;
                let ok = !digits.is_empty()
                    && digits != b"-"
                    && digits != b"-0"
                    && !(digits.len() > 1 && digits[0] == b'0');
                let i = std::str::from_utf8(digits)
                    .ok()
                    .filter(|_| ok)
                    .and_then(|s| s.parse().ok())
                    .ok_or(DecodeError {
                        at,
                        reason: "bad integer",
                    })?;
                Ok(Value::Int(i))
            }
            b'l' => {
                self.pos += 1;
                let mut items = Vec::new();
                while self.input.get(self.pos) != Some(&b'e') {
                    items.push(self.value(depth + 1)?);
                }
                self.pos += 1;
                Ok(Value::List(items))
            }
            b'd' => {
                self.pos += 1;
                let mut map = BTreeMap::new();
                while self.input.get(self.pos) != Some(&b'e') {
                    let at = self.pos;
                    let Value::Bytes(k) = self.value(depth + 1)? else {
                        return Err(DecodeError {
                            at,
                            reason: "dictionary key is not a string",
                        });
                    };
                    let v = self.value(depth + 1)?;
                    map.insert(k, v);
                }
                self.pos += 1;
                Ok(Value::Dict(map))
            }
            b'0'..=b'9' => {
                let start = self.pos;
                let len: usize = std::str::from_utf8(self.until(b':')?)
                    .ok()
                    .and_then(|s| s.parse().ok())
                    .ok_or(DecodeError {
                        at: start,
                        reason: "bad string length",
                    })?;
                let end = self
                    .pos
                    .checked_add(len)
                    .filter(|&e| e <= self.input.len())
                    .ok_or(DecodeError {
                        at: start,
                        reason: "string runs past the end",
                    })?;
                let b = self.input[self.pos..end].to_vec();
                self.pos = end;
                Ok(Value::Bytes(b))
            }
            _ => Err(self.err("unexpected byte")),
        }
    }

    /// The bytes from `pos` up to `delim` (exclusive); leaves `pos` just past `delim`.
    fn until(&mut self, delim: u8) -> Result<&[u8], DecodeError> {
        let start = self.pos;
        // Lengths and integers are at most 20 digits: do not scan a megabyte for the delimiter.
        let window = &self.input[start..self.input.len().min(start + 21)];
        let Some(off) = window.iter().position(|&b| b == delim) else {
            if start + 21 > self.input.len() {
                return Err(self.err(ENDS_EARLY));
            }
            return Err(self.err(if delim == b':' {
                "string length without ':'"
            } else {
                "integer without 'e'"
            }));
        };
        self.pos = start + off + 1;
        Ok(&self.input[start..start + off])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_dictionaries_with_sorted_keys() {
        let v = Value::dict([
            ("sdp", Value::str("v=0")),
            ("command", Value::str("offer")),
            ("n", Value::Int(-3)),
            ("flags", Value::List(vec![Value::str("a")])),
        ]);
        assert_eq!(
            v.to_bytes(),
            b"d7:command5:offer5:flagsl1:ae1:ni-3e3:sdp3:v=0e".to_vec()
        );
    }

    #[test]
    fn decodes_an_ng_request() {
        let req = b"d7:command5:offer5:flagsl13:trust-addresse3:sdp5:v=0\r\ne";
        let v = Value::decode(req).unwrap();
        assert_eq!(v.get_str("command").as_deref(), Some("offer"));
        assert_eq!(v.get_str("sdp").as_deref(), Some("v=0\r\n"));
        assert_eq!(
            v.get("flags"),
            Some(&Value::List(vec![Value::str("trust-address")]))
        );
        assert_eq!(v.get_str("missing"), None);
    }

    #[test]
    fn round_trips() {
        let v = Value::dict([
            ("a", Value::List(vec![Value::Int(1), Value::str("x")])),
            ("b", Value::dict([("c", Value::Int(0))])),
        ]);
        assert_eq!(Value::decode(&v.to_bytes()).unwrap(), v);
    }

    #[test]
    fn json_is_the_same_dictionary() {
        let j = br#"{"command":"offer","flags":["trust-address"],"n":3,"ok":true}"#;
        let v = Value::from_json(j).unwrap();
        assert_eq!(v.get_str("command").as_deref(), Some("offer"));
        assert_eq!(v.get("n"), Some(&Value::Int(3)));
        assert_eq!(v.get_str("ok").as_deref(), Some("yes"));
        assert!(Value::from_json(b"[1]").is_err());
        assert!(Value::from_json(b"{").is_err());
    }

    #[test]
    fn malformed_input_is_an_error_with_its_offset() {
        for (bad, at) in [
            (&b"d3:abc"[..], 6),
            (b"5:abc", 0),
            (b"i12", 1),
            (b"x", 0),
            (b"l", 1),
            (b"di1ei2ee", 1),
            (b"1:ab", 3),
            (b"99999999999999999999999:a", 0),
            (b"i-0e", 1),
            (b"i03e", 1),
            (b"ie", 1),
        ] {
            let e = Value::decode(bad).unwrap_err();
            assert_eq!(e.at, at, "{:?}: {e}", String::from_utf8_lossy(bad));
        }
        let deep = [vec![b'l'; 100], vec![b'e'; 100]].concat();
        assert_eq!(Value::decode(&deep).unwrap_err().reason, "nested too deep");
        let many = [b"l".to_vec(), b"i1e".repeat(MAX_ITEMS + 1), b"e".to_vec()].concat();
        assert_eq!(Value::decode(&many).unwrap_err().reason, "too many values");
    }

    proptest::proptest! {
        #[test]
        fn never_panics(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..256)) {
            let _ = Value::decode(&bytes);
        }
    }
}
