//! Kernel TLS: where the kernel has the `tls` TCP upper-layer protocol, a
//! listener's transmit keys go to the kernel after the handshake and the
//! fan-out keeps its plain `write` path (the kernel seals the records).
//! Without it (as on the machine the figures were measured on) the
//! fan-out seals with [`crate::RecordSealer`].

use std::io;
use std::os::fd::RawFd;

use rustls::ConnectionTrafficSecrets;

const TCP_ULP: libc::c_int = 31;
const SOL_TLS: libc::c_int = 282;
const TLS_TX: libc::c_int = 1;
const TLS_1_3_VERSION: u16 = 0x0304;
const TLS_CIPHER_AES_GCM_128: u16 = 51;
const TLS_CIPHER_AES_GCM_256: u16 = 52;
const TLS_CIPHER_CHACHA20_POLY1305: u16 = 54;

/// `struct tls12_crypto_info_*` of `<linux/tls.h>`: the same layout for
/// every cipher but the key length; TLS 1.3 uses it too.
#[repr(C)]
struct CryptoInfo<const KEY: usize, const IV: usize, const SALT: usize> {
    version: u16,
    cipher_type: u16,
    iv: [u8; IV],
    key: [u8; KEY],
    salt: [u8; SALT],
    rec_seq: [u8; 8],
}

/// Whether this kernel offers kernel TLS (`tls` is listed in
/// `/proc/sys/net/ipv4/tcp_available_ulp`).
pub fn available() -> bool {
    std::fs::read_to_string("/proc/sys/net/ipv4/tcp_available_ulp")
        .is_ok_and(|s| s.split_whitespace().any(|u| u == "tls"))
}

fn setsockopt<T>(fd: RawFd, level: libc::c_int, name: libc::c_int, value: &T) -> io::Result<()> {
    // SAFETY: `value` points at a live `T` of the size we pass.
    let r = unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            (value as *const T).cast(),
            std::mem::size_of::<T>() as libc::socklen_t,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Hands the transmit direction of a TLS 1.3 connection on `fd` to the
/// kernel: from now on plain `write`s on the socket go out as records.
pub fn enable_tx(fd: RawFd, (seq, secrets): (u64, ConnectionTrafficSecrets)) -> io::Result<()> {
    setsockopt(fd, libc::SOL_TCP, TCP_ULP, b"tls\0")?;
    let rec_seq = seq.to_be_bytes();
    // TLS 1.3: the 12-byte IV is the kernel's 4-byte salt and 8-byte IV.
    fn split<const S: usize, const I: usize>(iv: &[u8]) -> io::Result<([u8; S], [u8; I])> {
        let bad = || io::Error::from(io::ErrorKind::InvalidInput);
        let salt = iv.get(..S).ok_or_else(bad)?.try_into().map_err(|_| bad())?;
        let rest = iv
            .get(S..S + I)
            .ok_or_else(bad)?
            .try_into()
            .map_err(|_| bad())?;
        Ok((salt, rest))
    }
    let bad = || io::Error::from(io::ErrorKind::InvalidInput);
    match secrets {
        ConnectionTrafficSecrets::Aes128Gcm { key, iv } => {
            let (salt, iv) = split::<4, 8>(iv.as_ref())?;
            let info = CryptoInfo::<16, 8, 4> {
                version: TLS_1_3_VERSION,
                cipher_type: TLS_CIPHER_AES_GCM_128,
                iv,
                key: key.as_ref().try_into().map_err(|_| bad())?,
                salt,
                rec_seq,
            };
            setsockopt(fd, SOL_TLS, TLS_TX, &info)
        }
        ConnectionTrafficSecrets::Aes256Gcm { key, iv } => {
            let (salt, iv) = split::<4, 8>(iv.as_ref())?;
            let info = CryptoInfo::<32, 8, 4> {
                version: TLS_1_3_VERSION,
                cipher_type: TLS_CIPHER_AES_GCM_256,
                iv,
                key: key.as_ref().try_into().map_err(|_| bad())?,
                salt,
                rec_seq,
            };
            setsockopt(fd, SOL_TLS, TLS_TX, &info)
        }
        ConnectionTrafficSecrets::Chacha20Poly1305 { key, iv } => {
            let (_, iv) = split::<0, 12>(iv.as_ref())?;
            let info = CryptoInfo::<32, 12, 0> {
                version: TLS_1_3_VERSION,
                cipher_type: TLS_CIPHER_CHACHA20_POLY1305,
                iv,
                key: key.as_ref().try_into().map_err(|_| bad())?,
                salt: [],
                rec_seq,
            };
            setsockopt(fd, SOL_TLS, TLS_TX, &info)
        }
        _ => Err(io::Error::from(io::ErrorKind::Unsupported)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream};
    use std::os::fd::AsRawFd;
    use std::sync::Arc;

    #[test]
    fn the_kernel_seals_what_the_fanout_writes_plain() {
        if !available() {
            eprintln!(
                "SKIPPED: this kernel offers no kernel TLS (no `tls` in \
                 /proc/sys/net/ipv4/tcp_available_ulp; the `tls` module is not built or not \
                 loaded), so listeners over TLS are sealed in user space by RecordSealer"
            );
            return;
        }
        let ck = rcgen::generate_simple_self_signed(vec!["amphi.test".into()]).unwrap();
        let cert = ck.cert.der().clone();
        let key = rustls_pki_types::PrivateKeyDer::Pkcs8(ck.signing_key.serialize_der().into());
        let certs = Arc::new(crate::Certs::from_der(vec![cert.clone()], key).unwrap());
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let client = std::thread::spawn(move || {
            let cfg = crate::client_config(&[cert]).unwrap();
            let conn =
                rustls::ClientConnection::new(cfg, "amphi.test".try_into().unwrap()).unwrap();
            let mut s = rustls::StreamOwned::new(conn, TcpStream::connect(addr).unwrap());
            s.write_all(b"GET / HTTP/1.1\r\n\r\n").unwrap();
            let mut got = vec![0u8; 11];
            s.read_exact(&mut got).unwrap();
            got
        });
        let (mut tcp, _) = l.accept().unwrap();
        let mut server =
            rustls::ServerConnection::new(crate::server_config(certs).unwrap()).unwrap();
        while server.is_handshaking() || server.wants_write() {
            if server.wants_write() {
                server.write_tls(&mut tcp).unwrap();
            } else {
                server.read_tls(&mut tcp).unwrap();
                server.process_new_packets().unwrap();
            }
        }
        // The request arrives through rustls; then the keys go to the kernel.
        let mut req = [0u8; 18];
        while server.reader().read_exact(&mut req).is_err() {
            server.read_tls(&mut tcp).unwrap();
            server.process_new_packets().unwrap();
        }
        let secrets = server.dangerous_extract_secrets().unwrap();
        enable_tx(tcp.as_raw_fd(), secrets.tx).unwrap();
        tcp.write_all(b"hello plain").unwrap();
        assert_eq!(client.join().unwrap(), b"hello plain");
    }
}
