//! RFC 4571 framing for ICE-TCP (RFC 6544): every STUN, DTLS or SRTP
//! packet on a TCP connection is preceded by its length as a 16-bit
//! big-endian number.
//!
//! Sans-IO: [`Deframer`] is filled from a socket by its owner and yields
//! whole frames; [`frame`] appends one framed packet to an output buffer.

/// Largest frame accepted. WebRTC packets fit one path MTU; anything much
/// larger on an ICE-TCP connection is not a peer amphi talks to.
pub const MAX_FRAME: usize = 4096;

/// A frame longer than [`MAX_FRAME`]: the connection is not ICE-TCP.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameTooLong(pub usize);

/// Reassembles frames from a byte stream, in one fixed buffer.
#[derive(Debug)]
pub struct Deframer {
    buf: Box<[u8]>,
    /// Bytes held, from the start of `buf`.
    len: usize,
    /// Bytes at the start of `buf` already handed out as a frame.
    consumed: usize,
}

impl Default for Deframer {
    fn default() -> Self {
        Deframer {
            buf: vec![0; 2 + MAX_FRAME].into_boxed_slice(),
            len: 0,
            consumed: 0,
        }
    }
}

impl Deframer {
    /// Where the next bytes from the stream go (never empty).
    pub fn spare(&mut self) -> &mut [u8] {
        self.compact();
        &mut self.buf[self.len..]
    }

    /// `n` bytes were written into [`Deframer::spare`].
    pub fn filled(&mut self, n: usize) {
        self.len = (self.len + n).min(self.buf.len());
    }

    /// Copies `data` in (as much as fits); returns how much was taken.
    pub fn push(&mut self, data: &[u8]) -> usize {
        let spare = self.spare();
        let n = spare.len().min(data.len());
        spare[..n].copy_from_slice(&data[..n]);
        self.filled(n);
        n
    }

    /// The next whole frame, if one is buffered.
    pub fn next_frame(&mut self) -> Result<Option<&[u8]>, FrameTooLong> {
        let held = &self.buf[self.consumed..self.len];
        if held.len() < 2 {
            return Ok(None);
        }
        let n = usize::from(u16::from_be_bytes([held[0], held[1]]));
        if n > MAX_FRAME {
            return Err(FrameTooLong(n));
        }
        if held.len() < 2 + n {
            return Ok(None);
        }
        let start = self.consumed + 2;
        self.consumed = start + n;
        Ok(Some(&self.buf[start..start + n]))
    }

    /// Moves unconsumed bytes to the front.
    fn compact(&mut self) {
        if self.consumed > 0 {
            self.buf.copy_within(self.consumed..self.len, 0);
            self.len -= self.consumed;
            self.consumed = 0;
        }
    }
}

/// Whether the first bytes of a TCP connection are an ICE-TCP peer's: an
/// RFC 4571 frame holding a STUN binding request (length, type 0x0001,
/// magic cookie). `None` until 10 bytes are there. No HTTP request or TLS
/// ClientHello starts so (they start with a letter or 0x16), so a front
/// door can peek these bytes and route the connection.
pub fn is_ice_tcp_preface(peek: &[u8]) -> Option<bool> {
    if peek.len() < 10 {
        // Decide early on what cannot be ICE-TCP: a STUN type starts 0x00.
        return match peek.get(2) {
            Some(&b) if b != 0 => Some(false),
            _ => None,
        };
    }
    Some(peek[2..4] == [0x00, 0x01] && peek[6..10] == [0x21, 0x12, 0xA4, 0x42])
}

/// Appends `contents` framed (length first) to `out`. `false` (and
/// nothing appended) if it is too long for a frame.
pub fn frame(out: &mut Vec<u8>, contents: &[u8]) -> bool {
    let Ok(n) = u16::try_from(contents.len()) else {
        return false;
    };
    out.extend_from_slice(&n.to_be_bytes());
    out.extend_from_slice(contents);
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn frames_round_trip_across_any_split() {
        let packets: Vec<Vec<u8>> = vec![vec![1; 20], vec![], vec![2; 1200], vec![3; 1]];
        let mut stream = Vec::new();
        for p in &packets {
            assert!(frame(&mut stream, p));
        }
        for chunk in [1, 2, 3, 7, 100, 5000] {
            let mut d = Deframer::default();
            let mut got = Vec::new();
            for piece in stream.chunks(chunk) {
                let mut rest = piece;
                while !rest.is_empty() {
                    let n = d.push(rest);
                    rest = &rest[n..];
                    while let Some(f) = d.next_frame().unwrap() {
                        got.push(f.to_vec());
                    }
                }
            }
            assert_eq!(got, packets, "chunks of {chunk}");
        }
    }

    #[test]
    fn an_oversized_frame_is_refused() {
        let mut d = Deframer::default();
        d.push(&[0xff, 0xff, 0]);
        assert_eq!(d.next_frame(), Err(FrameTooLong(65535)));
        assert!(!frame(&mut Vec::new(), &vec![0; 70_000]));
    }

    #[test]
    fn the_preface_of_ice_tcp_is_told_from_http_and_tls() {
        let mut stun = vec![0x00, 0x01, 0x00, 0x00, 0x21, 0x12, 0xA4, 0x42];
        stun.extend_from_slice(&[7; 12]);
        let mut framed = Vec::new();
        frame(&mut framed, &stun);
        assert_eq!(is_ice_tcp_preface(&framed), Some(true));
        assert_eq!(is_ice_tcp_preface(&framed[..5]), None);
        assert_eq!(is_ice_tcp_preface(b"GET / HTTP/1.1\r\n"), Some(false));
        assert_eq!(is_ice_tcp_preface(b"POST /api"), Some(false));
        assert_eq!(
            is_ice_tcp_preface(&[0x16, 0x03, 0x01, 0x02, 0x00, 1, 0, 0, 0, 0]),
            Some(false)
        );
        assert_eq!(is_ice_tcp_preface(b"GE"), None);
    }

    proptest! {
        #[test]
        fn never_panics(chunks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..300), 0..40)) {
            let mut d = Deframer::default();
            'outer: for c in &chunks {
                let mut rest = &c[..];
                while !rest.is_empty() {
                    let n = d.push(rest);
                    rest = &rest[n..];
                    loop {
                        match d.next_frame() {
                            Ok(Some(f)) => prop_assert!(f.len() <= MAX_FRAME),
                            Ok(None) => break,
                            Err(_) => break 'outer,
                        }
                    }
                    if n == 0 {
                        break 'outer;
                    }
                }
            }
        }
    }
}
