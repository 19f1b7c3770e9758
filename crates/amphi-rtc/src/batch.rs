//! Datagrams read many at a time: one `recvmmsg(2)` call for up to
//! [`BATCH`] of them, instead of one `recvfrom(2)` each (a thousand
//! speakers send 50,000 packets a second).

use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::RawFd;

/// Datagrams taken per call.
pub const BATCH: usize = 32;
/// Room for one datagram (larger ones are truncated and dropped).
const SIZE: usize = 2048;

/// Buffers for one `recvmmsg` call, reused (no allocation per read).
pub struct RecvBatch {
    bufs: Box<[[u8; SIZE]; BATCH]>,
    addrs: Box<[libc::sockaddr_storage; BATCH]>,
    lens: [usize; BATCH],
    truncated: [bool; BATCH],
}

impl Default for RecvBatch {
    fn default() -> Self {
        RecvBatch {
            bufs: Box::new([[0; SIZE]; BATCH]),
            // SAFETY: sockaddr_storage is plain old data; all zeroes is a
            // valid (AF_UNSPEC) value.
            addrs: Box::new(unsafe { std::mem::zeroed() }),
            lens: [0; BATCH],
            truncated: [false; BATCH],
        }
    }
}

impl RecvBatch {
    /// Reads what is queued on the non-blocking socket `fd`, up to
    /// [`BATCH`] datagrams; `Ok(0)` never happens (nothing queued is
    /// `WouldBlock`).
    pub fn recv(&mut self, fd: RawFd) -> io::Result<usize> {
        // SAFETY: zeroed iovec/mmsghdr are valid; every pointer set below
        // points into `self`, alive and not moved during the call.
        let mut iov: [libc::iovec; BATCH] = unsafe { std::mem::zeroed() };
        let mut msgs: [libc::mmsghdr; BATCH] = unsafe { std::mem::zeroed() };
        for i in 0..BATCH {
            iov[i].iov_base = self.bufs[i].as_mut_ptr().cast();
            iov[i].iov_len = SIZE;
            let h = &mut msgs[i].msg_hdr;
            h.msg_name = (&mut self.addrs[i] as *mut libc::sockaddr_storage).cast();
            h.msg_namelen = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            h.msg_iov = &mut iov[i];
            h.msg_iovlen = 1;
        }
        // SAFETY: `msgs` holds BATCH valid headers whose buffers outlive
        // the call; a null timeout with MSG_DONTWAIT never blocks.
        let n = unsafe {
            libc::recvmmsg(
                fd,
                msgs.as_mut_ptr(),
                BATCH as libc::c_uint,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        let n = n as usize;
        for (i, m) in msgs.iter().enumerate().take(n) {
            self.lens[i] = (m.msg_len as usize).min(SIZE);
            self.truncated[i] = m.msg_hdr.msg_flags & libc::MSG_TRUNC != 0;
        }
        Ok(n)
    }

    /// Datagram `i` of the last read: its source and bytes (`None` for a
    /// truncated datagram or an address of an unknown family).
    pub fn get(&self, i: usize) -> Option<(SocketAddr, &[u8])> {
        if i >= BATCH || self.truncated[i] {
            return None;
        }
        Some((
            to_socket_addr(&self.addrs[i])?,
            &self.bufs[i][..self.lens[i]],
        ))
    }
}

fn to_socket_addr(ss: &libc::sockaddr_storage) -> Option<SocketAddr> {
    match libc::c_int::from(ss.ss_family) {
        libc::AF_INET => {
            // SAFETY: the family says the storage holds a sockaddr_in,
            // which it is large and aligned enough for.
            let a = unsafe { &*(ss as *const libc::sockaddr_storage).cast::<libc::sockaddr_in>() };
            Some(SocketAddr::V4(SocketAddrV4::new(
                Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr)),
                u16::from_be(a.sin_port),
            )))
        }
        libc::AF_INET6 => {
            // SAFETY: as above, for sockaddr_in6.
            let a = unsafe { &*(ss as *const libc::sockaddr_storage).cast::<libc::sockaddr_in6>() };
            Some(SocketAddr::V6(SocketAddrV6::new(
                Ipv6Addr::from(a.sin6_addr.s6_addr),
                u16::from_be(a.sin6_port),
                a.sin6_flowinfo,
                a.sin6_scope_id,
            )))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::UdpSocket;
    use std::os::fd::AsRawFd;

    #[test]
    fn a_batch_reads_every_queued_datagram_with_its_source() {
        for bind in ["127.0.0.1:0", "[::1]:0"] {
            let Ok(rx) = UdpSocket::bind(bind) else {
                continue; // no IPv6 loopback here
            };
            let a = UdpSocket::bind(bind).unwrap();
            let b = UdpSocket::bind(bind).unwrap();
            let to = rx.local_addr().unwrap();
            let mut batch = RecvBatch::default();
            assert_eq!(
                batch.recv(rx.as_raw_fd()).unwrap_err().kind(),
                io::ErrorKind::WouldBlock
            );
            for k in 0..(BATCH + 5) {
                let s = if k % 2 == 0 { &a } else { &b };
                s.send_to(&vec![k as u8; 1 + k], to).unwrap();
            }
            s_big(&a, to);
            let mut seen = Vec::new();
            loop {
                match batch.recv(rx.as_raw_fd()) {
                    Ok(n) => {
                        assert!(n <= BATCH);
                        for i in 0..n {
                            seen.push(batch.get(i).map(|(src, bytes)| (src, bytes.to_vec())));
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) => panic!("{e}"),
                }
            }
            assert_eq!(seen.len(), BATCH + 6, "{bind}");
            for (k, got) in seen.iter().take(BATCH + 5).enumerate() {
                let (src, bytes) = got.as_ref().unwrap();
                let from = if k % 2 == 0 { &a } else { &b };
                assert_eq!(*src, from.local_addr().unwrap());
                assert_eq!(bytes, &vec![k as u8; 1 + k]);
            }
            assert!(seen[BATCH + 5].is_none(), "a truncated datagram is dropped");
        }
    }

    fn s_big(s: &UdpSocket, to: SocketAddr) {
        s.send_to(&[7u8; SIZE + 100], to).unwrap();
    }
}
