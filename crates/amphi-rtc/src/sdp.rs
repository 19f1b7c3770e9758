//! A first look at a WHIP offer, before it reaches str0m: is it SDP at all,
//! does it carry Opus audio, can the peer receive audio back.

use crate::RtcError;

/// Largest offer accepted.
pub const MAX_OFFER: usize = 32 * 1024;

/// What the pre-check learned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OfferSummary {
    /// An audio m-line lists Opus at 48 kHz.
    pub has_opus: bool,
    /// That audio m-line is sendrecv (the peer will play return audio).
    pub receives_audio: bool,
}

/// Checks the shape of an offer and summarises it. Never panics.
pub fn summarize_offer(sdp: &str) -> Result<OfferSummary, RtcError> {
    if sdp.len() > MAX_OFFER {
        return Err(RtcError::BadSdp(format!(
            "offer larger than {MAX_OFFER} bytes"
        )));
    }
    let mut lines = sdp.lines().map(str::trim_end).filter(|l| !l.is_empty());
    if lines.next() != Some("v=0") {
        return Err(RtcError::BadSdp("an SDP offer starts with v=0".into()));
    }
    if let Some(bad) = sdp
        .lines()
        .map(str::trim_end)
        .find(|l| !l.is_empty() && (l.len() < 2 || l.as_bytes()[1] != b'='))
    {
        let shown: String = bad.chars().take(40).collect();
        return Err(RtcError::BadSdp(format!("not an SDP line: {shown:?}")));
    }
    let mut in_audio = false;
    let mut audio_has_opus = false;
    let mut audio_dir_recv = true;
    let mut out = OfferSummary {
        has_opus: false,
        receives_audio: false,
    };
    let close_section = |in_audio: bool, has_opus: bool, recv: bool, out: &mut OfferSummary| {
        if in_audio && has_opus {
            out.has_opus = true;
            out.receives_audio |= recv;
        }
    };
    for l in sdp.lines().map(str::trim_end) {
        if let Some(m) = l.strip_prefix("m=") {
            close_section(in_audio, audio_has_opus, audio_dir_recv, &mut out);
            in_audio = m.starts_with("audio ");
            audio_has_opus = false;
            audio_dir_recv = true;
        } else if in_audio {
            if let Some(map) = l.strip_prefix("a=rtpmap:") {
                let codec = map
                    .split_whitespace()
                    .nth(1)
                    .unwrap_or("")
                    .to_ascii_lowercase();
                if codec.starts_with("opus/48000") {
                    audio_has_opus = true;
                }
            } else if l == "a=sendonly" || l == "a=recvonly" || l == "a=inactive" {
                audio_dir_recv = false;
            } else if l == "a=sendrecv" {
                audio_dir_recv = true;
            }
        }
    }
    close_section(in_audio, audio_has_opus, audio_dir_recv, &mut out);
    if !out.has_opus {
        return Err(RtcError::NoOpus);
    }
    Ok(out)
}

/// The answer without `a=ice-options:trickle`.
///
/// str0m always writes it, but amphi is ICE-lite with every candidate in
/// the answer and answers WHIP `PATCH` with 405; RFC 9725 lets a server
/// refuse trickle that way only if its answer does not claim it. Other ICE
/// options on the line are kept; a line left empty is dropped.
pub fn without_trickle(answer: &str) -> String {
    let mut out = String::with_capacity(answer.len());
    for line in answer.split_inclusive('\n') {
        let body = line.trim_end_matches(['\r', '\n']);
        if let Some(opts) = body.strip_prefix("a=ice-options:") {
            let kept: Vec<&str> = opts
                .split_whitespace()
                .filter(|o| !o.eq_ignore_ascii_case("trickle"))
                .collect();
            if !kept.is_empty() {
                out.push_str("a=ice-options:");
                out.push_str(&kept.join(" "));
                out.push_str("\r\n");
            }
            continue;
        }
        out.push_str(line);
    }
    out
}

/// The answer's Opus parameters set to what lets a speaker's packets be
/// the program as they came (pass-through, see amphi-media's mixer): mono
/// (`stereo=0`, `sprop-stereo=0`), at most `max_bitrate` bit/s on average
/// (the program's bitrate), in-band FEC, and 20 ms packets (`a=ptime:20`,
/// `a=maxptime:20`). DTX is not asked for: the jitter buffer would hold a
/// pause's sparse DTX packets ahead of the speech that follows. They are the receiver's
/// preferences (RFC 7587 §6.1): a sender that ignores them (a stereo or
/// 510 kbit/s source) is still taken, and mixed.
pub fn with_opus_preferences(answer: &str, max_bitrate: u32) -> String {
    with_opus_preferences_for(answer, max_bitrate, false)
}

/// [`with_opus_preferences`], asking a music space's sources for stereo
/// (`stereo=1; sprop-stereo=1`) if `stereo`.
pub fn with_opus_preferences_for(answer: &str, max_bitrate: u32, stereo: bool) -> String {
    let st = if stereo { "1" } else { "0" };
    let mut opus_pts: Vec<&str> = Vec::new();
    for line in answer.lines() {
        if let Some(rest) = line.strip_prefix("a=rtpmap:")
            && let Some((pt, codec)) = rest.split_once(' ')
            && codec.to_ascii_lowercase().starts_with("opus/48000")
        {
            opus_pts.push(pt);
        }
    }
    let mut out = String::with_capacity(answer.len() + 128);
    let mut ptime_needed = false;
    let flush_ptime = |out: &mut String, needed: &mut bool| {
        if std::mem::take(needed) {
            out.push_str("a=ptime:20\r\na=maxptime:20\r\n");
        }
    };
    for line in answer.split_inclusive('\n') {
        let body = line.trim_end_matches(['\r', '\n']);
        if body.starts_with("m=") {
            flush_ptime(&mut out, &mut ptime_needed);
        }
        if body.starts_with("a=ptime:") || body.starts_with("a=maxptime:") {
            continue;
        }
        if let Some(rest) = body.strip_prefix("a=fmtp:")
            && let Some((pt, params)) = rest.split_once(' ')
            && opus_pts.contains(&pt)
        {
            let mut kept: Vec<String> = params
                .split(';')
                .map(str::trim)
                .filter(|p| {
                    let key = p.split('=').next().unwrap_or("").to_ascii_lowercase();
                    !p.is_empty()
                        && ![
                            "stereo",
                            "sprop-stereo",
                            "useinbandfec",
                            "usedtx",
                            "maxaveragebitrate",
                            "maxplaybackrate",
                        ]
                        .contains(&key.as_str())
                })
                .map(str::to_owned)
                .collect();
            kept.extend([
                format!("stereo={st}"),
                format!("sprop-stereo={st}"),
                "useinbandfec=1".to_owned(),
                format!("maxaveragebitrate={max_bitrate}"),
            ]);
            out.push_str("a=fmtp:");
            out.push_str(pt);
            out.push(' ');
            out.push_str(&kept.join(";"));
            out.push_str("\r\n");
            ptime_needed = true;
            continue;
        }
        out.push_str(line);
    }
    flush_ptime(&mut out, &mut ptime_needed);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_music_space_asks_for_stereo_at_the_music_bitrate() {
        let answer = "v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=rtpmap:111 opus/48000/2\r\na=fmtp:111 minptime=10;stereo=0\r\n";
        let out = with_opus_preferences_for(answer, 128_000, true);
        assert!(
            out.contains("a=fmtp:111 minptime=10;stereo=1;sprop-stereo=1;useinbandfec=1;maxaveragebitrate=128000\r\n"),
            "{out}"
        );
    }

    #[test]
    fn the_answer_asks_for_mono_20ms_packets_at_the_programs_bitrate() {
        let answer = "v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=mid:0\r\na=rtpmap:111 opus/48000/2\r\na=fmtp:111 minptime=10;useinbandfec=0;stereo=1\r\na=ptime:60\r\na=sendrecv\r\n";
        let out = with_opus_preferences(answer, 32_000);
        assert!(
            out.contains("a=fmtp:111 minptime=10;stereo=0;sprop-stereo=0;useinbandfec=1;maxaveragebitrate=32000\r\n"),
            "{out}"
        );
        assert_eq!(out.matches("a=ptime:").count(), 1, "{out}");
        assert!(out.contains("a=ptime:20\r\na=maxptime:20\r\n"));
        assert!(out.ends_with("a=sendrecv\r\na=ptime:20\r\na=maxptime:20\r\n"));
        assert!(!out.contains("ptime:60"));
        // Nothing else changes, and an answer without Opus is left alone.
        let pcmu = "v=0\r\nm=audio 9 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\na=fmtp:0 x=1\r\n";
        assert_eq!(with_opus_preferences(pcmu, 32_000), pcmu);
    }

    const OFFER: &str = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=sendrecv\r\na=rtpmap:111 opus/48000/2\r\n";

    #[test]
    fn recognises_opus_and_direction() {
        assert_eq!(
            summarize_offer(OFFER).unwrap(),
            OfferSummary {
                has_opus: true,
                receives_audio: true
            }
        );
        let sendonly = OFFER.replace("a=sendrecv", "a=sendonly");
        assert!(!summarize_offer(&sendonly).unwrap().receives_audio);
        let pcmu = OFFER.replace("opus/48000/2", "PCMU/8000");
        assert!(matches!(summarize_offer(&pcmu), Err(RtcError::NoOpus)));
        let video = OFFER.replace("m=audio", "m=video");
        assert!(matches!(summarize_offer(&video), Err(RtcError::NoOpus)));
        assert!(matches!(summarize_offer("hello"), Err(RtcError::BadSdp(_))));
        assert!(matches!(
            summarize_offer("v=0\r\ngarbage\r\n"),
            Err(RtcError::BadSdp(_))
        ));
    }

    #[test]
    fn trickle_is_not_claimed() {
        let answer = "v=0\r\na=ice-lite\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=ice-ufrag:u\r\na=ice-options:trickle\r\na=setup:passive\r\nm=audio 9 X 0\r\na=ice-options:trickle renomination\r\n";
        let out = without_trickle(answer);
        assert!(!out.contains("trickle"), "{out}");
        assert!(out.contains("a=ice-options:renomination\r\n"), "{out}");
        assert!(
            out.contains("a=ice-ufrag:u\r\na=setup:passive\r\n"),
            "{out}"
        );
        assert_eq!(out.lines().count(), answer.lines().count() - 1);
    }

    proptest! {
        #[test]
        fn never_panics(s in "(v=0\r\n)?[ -~\r\n]{0,400}") {
            let _ = summarize_offer(&s);
        }
    }
}
