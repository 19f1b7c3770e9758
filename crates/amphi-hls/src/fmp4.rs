//! CMAF/fMP4 boxes for one mono Opus track ("Encapsulation of Opus in ISO
//! Base Media File Format"): an init segment, and fragments of frames.

use amphi_core::Frame;
use bytes::{BufMut, Bytes, BytesMut};

/// Timescale of the track: one tick per sample at 48 kHz.
pub const TIMESCALE: u32 = 48_000;
/// Samples per program frame.
pub const FRAME_DURATION: u32 = 960;
const PRE_SKIP: u16 = 312;
const TRACK: u32 = 1;

/// Writes a box: size, type, then whatever `body` writes.
fn bx(out: &mut BytesMut, kind: &[u8; 4], body: impl FnOnce(&mut BytesMut)) {
    let start = out.len();
    out.put_u32(0);
    out.put_slice(kind);
    body(out);
    let size = (out.len() - start) as u32;
    out[start..start + 4].copy_from_slice(&size.to_be_bytes());
}

/// A full box: a box with version and flags.
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

const MATRIX: [u32; 9] = [0x0001_0000, 0, 0, 0, 0x0001_0000, 0, 0, 0, 0x4000_0000];

/// The init segment (ftyp + moov) of the program track.
pub fn init_segment() -> Bytes {
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
            o.put_u32(0);
            o.put_u32(0);
            o.put_u32(TIMESCALE);
            o.put_u32(0);
            o.put_u32(0x0001_0000);
            o.put_u16(0x0100);
            o.put_bytes(0, 10);
            MATRIX.iter().for_each(|m| o.put_u32(*m));
            o.put_bytes(0, 24);
            o.put_u32(TRACK + 1);
        });
        bx(o, b"trak", |o| {
            full(o, b"tkhd", 0, 0x3, |o| {
                o.put_u32(0);
                o.put_u32(0);
                o.put_u32(TRACK);
                o.put_u32(0);
                o.put_u32(0);
                o.put_bytes(0, 8);
                o.put_u16(0);
                o.put_u16(0);
                o.put_u16(0x0100);
                o.put_u16(0);
                MATRIX.iter().for_each(|m| o.put_u32(*m));
                o.put_u32(0);
                o.put_u32(0);
            });
            bx(o, b"mdia", |o| {
                full(o, b"mdhd", 0, 0, |o| {
                    o.put_u32(0);
                    o.put_u32(0);
                    o.put_u32(TIMESCALE);
                    o.put_u32(0);
                    o.put_u16(0x55c4); // "und"
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
                        o.put_u16(0);
                        o.put_u16(0);
                    });
                    bx(o, b"dinf", |o| {
                        full(o, b"dref", 0, 0, |o| {
                            o.put_u32(1);
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
                                o.put_u16(1); // channelcount
                                o.put_u16(16); // samplesize
                                o.put_u16(0);
                                o.put_u16(0);
                                o.put_u32(TIMESCALE << 16);
                                bx(o, b"dOps", |o| {
                                    o.put_u8(0); // version
                                    o.put_u8(1); // output channels
                                    o.put_u16(PRE_SKIP);
                                    o.put_u32(TIMESCALE);
                                    o.put_i16(0);
                                    o.put_u8(0); // mapping family
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
                o.put_u32(1);
                o.put_u32(FRAME_DURATION);
                o.put_u32(0);
                o.put_u32(0);
            });
        });
    });
    o.freeze()
}

/// One fragment (moof + mdat) holding `frames`, numbered `sequence`, whose
/// decode time is `frames[0].seq × 960` so gaps never shift timestamps.
pub fn fragment(sequence: u32, frames: &[Frame]) -> Bytes {
    let base = frames
        .first()
        .map_or(0, |f| f.seq * u64::from(FRAME_DURATION));
    let payload: usize = frames.iter().map(|f| f.opus.len()).sum();
    let mut o = BytesMut::with_capacity(128 + frames.len() * 8 + payload);
    let mut data_offset_at = 0;
    bx(&mut o, b"moof", |o| {
        full(o, b"mfhd", 0, 0, |o| o.put_u32(sequence));
        bx(o, b"traf", |o| {
            // default-base-is-moof
            full(o, b"tfhd", 0, 0x02_0000, |o| o.put_u32(TRACK));
            full(o, b"tfdt", 1, 0, |o| o.put_u64(base));
            // data-offset, sample-duration, sample-size present
            full(o, b"trun", 0, 0x0301, |o| {
                o.put_u32(frames.len() as u32);
                data_offset_at = o.len();
                o.put_i32(0);
                for f in frames {
                    o.put_u32(FRAME_DURATION);
                    o.put_u32(f.opus.len() as u32);
                }
            });
        });
    });
    let data_offset = (o.len() + 8) as i32;
    o[data_offset_at..data_offset_at + 4].copy_from_slice(&data_offset.to_be_bytes());
    bx(&mut o, b"mdat", |o| {
        for f in frames {
            o.put_slice(&f.opus);
        }
    });
    o.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    /// Walks top-level boxes: (type, size).
    pub(crate) fn boxes(b: &[u8]) -> Vec<(String, usize)> {
        let mut out = Vec::new();
        let mut at = 0;
        while at + 8 <= b.len() {
            let size = u32::from_be_bytes(b[at..at + 4].try_into().unwrap()) as usize;
            out.push((
                String::from_utf8_lossy(&b[at + 4..at + 8]).to_string(),
                size,
            ));
            assert!(size >= 8);
            at += size;
        }
        assert_eq!(at, b.len(), "boxes do not tile the buffer");
        out
    }

    #[test]
    fn init_and_fragment_are_well_formed() {
        let init = init_segment();
        let top: Vec<String> = boxes(&init).into_iter().map(|(k, _)| k).collect();
        assert_eq!(top, vec!["ftyp", "moov"]);
        let frames: Vec<Frame> = (100..125)
            .map(|s| Frame {
                seq: s,
                captured_at_us: 0,
                opus: Bytes::from(vec![1u8; 40]),
                program_level: 0,
                speakers: Arc::from(Vec::new()),
            })
            .collect();
        let frag = fragment(7, &frames);
        let top = boxes(&frag);
        assert_eq!(top[0].0, "moof");
        assert_eq!(top[1], ("mdat".to_string(), 8 + 25 * 40));
        // The data offset points at the first sample.
        let moof = top[0].1;
        let pos = frag.windows(4).position(|w| w == b"trun").unwrap();
        let off = i32::from_be_bytes(frag[pos + 12..pos + 16].try_into().unwrap()) as usize;
        assert_eq!(off, moof + 8);
        assert_eq!(frag[off], 1);
    }
}
