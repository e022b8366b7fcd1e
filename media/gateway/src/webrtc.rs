//! How a browser's WebRTC audio meets a SIP leg's plain RTP: the box
//! terminates the browser's DTLS-SRTP (see `branchgate_webrtc`) and offers
//! the SIP side a plain `RTP/AVP` stream with the codecs that need no
//! transcoding (G.711 and G.722 are WebRTC codecs too), then answers the
//! browser with the codec the SIP side chose. Payload types are renumbered
//! between the legs as each side named them.

use branchgate_sdp::{Media, RtpMap, SessionDescription};
use branchgate_webrtc::AudioCodec;

/// Encodings a browser and a plain SIP phone both speak: passed through as they are.
const PASSTHROUGH: [(&str, u32); 3] = [("PCMU", 8000), ("PCMA", 8000), ("G722", 8000)];

/// One encoding's payload type on each leg.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PayloadPair {
    pub sip: u8,
    pub browser: u8,
}

/// The payload types the relay renumbers between the legs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PayloadMap {
    pub voice: PayloadPair,
    /// RFC 4733 telephone events at 8 kHz, when both legs offered them.
    pub dtmf: Option<PayloadPair>,
}

impl PayloadMap {
    pub fn to_sip(&self, browser: u8) -> Option<u8> {
        self.pairs().find(|p| p.browser == browser).map(|p| p.sip)
    }

    pub fn to_browser(&self, sip: u8) -> Option<u8> {
        self.pairs().find(|p| p.sip == sip).map(|p| p.browser)
    }

    fn pairs(&self) -> impl Iterator<Item = PayloadPair> {
        std::iter::once(self.voice).chain(self.dtmf)
    }
}

fn passes_through(map: &RtpMap) -> bool {
    PASSTHROUGH.iter().any(|(name, rate)| map.name.eq_ignore_ascii_case(name) && map.clock_rate == *rate)
}

fn is_dtmf(map: &RtpMap) -> bool {
    map.name.eq_ignore_ascii_case("telephone-event") && map.clock_rate == 8000
}

/// The first audio stream that is not rejected (port 0).
fn audio(sdp: &SessionDescription) -> Option<&Media> {
    sdp.media.iter().find(|m| m.kind == "audio" && m.port != 0)
}

/// A browser's offer: WebRTC media the box must terminate.
pub fn is_browser_offer(sdp: &SessionDescription) -> bool {
    sdp.media.iter().any(Media::is_dtls_srtp)
}

/// The offer the SIP side gets for a browser's offer: one plain audio
/// stream with the browser's passthrough codecs in its order, and telephone
/// events. Address and port are placeholders the B2BUA anchors.
pub fn sip_offer(browser: &SessionDescription) -> Result<SessionDescription, &'static str> {
    let media = audio(browser).ok_or("no audio stream in the WebRTC offer")?;
    let voice: Vec<RtpMap> = media.rtp_maps().into_iter().filter(passes_through).collect();
    if voice.is_empty() {
        return Err("the browser offered no G.711 or G.722 audio (transcoding is not available yet)");
    }
    let dtmf = media.rtp_maps().into_iter().find(is_dtmf);
    let formats: Vec<String> = voice.iter().chain(dtmf.iter()).map(|m| m.payload_type.to_string()).collect();
    // 127.0.0.1 and port 9 are only placeholders: anchoring writes the box's address and relay port.
    let mut text = format!(
        "v=0\r\no=- {session} 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 9 RTP/AVP {}\r\n",
        formats.join(" "),
        session = rand::random::<u32>(),
    );
    for map in voice.iter().chain(dtmf.iter()) {
        text.push_str(&format!("a=rtpmap:{} {}/{}\r\n", map.payload_type, map.name, map.clock_rate));
    }
    if let Some(dtmf) = &dtmf {
        text.push_str(&format!("a=fmtp:{} 0-16\r\n", dtmf.payload_type));
    }
    text.push_str("a=ptime:20\r\na=sendrecv\r\n");
    SessionDescription::parse(text.as_bytes()).map_err(|_| "could not build the SIP offer")
}

/// The codecs the box answers the browser with, given the SIP side's answer:
/// the voice codec the SIP side chose (with the browser's payload type for
/// it) and telephone events when both sides have them.
pub fn browser_codecs(
    browser: &SessionDescription,
    sip_answer: &SessionDescription,
) -> Result<(Vec<AudioCodec>, PayloadMap), &'static str> {
    let offered = audio(browser).ok_or("no audio stream in the WebRTC offer")?.rtp_maps();
    let answered = audio(sip_answer).ok_or("the SIP side declined the audio stream")?.rtp_maps();
    let voice = answered
        .iter()
        .filter(|m| passes_through(m))
        .find_map(|sip| offered.iter().find(|b| b.same_encoding(sip)).map(|b| (sip, b)))
        .ok_or("the SIP side answered with no codec the browser offered")?;
    let dtmf = answered.iter().find(|m| is_dtmf(m)).zip(offered.iter().find(|m| is_dtmf(m)));
    let mut codecs = vec![audio_codec(voice.1, "")];
    if let Some((_, browser_dtmf)) = dtmf {
        codecs.push(audio_codec(browser_dtmf, "0-16"));
    }
    let map = PayloadMap {
        voice: PayloadPair { sip: voice.0.payload_type, browser: voice.1.payload_type },
        dtmf: dtmf.map(|(s, b)| PayloadPair { sip: s.payload_type, browser: b.payload_type }),
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
/// passthrough codecs in its order, with its payload types (so the browser
/// answers with the same numbers), and telephone events.
pub fn browser_offer_codecs(sip: &SessionDescription) -> Result<Vec<AudioCodec>, &'static str> {
    let maps = audio(sip).ok_or("no audio stream in the offer")?.rtp_maps();
    let mut codecs: Vec<AudioCodec> = maps.iter().filter(|m| passes_through(m)).map(|m| audio_codec(m, "")).collect();
    if codecs.is_empty() {
        return Err("the caller offered no G.711 or G.722 audio (transcoding is not available yet)");
    }
    codecs.extend(maps.iter().find(|m| is_dtmf(m)).map(|m| audio_codec(m, "0-16")));
    Ok(codecs)
}

/// The SIP caller's answer once the browser answered the box's offer: the
/// codec the browser chose (first in its answer), telephone events when both
/// have them; every other stream of the caller's offer declined (port 0).
/// Address and port are placeholders the B2BUA anchors.
pub fn sip_answer(
    sip_offer: &SessionDescription,
    browser_answer: &SessionDescription,
) -> Result<(SessionDescription, PayloadMap), &'static str> {
    let offered = audio(sip_offer).ok_or("no audio stream in the offer")?;
    let chosen = audio(browser_answer).ok_or("the browser declined the audio stream")?.rtp_maps();
    let offered_maps = offered.rtp_maps();
    let voice = chosen
        .iter()
        .filter(|m| passes_through(m))
        .find_map(|b| offered_maps.iter().find(|s| s.same_encoding(b)))
        .ok_or("the browser answered with no codec the caller offered")?;
    let dtmf = offered_maps.iter().find(|m| is_dtmf(m)).filter(|_| chosen.iter().any(is_dtmf));
    let mut text =
        format!("v=0\r\no=- {} 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n", rand::random::<u32>());
    for media in &sip_offer.media {
        if std::ptr::eq(media, offered) {
            let formats: Vec<String> = std::iter::once(voice).chain(dtmf).map(|m| m.payload_type.to_string()).collect();
            text.push_str(&format!("m=audio 9 {} {}\r\n", media.protocol, formats.join(" ")));
            for map in std::iter::once(voice).chain(dtmf) {
                text.push_str(&format!("a=rtpmap:{} {}/{}\r\n", map.payload_type, map.name, map.clock_rate));
            }
            if let Some(dtmf) = dtmf {
                text.push_str(&format!("a=fmtp:{} 0-16\r\n", dtmf.payload_type));
            }
            text.push_str("a=ptime:20\r\na=sendrecv\r\n");
        } else {
            // Declined (RFC 3264 §6): same kind and protocol, port 0, one of its formats.
            let format = media.formats.first().map(String::as_str).unwrap_or("0");
            text.push_str(&format!("m={} 0 {} {format}\r\n", media.kind, media.protocol));
        }
    }
    let answer = SessionDescription::parse(text.as_bytes()).map_err(|_| "could not build the SIP answer")?;
    let same = |map: &RtpMap| PayloadPair { sip: map.payload_type, browser: map.payload_type };
    Ok((answer, PayloadMap { voice: same(voice), dtmf: dtmf.map(same) }))
}

#[cfg(test)]
mod tests {
    use super::*;

    const CHROMIUM_OFFER: &str = include_str!("../../webrtc/tests/chromium-offer.sdp");

    #[test]
    fn the_sip_side_is_offered_the_browsers_passthrough_codecs() {
        let browser = SessionDescription::parse(CHROMIUM_OFFER.as_bytes()).expect("offer");
        assert!(is_browser_offer(&browser));
        let offer = sip_offer(&browser).expect("sip offer");
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
        let codecs = browser_offer_codecs(&caller).expect("codecs");
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
        assert!(browser_offer_codecs(&g729_only).is_err());
    }

    #[test]
    fn what_cannot_pass_through_is_refused_with_a_reason() {
        let opus_only =
            SessionDescription::parse(b"v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=rtpmap:111 opus/48000/2\r\n")
                .expect("offer");
        assert!(sip_offer(&opus_only).is_err());
        let browser = SessionDescription::parse(CHROMIUM_OFFER.as_bytes()).expect("offer");
        let g729 = SessionDescription::parse(b"v=0\r\nm=audio 4000 RTP/AVP 18\r\n").expect("answer");
        assert!(browser_codecs(&browser, &g729).is_err());
        let declined = SessionDescription::parse(b"v=0\r\nm=audio 0 RTP/AVP 0\r\n").expect("answer");
        assert!(browser_codecs(&browser, &declined).is_err());
    }
}
