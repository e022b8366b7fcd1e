//! How a browser's WebRTC audio meets a SIP leg's plain RTP: the box
//! terminates the browser's DTLS-SRTP (see `branchgate_webrtc`) and offers
//! the SIP side a plain `RTP/AVP` stream. Codecs both legs speak (G.711 and
//! G.722 are WebRTC codecs too) pass through untouched; a browser that
//! speaks only Opus gets Opus, transcoded on the box to the G.722 or G.711
//! the SIP side chose (`branchgate_dsp`; G.722 first by default: wideband
//! both ways). Payload types are renumbered between the
//! legs as each side named them. `media.codecs` orders the codecs and says
//! which may be used at all.

use branchgate_dsp::Codec;
use branchgate_sdp::{Direction, Media, RtpMap, SessionDescription};
use branchgate_webrtc::AudioCodec;

/// Encodings a browser and a plain SIP phone both speak: passed through as they are.
const PASSTHROUGH: [(&str, u32); 3] = [("PCMU", 8000), ("PCMA", 8000), ("G722", 8000)];

/// What the SIP side may be offered for a browser's Opus, with their static payload types
/// (in `media.codecs` order when offered).
const TRANSCODABLE: [(u8, Codec); 3] = [(9, Codec::G722), (0, Codec::Pcmu), (8, Codec::Pcma)];

/// Opus parameters towards a browser (RFC 7587 §7): 10 ms frames allowed, FEC welcome.
const OPUS_FMTP: &str = "minptime=10;useinbandfec=1";

/// One encoding's payload type on each leg.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PayloadPair {
    pub sip: u8,
    pub browser: u8,
}

/// The voice codec on each leg of a transcoded stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Transcode {
    pub browser: Codec,
    pub sip: Codec,
}

/// The payload types the relay renumbers between the legs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PayloadMap {
    pub voice: PayloadPair,
    /// RFC 4733 telephone events, when both legs offered them (8 kHz on the
    /// SIP leg; the browser leg's clock is its voice codec's).
    pub dtmf: Option<PayloadPair>,
    /// Set when the voice is transcoded rather than passed through.
    pub transcode: Option<Transcode>,
    /// On a transcoded call, the SIP leg's codec as the browser may send it
    /// untranscoded: an answerer sends from the offer's list, so a browser
    /// that answered the box's offer with Opus may still send the G.711
    /// listed first, which then passes through.
    pub direct: Option<PayloadPair>,
}

impl PayloadMap {
    pub fn to_sip(&self, browser: u8) -> Option<u8> {
        self.pairs().find(|p| p.browser == browser).map(|p| p.sip)
    }

    pub fn to_browser(&self, sip: u8) -> Option<u8> {
        self.pairs().find(|p| p.sip == sip).map(|p| p.browser)
    }

    fn pairs(&self) -> impl Iterator<Item = PayloadPair> {
        std::iter::once(self.voice).chain(self.dtmf).chain(self.direct)
    }

    /// The RTP clock of the browser's telephone events: its voice codec's
    /// (telephone-event/48000 beside Opus on a transcoded call, else /8000).
    pub fn browser_event_clock(&self) -> u32 {
        match self.transcode {
            Some(t) => t.browser.rtp_clock(),
            None => 8000,
        }
    }

    /// Whether a packet from the browser is voice to transcode.
    pub fn transcodes_from_browser(&self, browser: u8) -> bool {
        self.transcode.is_some() && browser == self.voice.browser
    }
}

/// `media.codecs`: the order codecs are offered in, and which may be used;
/// an empty list allows every codec in the peer's order.
#[derive(Clone, Copy, Debug)]
pub struct CodecPreferences<'a>(pub &'a [String]);

impl CodecPreferences<'_> {
    /// Where `name` stands in the preferences; `None` when it may not be used.
    fn rank(&self, name: &str) -> Option<usize> {
        if self.0.is_empty() {
            return Some(0);
        }
        self.0.iter().position(|n| n.eq_ignore_ascii_case(name))
    }

    /// The allowed ones of `maps`, most preferred first (ties keep their order).
    fn order(&self, maps: impl IntoIterator<Item = RtpMap>) -> Vec<RtpMap> {
        let mut ranked: Vec<(usize, RtpMap)> =
            maps.into_iter().filter_map(|m| self.rank(&m.name).map(|rank| (rank, m))).collect();
        ranked.sort_by_key(|(rank, _)| *rank);
        ranked.into_iter().map(|(_, m)| m).collect()
    }
}

fn passes_through(map: &RtpMap) -> bool {
    PASSTHROUGH.iter().any(|(name, rate)| map.name.eq_ignore_ascii_case(name) && map.clock_rate == *rate)
}

fn is_dtmf(map: &RtpMap) -> bool {
    map.name.eq_ignore_ascii_case("telephone-event") && map.clock_rate == 8000
}

/// Telephone events on the clock of a browser's Opus (RFC 4733 §2.3: the
/// event clock is the voice clock).
fn is_dtmf_48k(map: &RtpMap) -> bool {
    map.name.eq_ignore_ascii_case("telephone-event") && map.clock_rate == 48000
}

fn is_opus(map: &RtpMap) -> bool {
    Codec::from_rtpmap(&map.name, map.clock_rate) == Some(Codec::Opus)
}

/// The first audio stream that is not rejected (port 0).
fn audio(sdp: &SessionDescription) -> Option<&Media> {
    sdp.media.iter().find(|m| m.kind == "audio" && m.port != 0)
}

/// A browser's offer: WebRTC media the box must terminate.
pub fn is_browser_offer(sdp: &SessionDescription) -> bool {
    sdp.media.iter().any(Media::is_dtls_srtp)
}

/// A voice codec the box can transcode Opus to, as `a=rtpmap` names it.
fn transcodable_map(payload_type: u8, codec: Codec) -> RtpMap {
    RtpMap { payload_type, name: codec.name().to_string(), clock_rate: codec.rtp_clock(), channels: 1 }
}

/// An offer or answer's plain audio stream (address and port are
/// placeholders the B2BUA anchors: `c=127.0.0.1`, port 9).
fn plain_audio_section(protocol: &str, voice: &[RtpMap], dtmf: Option<&RtpMap>) -> String {
    let formats: Vec<String> = voice.iter().chain(dtmf).map(|m| m.payload_type.to_string()).collect();
    let mut text = format!("m=audio 9 {protocol} {}\r\n", formats.join(" "));
    for map in voice.iter().chain(dtmf) {
        text.push_str(&format!("a=rtpmap:{} {}/{}\r\n", map.payload_type, map.name, map.clock_rate));
    }
    if let Some(dtmf) = dtmf {
        text.push_str(&format!("a=fmtp:{} 0-16\r\n", dtmf.payload_type));
    }
    text.push_str("a=ptime:20\r\na=sendrecv\r\n");
    text
}

fn session_header() -> String {
    format!("v=0\r\no=- {} 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n", rand::random::<u32>())
}

/// The offer the SIP side gets for a browser's offer: one plain audio
/// stream with the browser's passthrough codecs (preferred order), then, if
/// the browser speaks Opus, the G.722 and G.711 laws it lacks (transcoded),
/// and telephone events.
pub fn sip_offer(
    browser: &SessionDescription,
    preferences: CodecPreferences,
) -> Result<SessionDescription, &'static str> {
    let media = audio(browser).ok_or("no audio stream in the WebRTC offer")?;
    let maps = media.rtp_maps();
    let mut voice = preferences.order(maps.iter().filter(|m| passes_through(m)).cloned());
    if maps.iter().any(is_opus) && preferences.rank(Codec::Opus.name()).is_some() {
        let missing = TRANSCODABLE
            .iter()
            .filter(|(_, codec)| !voice.iter().any(|m| m.name.eq_ignore_ascii_case(codec.name())))
            .map(|(pt, codec)| transcodable_map(*pt, *codec));
        voice.extend(preferences.order(missing));
    }
    if voice.is_empty() {
        return Err("the browser offered no audio codec the box can pass through or transcode");
    }
    let dtmf = maps.iter().find(|m| is_dtmf(m));
    let text = session_header() + &plain_audio_section("RTP/AVP", &voice, dtmf);
    SessionDescription::parse(text.as_bytes()).map_err(|_| "could not build the SIP offer")
}

/// The first voice codec of an `a=rtpmap` list (not telephone events or comfort noise).
fn first_voice(maps: &[RtpMap]) -> Option<&RtpMap> {
    maps.iter().find(|m| passes_through(m) || Codec::from_rtpmap(&m.name, m.clock_rate).is_some())
}

/// The codecs the box answers the browser with, given the SIP side's answer:
/// the voice codec the SIP side chose (with the browser's payload type for
/// it) and telephone events when both sides have them; or Opus, transcoded,
/// when the browser did not offer the SIP side's choice.
pub fn browser_codecs(
    browser: &SessionDescription,
    sip_answer: &SessionDescription,
) -> Result<(Vec<AudioCodec>, PayloadMap), &'static str> {
    let offered = audio(browser).ok_or("no audio stream in the WebRTC offer")?.rtp_maps();
    let answered = audio(sip_answer).ok_or("the SIP side declined the audio stream")?.rtp_maps();
    let sip_voice = first_voice(&answered).ok_or("the SIP side answered with no codec the box can use")?;
    if let Some(browser_voice) = offered.iter().find(|b| passes_through(b) && b.same_encoding(sip_voice)) {
        let dtmf = answered.iter().find(|m| is_dtmf(m)).zip(offered.iter().find(|m| is_dtmf(m)));
        let mut codecs = vec![audio_codec(browser_voice, "")];
        codecs.extend(dtmf.map(|(_, browser_dtmf)| audio_codec(browser_dtmf, "0-16")));
        let map = PayloadMap {
            voice: PayloadPair { sip: sip_voice.payload_type, browser: browser_voice.payload_type },
            dtmf: dtmf.map(|(s, b)| PayloadPair { sip: s.payload_type, browser: b.payload_type }),
            transcode: None,
            direct: None,
        };
        return Ok((codecs, map));
    }
    let sip_codec = Codec::from_rtpmap(&sip_voice.name, sip_voice.clock_rate)
        .filter(|c| *c != Codec::Opus)
        .ok_or("the SIP side answered with no codec the browser offered")?;
    let opus = offered.iter().find(|m| is_opus(m)).ok_or("the SIP side answered with no codec the browser offered")?;
    let dtmf = answered.iter().find(|m| is_dtmf(m)).zip(offered.iter().find(|m| is_dtmf_48k(m)));
    let mut codecs = vec![audio_codec(opus, OPUS_FMTP)];
    codecs.extend(dtmf.map(|(_, browser_dtmf)| audio_codec(browser_dtmf, "0-16")));
    let map = PayloadMap {
        voice: PayloadPair { sip: sip_voice.payload_type, browser: opus.payload_type },
        dtmf: dtmf.map(|(s, b)| PayloadPair { sip: s.payload_type, browser: b.payload_type }),
        transcode: Some(Transcode { browser: Codec::Opus, sip: sip_codec }),
        direct: None,
    };
    Ok((codecs, map))
}

fn audio_codec(map: &RtpMap, fmtp: &str) -> AudioCodec {
    AudioCodec {
        name: map.name.clone(),
        payload_type: map.payload_type,
        clock_rate: map.clock_rate,
        channels: map.channels,
        fmtp: fmtp.to_string(),
    }
}

/// What the box offers a browser for a SIP caller's offer: the caller's
/// passthrough codecs (preferred order) with its payload types, so the
/// browser answers with the same numbers; Opus after them when the caller
/// speaks G.711 or G.722 (transcoded if the browser picks it); telephone events.
pub fn browser_offer_codecs(
    sip: &SessionDescription,
    preferences: CodecPreferences,
) -> Result<Vec<AudioCodec>, &'static str> {
    let media = audio(sip).ok_or("no audio stream in the offer")?;
    let maps = media.rtp_maps();
    let mut codecs: Vec<AudioCodec> = preferences
        .order(maps.iter().filter(|m| passes_through(m)).cloned())
        .iter()
        .map(|m| audio_codec(m, ""))
        .collect();
    let transcodable =
        maps.iter().any(|m| TRANSCODABLE.iter().any(|(_, c)| Codec::from_rtpmap(&m.name, m.clock_rate) == Some(*c)));
    if transcodable && preferences.rank(Codec::Opus.name()).is_some() {
        // Opus's usual number unless the caller's offer already uses it.
        let taken = |pt: &u8| media.formats.iter().any(|f| f.parse::<u8>().ok() == Some(*pt));
        if let Some(payload_type) = std::iter::once(111).chain(96..=127).find(|pt| !taken(pt)) {
            let opus = RtpMap { payload_type, name: "opus".into(), clock_rate: 48000, channels: 2 };
            codecs.push(audio_codec(&opus, OPUS_FMTP));
        }
    }
    if codecs.is_empty() {
        return Err("the caller offered no G.711 or G.722 audio");
    }
    codecs.extend(maps.iter().find(|m| is_dtmf(m)).map(|m| audio_codec(m, "0-16")));
    Ok(codecs)
}

/// The SIP caller's answer once the browser answered the box's offer: the
/// codec the browser chose (first in its answer), passed through, or the
/// caller's first G.722/G.711 codec transcoded when the browser chose Opus;
/// telephone events when both have them (not yet on a transcoded call);
/// every other stream of the caller's offer declined (port 0).
pub fn sip_answer(
    sip_offer: &SessionDescription,
    browser_answer: &SessionDescription,
) -> Result<(SessionDescription, PayloadMap), &'static str> {
    let offered = audio(sip_offer).ok_or("no audio stream in the offer")?;
    let chosen = audio(browser_answer).ok_or("the browser declined the audio stream")?.rtp_maps();
    let offered_maps = offered.rtp_maps();
    let browser_voice = first_voice(&chosen).ok_or("the browser answered with no codec the box can use")?;
    let (voice, transcode) =
        if let Some(voice) = offered_maps.iter().find(|s| passes_through(s) && s.same_encoding(browser_voice)) {
            (voice, None)
        } else if is_opus(browser_voice) {
            let (voice, codec) = offered_maps
                .iter()
                .find_map(|m| Codec::from_rtpmap(&m.name, m.clock_rate).filter(|c| *c != Codec::Opus).map(|c| (m, c)))
                .ok_or("the caller offered no G.711 or G.722 to transcode the browser's Opus to")?;
            (voice, Some(Transcode { browser: Codec::Opus, sip: codec }))
        } else {
            return Err("the browser answered with no codec the caller offered");
        };
    let dtmf = offered_maps.iter().find(|m| is_dtmf(m)).filter(|_| transcode.is_none() && chosen.iter().any(is_dtmf));
    let mut text = session_header();
    for media in &sip_offer.media {
        if std::ptr::eq(media, offered) {
            text.push_str(&plain_audio_section(&media.protocol, std::slice::from_ref(voice), dtmf));
        } else {
            // Declined (RFC 3264 §6): same kind and protocol, port 0, one of its formats.
            let format = media.formats.first().map(String::as_str).unwrap_or("0");
            text.push_str(&format!("m={} 0 {} {format}\r\n", media.kind, media.protocol));
        }
    }
    let answer = SessionDescription::parse(text.as_bytes()).map_err(|_| "could not build the SIP answer")?;
    let same = |map: &RtpMap| PayloadPair { sip: map.payload_type, browser: map.payload_type };
    let voice_pair = PayloadPair { sip: voice.payload_type, browser: browser_voice.payload_type };
    // The box offered the caller's codecs with the caller's payload types.
    let direct = transcode.map(|_| same(voice));
    Ok((answer, PayloadMap { voice: voice_pair, dtmf: dtmf.map(same), transcode, direct }))
}

/// Whether a browser's new offer is the same WebRTC session as `before`
/// (same ICE credentials and DTLS fingerprint): then only the stream's
/// direction can have changed — hold or resume —, which the box takes
/// without touching its WebRTC session.
pub fn same_session(before: &SessionDescription, offer: &SessionDescription) -> bool {
    ["ice-ufrag", "ice-pwd", "fingerprint"].iter().all(|name| {
        before.audio_attribute(name).is_some() && before.audio_attribute(name) == offer.audio_attribute(name)
    })
}

/// The direction an offer asks for on its first audio stream.
pub fn offered_direction(offer: &SessionDescription) -> Direction {
    audio(offer).and_then(Media::direction).unwrap_or(Direction::SendRecv)
}

/// A description the box sent before, saying `direction` now (next version).
pub fn redirected(sdp: &[u8], direction: Direction) -> Result<Vec<u8>, &'static str> {
    let mut sdp = SessionDescription::parse(sdp).map_err(|_| "the box's own SDP does not parse")?;
    let media = sdp.media.iter_mut().find(|m| m.kind == "audio" && m.port != 0).ok_or("no audio stream")?;
    media.set_direction(direction);
    sdp.bump_version();
    Ok(sdp.to_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    const CHROMIUM_OFFER: &str = include_str!("../../webrtc/tests/chromium-offer.sdp");

    #[test]
    fn hold_is_a_direction_change_of_the_same_session() {
        let before = SessionDescription::parse(CHROMIUM_OFFER.as_bytes()).expect("offer");
        let hold =
            SessionDescription::parse(CHROMIUM_OFFER.replace("a=sendrecv", "a=sendonly").as_bytes()).expect("hold");
        assert!(same_session(&before, &hold));
        assert_eq!(offered_direction(&hold), Direction::SendOnly);
        assert_eq!(offered_direction(&before), Direction::SendRecv);
        let restart = SessionDescription::parse(CHROMIUM_OFFER.replace("a=ice-ufrag:", "a=ice-ufrag:x").as_bytes())
            .expect("ICE restart");
        assert!(!same_session(&before, &restart), "an ICE restart is not a hold");
        let plain = b"v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\ns=-\r\nc=IN IP4 192.0.2.1\r\nt=0 0\r\nm=audio 4000 RTP/AVP 0\r\na=sendrecv\r\n";
        let held = String::from_utf8(redirected(plain, Direction::RecvOnly).expect("redirected")).expect("utf-8");
        assert!(held.contains("a=recvonly") && held.contains("o=- 1 2 IN IP4"), "{held}");
    }

    fn preferences(names: &[&str]) -> Vec<String> {
        names.iter().map(|n| n.to_string()).collect()
    }

    /// Everything but Opus: no transcoding.
    fn no_opus() -> Vec<String> {
        preferences(&["G722", "PCMU", "PCMA"])
    }

    #[test]
    fn the_sip_side_is_offered_the_browsers_passthrough_codecs() {
        let browser = SessionDescription::parse(CHROMIUM_OFFER.as_bytes()).expect("offer");
        assert!(is_browser_offer(&browser));
        let offer = sip_offer(&browser, CodecPreferences(&[])).expect("sip offer");
        assert!(!is_browser_offer(&offer));
        assert_eq!(offer.media.len(), 1);
        assert_eq!(offer.media[0].protocol, "RTP/AVP");
        // Chromium's order (G722 before PCMU/PCMA); telephone-event/8000, not /48000.
        assert_eq!(offer.media[0].formats, ["9", "0", "8", "126"]);
        assert_eq!(offer.media[0].fmtp(126), Some("0-16"));
    }

    #[test]
    fn the_browser_is_answered_with_the_codec_the_sip_side_chose() {
        let browser = SessionDescription::parse(CHROMIUM_OFFER.as_bytes()).expect("offer");
        let answer = SessionDescription::parse(
            b"v=0\r\nc=IN IP4 192.0.2.5\r\nm=audio 4000 RTP/AVP 8 101\r\na=rtpmap:101 telephone-event/8000\r\n",
        )
        .expect("answer");
        let (codecs, map) = browser_codecs(&browser, &answer).expect("codecs");
        assert_eq!(
            codecs.iter().map(|c| (c.name.as_str(), c.payload_type)).collect::<Vec<_>>(),
            [("PCMA", 8), ("telephone-event", 126)]
        );
        assert_eq!(map.to_sip(126), Some(101));
        assert_eq!(map.to_browser(101), Some(126));
        assert_eq!(map.to_browser(8), Some(8));
        assert_eq!(map.to_browser(13), None);
    }

    #[test]
    fn a_sip_caller_is_answered_with_the_codec_the_browser_chose() {
        let caller = SessionDescription::parse(
            b"v=0\r\nc=IN IP4 192.0.2.5\r\nm=audio 4000 RTP/AVP 18 0 8 101\r\na=rtpmap:101 telephone-event/8000\r\n\
m=video 4002 RTP/AVP 96\r\na=rtpmap:96 H264/90000\r\n",
        )
        .expect("offer");
        let codecs = browser_offer_codecs(&caller, CodecPreferences(&no_opus())).expect("codecs");
        assert_eq!(
            codecs.iter().map(|c| (c.name.as_str(), c.payload_type)).collect::<Vec<_>>(),
            [("PCMU", 0), ("PCMA", 8), ("telephone-event", 101)]
        );
        let browser = SessionDescription::parse(
            b"v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 8 101\r\na=rtpmap:101 telephone-event/8000\r\n",
        )
        .expect("answer");
        let (answer, map) = sip_answer(&caller, &browser).expect("answer");
        assert_eq!(answer.media.len(), 2, "one m= line per offered stream");
        assert_eq!(answer.media[0].formats, ["8", "101"]);
        assert_eq!(answer.media[0].protocol, "RTP/AVP");
        assert_eq!((answer.media[1].kind.as_str(), answer.media[1].port), ("video", 0));
        assert_eq!(map.to_browser(101), Some(101));
        assert_eq!(map.to_sip(8), Some(8));
        let g729_only = SessionDescription::parse(b"v=0\r\nm=audio 4000 RTP/AVP 18\r\n").expect("offer");
        assert!(browser_offer_codecs(&g729_only, CodecPreferences(&[])).is_err());
    }

    #[test]
    fn what_cannot_pass_through_is_refused_with_a_reason() {
        let opus_only =
            SessionDescription::parse(b"v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=rtpmap:111 opus/48000/2\r\n")
                .expect("offer");
        assert!(sip_offer(&opus_only, CodecPreferences(&no_opus())).is_err());
        let browser = SessionDescription::parse(CHROMIUM_OFFER.as_bytes()).expect("offer");
        let g729 = SessionDescription::parse(b"v=0\r\nm=audio 4000 RTP/AVP 18\r\n").expect("answer");
        assert!(browser_codecs(&browser, &g729).is_err());
        let declined = SessionDescription::parse(b"v=0\r\nm=audio 0 RTP/AVP 0\r\n").expect("answer");
        assert!(browser_codecs(&browser, &declined).is_err());
    }

    #[test]
    fn codec_preferences_order_and_filter_the_sip_offer() {
        let browser = SessionDescription::parse(CHROMIUM_OFFER.as_bytes()).expect("offer");
        let pcma_first = preferences(&["PCMA", "PCMU"]);
        let offer = sip_offer(&browser, CodecPreferences(&pcma_first)).expect("sip offer");
        // G722 is not allowed; Opus is not either, so nothing is added for it.
        assert_eq!(offer.media[0].formats, ["8", "0", "126"]);
    }

    #[test]
    fn a_browser_with_only_opus_is_transcoded_to_the_g722_or_g711_the_sip_side_chose() {
        let opus_only = SessionDescription::parse(
            b"v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111 110 126\r\na=fingerprint:sha-256 AA\r\n\
a=rtpmap:111 opus/48000/2\r\na=rtpmap:110 telephone-event/48000\r\na=rtpmap:126 telephone-event/8000\r\n",
        )
        .expect("offer");
        let all = preferences(&["opus", "G722", "PCMU", "PCMA"]);
        let offer = sip_offer(&opus_only, CodecPreferences(&all)).expect("sip offer");
        assert_eq!(offer.media[0].formats, ["9", "0", "8", "126"], "G.722 and G.711 to transcode to, then DTMF");
        let answer = SessionDescription::parse(
            b"v=0\r\nc=IN IP4 192.0.2.5\r\nm=audio 4000 RTP/AVP 8 101\r\na=rtpmap:101 telephone-event/8000\r\n",
        )
        .expect("answer");
        let (codecs, map) = browser_codecs(&opus_only, &answer).expect("codecs");
        assert_eq!(
            codecs.iter().map(|c| (c.name.as_str(), c.payload_type, c.clock_rate)).collect::<Vec<_>>(),
            [("opus", 111, 48000), ("telephone-event", 110, 48000)]
        );
        assert_eq!(codecs[0].fmtp, OPUS_FMTP);
        assert_eq!(map.transcode, Some(Transcode { browser: Codec::Opus, sip: Codec::Pcma }));
        assert_eq!(map.to_sip(111), Some(8));
        assert_eq!(map.to_sip(110), Some(101));
        // A browser that offered the SIP side's codec gets it passed through, Opus or not.
        let chromium = SessionDescription::parse(CHROMIUM_OFFER.as_bytes()).expect("offer");
        let (_, map) = browser_codecs(&chromium, &answer).expect("codecs");
        assert_eq!(map.transcode, None);
        // A wideband phone that picks G.722: Opus <-> G.722, wideband both ways.
        let g722 =
            SessionDescription::parse(b"v=0\r\nc=IN IP4 192.0.2.5\r\nm=audio 4000 RTP/AVP 9\r\n").expect("answer");
        let (_, map) = browser_codecs(&opus_only, &g722).expect("codecs");
        assert_eq!(map.transcode, Some(Transcode { browser: Codec::Opus, sip: Codec::G722 }));
        assert_eq!(map.to_sip(111), Some(9));
    }

    #[test]
    fn a_browser_callee_that_picks_opus_is_transcoded_to_the_callers_g711() {
        let caller = SessionDescription::parse(
            b"v=0\r\nc=IN IP4 192.0.2.5\r\nm=audio 4000 RTP/AVP 0 8 101\r\na=rtpmap:101 telephone-event/8000\r\n",
        )
        .expect("offer");
        let all = preferences(&["PCMU", "PCMA", "opus"]);
        let codecs = browser_offer_codecs(&caller, CodecPreferences(&all)).expect("codecs");
        assert_eq!(
            codecs.iter().map(|c| (c.name.as_str(), c.payload_type)).collect::<Vec<_>>(),
            [("PCMU", 0), ("PCMA", 8), ("opus", 111), ("telephone-event", 101)]
        );
        let browser = SessionDescription::parse(
            b"v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111 101\r\na=rtpmap:111 opus/48000/2\r\n\
a=rtpmap:101 telephone-event/8000\r\n",
        )
        .expect("answer");
        let (answer, map) = sip_answer(&caller, &browser).expect("answer");
        assert_eq!(answer.media[0].formats, ["0"], "the caller's first G.711, no DTMF on a transcoded call yet");
        assert_eq!(map.transcode, Some(Transcode { browser: Codec::Opus, sip: Codec::Pcmu }));
        assert_eq!(map.voice, PayloadPair { sip: 0, browser: 111 });
        // Chromium answers Opus but may send the offer's first codec: PCMU passes through.
        assert_eq!(map.to_sip(0), Some(0));
        assert!(map.transcodes_from_browser(111) && !map.transcodes_from_browser(0));
        assert_eq!(map.to_browser(0), Some(111), "what the caller sends is transcoded to Opus");
        // The caller's own payload type 111 keeps Opus off it.
        let taken = SessionDescription::parse(
            b"v=0\r\nc=IN IP4 192.0.2.5\r\nm=audio 4000 RTP/AVP 0 111\r\na=rtpmap:111 telephone-event/8000\r\n",
        )
        .expect("offer");
        let codecs = browser_offer_codecs(&taken, CodecPreferences(&all)).expect("codecs");
        assert_eq!(codecs.iter().find(|c| c.name == "opus").map(|c| c.payload_type), Some(96));
    }
}
