//! Codec negotiation for G.711 <-> Opus transcoding, sans-IO: pure functions from the offerer's
//! media section and the per-leg options to the media section passed on ([`rewrite_offer`]), and
//! from the answer to a [`Decision`] and the media section sent back ([`decide`]).
//!
//! Roles are offerer/answerer rather than caller/callee: a re-INVITE from the callee makes it
//! the offerer, and the same rules apply with the sides swapped.
//!
//! The rules (rtpengine's `codec` flags are the model):
//! - `auto`: the offer passed on lists the offerer's codecs first, then appends the transcodable
//!   codecs (PCMU, PCMA, opus) it lacks, so an answerer with nothing in common can still answer.
//!   An answer that picks one of the offerer's codecs is relayed as is; one that picks an
//!   appended codec is transcoded to the offerer's most preferred transcodable codec.
//! - `transcode` list: append only these (in this order) instead of all three.
//! - `strip` list: removed from the offer, and not used on the offerer's side either.
//! - `mask` list: removed from the offer, but still usable on the offerer's side (so masking the
//!   offerer's only codec forces transcoding).
//! - `off`: the offer passes untouched and media is always relayed.
//!
//! Only the offerer's side matters for appended codecs: nothing is appended when the offerer has
//! no transcodable codec, since no bridge could be built from its side.

use std::fmt;

pub use sluice_relay::transcode::{Codec, DirectionPlan, DtmfMap, OpusParams};

use crate::sdp::{Attribute, Media, RtpMap};

/// Every codec sluice transcodes, in the order `auto` appends them.
pub const ALL: [Codec; 3] = [Codec::Pcmu, Codec::Pcma, Codec::Opus];

/// What sluice asks for when it receives Opus (RFC 7587): its codec runs narrowband mono, so a
/// sender need not spend bits above 4 kHz; FEC helps its decoder conceal loss.
pub const OPUS_FMTP: &str = "useinbandfec=1;maxplaybackrate=8000;stereo=0";

/// When a side gives no usable `a=ptime` (RFC 3551 4.5 default for G.711 and what Opus
/// endpoints assume).
const DEFAULT_PTIME_MS: u16 = 20;

const DYNAMIC_PTS: std::ops::RangeInclusive<u8> = 96..=127;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TranscodeMode {
    #[default]
    Auto,
    Off,
}

impl std::str::FromStr for TranscodeMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "auto" => Ok(TranscodeMode::Auto),
            "off" => Ok(TranscodeMode::Off),
            _ => Err(format!("transcode mode '{s}' is neither 'auto' nor 'off'")),
        }
    }
}

/// A codec by its SDP encoding name, case-insensitively (`PCMU`, `PCMA`, `opus`).
pub fn parse_codec(name: &str) -> Option<Codec> {
    ALL.into_iter()
        .find(|c| c.encoding_name().eq_ignore_ascii_case(name.trim()))
}

/// `PCMU/8000`, `opus/48000/2`: how SDP names the codec.
pub fn codec_label(c: Codec) -> String {
    match c {
        Codec::Opus => "opus/48000/2".into(),
        _ => format!("{}/{}", c.encoding_name(), c.clock_rate()),
    }
}

/// An ordered set of codecs, small enough to keep the options `Copy`.
#[derive(Clone, Copy, PartialEq, Eq, Default)]
pub struct CodecList {
    items: [Option<Codec>; 3],
}

impl CodecList {
    /// Parses codec names; an element may hold several, comma-separated, as command lines give
    /// them. `option` names the option in the error.
    pub fn parse<S: AsRef<str>>(option: &str, names: &[S]) -> Result<CodecList, String> {
        let mut out = CodecList::default();
        for n in names {
            for name in n
                .as_ref()
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
            {
                let c = parse_codec(name).ok_or_else(|| {
                    format!(
                        "{option}: unknown codec '{name}'; sluice transcodes PCMU, PCMA and opus"
                    )
                })?;
                out.push(c);
            }
        }
        Ok(out)
    }

    pub fn of(codecs: &[Codec]) -> CodecList {
        let mut out = CodecList::default();
        for &c in codecs {
            out.push(c);
        }
        out
    }

    /// Appends unless present.
    pub fn push(&mut self, c: Codec) {
        if self.contains(c) {
            return;
        }
        if let Some(slot) = self.items.iter_mut().find(|s| s.is_none()) {
            *slot = Some(c);
        }
    }

    pub fn contains(&self, c: Codec) -> bool {
        self.items.contains(&Some(c))
    }

    pub fn is_empty(&self) -> bool {
        self.items[0].is_none()
    }

    pub fn iter(&self) -> impl Iterator<Item = Codec> + '_ {
        self.items.iter().flatten().copied()
    }

    /// Encoding names, as the API takes them.
    pub fn names(&self) -> Vec<String> {
        self.iter().map(|c| c.encoding_name().to_string()).collect()
    }
}

impl fmt::Debug for CodecList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

/// The per-leg codec options of an offer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CodecOptions {
    /// `None`: the server's configured default.
    pub mode: Option<TranscodeMode>,
    pub transcode: CodecList,
    pub strip: CodecList,
    pub mask: CodecList,
    /// Append only what `transcode` lists (nothing when it is empty), as rtpengine does with
    /// `codec-strip`/`codec-mask` alone. Off (the default for gRPC and the B2BUA), an empty
    /// `transcode` means sluice's own set: PCMU, PCMA and opus.
    pub append_only_listed: bool,
}

impl CodecOptions {
    pub fn has_lists(&self) -> bool {
        !(self.transcode.is_empty() && self.strip.is_empty() && self.mask.is_empty())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CodecError {
    /// The options cannot apply to this offer (a request error).
    #[error("{0}")]
    BadOption(String),
    /// The answer picked a codec that can neither be relayed nor transcoded.
    #[error("{0}")]
    NoBridge(String),
}

/// A transcodable codec and the payload type one side uses for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Format {
    pub codec: Codec,
    pub pt: u8,
}

/// telephone-event (RFC 4733) at one clock rate.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Event {
    pt: u8,
    clock: u32,
    fmtp: Option<String>,
}

/// What sluice keeps of an offer to decide on its answer, and to keep payload types stable
/// across re-offers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OfferCodecs {
    /// The offerer's transcodable codecs usable on its side, in its preference order: stripped
    /// ones are not, masked ones are.
    offerer: Vec<Format>,
    /// Encoder settings towards the offerer when it is the Opus side (from its `a=fmtp`).
    offerer_opus: OpusParams,
    offerer_events: Vec<Event>,
    offerer_cn: Vec<u8>,
    offerer_ptime: Option<u32>,
    /// The offerer's formats passed on, with their codec: an answer picking one is relayed.
    passed: Vec<(u8, Option<RtpMap>)>,
    appended: Vec<Format>,
    appended_events: Vec<Event>,
}

impl OfferCodecs {
    /// The codecs sluice added to the offer, with their payload types.
    pub fn appended(&self) -> &[Format] {
        &self.appended
    }
}

/// What to do with a stream once its answer is in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Both sides use a codec the offerer offered: packets pass as they are.
    Relay,
    Transcode(Box<Transcode>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transcode {
    pub offerer: Format,
    pub answerer: Format,
    /// telephone-event mapping of packets from the offerer and from the answerer; `None` where a
    /// side lacks telephone-event at its codec's clock rate (events are then dropped).
    pub dtmf: [Option<DtmfMap>; 2],
    /// Packets from the offerer, packets from the answerer.
    pub plans: [DirectionPlan; 2],
}

enum Kind {
    Codec(Codec),
    Event(u32),
    Cn,
    Other,
}

fn kind(map: Option<&RtpMap>) -> Kind {
    let Some(map) = map else { return Kind::Other };
    let enc = map.encoding.to_ascii_lowercase();
    let mono = map.channels.is_none_or(|c| c == 1);
    match enc.as_str() {
        "pcmu" if map.clock_rate == 8000 && mono => Kind::Codec(Codec::Pcmu),
        "pcma" if map.clock_rate == 8000 && mono => Kind::Codec(Codec::Pcma),
        // RFC 7587 7: always 48000/2, whatever the audio really is.
        "opus" if map.clock_rate == 48000 => Kind::Codec(Codec::Opus),
        "telephone-event" => Kind::Event(map.clock_rate),
        "cn" => Kind::Cn,
        _ => Kind::Other,
    }
}

fn pts(m: &Media) -> Vec<u8> {
    m.fmts.iter().filter_map(|f| f.parse().ok()).collect()
}

/// The payload type a codec-describing attribute (`rtpmap`, `fmtp`, `rtcp-fb`) is about.
fn attr_pt(a: &Attribute) -> Option<u8> {
    if !matches!(a.name.as_str(), "rtpmap" | "fmtp" | "rtcp-fb") {
        return None;
    }
    a.value
        .as_deref()?
        .split_ascii_whitespace()
        .next()?
        .parse()
        .ok()
}

fn rtpmap_attr(pt: u8, c: Codec) -> Attribute {
    Attribute::with_value("rtpmap", format!("{pt} {}", codec_label(c)))
}

fn label(map: Option<&RtpMap>, pt: u8) -> String {
    match map {
        Some(m) => match m.channels {
            Some(ch) => format!("{}/{}/{ch}", m.encoding, m.clock_rate),
            None => format!("{}/{}", m.encoding, m.clock_rate),
        },
        None => format!("payload type {pt}"),
    }
}

/// Encoder settings for a receiver that described its Opus with this `a=fmtp` (RFC 7587 6.1).
pub fn opus_params(fmtp: Option<&str>) -> OpusParams {
    // RFC 7587: useinbandfec defaults to 0, the receiver did not ask for FEC.
    let mut p = OpusParams {
        inband_fec: false,
        ..OpusParams::default()
    };
    for kv in fmtp.unwrap_or("").split(';') {
        let Some((k, v)) = kv.split_once('=') else {
            continue;
        };
        let v = v.trim();
        match k.trim().to_ascii_lowercase().as_str() {
            "useinbandfec" => p.inband_fec = v == "1",
            "maxplaybackrate" => p.max_playback_rate = v.parse().ok().filter(|r| *r > 0),
            "maxaveragebitrate" => {
                if let Some(b) = v.parse::<u32>().ok().filter(|b| *b >= 6000) {
                    p.bitrate = p.bitrate.min(b);
                    p.max_average_bitrate = Some(b);
                }
            }
            _ => {}
        }
    }
    p
}

/// The packetization a leg asked for, as the encoder can produce it.
fn ptime_ms(ptime: Option<u32>) -> u16 {
    match ptime {
        Some(v @ (10 | 20 | 30 | 40 | 60)) => v as u16,
        // Other values (2.5/5 ms Opus frames, odd G.711 sizes) are not frame sizes the
        // transcoder produces; 20 ms is what every endpoint accepts.
        _ => DEFAULT_PTIME_MS,
    }
}

/// A payload type for an appended format: its static one if free, else the one it had in the
/// previous offer (so re-offers keep it), else the lowest free dynamic one.
fn pick_pt(static_pt: Option<u8>, previous: Option<u8>, used: &[u8]) -> Option<u8> {
    static_pt
        .into_iter()
        .chain(previous.filter(|p| DYNAMIC_PTS.contains(p)))
        .chain(DYNAMIC_PTS)
        .find(|p| !used.contains(p))
}

/// Rewrites the offerer's media section for the answerer. `None`: nothing to negotiate (not an
/// audio RTP section, disabled, or `mode` off) and the section passes as it is.
pub fn rewrite_offer(
    m: &Media,
    opts: &CodecOptions,
    mode: TranscodeMode,
    previous: Option<&OfferCodecs>,
) -> Result<Option<(Media, OfferCodecs)>, CodecError> {
    if mode == TranscodeMode::Off {
        if opts.has_lists() {
            return Err(CodecError::BadOption(
                "codec transcode/strip/mask options need transcode mode auto (it is off)".into(),
            ));
        }
        return Ok(None);
    }
    if m.is_disabled() || !m.is_rtp() || !m.media.eq_ignore_ascii_case("audio") {
        return Ok(None);
    }
    let all = pts(m);
    let mut present = CodecList::default();
    let mut offerer = Vec::new();
    let mut events = Vec::new();
    let mut cn = Vec::new();
    let mut passed = Vec::new();
    let mut removed = Vec::new();
    for &pt in &all {
        let map = m.codec(pt);
        match kind(map.as_ref()) {
            Kind::Codec(codec) => {
                present.push(codec);
                if opts.strip.contains(codec) {
                    removed.push(pt);
                    continue;
                }
                offerer.push(Format { codec, pt });
                if opts.mask.contains(codec) {
                    removed.push(pt);
                    continue;
                }
            }
            Kind::Event(clock) => events.push(Event {
                pt,
                clock,
                fmtp: m.fmtp(pt).map(str::to_owned),
            }),
            Kind::Cn => cn.push(pt),
            Kind::Other => {}
        }
        passed.push((pt, map));
    }
    let mut used = all.clone();
    let mut appended = Vec::new();
    if !offerer.is_empty() {
        let wanted = if opts.transcode.is_empty() && !opts.append_only_listed {
            CodecList::of(&ALL)
        } else {
            opts.transcode
        };
        for codec in wanted.iter() {
            // A masked codec stays hidden even when listed for transcoding: hiding is the point.
            if present.contains(codec) || opts.strip.contains(codec) || opts.mask.contains(codec) {
                continue;
            }
            let prev = previous
                .and_then(|p| p.appended.iter().find(|f| f.codec == codec))
                .map(|f| f.pt);
            let Some(pt) = pick_pt(codec.static_pt(), prev, &used) else {
                tracing::warn!(
                    codec = codec.encoding_name(),
                    "no free payload type; not offered"
                );
                continue;
            };
            used.push(pt);
            appended.push(Format { codec, pt });
        }
    }
    // An appended codec can carry DTMF only with telephone-event at its own clock rate.
    let mut appended_events: Vec<Event> = Vec::new();
    if let Some(template) = events.first() {
        for f in &appended {
            let clock = f.codec.clock_rate();
            if events
                .iter()
                .chain(&appended_events)
                .any(|e| e.clock == clock)
            {
                continue;
            }
            let prev = previous
                .and_then(|p| p.appended_events.iter().find(|e| e.clock == clock))
                .map(|e| e.pt);
            let Some(pt) = pick_pt(None, prev, &used) else {
                continue;
            };
            used.push(pt);
            appended_events.push(Event {
                pt,
                clock,
                fmtp: template.fmtp.clone(),
            });
        }
    }
    let mut out = m.clone();
    // Real codecs first, then the appended ones, then events and CN: answerers tend to take the
    // first format as the preferred one.
    let aux = |pt: &u8| events.iter().any(|e| e.pt == *pt) || cn.contains(pt);
    out.fmts = passed
        .iter()
        .map(|(pt, _)| *pt)
        .filter(|pt| !aux(pt))
        .chain(appended.iter().map(|f| f.pt))
        .chain(passed.iter().map(|(pt, _)| *pt).filter(aux))
        .chain(appended_events.iter().map(|e| e.pt))
        .map(|pt| pt.to_string())
        .collect();
    if out.fmts.is_empty() {
        return Err(CodecError::BadOption(format!(
            "stripping/masking {:?} leaves the {} m= line with no format to offer",
            opts.strip
                .iter()
                .chain(opts.mask.iter())
                .collect::<Vec<_>>(),
            m.media
        )));
    }
    out.remove_attributes_where(|a| attr_pt(a).is_some_and(|pt| removed.contains(&pt)));
    for f in &appended {
        out.push_attribute(rtpmap_attr(f.pt, f.codec));
        if f.codec == Codec::Opus {
            out.push_attribute(Attribute::with_value(
                "fmtp",
                format!("{} {OPUS_FMTP}", f.pt),
            ));
        }
    }
    for e in &appended_events {
        out.push_attribute(Attribute::with_value(
            "rtpmap",
            format!("{} telephone-event/{}", e.pt, e.clock),
        ));
        if let Some(fmtp) = &e.fmtp {
            out.push_attribute(Attribute::with_value("fmtp", format!("{} {fmtp}", e.pt)));
        }
    }
    let offerer_opus = offerer
        .iter()
        .find(|f| f.codec == Codec::Opus)
        .map_or_else(OpusParams::default, |f| opus_params(m.fmtp(f.pt)));
    let codecs = OfferCodecs {
        offerer,
        offerer_opus,
        offerer_events: events,
        offerer_cn: cn,
        offerer_ptime: m.ptime(),
        passed,
        appended,
        appended_events,
    };
    Ok(Some((out, codecs)))
}

fn same_codec(a: &RtpMap, b: &RtpMap) -> bool {
    a.encoding.eq_ignore_ascii_case(&b.encoding) && a.clock_rate == b.clock_rate
}

/// Decides on an answer to an offer rewritten by [`rewrite_offer`]; returns the decision and the
/// media section for the offerer. `ssrcs`: sluice's own SSRC towards the answerer and towards the
/// offerer (used only when transcoding).
pub fn decide(
    offer: &OfferCodecs,
    answer: &Media,
    ssrcs: [u32; 2],
) -> Result<(Decision, Media), CodecError> {
    if answer.is_disabled() {
        return Ok((Decision::Relay, answer.clone()));
    }
    let answered = pts(answer);
    let chosen = answered.iter().copied().find(|&pt| {
        matches!(
            kind(answer.codec(pt).as_ref()),
            Kind::Codec(_) | Kind::Other
        )
    });
    let offered_labels = || {
        offer
            .passed
            .iter()
            .filter(|(_, map)| matches!(kind(map.as_ref()), Kind::Codec(_) | Kind::Other))
            .map(|(pt, map)| label(map.as_ref(), *pt))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let appended_labels = || {
        if offer.appended.is_empty() {
            "none".to_string()
        } else {
            offer
                .appended
                .iter()
                .map(|f| codec_label(f.codec))
                .collect::<Vec<_>>()
                .join(", ")
        }
    };
    let Some(pt) = chosen else {
        return Err(CodecError::NoBridge(format!(
            "the answer's audio m= line has no codec (only telephone-event/CN); the offerer \
             offered {}",
            offered_labels()
        )));
    };
    let map = answer.codec(pt);
    let answer_codec = match kind(map.as_ref()) {
        Kind::Codec(c) => Some(c),
        _ => None,
    };
    let appended = answer_codec.and_then(|c| offer.appended.iter().find(|f| f.codec == c));
    let by_pt = offer.passed.iter().any(|(p, _)| *p == pt);
    let by_name = map.as_ref().is_some_and(|a| {
        offer
            .passed
            .iter()
            .any(|(_, m)| m.as_ref().is_some_and(|m| same_codec(a, m)))
    });
    let Some(appended) = appended.filter(|_| !by_pt && !by_name) else {
        if by_pt || by_name {
            let mut back = answer.clone();
            // Formats only sluice offered mean nothing to the offerer.
            let extra: Vec<u8> = offer
                .appended
                .iter()
                .map(|f| f.pt)
                .chain(offer.appended_events.iter().map(|e| e.pt))
                .filter(|p| !offer.passed.iter().any(|(q, _)| q == p))
                .collect();
            if back.fmts.len() > 1 {
                back.fmts
                    .retain(|f| f.parse().is_ok_and(|p: u8| !extra.contains(&p)));
                back.remove_attributes_where(|a| attr_pt(a).is_some_and(|p| extra.contains(&p)));
            }
            return Ok((Decision::Relay, back));
        }
        return Err(CodecError::NoBridge(format!(
            "no codec bridge: the answer chose {} (payload type {pt}); the offerer offered {} \
             and sluice could transcode to {}",
            label(map.as_ref(), pt),
            offered_labels(),
            appended_labels()
        )));
    };
    let answerer = Format {
        codec: appended.codec,
        pt,
    };
    let Some(&offerer) = offer.offerer.first() else {
        // Nothing is appended without an offerer codec; an answer cannot get here.
        return Err(CodecError::NoBridge(format!(
            "the offerer offered no transcodable codec ({})",
            offered_labels()
        )));
    };
    let answer_events: Vec<Event> = answered
        .iter()
        .filter_map(|&p| match kind(answer.codec(p).as_ref()) {
            Kind::Event(clock) => Some(Event {
                pt: p,
                clock,
                fmtp: answer.fmtp(p).map(str::to_owned),
            }),
            _ => None,
        })
        .collect();
    let answer_cn: Vec<u8> = answered
        .iter()
        .copied()
        .filter(|&p| matches!(kind(answer.codec(p).as_ref()), Kind::Cn))
        .collect();
    let o_ev = offer
        .offerer_events
        .iter()
        .find(|e| e.clock == offerer.codec.clock_rate());
    let a_ev = answer_events
        .iter()
        .find(|e| e.clock == answerer.codec.clock_rate());
    let dtmf = match (o_ev, a_ev) {
        (Some(o), Some(a)) => [
            Some(DtmfMap {
                in_pt: o.pt,
                in_clock: o.clock,
                out_pt: a.pt,
                out_clock: a.clock,
            }),
            Some(DtmfMap {
                in_pt: a.pt,
                in_clock: a.clock,
                out_pt: o.pt,
                out_clock: o.clock,
            }),
        ],
        _ => [None, None],
    };
    let opus_towards_answerer = if answerer.codec == Codec::Opus {
        opus_params(answer.fmtp(pt))
    } else {
        OpusParams::default()
    };
    let plans = [
        DirectionPlan {
            input: offerer.codec,
            input_pt: offerer.pt,
            output: answerer.codec,
            output_pt: answerer.pt,
            output_ptime_ms: ptime_ms(answer.ptime()),
            opus: opus_towards_answerer,
            dtmf: dtmf[0],
            cn_pts: offer.offerer_cn.clone(),
            ssrc: ssrcs[0],
        },
        DirectionPlan {
            input: answerer.codec,
            input_pt: answerer.pt,
            output: offerer.codec,
            output_pt: offerer.pt,
            output_ptime_ms: ptime_ms(offer.offerer_ptime),
            opus: offer.offerer_opus,
            dtmf: dtmf[1],
            cn_pts: answer_cn,
            ssrc: ssrcs[1],
        },
    ];
    // The offerer hears of its own codec only, as if the answerer had picked it; CN is not
    // offered back since sluice drops it.
    let mut back = answer.clone();
    back.fmts = std::iter::once(offerer.pt)
        .chain(o_ev.filter(|_| dtmf[0].is_some()).map(|e| e.pt))
        .map(|p| p.to_string())
        .collect();
    back.remove_attributes_where(|a| {
        attr_pt(a).is_some() || a.name == "ptime" || a.name == "maxptime"
    });
    back.push_attribute(rtpmap_attr(offerer.pt, offerer.codec));
    if offerer.codec == Codec::Opus {
        back.push_attribute(Attribute::with_value(
            "fmtp",
            format!("{} {OPUS_FMTP}", offerer.pt),
        ));
    }
    if let (Some(o), Some(_)) = (o_ev, dtmf[0]) {
        back.push_attribute(Attribute::with_value(
            "rtpmap",
            format!("{} telephone-event/{}", o.pt, o.clock),
        ));
        if let Some(fmtp) = a_ev.and_then(|a| a.fmtp.as_ref()).or(o.fmtp.as_ref()) {
            back.push_attribute(Attribute::with_value("fmtp", format!("{} {fmtp}", o.pt)));
        }
    }
    if let Some(p) = offer.offerer_ptime {
        back.push_attribute(Attribute::with_value("ptime", p.to_string()));
    }
    let t = Transcode {
        offerer,
        answerer,
        dtmf,
        plans,
    };
    Ok((Decision::Transcode(Box::new(t)), back))
}

/// The codec an answer settled on for relaying (its first real format), for reporting.
pub fn relayed_codec(answer: &Media) -> Option<String> {
    pts(answer).into_iter().find_map(|pt| {
        let map = answer.codec(pt);
        matches!(kind(map.as_ref()), Kind::Codec(_) | Kind::Other).then(|| label(map.as_ref(), pt))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sdp::Sdp;

    fn media(fmts: &str, attrs: &str) -> Media {
        let text = format!(
            "v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\ns=-\r\nc=IN IP4 192.0.2.1\r\nt=0 0\r\n\
             m=audio 4000 RTP/AVP {fmts}\r\n{attrs}"
        );
        Sdp::parse(&text).unwrap().media.remove(0)
    }

    const PCMU_TE: &str = "a=rtpmap:0 PCMU/8000\r\na=rtpmap:101 telephone-event/8000\r\n\
                           a=fmtp:101 0-16\r\n";
    const OPUS_TE: &str = "a=rtpmap:111 opus/48000/2\r\na=fmtp:111 useinbandfec=1\r\n\
                           a=rtpmap:110 telephone-event/48000\r\na=fmtp:110 0-15\r\n";

    fn auto() -> CodecOptions {
        CodecOptions::default()
    }

    fn offer(m: &Media, opts: CodecOptions) -> (Media, OfferCodecs) {
        rewrite_offer(m, &opts, TranscodeMode::Auto, None)
            .unwrap()
            .unwrap()
    }

    fn transcode(d: Decision) -> Transcode {
        match d {
            Decision::Transcode(t) => *t,
            Decision::Relay => panic!("expected transcoding"),
        }
    }

    fn attrs(m: &Media, name: &str) -> Vec<String> {
        m.attributes()
            .filter(|a| a.name == name)
            .filter_map(|a| a.value.clone())
            .collect()
    }

    #[test]
    fn pcmu_caller_opus_callee() {
        let (out, oc) = offer(&media("0 101", PCMU_TE), auto());
        assert_eq!(out.fmts, ["0", "8", "96", "101", "97"]);
        assert_eq!(out.codec(96).unwrap().to_string(), "96 opus/48000/2");
        assert_eq!(out.fmtp(96), Some(OPUS_FMTP));
        assert_eq!(
            out.codec(97).unwrap().to_string(),
            "97 telephone-event/48000"
        );
        assert_eq!(out.fmtp(97), Some("0-16"));
        assert_eq!(out.codec(8).unwrap().encoding, "PCMA");

        let ans = media(
            "96 97",
            "a=rtpmap:96 opus/48000/2\r\na=fmtp:96 useinbandfec=1; maxplaybackrate=16000\r\n\
             a=rtpmap:97 telephone-event/48000\r\na=ptime:40\r\n",
        );
        let (d, back) = decide(&oc, &ans, [11, 22]).unwrap();
        let t = transcode(d);
        assert_eq!(
            t.offerer,
            Format {
                codec: Codec::Pcmu,
                pt: 0
            }
        );
        assert_eq!(
            t.answerer,
            Format {
                codec: Codec::Opus,
                pt: 96
            }
        );
        let [to_callee, to_caller] = &t.plans;
        assert_eq!(
            (
                to_callee.input,
                to_callee.input_pt,
                to_callee.output,
                to_callee.output_pt
            ),
            (Codec::Pcmu, 0, Codec::Opus, 96)
        );
        assert_eq!(to_callee.output_ptime_ms, 40, "the receiving leg's ptime");
        assert!(to_callee.opus.inband_fec);
        assert_eq!(to_callee.opus.max_playback_rate, Some(16000));
        assert_eq!(
            to_callee.dtmf,
            Some(DtmfMap {
                in_pt: 101,
                in_clock: 8000,
                out_pt: 97,
                out_clock: 48000
            })
        );
        assert_eq!(to_callee.ssrc, 11);
        assert_eq!(
            (
                to_caller.input,
                to_caller.input_pt,
                to_caller.output,
                to_caller.output_pt
            ),
            (Codec::Opus, 96, Codec::Pcmu, 0)
        );
        assert_eq!(to_caller.output_ptime_ms, 20);
        assert_eq!(to_caller.dtmf.unwrap().out_pt, 101);
        assert_eq!(to_caller.ssrc, 22);
        // The caller hears of PCMU only.
        assert_eq!(back.fmts, ["0", "101"]);
        assert_eq!(
            attrs(&back, "rtpmap"),
            ["0 PCMU/8000", "101 telephone-event/8000"]
        );
        assert!(attrs(&back, "ptime").is_empty());
        assert!(back.fmtp(96).is_none());
    }

    #[test]
    fn opus_caller_pcmu_callee() {
        let m = media("111 110", &format!("{OPUS_TE}a=ptime:40\r\n"));
        let (out, oc) = offer(&m, auto());
        assert_eq!(out.fmts, ["111", "0", "8", "110", "96"]);
        assert_eq!(
            out.codec(96).unwrap().to_string(),
            "96 telephone-event/8000"
        );
        assert_eq!(out.fmtp(96), Some("0-15"));
        let ans = media(
            "8 96",
            "a=rtpmap:8 PCMA/8000\r\na=rtpmap:96 telephone-event/8000\r\n",
        );
        let (d, back) = decide(&oc, &ans, [1, 2]).unwrap();
        let t = transcode(d);
        assert_eq!(
            t.offerer,
            Format {
                codec: Codec::Opus,
                pt: 111
            }
        );
        assert_eq!(
            t.answerer,
            Format {
                codec: Codec::Pcma,
                pt: 8
            }
        );
        let to_caller = &t.plans[1];
        assert_eq!(to_caller.output, Codec::Opus);
        assert_eq!(to_caller.output_ptime_ms, 40);
        assert!(to_caller.opus.inband_fec, "from the caller's fmtp");
        assert_eq!(to_caller.opus.max_playback_rate, None);
        assert_eq!(
            to_caller.dtmf,
            Some(DtmfMap {
                in_pt: 96,
                in_clock: 8000,
                out_pt: 110,
                out_clock: 48000
            })
        );
        assert_eq!(back.fmts, ["111", "110"]);
        assert_eq!(back.fmtp(111), Some(OPUS_FMTP));
        assert_eq!(attrs(&back, "ptime"), ["40"]);
    }

    #[test]
    fn common_codec_is_relayed_and_appended_formats_are_dropped() {
        let (_, oc) = offer(&media("0 101", PCMU_TE), auto());
        let ans = media(
            "0 96 101",
            &format!("{PCMU_TE}a=rtpmap:96 opus/48000/2\r\n"),
        );
        let (d, back) = decide(&oc, &ans, [1, 2]).unwrap();
        assert_eq!(d, Decision::Relay);
        assert_eq!(back.fmts, ["0", "101"]);
        assert!(back.rtpmap(96).is_none());
        // An answer renumbering the caller's codec is relayed too.
        let (_, oc) = offer(&media("111", OPUS_TE), auto());
        let ans = media("120", "a=rtpmap:120 opus/48000/2\r\n");
        assert_eq!(decide(&oc, &ans, [1, 2]).unwrap().0, Decision::Relay);
    }

    #[test]
    fn strip_mask_transcode_off() {
        let both = "a=rtpmap:0 PCMU/8000\r\na=rtpmap:8 PCMA/8000\r\n";
        let strip = CodecOptions {
            strip: CodecList::of(&[Codec::Pcmu]),
            ..auto()
        };
        let (out, oc) = offer(&media("0 8", both), strip);
        assert_eq!(out.fmts, ["8", "96"], "stripped, and not appended back");
        assert!(out.rtpmap(0).is_none());
        assert_eq!(
            oc.offerer,
            [Format {
                codec: Codec::Pcma,
                pt: 8
            }]
        );

        let mask = CodecOptions {
            mask: CodecList::of(&[Codec::Pcmu]),
            ..auto()
        };
        let (out, oc) = offer(&media("0 101", PCMU_TE), mask);
        assert_eq!(out.fmts, ["8", "96", "101", "97"]);
        assert!(out.rtpmap(0).is_none());
        // The callee takes PCMA: PCMU stays usable on the caller's side.
        let (d, back) = decide(&oc, &media("8", ""), [1, 2]).unwrap();
        let t = transcode(d);
        assert_eq!(
            (t.offerer.codec, t.answerer.codec),
            (Codec::Pcmu, Codec::Pcma)
        );
        assert_eq!(
            back.fmts,
            ["0"],
            "no DTMF: the callee did not answer telephone-event"
        );
        assert_eq!(t.dtmf, [None, None]);

        let only_opus = CodecOptions {
            transcode: CodecList::of(&[Codec::Opus]),
            ..auto()
        };
        let (out, _) = offer(&media("0", ""), only_opus);
        assert_eq!(out.fmts, ["0", "96"]);

        let m = media("0 101", PCMU_TE);
        assert_eq!(
            rewrite_offer(&m, &auto(), TranscodeMode::Off, None).unwrap(),
            None
        );
        let err = rewrite_offer(&m, &strip, TranscodeMode::Off, None).unwrap_err();
        assert!(matches!(err, CodecError::BadOption(_)), "{err}");

        let all = CodecOptions {
            strip: CodecList::of(&[Codec::Pcmu]),
            ..auto()
        };
        let err = rewrite_offer(&media("0", ""), &all, TranscodeMode::Auto, None).unwrap_err();
        assert!(err.to_string().contains("no format"), "{err}");
    }

    #[test]
    fn no_bridge_names_both_sides() {
        let (_, oc) = offer(&media("0 101", PCMU_TE), auto());
        let err = decide(&oc, &media("9", ""), [1, 2]).unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, CodecError::NoBridge(_)));
        for want in ["G722/8000", "PCMU/8000", "PCMA/8000", "opus/48000/2"] {
            assert!(msg.contains(want), "{want} missing from: {msg}");
        }
        // Nothing transcodable on the caller's side: nothing appended, no bridge.
        let (out, oc) = offer(&media("18", ""), auto());
        assert_eq!(out.fmts, ["18"]);
        let err = decide(&oc, &media("8", ""), [1, 2])
            .unwrap_err()
            .to_string();
        assert!(err.contains("G729") && err.contains("none"), "{err}");
    }

    #[test]
    fn payload_types_avoid_the_callers_and_stay_across_reoffers() {
        let m = media(
            "0 96 97 98 101",
            "a=rtpmap:96 AMR/8000\r\na=rtpmap:97 iLBC/8000\r\na=rtpmap:98 speex/16000\r\n\
             a=rtpmap:101 telephone-event/8000\r\n",
        );
        let (out, oc) = offer(&m, auto());
        assert_eq!(out.fmts, ["0", "96", "97", "98", "8", "99", "101", "100"]);
        assert_eq!(out.codec(99).unwrap().encoding, "opus");
        assert_eq!(
            out.codec(100).unwrap().to_string(),
            "100 telephone-event/48000"
        );
        let (again, oc2) = rewrite_offer(&m, &auto(), TranscodeMode::Auto, Some(&oc))
            .unwrap()
            .unwrap();
        assert_eq!((&again, &oc2), (&out, &oc));
        let ans = media(
            "99 100",
            "a=rtpmap:99 opus/48000/2\r\na=rtpmap:100 telephone-event/48000\r\n",
        );
        let first = decide(&oc, &ans, [5, 6]).unwrap();
        assert_eq!(decide(&oc2, &ans, [5, 6]).unwrap(), first);
        // A re-offer that now takes 99 itself moves opus to a free one.
        let taken = media("0 99", "a=rtpmap:99 G7221/16000\r\n");
        let (out, moved) = rewrite_offer(&taken, &auto(), TranscodeMode::Auto, Some(&oc))
            .unwrap()
            .unwrap();
        assert_eq!(out.codec(96).unwrap().encoding, "opus");
        assert_eq!(moved.appended()[1].pt, 96);
    }

    #[test]
    fn cn_is_listed_for_dropping_and_not_answered_back() {
        let (_, oc) = offer(
            &media("0 13", "a=rtpmap:0 PCMU/8000\r\na=rtpmap:13 CN/8000\r\n"),
            auto(),
        );
        let (d, back) = decide(
            &oc,
            &media(
                "96 13",
                "a=rtpmap:96 opus/48000/2\r\na=rtpmap:13 CN/8000\r\n",
            ),
            [1, 2],
        )
        .unwrap();
        let t = transcode(d);
        assert_eq!(t.plans[0].cn_pts, [13]);
        assert_eq!(t.plans[1].cn_pts, [13]);
        assert_eq!(back.fmts, ["0"]);
    }

    #[test]
    fn non_audio_and_disabled_pass_untouched() {
        let text = "v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\ns=-\r\nc=IN IP4 192.0.2.1\r\nt=0 0\r\n\
                    m=video 4000 RTP/AVP 96\r\na=rtpmap:96 VP8/90000\r\n";
        let m = Sdp::parse(text).unwrap().media.remove(0);
        assert_eq!(
            rewrite_offer(&m, &auto(), TranscodeMode::Auto, None).unwrap(),
            None
        );
        let mut off = media("0", "");
        off.set_port(0);
        assert_eq!(
            rewrite_offer(&off, &auto(), TranscodeMode::Auto, None).unwrap(),
            None
        );
    }

    #[test]
    fn option_names_parse_case_insensitively_and_unknown_ones_are_named() {
        let l = CodecList::parse("codec_mask", &["opus,pcma", "PCMU", "opus"]).unwrap();
        assert_eq!(
            l.iter().collect::<Vec<_>>(),
            [Codec::Opus, Codec::Pcma, Codec::Pcmu]
        );
        let err = CodecList::parse("codec_strip", &["G729"]).unwrap_err();
        assert!(
            err.contains("codec_strip") && err.contains("'G729'"),
            "{err}"
        );
        assert_eq!("OFF".parse::<TranscodeMode>(), Ok(TranscodeMode::Off));
        assert!("maybe".parse::<TranscodeMode>().is_err());
    }

    #[test]
    fn opus_fmtp_parameters() {
        let p = opus_params(Some(
            "maxplaybackrate=8000; useinbandfec=1;maxaveragebitrate=12000",
        ));
        assert!(p.inband_fec);
        assert_eq!((p.max_playback_rate, p.bitrate), (Some(8000), 12000));
        assert!(
            !opus_params(None).inband_fec,
            "RFC 7587: useinbandfec defaults to 0"
        );
        assert_eq!(ptime_ms(Some(25)), 20);
        assert_eq!(ptime_ms(Some(60)), 60);
    }
}
