//! What a `live.ws` listener may send: control frames only (RFC 6455 §5.5).
//!
//! A sans-IO reader over one fixed 131-byte buffer per listener: the
//! largest control frame a client can send (2 header bytes, a 4-byte mask,
//! at most 125 bytes of payload). The buffer first collects the incoming
//! frame, exactly as many bytes as the frame needs (never a byte of the
//! next one), then holds the reply — the Pong carries the Ping's payload,
//! the Close carries the code — until the socket has taken it. While a
//! reply waits, nothing more is read.

/// Largest control frame from a client: header, mask key, 125 bytes.
const MAX_FRAME: usize = 2 + 4 + 125;
/// Control frames a listener may send per second; more is closed with
/// 1008 (a ping flood costs the worker a reply each).
pub(crate) const MAX_CONTROL_PER_SEC: u8 = 5;

/// Close codes this server sends (RFC 6455 §7.4.1).
pub mod close_code {
    /// The client closed: echoed when it sent no (or no valid) code.
    pub const NORMAL: u16 = 1000;
    /// A frame broke the framing rules (unmasked, fragmented control,
    /// reserved bits or opcodes, control payload over 125 bytes).
    pub const PROTOCOL_ERROR: u16 = 1002;
    /// A listener sent data, or control frames faster than allowed.
    pub const POLICY_VIOLATION: u16 = 1008;
}

/// What a complete read step produced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Event {
    /// More bytes are needed.
    Partial,
    /// A Pong from the client: nothing to do.
    Ignored,
    /// A Ping: the Pong is in the buffer, ready to send.
    Ping,
    /// A Close: the echo is in the buffer; after it, close the socket.
    Close,
    /// A protocol violation: a Close with `code` is in the buffer; after
    /// it, close the socket.
    Violation(u16),
}

/// The per-listener control state: 131 bytes and three counters.
#[derive(Debug, Clone)]
pub(crate) struct Control {
    buf: [u8; MAX_FRAME],
    /// Bytes of the incoming frame read so far.
    fill: u8,
    /// Length of the reply in `buf` (0: reading).
    out_len: u8,
    /// Bytes of the reply already sent.
    out_off: u8,
    /// The reply ends the connection.
    closing: bool,
}

impl Default for Control {
    fn default() -> Self {
        Control {
            buf: [0; MAX_FRAME],
            fill: 0,
            out_len: 0,
            out_off: 0,
            closing: false,
        }
    }
}

impl Control {
    /// Where the next read goes: exactly the bytes the frame still needs.
    /// Empty while a reply waits.
    pub(crate) fn read_buf(&mut self) -> &mut [u8] {
        if self.out_len > 0 {
            return &mut [];
        }
        let fill = usize::from(self.fill);
        let need = self.need();
        &mut self.buf[fill..need]
    }

    /// Total bytes the frame being read needs, as far as its header tells.
    fn need(&self) -> usize {
        if self.fill < 2 {
            return 2;
        }
        let masked = self.buf[1] & 0x80 != 0;
        let len = usize::from(self.buf[1] & 0x7f);
        // A longer length (126/127) is rejected before more is read.
        2 + if masked { 4 } else { 0 } + len.min(125)
    }

    /// Takes `n` bytes just read into [`Control::read_buf`].
    pub(crate) fn advance(&mut self, n: usize) -> Event {
        self.fill = (usize::from(self.fill) + n).min(MAX_FRAME) as u8;
        if self.fill >= 1 {
            let b0 = self.buf[0];
            let opcode = b0 & 0x0f;
            if b0 & 0x70 != 0 {
                return self.violation(close_code::PROTOCOL_ERROR, "reserved bits set");
            }
            match opcode {
                0x0..=0x2 => {
                    return self.violation(
                        close_code::POLICY_VIOLATION,
                        "live.ws takes no data from listeners",
                    );
                }
                0x8..=0xa => {}
                _ => return self.violation(close_code::PROTOCOL_ERROR, "reserved opcode"),
            }
            if b0 & 0x80 == 0 {
                return self.violation(close_code::PROTOCOL_ERROR, "fragmented control frame");
            }
        }
        if self.fill < 2 {
            return Event::Partial;
        }
        if self.buf[1] & 0x80 == 0 {
            return self.violation(close_code::PROTOCOL_ERROR, "client frames must be masked");
        }
        if self.buf[1] & 0x7f > 125 {
            return self.violation(close_code::PROTOCOL_ERROR, "control frame over 125 bytes");
        }
        if usize::from(self.fill) < self.need() {
            return Event::Partial;
        }
        let len = usize::from(self.buf[1] & 0x7f);
        let mask = [self.buf[2], self.buf[3], self.buf[4], self.buf[5]];
        for i in 0..len {
            self.buf[6 + i] ^= mask[i % 4];
        }
        match self.buf[0] & 0x0f {
            0x9 => {
                // Pong: FIN + opcode, unmasked, the Ping's payload.
                self.buf.copy_within(6..6 + len, 2);
                self.buf[0] = 0x8a;
                self.buf[1] = len as u8;
                self.queue_reply(2 + len, false);
                Event::Ping
            }
            0x8 => {
                let code = match len {
                    0 => None,
                    1 => {
                        return self
                            .violation(close_code::PROTOCOL_ERROR, "close payload of 1 byte");
                    }
                    _ => Some(u16::from_be_bytes([self.buf[6], self.buf[7]])),
                };
                if let Some(c) = code
                    && !valid_close_code(c)
                {
                    return self.violation(close_code::PROTOCOL_ERROR, "invalid close code");
                }
                if std::str::from_utf8(&self.buf[8.min(6 + len)..6 + len]).is_err() {
                    return self.violation(1007, "close reason is not UTF-8");
                }
                self.write_close(code.unwrap_or(close_code::NORMAL), "");
                Event::Close
            }
            _ => {
                self.fill = 0;
                Event::Ignored
            }
        }
    }

    /// Replaces whatever is buffered with a Close of `code` and ends the
    /// connection after it (also used for a ping flood).
    pub(crate) fn violation(&mut self, code: u16, reason: &str) -> Event {
        self.write_close(code, reason);
        Event::Violation(code)
    }

    fn write_close(&mut self, code: u16, reason: &str) {
        let reason = &reason.as_bytes()[..reason.len().min(123)];
        self.buf[0] = 0x88;
        self.buf[1] = (2 + reason.len()) as u8;
        self.buf[2..4].copy_from_slice(&code.to_be_bytes());
        self.buf[4..4 + reason.len()].copy_from_slice(reason);
        self.queue_reply(4 + reason.len(), true);
    }

    fn queue_reply(&mut self, len: usize, closing: bool) {
        self.fill = 0;
        self.out_len = len as u8;
        self.out_off = 0;
        self.closing = closing;
    }

    /// Forgets the reply (the server already closed: nothing may follow
    /// its Close) and reads again.
    pub(crate) fn drop_reply(&mut self) {
        self.out_len = 0;
        self.out_off = 0;
        self.closing = false;
    }

    /// The part of the reply not yet sent (empty: none).
    pub(crate) fn pending_reply(&self) -> &[u8] {
        &self.buf[usize::from(self.out_off)..usize::from(self.out_len)]
    }

    /// The whole reply (empty: none), however much of it was sent.
    pub(crate) fn reply(&self) -> &[u8] {
        &self.buf[..usize::from(self.out_len)]
    }

    /// `n` more reply bytes were sent. True once the reply is through.
    pub(crate) fn sent(&mut self, n: usize) -> bool {
        self.out_off = (usize::from(self.out_off) + n).min(usize::from(self.out_len)) as u8;
        if self.out_off == self.out_len {
            self.out_len = 0;
            self.out_off = 0;
            return true;
        }
        false
    }

    /// A reply ending the connection was queued.
    pub(crate) fn closing(&self) -> bool {
        self.closing
    }
}

/// Close codes a peer may send (RFC 6455 §7.4): 1000–1003, 1007–1014,
/// and the registered and private ranges 3000–4999.
fn valid_close_code(c: u16) -> bool {
    matches!(c, 1000..=1003 | 1007..=1014 | 3000..=4999)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A client frame, masked with `key`.
    fn client_frame(b0: u8, payload: &[u8], key: [u8; 4]) -> Vec<u8> {
        let mut v = vec![b0, 0x80 | payload.len() as u8];
        v.extend_from_slice(&key);
        v.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
        v
    }

    /// Feeds `bytes` in reads of `chunk` bytes, as a socket would.
    fn feed(c: &mut Control, bytes: &[u8], chunk: usize) -> Vec<Event> {
        let mut at = 0;
        let mut out = Vec::new();
        while at < bytes.len() {
            let buf = c.read_buf();
            if buf.is_empty() {
                break;
            }
            let n = buf.len().min(chunk).min(bytes.len() - at);
            buf[..n].copy_from_slice(&bytes[at..at + n]);
            at += n;
            let e = c.advance(n);
            if e != Event::Partial {
                out.push(e);
            }
            if c.closing() {
                break;
            }
        }
        out
    }

    #[test]
    fn ping_gets_a_pong_with_the_same_payload_in_any_read_sizes() {
        for chunk in [1, 2, 3, 7, 200] {
            let mut c = Control::default();
            let payload: Vec<u8> = (0..125u8).collect();
            let evs = feed(&mut c, &client_frame(0x89, &payload, [1, 2, 3, 4]), chunk);
            assert_eq!(evs, vec![Event::Ping]);
            let mut expect = vec![0x8a, 125];
            expect.extend_from_slice(&payload);
            assert_eq!(c.pending_reply(), &expect[..]);
            assert!(c.read_buf().is_empty(), "reads pause while a reply waits");
            assert!(!c.sent(10));
            assert!(c.sent(200));
            assert!(!c.closing());
            // The next frame reads from the start again.
            assert_eq!(
                feed(&mut c, &client_frame(0x89, b"", [9; 4]), chunk),
                vec![Event::Ping]
            );
            assert_eq!(c.pending_reply(), &[0x8a, 0]);
        }
    }

    #[test]
    fn close_is_echoed_with_its_code() {
        let mut c = Control::default();
        let mut p = 4001u16.to_be_bytes().to_vec();
        p.extend_from_slice(b"bye");
        assert_eq!(
            feed(&mut c, &client_frame(0x88, &p, [7, 7, 7, 7]), 3),
            vec![Event::Close]
        );
        assert_eq!(c.pending_reply(), &[0x88, 2, 0x0f, 0xa1]);
        assert!(c.closing());
        let mut c = Control::default();
        assert_eq!(
            feed(&mut c, &client_frame(0x88, b"", [0; 4]), 9),
            vec![Event::Close]
        );
        assert_eq!(c.pending_reply(), &[0x88, 2, 0x03, 0xe8]);
    }

    #[test]
    fn data_and_malformed_frames_close_with_the_right_code() {
        let code = |bytes: &[u8]| {
            let mut c = Control::default();
            let evs = feed(&mut c, bytes, 1);
            let reply = c.pending_reply();
            assert_eq!(reply[0], 0x88, "a Close is queued");
            assert!(c.closing());
            (evs, u16::from_be_bytes([reply[2], reply[3]]))
        };
        let v = Event::Violation;
        assert_eq!(
            code(&client_frame(0x82, b"hi", [1; 4])),
            (vec![v(1008)], 1008)
        );
        assert_eq!(
            code(&client_frame(0x81, b"hi", [1; 4])),
            (vec![v(1008)], 1008)
        );
        assert_eq!(code(&[0x89, 0x00]), (vec![v(1002)], 1002), "unmasked ping");
        assert_eq!(
            code(&[0x09, 0x80]),
            (vec![v(1002)], 1002),
            "fragmented ping"
        );
        assert_eq!(code(&[0xc9, 0x80]), (vec![v(1002)], 1002), "reserved bit");
        assert_eq!(
            code(&[0x8b, 0x80]),
            (vec![v(1002)], 1002),
            "reserved opcode"
        );
        assert_eq!(
            code(&[0x89, 0xfe, 0, 200]),
            (vec![v(1002)], 1002),
            "long ping"
        );
        assert_eq!(
            code(&client_frame(0x88, &[3], [1; 4])),
            (vec![v(1002)], 1002)
        );
        assert_eq!(
            code(&client_frame(0x88, &[0x03, 0xed], [1; 4])),
            (vec![v(1002)], 1002)
        );
        let mut bad = 1000u16.to_be_bytes().to_vec();
        bad.push(0xff);
        assert_eq!(
            code(&client_frame(0x88, &bad, [1; 4])),
            (vec![v(1007)], 1007)
        );
    }

    #[test]
    fn a_pong_from_the_client_is_ignored() {
        let mut c = Control::default();
        assert_eq!(
            feed(&mut c, &client_frame(0x8a, b"x", [3; 4]), 4),
            vec![Event::Ignored]
        );
        assert!(c.pending_reply().is_empty());
        assert_eq!(c.read_buf().len(), 2);
    }
}
