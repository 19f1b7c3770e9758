//! Kernel TLS: where the kernel has the `tls` TCP upper-layer protocol,
//! a listener's transmit keys go to the kernel after the handshake and the
//! fan-out keeps its plain `write` path (the kernel seals).

/// Whether this kernel offers kernel TLS (`/proc/sys/net/ipv4/tcp_available_ulp`
/// lists `tls`).
pub fn available() -> bool {
    std::fs::read_to_string("/proc/sys/net/ipv4/tcp_available_ulp")
        .is_ok_and(|s| s.split_whitespace().any(|u| u == "tls"))
}
