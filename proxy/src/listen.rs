//! Binding the proxy's listeners: each flag takes a list of addresses, one socket each.
//!
//! A dual-stack or IPv6-only pod needs every listener on both families (strait-init
//! redirects IPv6 with ip6tables too). Two explicit sockets per listener (`0.0.0.0`
//! and `[::]` with `IPV6_V6ONLY`) rather than one `[::]` socket accepting IPv4 as
//! mapped addresses: the IPv4 socket then works the same whether or not the pod has
//! IPv6 at all, the original-destination lookup matches the socket's family
//! (`SO_ORIGINAL_DST` vs `IP6T_SO_ORIGINAL_DST`; a mapped IPv4 connection would need
//! the IPv4 one on an IPv6 socket), and `net.ipv6.bindv6only` cannot change behaviour.
//!
//! The IPv6 wildcard and loopback addresses are optional: in a pod without IPv6 (the
//! kernel booted with `ipv6.disable=1`, or `::1` absent because the pod disabled IPv6)
//! their bind fails with `EAFNOSUPPORT`/`EADDRNOTAVAIL`, which is logged and skipped.
//! Any other failure (a port in use, a specific address the pod lacks) is fatal, and
//! so is a listener left with no socket at all.
use nix::sys::socket::{
    AddressFamily, SockFlag, SockType, SockaddrIn, SockaddrIn6, bind, listen, setsockopt, socket, sockopt,
};
use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsRawFd;
use tokio::net::TcpListener;

/// Pending-connection queue of each listener (the kernel caps it at `somaxconn`).
const BACKLOG: i32 = 1024;

#[derive(Debug, thiserror::Error)]
pub enum ListenError {
    #[error("binding --{flag} {addr}: {source}")]
    Bind { flag: &'static str, addr: SocketAddr, source: std::io::Error },
    #[error("--{flag}: no address given")]
    Empty { flag: &'static str },
}

/// Binds every address of `--flag`; see the module docs for which failures are skipped.
pub fn bind_all(flag: &'static str, addrs: &[SocketAddr]) -> Result<Vec<TcpListener>, ListenError> {
    let mut bound = Vec::with_capacity(addrs.len());
    let mut skipped = Vec::new();
    for &addr in addrs {
        match bind_one(addr) {
            Ok(l) => bound.push(l),
            Err(source) if ipv6_unavailable(addr, &source) => {
                tracing::warn!(flag, %addr, error = %source, "IPv6 unavailable in this pod; not listening there");
                skipped.push(ListenError::Bind { flag, addr, source });
            }
            Err(source) => return Err(ListenError::Bind { flag, addr, source }),
        }
    }
    if bound.is_empty() {
        // Every address was an optional IPv6 one and IPv6 is off: report the first.
        return Err(skipped.into_iter().next().unwrap_or(ListenError::Empty { flag }));
    }
    Ok(bound)
}

/// True for a bind failure that only means the pod has no IPv6: an IPv6 wildcard or
/// loopback address, and the family or the address is missing.
pub fn ipv6_unavailable(addr: SocketAddr, err: &std::io::Error) -> bool {
    let IpAddr::V6(ip) = addr.ip() else { return false };
    (ip.is_unspecified() || ip.is_loopback())
        && matches!(err.raw_os_error(), Some(libc::EAFNOSUPPORT) | Some(libc::EADDRNOTAVAIL))
}

/// One listening socket: `SO_REUSEADDR` (as `TcpListener::bind` sets, so a restart does
/// not wait out TIME_WAIT), and `IPV6_V6ONLY` on IPv6 so `[::]` and `0.0.0.0` can share
/// a port.
fn bind_one(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let family = if addr.is_ipv4() { AddressFamily::Inet } else { AddressFamily::Inet6 };
    let fd = socket(family, SockType::Stream, SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK, None)?;
    setsockopt(&fd, sockopt::ReuseAddr, &true)?;
    match addr {
        SocketAddr::V4(a) => bind(fd.as_raw_fd(), &SockaddrIn::from(a))?,
        SocketAddr::V6(a) => {
            setsockopt(&fd, sockopt::Ipv6V6Only, &true)?;
            bind(fd.as_raw_fd(), &SockaddrIn6::from(a))?
        }
    }
    listen(&fd, nix::sys::socket::Backlog::new(BACKLOG).map_err(std::io::Error::from)?)?;
    TcpListener::from_std(std::net::TcpListener::from(fd))
}

/// `a, b` for logs.
pub fn local_addrs(listeners: &[TcpListener]) -> String {
    listeners
        .iter()
        .map(|l| l.local_addr().map_or_else(|e| format!("?({e})"), |a| a.to_string()))
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Error;
    use std::net::{Ipv4Addr, Ipv6Addr};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn has_ipv6_loopback() -> bool {
        std::net::TcpListener::bind((Ipv6Addr::LOCALHOST, 0)).is_ok()
    }

    #[tokio::test]
    async fn wildcards_of_both_families_share_a_port_and_each_accepts_its_own() {
        if !has_ipv6_loopback() {
            eprintln!("SKIPPED: no ::1 on this machine");
            return;
        }
        // A free port for the IPv4 wildcard, then the IPv6 wildcard on the same one:
        // without IPV6_V6ONLY the second bind fails with EADDRINUSE (bindv6only=0).
        let v4 = bind_all("inbound-addr", &[SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0))]).expect("v4");
        let port = v4[0].local_addr().expect("addr").port();
        drop(v4);
        let addrs = [SocketAddr::from((Ipv4Addr::UNSPECIFIED, port)), SocketAddr::from((Ipv6Addr::UNSPECIFIED, port))];
        let listeners = bind_all("inbound-addr", &addrs).expect("both families on one port");
        assert_eq!(listeners.len(), 2);
        for (listener, client_ip) in
            listeners.iter().zip([IpAddr::from(Ipv4Addr::LOCALHOST), Ipv6Addr::LOCALHOST.into()])
        {
            let mut client = tokio::net::TcpStream::connect((client_ip, port)).await.expect("connect");
            let (mut server, peer) = listener.accept().await.expect("each socket accepts its own family");
            assert_eq!(peer.ip(), client_ip, "no IPv4-mapped addresses on the IPv6 socket");
            client.write_all(b"x").await.expect("write");
            let mut b = [0u8; 1];
            server.read_exact(&mut b).await.expect("read");
        }
    }

    #[tokio::test]
    async fn a_port_in_use_is_fatal_and_named() {
        let taken = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind");
        let addr = taken.local_addr().expect("addr");
        let err = bind_all("outbound-addr", &[addr]).expect_err("port in use");
        let msg = err.to_string();
        assert!(msg.starts_with(&format!("binding --outbound-addr {addr}: ")), "{msg}");
        assert!(msg.to_lowercase().contains("in use"), "{msg}");
        // Also when the in-use address is the IPv6 one: only "no IPv6" is skippable.
        if has_ipv6_loopback() {
            let taken6 = std::net::TcpListener::bind((Ipv6Addr::LOCALHOST, 0)).expect("bind");
            let addr6 = taken6.local_addr().expect("addr");
            let err = bind_all("outbound-addr", &[SocketAddr::from((Ipv4Addr::LOCALHOST, 0)), addr6])
                .expect_err("IPv6 port in use");
            assert!(err.to_string().contains(&addr6.to_string()), "{err}");
        }
    }

    #[tokio::test]
    async fn addresses_the_pod_lacks_are_fatal_except_the_ipv6_wildcard_and_loopback() {
        // 192.0.2.1 / 2001:db8::1 (documentation ranges) are on no interface here.
        let missing_v4 = SocketAddr::from(([192, 0, 2, 1], 0));
        assert!(bind_all("probe-addr", &[missing_v4]).is_err());
        // A specific IPv6 address the pod lacks is a configuration error, not "no IPv6".
        let specific_v6: SocketAddr = "[2001:db8::1]:0".parse().expect("addr");
        assert!(bind_all("probe-addr", &[SocketAddr::from((Ipv4Addr::LOCALHOST, 0)), specific_v6]).is_err());
    }

    #[tokio::test]
    async fn nothing_to_bind_is_an_error() {
        assert!(matches!(bind_all("probe-addr", &[]), Err(ListenError::Empty { flag: "probe-addr" })));
    }

    #[test]
    fn which_failures_mean_no_ipv6() {
        let afno = Error::from_raw_os_error(libc::EAFNOSUPPORT);
        let notavail = Error::from_raw_os_error(libc::EADDRNOTAVAIL);
        let inuse = Error::from_raw_os_error(libc::EADDRINUSE);
        let any6: SocketAddr = "[::]:15006".parse().expect("addr");
        let lo6: SocketAddr = "[::1]:15001".parse().expect("addr");
        let pod6: SocketAddr = "[fd00::5]:15006".parse().expect("addr");
        let any4: SocketAddr = "0.0.0.0:15006".parse().expect("addr");
        assert!(ipv6_unavailable(any6, &afno));
        assert!(ipv6_unavailable(lo6, &notavail));
        assert!(!ipv6_unavailable(any6, &inuse), "a port conflict is never skipped");
        assert!(!ipv6_unavailable(pod6, &notavail), "an explicit address must exist");
        assert!(!ipv6_unavailable(any4, &afno), "IPv4 is never optional");
    }
}
