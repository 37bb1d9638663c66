//! The two SDP operations the benchmark needs: write an endpoint's audio offer/answer, and read
//! back where a relay wants the audio sent (c= and m=audio of its rewritten SDP).

use std::net::{Ipv4Addr, SocketAddrV4};

use anyhow::{Context, Result, bail};

/// A PCMU-only audio session at `at` (RFC 4566; PT 0 is PCMU/8000 by RFC 3551).
pub fn audio(session_id: u64, at: SocketAddrV4) -> String {
    format!(
        "v=0\r\n\
         o=- {session_id} 1 IN IP4 {ip}\r\n\
         s=sluice-bench\r\n\
         c=IN IP4 {ip}\r\n\
         t=0 0\r\n\
         m=audio {port} RTP/AVP 0\r\n\
         a=rtpmap:0 PCMU/8000\r\n\
         a=sendrecv\r\n",
        ip = at.ip(),
        port = at.port()
    )
}

/// Where the first m=audio section of `sdp` receives RTP: its port, and the media-level c= if
/// it has one, else the session-level c= (RFC 4566 5.7).
pub fn audio_destination(sdp: &str) -> Result<SocketAddrV4> {
    let mut session_c: Option<&str> = None;
    let mut media_c: Option<&str> = None;
    let mut port: Option<u16> = None;
    let mut in_audio = false;
    let mut seen_media = false;
    for line in sdp.lines().map(str::trim_end) {
        if let Some(rest) = line.strip_prefix("m=") {
            if port.is_some() {
                break; // only the first audio section matters
            }
            seen_media = true;
            let mut f = rest.split_whitespace();
            in_audio = f.next() == Some("audio");
            if in_audio {
                let p = f.next().context("m=audio line without a port")?;
                port = Some(
                    p.parse()
                        .with_context(|| format!("bad m=audio port {p:?}"))?,
                );
            }
        } else if let Some(rest) = line.strip_prefix("c=") {
            if !seen_media {
                session_c = Some(rest);
            } else if in_audio {
                media_c = Some(rest);
            }
        }
    }
    let port = port.with_context(|| format!("no m=audio line in SDP:\n{sdp}"))?;
    let c = media_c
        .or(session_c)
        .with_context(|| format!("no c= line for the audio in SDP:\n{sdp}"))?;
    let mut f = c.split_whitespace();
    let (net, family, addr) = (f.next(), f.next(), f.next());
    if net != Some("IN") || family != Some("IP4") {
        bail!("c= line {c:?} is not IN IP4");
    }
    let addr = addr.context("c= line without an address")?;
    // A TTL suffix (multicast) never appears in a relay's answer; strip it anyway.
    let ip: Ipv4Addr = addr
        .split('/')
        .next()
        .unwrap_or(addr)
        .parse()
        .with_context(|| format!("bad c= address {addr:?}"))?;
    if ip.is_unspecified() || port == 0 {
        bail!("the relay's SDP puts the audio on hold or rejects it ({ip}:{port})");
    }
    Ok(SocketAddrV4::new(ip, port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_back_what_it_writes() {
        let at = SocketAddrV4::new(Ipv4Addr::LOCALHOST, 30000);
        assert_eq!(audio_destination(&audio(1, at)).unwrap(), at);
    }

    #[test]
    fn reads_an_rtpengine_reply() {
        let sdp = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n\
                   m=audio 40000 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\na=sendrecv\r\na=rtcp:40001\r\n";
        assert_eq!(
            audio_destination(sdp).unwrap(),
            "127.0.0.1:40000".parse().unwrap()
        );
    }

    #[test]
    fn media_level_connection_wins() {
        let sdp = "v=0\r\nc=IN IP4 10.0.0.1\r\nt=0 0\r\nm=video 5000 RTP/AVP 96\r\n\
                   c=IN IP4 10.0.0.2\r\nm=audio 6000 RTP/AVP 0\r\nc=IN IP4 10.0.0.3\r\n";
        assert_eq!(
            audio_destination(sdp).unwrap(),
            "10.0.0.3:6000".parse().unwrap()
        );
    }

    #[test]
    fn rejects_hold_and_missing_audio() {
        assert!(
            audio_destination("v=0\r\nc=IN IP4 0.0.0.0\r\nm=audio 4000 RTP/AVP 0\r\n").is_err()
        );
        assert!(audio_destination("v=0\r\nc=IN IP4 1.2.3.4\r\nm=audio 0 RTP/AVP 0\r\n").is_err());
        assert!(audio_destination("v=0\r\nc=IN IP4 1.2.3.4\r\n").is_err());
    }
}
