//! Just enough bencode for rtpengine's ng control protocol: integers, byte strings, lists and
//! dictionaries (keys sorted on output, as the format requires).

use std::collections::BTreeMap;

use anyhow::{Result, bail};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    Int(i64),
    Bytes(Vec<u8>),
    List(Vec<Value>),
    Dict(BTreeMap<Vec<u8>, Value>),
}

/// ng replies are flat; the limit only stops a hostile reply from recursing us off the stack.
const MAX_DEPTH: usize = 32;

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

    /// A dictionary entry as UTF-8 text, if present and a string.
    pub fn get_str(&self, key: &str) -> Option<String> {
        match self {
            Value::Dict(d) => match d.get(key.as_bytes()) {
                Some(Value::Bytes(b)) => Some(String::from_utf8_lossy(b).into_owned()),
                _ => None,
            },
            _ => None,
        }
    }

    pub fn encode(&self, out: &mut Vec<u8>) {
        match self {
            Value::Int(i) => out.extend_from_slice(format!("i{i}e").as_bytes()),
            Value::Bytes(b) => {
                out.extend_from_slice(format!("{}:", b.len()).as_bytes());
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
                    Value::Bytes(k.clone()).encode(out);
                    v.encode(out);
                }
                out.push(b'e');
            }
        }
    }

    #[cfg(test)]
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.encode(&mut out);
        out
    }

    /// Decodes exactly one value that spans all of `input`.
    pub fn decode(input: &[u8]) -> Result<Value> {
        let mut pos = 0;
        let v = decode_at(input, &mut pos, 0)?;
        if pos != input.len() {
            bail!(
                "{} trailing bytes after the bencoded value",
                input.len() - pos
            );
        }
        Ok(v)
    }
}

fn decode_at(input: &[u8], pos: &mut usize, depth: usize) -> Result<Value> {
    if depth > MAX_DEPTH {
        bail!("bencode nested deeper than {MAX_DEPTH}");
    }
    let Some(&tag) = input.get(*pos) else {
        bail!("bencode ends early at byte {}", *pos);
    };
    match tag {
        b'i' => {
            *pos += 1;
            let digits = take_until(input, pos, b'e')?;
            let i = std::str::from_utf8(digits)?.parse()?;
            Ok(Value::Int(i))
        }
        b'l' => {
            *pos += 1;
            let mut items = Vec::new();
            while input.get(*pos) != Some(&b'e') {
                items.push(decode_at(input, pos, depth + 1)?);
            }
            *pos += 1;
            Ok(Value::List(items))
        }
        b'd' => {
            *pos += 1;
            let mut map = BTreeMap::new();
            while input.get(*pos) != Some(&b'e') {
                let Value::Bytes(k) = decode_at(input, pos, depth + 1)? else {
                    bail!("bencode dictionary key is not a string");
                };
                let v = decode_at(input, pos, depth + 1)?;
                map.insert(k, v);
            }
            *pos += 1;
            Ok(Value::Dict(map))
        }
        b'0'..=b'9' => {
            let len: usize = std::str::from_utf8(take_until(input, pos, b':')?)?.parse()?;
            let end = pos
                .checked_add(len)
                .filter(|&e| e <= input.len())
                .ok_or_else(|| {
                    anyhow::anyhow!("bencode string of {len} bytes runs past the end")
                })?;
            let b = input[*pos..end].to_vec();
            *pos = end;
            Ok(Value::Bytes(b))
        }
        other => bail!("unexpected byte {:?} at {} in bencode", other as char, *pos),
    }
}

/// The bytes from `pos` up to `delim` (exclusive); leaves `pos` just past `delim`.
fn take_until<'a>(input: &'a [u8], pos: &mut usize, delim: u8) -> Result<&'a [u8]> {
    let start = *pos;
    let Some(off) = input[start..].iter().position(|&b| b == delim) else {
        bail!("bencode: missing {:?} after byte {start}", delim as char);
    };
    *pos = start + off + 1;
    Ok(&input[start..start + off])
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
    fn decodes_an_ng_reply() {
        let reply = b"d3:sdp5:v=0\r\n6:result2:oke";
        let v = Value::decode(reply).unwrap();
        assert_eq!(v.get_str("result").as_deref(), Some("ok"));
        assert_eq!(v.get_str("sdp").as_deref(), Some("v=0\r\n"));
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
    fn rejects_malformed_input() {
        for bad in [
            &b"d3:abc"[..],
            b"5:abc",
            b"i12",
            b"x",
            b"l",
            b"di1ei2ee",
            b"1:ab",
            b"99999999999999999999999:a",
        ] {
            assert!(
                Value::decode(bad).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        let deep = [vec![b'l'; 100], vec![b'e'; 100]].concat();
        assert!(Value::decode(&deep).is_err());
    }
}
