//! CMAF/fMP4 boxes for one Opus track, per "Encapsulation of Opus in ISO
//! Base Media File Format": an init segment (`ftyp` + `moov` with an `Opus`
//! sample entry and its `dOps`), and fragments (`moof` + `mdat`) of frames.
//!
//! The box writer is a dozen lines: a box is written with a placeholder
//! size that is patched once its body is known, so nesting is just closures.

use amphi_core::Frame;
use bytes::{BufMut, Bytes, BytesMut};

/// Timescale of the track: one tick per sample at 48 kHz, so a frame's
/// decode time is exactly `seq × 960`.
pub const TIMESCALE: u32 = 48_000;
/// Ticks per program frame (20 ms at 48 kHz).
pub const FRAME_DURATION: u32 = amphi_core::frame::FRAME_SAMPLES;
/// The only track of every init segment and fragment.
const TRACK: u32 = 1;

/// What the init segment tells a decoder about the stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InitConfig {
    /// Media timescale. Fragments count in 48 kHz samples, so this must be
    /// [`TIMESCALE`] for them to play at the right speed.
    pub timescale: u32,
    /// Output channels: 1 or 2 (channel mapping family 0; other values are
    /// clamped into that range because family 0 cannot describe them).
    pub channels: u8,
    /// Samples the decoder drops at the start (the encoder's look-ahead:
    /// 312 for libopus at 48 kHz).
    pub pre_skip: u16,
}

impl Default for InitConfig {
    fn default() -> Self {
        InitConfig {
            timescale: TIMESCALE,
            channels: 1,
            pre_skip: 312,
        }
    }
}

/// Writes a box: size, type, then whatever `body` writes; the size is
/// patched afterwards so callers never count bytes by hand.
fn bx(out: &mut BytesMut, kind: &[u8; 4], body: impl FnOnce(&mut BytesMut)) {
    let start = out.len();
    out.put_u32(0);
    out.put_slice(kind);
    body(out);
    // Our boxes are at most a few hundred KB (one segment of Opus), far
    // below 4 GiB, so the 32-bit size field always suffices.
    let size = u32::try_from(out.len() - start).unwrap_or(u32::MAX);
    out[start..start + 4].copy_from_slice(&size.to_be_bytes());
}

/// A full box: a box whose body starts with version and flags.
fn full(
    out: &mut BytesMut,
    kind: &[u8; 4],
    version: u8,
    flags: u32,
    body: impl FnOnce(&mut BytesMut),
) {
    bx(out, kind, |o| {
        o.put_u32((u32::from(version) << 24) | (flags & 0x00ff_ffff));
        body(o);
    });
}

/// The identity transformation matrix of `mvhd` and `tkhd`.
const MATRIX: [u32; 9] = [0x0001_0000, 0, 0, 0, 0x0001_0000, 0, 0, 0, 0x4000_0000];

/// The init segment of the program track (mono, 48 kHz, pre-skip 312).
pub fn init_segment() -> Bytes {
    init_segment_for(&InitConfig::default())
}

/// The init segment (ftyp + moov) for `cfg`: durations are zero and the
/// sample tables empty because every sample lives in a fragment.
pub fn init_segment_for(cfg: &InitConfig) -> Bytes {
    let channels = cfg.channels.clamp(1, 2);
    let mut o = BytesMut::with_capacity(1024);
    bx(&mut o, b"ftyp", |o| {
        o.put_slice(b"iso6");
        o.put_u32(0);
        for brand in [b"iso6", b"cmfc", b"mp41", b"dash"] {
            o.put_slice(brand);
        }
    });
    bx(&mut o, b"moov", |o| {
        full(o, b"mvhd", 0, 0, |o| {
            o.put_u32(0); // creation time
            o.put_u32(0); // modification time
            o.put_u32(cfg.timescale);
            o.put_u32(0); // duration: unknown, fragmented
            o.put_u32(0x0001_0000); // rate 1.0
            o.put_u16(0x0100); // volume 1.0
            o.put_bytes(0, 10);
            MATRIX.iter().for_each(|m| o.put_u32(*m));
            o.put_bytes(0, 24); // pre_defined
            o.put_u32(TRACK + 1); // next track id
        });
        bx(o, b"trak", |o| {
            // enabled | in movie
            full(o, b"tkhd", 0, 0x3, |o| {
                o.put_u32(0);
                o.put_u32(0);
                o.put_u32(TRACK);
                o.put_u32(0);
                o.put_u32(0); // duration
                o.put_bytes(0, 8);
                o.put_u16(0); // layer
                o.put_u16(0); // alternate group
                o.put_u16(0x0100); // volume: an audio track
                o.put_u16(0);
                MATRIX.iter().for_each(|m| o.put_u32(*m));
                o.put_u32(0); // width
                o.put_u32(0); // height
            });
            bx(o, b"mdia", |o| {
                full(o, b"mdhd", 0, 0, |o| {
                    o.put_u32(0);
                    o.put_u32(0);
                    o.put_u32(cfg.timescale);
                    o.put_u32(0);
                    o.put_u16(0x55c4); // language "und"
                    o.put_u16(0);
                });
                full(o, b"hdlr", 0, 0, |o| {
                    o.put_u32(0);
                    o.put_slice(b"soun");
                    o.put_bytes(0, 12);
                    o.put_slice(b"amphi program\0");
                });
                bx(o, b"minf", |o| {
                    full(o, b"smhd", 0, 0, |o| {
                        o.put_u16(0); // balance
                        o.put_u16(0);
                    });
                    bx(o, b"dinf", |o| {
                        full(o, b"dref", 0, 0, |o| {
                            o.put_u32(1);
                            // self-contained: media is in the same file
                            full(o, b"url ", 0, 1, |_| {});
                        });
                    });
                    bx(o, b"stbl", |o| {
                        full(o, b"stsd", 0, 0, |o| {
                            o.put_u32(1);
                            bx(o, b"Opus", |o| {
                                o.put_bytes(0, 6);
                                o.put_u16(1); // data_reference_index
                                o.put_bytes(0, 8);
                                o.put_u16(u16::from(channels));
                                o.put_u16(16); // samplesize
                                o.put_u16(0);
                                o.put_u16(0);
                                // The Opus mapping fixes this at 48 kHz.
                                o.put_u32(48_000 << 16);
                                bx(o, b"dOps", |o| {
                                    o.put_u8(0); // version
                                    o.put_u8(channels);
                                    o.put_u16(cfg.pre_skip);
                                    o.put_u32(48_000); // input sample rate
                                    o.put_i16(0); // output gain
                                    o.put_u8(0); // channel mapping family
                                });
                            });
                        });
                        full(o, b"stts", 0, 0, |o| o.put_u32(0));
                        full(o, b"stsc", 0, 0, |o| o.put_u32(0));
                        full(o, b"stsz", 0, 0, |o| {
                            o.put_u32(0);
                            o.put_u32(0);
                        });
                        full(o, b"stco", 0, 0, |o| o.put_u32(0));
                    });
                });
            });
        });
        bx(o, b"mvex", |o| {
            full(o, b"trex", 0, 0, |o| {
                o.put_u32(TRACK);
                o.put_u32(1); // sample description index
                o.put_u32(FRAME_DURATION);
                o.put_u32(0);
                o.put_u32(0);
            });
        });
    });
    o.freeze()
}

/// Duration in ticks of each of `frames`: up to the next frame's decode time
/// (so a missing frame inside a fragment never shifts the ones after it),
/// and one frame for the last.
fn sample_durations(frames: &[Frame]) -> impl Iterator<Item = u32> + '_ {
    frames
        .iter()
        .enumerate()
        .map(|(i, f)| match frames.get(i + 1) {
            Some(next) if next.seq > f.seq => u32::try_from(next.seq - f.seq)
                .ok()
                .and_then(|n| n.checked_mul(FRAME_DURATION))
                .unwrap_or(u32::MAX),
            _ => FRAME_DURATION,
        })
}

/// One fragment (moof + mdat) holding `frames` as samples, numbered
/// `seq_number` (mfhd, increasing per fragment) and starting at
/// `base_decode_time` ticks (the segmenter passes `frames[0].seq × 960`, so
/// decode times never depend on what came before).
///
/// Each sample lasts until the next frame's sequence number: with gap-free
/// frames every duration is 960.
pub fn fragment(seq_number: u32, base_decode_time: u64, frames: &[Frame]) -> Bytes {
    let payload: usize = frames.iter().map(|f| f.opus.len()).sum();
    let mut o = BytesMut::with_capacity(128 + frames.len() * 8 + payload);
    let mut data_offset_at = 0;
    bx(&mut o, b"moof", |o| {
        full(o, b"mfhd", 0, 0, |o| o.put_u32(seq_number));
        bx(o, b"traf", |o| {
            // default-base-is-moof: data offsets count from this moof.
            full(o, b"tfhd", 0, 0x02_0000, |o| o.put_u32(TRACK));
            full(o, b"tfdt", 1, 0, |o| o.put_u64(base_decode_time));
            // data-offset, sample-duration and sample-size present
            full(o, b"trun", 0, 0x0301, |o| {
                o.put_u32(u32::try_from(frames.len()).unwrap_or(u32::MAX));
                data_offset_at = o.len();
                o.put_i32(0);
                for (f, d) in frames.iter().zip(sample_durations(frames)) {
                    o.put_u32(d);
                    o.put_u32(u32::try_from(f.opus.len()).unwrap_or(u32::MAX));
                }
            });
        });
    });
    // The first sample follows the mdat header, right after the moof.
    let data_offset = i32::try_from(o.len() + 8).unwrap_or(i32::MAX);
    o[data_offset_at..data_offset_at + 4].copy_from_slice(&data_offset.to_be_bytes());
    bx(&mut o, b"mdat", |o| {
        for f in frames {
            o.put_slice(&f.opus);
        }
    });
    o.freeze()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::sync::Arc;

    /// A parsed box: type, header + body, and children for containers.
    #[derive(Debug)]
    pub(crate) struct Node<'a> {
        pub kind: String,
        pub body: &'a [u8],
        pub children: Vec<Node<'a>>,
    }

    impl<'a> Node<'a> {
        /// Finds a descendant by a path of types.
        pub fn find(&self, path: &[&str]) -> Option<&Node<'a>> {
            let (first, rest) = path.split_first()?;
            let c = self.children.iter().find(|c| c.kind == *first)?;
            if rest.is_empty() {
                Some(c)
            } else {
                c.find(rest)
            }
        }
    }

    /// Bytes of a container box's body that precede its children.
    fn child_offset(kind: &str) -> Option<usize> {
        match kind {
            "moov" | "trak" | "mdia" | "minf" | "dinf" | "stbl" | "mvex" | "moof" | "traf" => {
                Some(0)
            }
            "dref" | "stsd" => Some(8), // version/flags + entry count
            "Opus" => Some(28),         // AudioSampleEntry fields
            _ => None,
        }
    }

    /// Parses boxes that must tile `b` exactly; panics (failing the test)
    /// on any inconsistent size.
    pub(crate) fn parse(b: &[u8]) -> Vec<Node<'_>> {
        let mut out = Vec::new();
        let mut at = 0;
        while at < b.len() {
            assert!(at + 8 <= b.len(), "truncated box header at {at}");
            let size = u32::from_be_bytes(b[at..at + 4].try_into().unwrap()) as usize;
            assert!(
                size >= 8 && at + size <= b.len(),
                "bad box size {size} at {at}"
            );
            let kind = String::from_utf8_lossy(&b[at + 4..at + 8]).to_string();
            let body = &b[at + 8..at + size];
            let children = child_offset(&kind).map_or_else(Vec::new, |off| parse(&body[off..]));
            out.push(Node {
                kind,
                body,
                children,
            });
            at += size;
        }
        out
    }

    fn u32_at(b: &[u8], at: usize) -> u32 {
        u32::from_be_bytes(b[at..at + 4].try_into().unwrap())
    }

    fn frame(seq: u64, len: usize) -> Frame {
        Frame {
            seq,
            captured_at_us: 0,
            opus: Bytes::from(vec![seq as u8; len]),
            program_level: 0,
            speakers: Arc::from(Vec::new()),
        }
    }

    #[test]
    fn init_segment_has_the_opus_track_tree() {
        let init = init_segment();
        let top = parse(&init);
        let kinds: Vec<&str> = top.iter().map(|n| n.kind.as_str()).collect();
        assert_eq!(kinds, ["ftyp", "moov"]);
        assert_eq!(&top[0].body[..4], b"iso6");
        assert!(top[0].body.windows(4).any(|w| w == b"cmfc"));
        let moov = &top[1];
        let hdlr = moov.find(&["trak", "mdia", "hdlr"]).unwrap();
        assert_eq!(&hdlr.body[8..12], b"soun");
        let mdhd = moov.find(&["trak", "mdia", "mdhd"]).unwrap();
        assert_eq!(u32_at(mdhd.body, 12), 48_000);
        let stbl = moov.find(&["trak", "mdia", "minf", "stbl"]).unwrap();
        let kinds: Vec<&str> = stbl.children.iter().map(|n| n.kind.as_str()).collect();
        assert_eq!(kinds, ["stsd", "stts", "stsc", "stsz", "stco"]);
        for empty in ["stts", "stsc", "stco"] {
            assert_eq!(u32_at(stbl.find(&[empty]).unwrap().body, 4), 0, "{empty}");
        }
        let opus = stbl.find(&["stsd", "Opus"]).unwrap();
        assert_eq!(u16::from_be_bytes([opus.body[16], opus.body[17]]), 1);
        let dops = opus.find(&["dOps"]).unwrap().body;
        assert_eq!(dops.len(), 11);
        assert_eq!(dops[0], 0, "version");
        assert_eq!(dops[1], 1, "channels");
        assert_eq!(u16::from_be_bytes([dops[2], dops[3]]), 312, "pre-skip");
        assert_eq!(u32_at(dops, 4), 48_000);
        assert_eq!(dops[10], 0, "mapping family");
        let trex = moov.find(&["mvex", "trex"]).unwrap();
        assert_eq!(u32_at(trex.body, 4), 1, "track id");
        assert!(moov.find(&["trak", "mdia", "minf", "smhd"]).is_some());
        assert!(
            moov.find(&["trak", "mdia", "minf", "dinf", "dref", "url "])
                .is_some()
        );
    }

    #[test]
    fn init_config_reaches_dops() {
        let init = init_segment_for(&InitConfig {
            timescale: 48_000,
            channels: 2,
            pre_skip: 120,
        });
        let top = parse(&init);
        let dops = top[1]
            .find(&["trak", "mdia", "minf", "stbl", "stsd", "Opus", "dOps"])
            .unwrap()
            .body;
        assert_eq!(dops[1], 2);
        assert_eq!(u16::from_be_bytes([dops[2], dops[3]]), 120);
    }

    #[test]
    fn fragment_lists_every_sample_and_points_at_its_bytes() {
        let frames: Vec<Frame> = (100..125)
            .map(|s| frame(s, 30 + (s as usize % 7)))
            .collect();
        let frag = fragment(7, 100 * 960, &frames);
        let top = parse(&frag);
        assert_eq!(top.len(), 2);
        let (moof, mdat) = (&top[0], &top[1]);
        assert_eq!(mdat.kind, "mdat");
        let payload: Vec<u8> = frames.iter().flat_map(|f| f.opus.to_vec()).collect();
        assert_eq!(mdat.body, &payload[..]);
        assert_eq!(u32_at(moof.find(&["mfhd"]).unwrap().body, 4), 7);
        let tfdt = moof.find(&["traf", "tfdt"]).unwrap().body;
        assert_eq!(tfdt[0], 1, "64-bit tfdt");
        assert_eq!(u64::from_be_bytes(tfdt[4..12].try_into().unwrap()), 96_000);
        let trun = moof.find(&["traf", "trun"]).unwrap().body;
        assert_eq!(u32_at(trun, 0) & 0xffffff, 0x301);
        assert_eq!(u32_at(trun, 4), 25);
        let off = u32_at(trun, 8) as usize;
        let moof_size = 8 + moof.body.len();
        assert_eq!(off, moof_size + 8, "data offset is the first mdat byte");
        assert_eq!(frag[off], frames[0].opus[0]);
        for (i, f) in frames.iter().enumerate() {
            assert_eq!(u32_at(trun, 12 + i * 8), 960);
            assert_eq!(u32_at(trun, 16 + i * 8) as usize, f.opus.len());
        }
        assert_eq!(trun.len(), 12 + 25 * 8);
    }

    #[test]
    fn a_missing_frame_lengthens_the_sample_before_it() {
        let frames = vec![frame(10, 5), frame(11, 5), frame(14, 5)];
        let frag = fragment(1, 10 * 960, &frames);
        let top = parse(&frag);
        let trun = top[0].find(&["traf", "trun"]).unwrap().body;
        let durations: Vec<u32> = (0..3).map(|i| u32_at(trun, 12 + i * 8)).collect();
        assert_eq!(durations, [960, 3 * 960, 960]);
    }

    #[test]
    fn empty_fragment_is_still_well_formed() {
        let frag = fragment(1, 0, &[]);
        let top = parse(&frag);
        assert_eq!(top[1].kind, "mdat");
        assert!(top[1].body.is_empty());
    }
}
