//! Ogg/Opus (RFC 3533, RFC 7845): the pager that cuts the program into
//! pages once for every listener, and a reader for clients and tests.
//!
//! The live stream is Icecast-style: every listener receives the same
//! pages, with absolute granule positions and page numbers; a new listener
//! first gets the two header pages (OpusHead, OpusTags), which are the
//! same for everyone. RFC 7845 §4.5 allows a stream to begin at a granule
//! position other than zero, which players treat as a start offset.

use amphi_core::Frame;
use bytes::{BufMut, Bytes, BytesMut};

use crate::MediaError;

/// Pre-skip announced in OpusHead (libopus's encoder lookahead at 48 kHz).
pub const PRE_SKIP: u16 = 312;

const CRC_TABLE: [u32; 256] = {
    let mut t = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut r = (i as u32) << 24;
        let mut j = 0;
        while j < 8 {
            r = if r & 0x8000_0000 != 0 {
                (r << 1) ^ 0x04c1_1db7
            } else {
                r << 1
            };
            j += 1;
        }
        t[i] = r;
        i += 1;
    }
    t
};

/// The Ogg CRC-32 (polynomial 0x04c11db7, no reflection, init 0).
pub fn crc32(data: &[u8]) -> u32 {
    data.iter().fold(0u32, |crc, b| {
        (crc << 8) ^ CRC_TABLE[(((crc >> 24) as u8) ^ b) as usize]
    })
}

/// Header flag: first page of a stream.
pub const BOS: u8 = 0x02;
/// Header flag: last page of a stream.
pub const EOS: u8 = 0x04;
/// Header flag: the page continues a packet from the previous page.
pub const CONTINUED: u8 = 0x01;

/// Writes one page holding whole `packets` (each under 255 × 255 bytes).
pub fn write_page(flags: u8, granule: u64, serial: u32, seq: u32, packets: &[&[u8]]) -> Bytes {
    let mut lacing = Vec::with_capacity(packets.len() * 2);
    for p in packets {
        let mut n = p.len();
        while n >= 255 {
            lacing.push(255u8);
            n -= 255;
        }
        lacing.push(n as u8);
    }
    let body: usize = packets.iter().map(|p| p.len()).sum();
    let mut page = BytesMut::with_capacity(27 + lacing.len() + body);
    page.put_slice(b"OggS");
    page.put_u8(0);
    page.put_u8(flags);
    page.put_u64_le(granule);
    page.put_u32_le(serial);
    page.put_u32_le(seq);
    page.put_u32_le(0);
    page.put_u8(lacing.len() as u8);
    page.put_slice(&lacing);
    for p in packets {
        page.put_slice(p);
    }
    let crc = crc32(&page);
    page[22..26].copy_from_slice(&crc.to_le_bytes());
    page.freeze()
}

/// The OpusHead packet: mono, 48 kHz.
pub fn opus_head() -> [u8; 19] {
    let mut h = [0u8; 19];
    h[..8].copy_from_slice(b"OpusHead");
    h[8] = 1;
    h[9] = 1;
    h[10..12].copy_from_slice(&PRE_SKIP.to_le_bytes());
    h[12..16].copy_from_slice(&48_000u32.to_le_bytes());
    h
}

/// The OpusTags packet naming amphi as the vendor.
pub fn opus_tags() -> Vec<u8> {
    let vendor = b"amphi";
    let mut t = Vec::with_capacity(8 + 4 + vendor.len() + 4);
    t.extend_from_slice(b"OpusTags");
    t.extend_from_slice(&(vendor.len() as u32).to_le_bytes());
    t.extend_from_slice(vendor);
    t.extend_from_slice(&0u32.to_le_bytes());
    t
}

/// Cuts program frames into Ogg pages.
#[derive(Debug)]
pub struct OggPager {
    serial: u32,
    frames_per_page: usize,
    pending: Vec<Bytes>,
    last_seq: u64,
    /// Program sequence at which the stream starts (granule origin).
    origin: Option<u64>,
    page_seq: u32,
}

impl OggPager {
    /// A pager for the stream `serial`, one page per `frames_per_page`
    /// frames (5 = 100 ms).
    pub fn new(serial: u32, frames_per_page: usize) -> Self {
        OggPager {
            serial,
            frames_per_page: frames_per_page.clamp(1, 50),
            pending: Vec::with_capacity(frames_per_page),
            last_seq: 0,
            origin: None,
            page_seq: 2,
        }
    }

    /// A pager whose granule positions count from frame `origin` (a
    /// recording that starts mid-program starts at granule zero).
    pub fn with_origin(serial: u32, frames_per_page: usize, origin: u64) -> Self {
        let mut p = Self::new(serial, frames_per_page);
        p.origin = Some(origin);
        p
    }

    /// The two header pages every stream starts with.
    pub fn headers(&self) -> Bytes {
        let mut out = BytesMut::new();
        out.put(write_page(BOS, 0, self.serial, 0, &[&opus_head()]));
        out.put(write_page(0, 0, self.serial, 1, &[&opus_tags()]));
        out.freeze()
    }

    /// Adds a frame; returns a page when one is complete.
    pub fn push(&mut self, frame: &Frame) -> Option<Bytes> {
        self.pending.push(frame.opus.clone());
        self.last_seq = frame.seq;
        if self.pending.len() >= self.frames_per_page {
            Some(self.page(0))
        } else {
            None
        }
    }

    /// A page of whatever is pending (e.g. at the end of a space).
    pub fn flush(&mut self) -> Option<Bytes> {
        (!self.pending.is_empty()).then(|| self.page(0))
    }

    /// The last page of a file: pending frames (or none) flagged EOS.
    pub fn finish(&mut self) -> Bytes {
        self.page(EOS)
    }

    fn page(&mut self, flags: u8) -> Bytes {
        let origin = self.origin.unwrap_or(0);
        let granule = (self.last_seq + 1).saturating_sub(origin) * 960;
        let packets: Vec<&[u8]> = self.pending.iter().map(|b| &b[..]).collect();
        let page = write_page(flags, granule, self.serial, self.page_seq, &packets);
        self.page_seq = self.page_seq.wrapping_add(1);
        self.pending.clear();
        page
    }
}

/// One parsed page, borrowing its bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page<'a> {
    pub flags: u8,
    pub granule: u64,
    pub serial: u32,
    pub seq: u32,
    /// Packets completed in this page (a packet continued to the next page
    /// is returned as its own part, and `last_incomplete` is set).
    pub packets: Vec<&'a [u8]>,
    pub last_incomplete: bool,
}

/// Parses one page at the start of `buf`: `Ok(None)` if more bytes are
/// needed, the page and its length otherwise. The CRC is verified.
pub fn parse_page(buf: &[u8]) -> Result<Option<(Page<'_>, usize)>, MediaError> {
    if buf.len() < 27 {
        return Ok(None);
    }
    if &buf[..4] != b"OggS" {
        return Err(MediaError::Ogg("missing capture pattern"));
    }
    if buf[4] != 0 {
        return Err(MediaError::Ogg("unknown version"));
    }
    let nsegs = usize::from(buf[26]);
    if buf.len() < 27 + nsegs {
        return Ok(None);
    }
    let lacing = &buf[27..27 + nsegs];
    let body_len: usize = lacing.iter().map(|l| usize::from(*l)).sum();
    let total = 27 + nsegs + body_len;
    if buf.len() < total {
        return Ok(None);
    }
    let stored = u32::from_le_bytes([buf[22], buf[23], buf[24], buf[25]]);
    let mut check = buf[..total].to_vec();
    check[22..26].fill(0);
    if crc32(&check) != stored {
        return Err(MediaError::Ogg("bad CRC"));
    }
    let mut packets = Vec::new();
    let mut at = 27 + nsegs;
    let mut start = at;
    for l in lacing {
        at += usize::from(*l);
        if *l < 255 {
            packets.push(&buf[start..at]);
            start = at;
        }
    }
    let last_incomplete = start < at;
    if last_incomplete {
        packets.push(&buf[start..at]);
    }
    let u64_at = |i: usize| {
        u64::from_le_bytes([
            buf[i],
            buf[i + 1],
            buf[i + 2],
            buf[i + 3],
            buf[i + 4],
            buf[i + 5],
            buf[i + 6],
            buf[i + 7],
        ])
    };
    let u32_at = |i: usize| u32::from_le_bytes([buf[i], buf[i + 1], buf[i + 2], buf[i + 3]]);
    Ok(Some((
        Page {
            flags: buf[5],
            granule: u64_at(6),
            serial: u32_at(14),
            seq: u32_at(18),
            packets,
            last_incomplete,
        },
        total,
    )))
}

/// A page with owned bytes, from [`PageReader`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnedPage {
    pub flags: u8,
    pub granule: u64,
    pub serial: u32,
    pub seq: u32,
    pub packets: Vec<Bytes>,
}

/// Reads pages from a byte stream fed in arbitrary chunks, resynchronising
/// on the capture pattern after garbage or a corrupt page.
#[derive(Debug, Default)]
pub struct PageReader {
    buf: BytesMut,
    /// Bytes skipped to resynchronise.
    pub skipped: u64,
}

/// Largest buffered input before the reader gives up on the current bytes.
const MAX_BUFFER: usize = 1 << 20;

impl PageReader {
    /// A reader with nothing buffered.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds received bytes.
    pub fn push(&mut self, data: &[u8]) {
        if self.buf.len() + data.len() > MAX_BUFFER {
            self.skipped += self.buf.len() as u64;
            self.buf.clear();
        }
        self.buf.extend_from_slice(data);
    }

    /// The next complete page, if one is buffered.
    pub fn next_page(&mut self) -> Option<OwnedPage> {
        loop {
            match parse_page(&self.buf) {
                Ok(None) => return None,
                Ok(Some((p, n))) => {
                    let owned = OwnedPage {
                        flags: p.flags,
                        granule: p.granule,
                        serial: p.serial,
                        seq: p.seq,
                        packets: p
                            .packets
                            .iter()
                            .map(|s| Bytes::copy_from_slice(s))
                            .collect(),
                    };
                    let _ = self.buf.split_to(n);
                    return Some(owned);
                }
                Err(_) => {
                    // Skip to the next capture pattern after this byte.
                    let next = self.buf[1..]
                        .windows(4)
                        .position(|w| w == b"OggS")
                        .map_or(self.buf.len().saturating_sub(3), |i| i + 1);
                    self.skipped += next as u64;
                    let _ = self.buf.split_to(next);
                    if self.buf.len() < 4 {
                        return None;
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::sync::Arc;

    fn frame(seq: u64, len: usize) -> Frame {
        Frame {
            seq,
            captured_at_us: 0,
            opus: Bytes::from(vec![(seq % 251) as u8; len]),
            program_level: 0,
            speakers: Arc::from(Vec::new()),
        }
    }

    #[test]
    fn headers_and_pages_parse_back() {
        let mut pager = OggPager::new(7, 5);
        let mut r = PageReader::new();
        r.push(&pager.headers());
        let head = r.next_page().unwrap();
        assert_eq!(head.flags, BOS);
        assert_eq!(&head.packets[0][..8], b"OpusHead");
        let tags = r.next_page().unwrap();
        assert_eq!(&tags.packets[0][..8], b"OpusTags");
        let mut pages = Vec::new();
        for s in 0..10 {
            if let Some(p) = pager.push(&frame(s, 300)) {
                pages.push(p);
            }
        }
        assert_eq!(pages.len(), 2);
        r.push(&pages[0]);
        r.push(&pages[1]);
        let p = r.next_page().unwrap();
        assert_eq!((p.granule, p.seq, p.packets.len()), (5 * 960, 2, 5));
        assert_eq!(p.packets[0].len(), 300);
        assert_eq!(r.next_page().unwrap().granule, 10 * 960);
    }

    #[test]
    fn corrupt_crc_is_rejected_and_the_reader_resyncs() {
        let mut pager = OggPager::new(1, 1);
        let good = pager.push(&frame(0, 10)).unwrap();
        let mut bad = good.to_vec();
        let last = bad.len() - 1;
        bad[last] ^= 0xff;
        assert!(parse_page(&bad).is_err());
        let mut r = PageReader::new();
        r.push(b"garbage");
        r.push(&bad);
        r.push(&good);
        let p = r.next_page().unwrap();
        assert_eq!(p.packets[0].len(), 10);
        assert!(r.skipped > 0);
    }

    proptest! {
        #[test]
        fn pager_reader_roundtrip(lens in proptest::collection::vec(1usize..700, 1..40), fpp in 1usize..8, chunk in 1usize..500) {
            let mut pager = OggPager::new(99, fpp);
            let mut bytes = pager.headers().to_vec();
            let frames: Vec<Frame> = lens.iter().enumerate().map(|(i, l)| frame(i as u64, *l)).collect();
            for f in &frames {
                if let Some(p) = pager.push(f) { bytes.extend_from_slice(&p); }
            }
            if let Some(p) = pager.flush() { bytes.extend_from_slice(&p); }
            let mut r = PageReader::new();
            let mut packets = Vec::new();
            for c in bytes.chunks(chunk) {
                r.push(c);
                while let Some(p) = r.next_page() { packets.extend(p.packets); }
            }
            prop_assert_eq!(packets.len(), frames.len() + 2);
            for (p, f) in packets[2..].iter().zip(&frames) {
                prop_assert_eq!(p, &f.opus);
            }
            prop_assert_eq!(r.skipped, 0);
        }

        #[test]
        fn reader_never_panics(data in proptest::collection::vec(any::<u8>(), 0..2000)) {
            let mut r = PageReader::new();
            r.push(&data);
            while r.next_page().is_some() {}
            let _ = parse_page(&data);
        }
    }
}
