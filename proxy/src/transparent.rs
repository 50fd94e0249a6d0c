//! Transparent mode: connections redirected by strait-init's iptables rules.
//!
//! Each connection's original destination (SO_ORIGINAL_DST / IP6T_SO_ORIGINAL_DST)
//! says where the application meant to go. Then the first bytes decide the protocol:
//! - the HTTP/2 preface → gRPC routing: to a Service ClusterIP:port the Service's
//!   routes apply (GAMMA routes by ClusterIP, not Host); to anything else (a pod IP,
//!   an external address) requests are forwarded untouched;
//! - an HTTP/1 request line → proxied as HTTP/1.1, per request, to an endpoint of the
//!   Service (or to the original destination);
//! - anything else, or nothing within the detection timeout (server-first protocols),
//!   or a port listed as opaque → plain TCP to an endpoint of the Service (or to the
//!   original destination).
//!
//! Inbound connections go to the application at their original destination, and only
//! there: a connection whose original destination is the inbound listener's own port
//! (`podIP:15006` from another pod is redirected to itself) or that was not redirected
//! at all is refused, so no peer can reach `--inbound-app-addr` (or anything else bound
//! to loopback) through the sidecar.
//! Outbound connections made straight to the proxy's port (no redirection) are served
//! as in explicit mode, so both modes share the outbound listener.
//!
//! IPv4 and IPv6 arrive on separate sockets (see `listen`), so each connection's
//! original destination is asked of its own family's conntrack option.
use crate::body::{self, ProxyBody};
use crate::config::H2Limits;
use crate::proxy::{OutboundTarget, Proxy};
use crate::server::Connections;
use crate::telemetry::Side;
use http::{Request, Response, StatusCode, Uri};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use std::collections::HashSet;
use std::convert::Infallible;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const HTTP1_METHODS: [&[u8]; 9] =
    [b"GET ", b"POST ", b"PUT ", b"DELETE ", b"HEAD ", b"OPTIONS ", b"PATCH ", b"CONNECT ", b"TRACE "];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    Http2,
    Http1,
    Opaque,
}

/// Classifies a connection by its first bytes; `None` when more bytes are needed.
pub fn classify(prefix: &[u8]) -> Option<Protocol> {
    if prefix.is_empty() {
        return None;
    }
    if prefix.len() >= H2_PREFACE.len() {
        if prefix.starts_with(H2_PREFACE) {
            return Some(Protocol::Http2);
        }
    } else if H2_PREFACE.starts_with(prefix) {
        return None;
    }
    let mut maybe_http1 = false;
    for m in HTTP1_METHODS {
        if prefix.starts_with(m) {
            return Some(Protocol::Http1);
        }
        if m.starts_with(prefix) {
            maybe_http1 = true;
        }
    }
    if maybe_http1 { None } else { Some(Protocol::Opaque) }
}

/// Peeks (without consuming) until the protocol is known or `timeout` passes.
pub async fn detect(tcp: &TcpStream, timeout: Duration) -> Protocol {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut buf = [0u8; 32];
    let mut backoff = Duration::from_millis(1);
    loop {
        let peeked = tokio::time::timeout_at(deadline, tcp.peek(&mut buf)).await;
        match peeked {
            Err(_) | Ok(Err(_)) | Ok(Ok(0)) => return Protocol::Opaque,
            Ok(Ok(n)) => {
                if let Some(p) = classify(&buf[..n]) {
                    return p;
                }
                // A partial first segment: peek returns the same bytes at once, so
                // wait a little for the rest rather than spin.
                if tokio::time::Instant::now() + backoff >= deadline {
                    return Protocol::Opaque;
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_millis(20));
            }
        }
    }
}

/// The destination conntrack recorded for the connection before any NAT:
/// `SO_ORIGINAL_DST` on an IPv4 socket, `IP6T_SO_ORIGINAL_DST` on an IPv6 one. For a
/// connection nobody redirected this is the socket's own address; `None` when conntrack
/// does not track it.
pub fn conntrack_original_dst(tcp: &TcpStream) -> Option<SocketAddr> {
    use nix::sys::socket::{getsockopt, sockopt};
    let local = tcp.local_addr().ok()?;
    // An IPv4-mapped local address would mean an IPv4 connection on an IPv6 socket,
    // which only SO_ORIGINAL_DST knows; the listeners set IPV6_V6ONLY so it never is.
    if local.is_ipv4() {
        let sin = getsockopt(tcp, sockopt::OriginalDst).ok()?;
        Some(SocketAddr::new(IpAddr::V4(Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr))), u16::from_be(sin.sin_port)))
    } else {
        let sin6 = getsockopt(tcp, sockopt::Ip6tOriginalDst).ok()?;
        Some(SocketAddr::new(IpAddr::V6(Ipv6Addr::from(sin6.sin6_addr.s6_addr)), u16::from_be(sin6.sin6_port)))
    }
}

/// The destination the application dialled before iptables redirected it; `None` when
/// the connection was not redirected.
pub fn original_dst(tcp: &TcpStream) -> Option<SocketAddr> {
    let local = tcp.local_addr().ok()?;
    redirected(conntrack_original_dst(tcp), local)
}

/// `Some(original)` when conntrack's original destination differs from the socket's
/// own address, i.e. NAT redirected the connection here.
fn redirected(original: Option<SocketAddr>, local: SocketAddr) -> Option<SocketAddr> {
    original.filter(|o| *o != local)
}

/// Why an inbound connection is refused rather than forwarded to the app.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InboundRefusal {
    /// Conntrack has no original destination: nothing says which app port was meant.
    Untracked,
    /// The original destination is the inbound listener's own port: a peer dialled
    /// `podIP:15006`, which PREROUTING redirects to itself, or dialled it with no
    /// redirection at all. Serving it would hand the peer an app address it never
    /// named (`--inbound-app-addr`, typically a loopback-only server).
    ProxyPort,
}

/// Where an inbound connection in transparent mode may go: the app at its original
/// destination, and nothing else.
pub fn inbound_destination(original: Option<SocketAddr>, local: SocketAddr) -> Result<SocketAddr, InboundRefusal> {
    let original = original.ok_or(InboundRefusal::Untracked)?;
    // Compared by port, not address: the redirect rewrites the destination to the
    // receiving interface's address, so a self-redirect need not match `local` exactly.
    if original.port() == local.port() {
        return Err(InboundRefusal::ProxyPort);
    }
    Ok(original)
}

pub struct Transparent {
    pub proxy: Arc<Proxy>,
    pub limits: H2Limits,
    pub opaque_ports: HashSet<u16>,
    pub detect_timeout: Duration,
    http1: Client<HttpConnector, Incoming>,
}

impl Transparent {
    pub fn new(proxy: Arc<Proxy>, limits: H2Limits, opaque_ports: HashSet<u16>, detect_timeout: Duration) -> Arc<Self> {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(Duration::from_secs(1)));
        let http1 = Client::builder(TokioExecutor::new()).pool_idle_timeout(Duration::from_secs(30)).build(connector);
        Arc::new(Transparent { proxy, limits, opaque_ports, detect_timeout, http1 })
    }

    /// Accepts until `shutdown` flips, then drains HTTP connections for up to `drain`.
    pub async fn serve(
        self: Arc<Self>,
        side: Side,
        listener: TcpListener,
        mut shutdown: watch::Receiver<bool>,
        drain: Duration,
    ) {
        let conns = crate::server::Connections::default();
        loop {
            tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok((tcp, peer)) => {
                        let _ = tcp.set_nodelay(true);
                        let this = self.clone();
                        let conns = conns.clone();
                        tokio::spawn(async move { this.handle(side, tcp, peer, &conns).await });
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                },
                _ = shutdown.changed() => break,
            }
        }
        drop(listener);
        if tokio::time::timeout(drain, conns.drain()).await.is_err() {
            tracing::warn!(?side, open = conns.open(), "drain timeout; closing remaining connections");
        }
    }

    async fn handle(self: Arc<Self>, side: Side, tcp: TcpStream, peer: SocketAddr, conns: &Connections) {
        let Ok(local) = tcp.local_addr() else { return };
        let dst = match side {
            Side::Outbound => match original_dst(&tcp) {
                Some(dst) => dst,
                None => {
                    // Not redirected: the app dialled the outbound port itself (explicit mode).
                    let proxy = self.proxy.clone();
                    self.serve_h2(tcp, conns, move |req| Box::pin(proxy.clone().outbound(req)));
                    return;
                }
            },
            Side::Inbound => match inbound_destination(conntrack_original_dst(&tcp), local) {
                Ok(dst) => dst,
                Err(reason) => {
                    // Dropped unread: debug, not warn, so a peer cannot flood the log.
                    tracing::debug!(%peer, %local, ?reason, "inbound connection refused");
                    metrics::counter!("strait_inbound_refused_total").increment(1);
                    return;
                }
            },
        };
        let protocol = if self.opaque_ports.contains(&dst.port()) {
            Protocol::Opaque
        } else {
            detect(&tcp, self.detect_timeout).await
        };
        tracing::debug!(?side, %peer, %dst, ?protocol, "connection");
        let side_label = match side {
            Side::Outbound => "outbound",
            Side::Inbound => "inbound",
        };
        let proto_label = match protocol {
            Protocol::Http2 => "http2",
            Protocol::Http1 => "http1",
            Protocol::Opaque => "opaque",
        };
        metrics::counter!("strait_connections_total", "direction" => side_label, "protocol" => proto_label)
            .increment(1);
        let proxy = self.proxy.clone();
        match (side, protocol) {
            (Side::Outbound, Protocol::Http2) => {
                let target = match self.proxy.shared.load().routing.destination_of(dst.ip(), dst.port()) {
                    Some(port) => OutboundTarget::Service { service: port.service.clone(), port: port.port },
                    None => OutboundTarget::Passthrough(dst),
                };
                self.serve_h2(tcp, conns, move |req| Box::pin(proxy.clone().outbound_to(req, target.clone())));
            }
            (Side::Outbound, Protocol::Http1) => {
                let this = self.clone();
                let conn = hyper::server::conn::http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(Duration::from_secs(30))
                    .serve_connection(TokioIo::new(tcp), service_fn(move |req| this.clone().http1(req, dst)));
                // Upgrades (WebSocket) are not proxied in this mode; list such ports as opaque.
                // HTTP/1 idle connections are hyper's keep-alive business, not the idle clock's.
                let conns = conns.clone();
                tokio::spawn(async move { conns.run(conn, None).await });
            }
            (Side::Outbound, Protocol::Opaque) => match self.tcp_target(dst).await {
                Some(target) => splice(tcp, target).await,
                None => tracing::debug!(%dst, "no endpoint for opaque connection; closed"),
            },
            (Side::Inbound, Protocol::Http2) => {
                self.serve_h2(tcp, conns, move |req| Box::pin(proxy.clone().forward_to(Side::Inbound, req, dst)));
            }
            (Side::Inbound, _) => splice(tcp, dst).await,
        }
    }

    fn serve_h2<F, Fut>(&self, tcp: TcpStream, conns: &Connections, handler: F)
    where
        F: Fn(Request<crate::h2io::H2Body>) -> Fut + Send + Sync + Unpin + 'static,
        Fut: std::future::Future<Output = crate::server::Handled> + Send + 'static,
    {
        crate::server::spawn_h2_connection(&self.limits, conns, tcp, handler);
    }

    /// Where TCP-level traffic for `dst` goes: an endpoint of the Service owning the
    /// ClusterIP (kube-proxy does not act inside the pod's redirect), else `dst`.
    async fn tcp_target(&self, dst: SocketAddr) -> Option<SocketAddr> {
        let key = {
            let g = self.proxy.shared.load();
            match g.routing.destination_of(dst.ip(), dst.port()) {
                None => return Some(dst),
                Some(port) => port.service.clone(),
            }
        };
        if let Some(kube) = &self.proxy.demand
            && !kube.endpoints_ready(&[&key])
        {
            kube.demand(std::slice::from_ref(&key), &self.proxy.shared).await;
        }
        let g = self.proxy.shared.load();
        let port = g.routing.destination_of(dst.ip(), dst.port())?;
        self.proxy.pool.pick(&port.endpoints, None).map(|u| u.addr)
    }

    async fn http1(
        self: Arc<Self>,
        mut req: Request<Incoming>,
        dst: SocketAddr,
    ) -> Result<Response<ProxyBody>, Infallible> {
        let Some(target) = self.tcp_target(dst).await else {
            return Ok(plain(StatusCode::SERVICE_UNAVAILABLE, "strait: no endpoint for this Service\n"));
        };
        let pq = req.uri().path_and_query().map(|p| p.as_str().to_owned()).unwrap_or_else(|| "/".into());
        match Uri::builder().scheme("http").authority(target.to_string()).path_and_query(pq).build() {
            Ok(uri) => *req.uri_mut() = uri,
            Err(e) => return Ok(plain(StatusCode::BAD_REQUEST, &format!("strait: bad request URI: {e}\n"))),
        }
        match self.http1.request(req).await {
            Ok(resp) => Ok(resp.map(body::boxed)),
            Err(e) => {
                tracing::debug!(%target, error = %e, "HTTP/1 upstream failed");
                Ok(plain(StatusCode::BAD_GATEWAY, "strait: upstream failed\n"))
            }
        }
    }
}

fn plain(status: StatusCode, msg: &str) -> Response<ProxyBody> {
    let mut r = Response::new(body::boxed(http_body_util::Full::new(bytes::Bytes::from(msg.to_owned()))));
    *r.status_mut() = status;
    r
}

/// Copies bytes both ways until either side closes.
async fn splice(mut client: TcpStream, target: SocketAddr) {
    let mut upstream = match tokio::time::timeout(Duration::from_secs(1), TcpStream::connect(target)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            tracing::debug!(%target, error = %e, "opaque connect failed");
            return;
        }
        Err(_) => {
            tracing::debug!(%target, "opaque connect timed out");
            return;
        }
    };
    let _ = upstream.set_nodelay(true);
    if let Err(e) = tokio::io::copy_bidirectional(&mut client, &mut upstream).await {
        tracing::debug!(%target, error = %e, "opaque connection ended with error");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classification() {
        let cases: &[(&[u8], Option<Protocol>)] = &[
            (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00", Some(Protocol::Http2)),
            (b"PRI * HTTP/2.0\r\n", None),
            (b"PRI", None),
            (b"GET / HTTP/1.1\r\n", Some(Protocol::Http1)),
            (b"POST /x HTTP/1.1", Some(Protocol::Http1)),
            (b"GE", None),
            (b"OPTI", None),
            (b"\x16\x03\x01\x02\x00", Some(Protocol::Opaque)),
            (b"SSH-2.0-OpenSSH", Some(Protocol::Opaque)),
            (b"PRX", Some(Protocol::Opaque)),
            (b"GETX", Some(Protocol::Opaque)),
            (b"", None),
        ];
        for (bytes, want) in cases {
            assert_eq!(classify(bytes), *want, "{:?}", String::from_utf8_lossy(bytes));
        }
    }

    #[tokio::test]
    async fn detection_over_real_sockets() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        for (send, want) in [
            (&b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"[..], Protocol::Http2),
            (&b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"[..], Protocol::Http1),
            (&b"\x16\x03\x01"[..], Protocol::Opaque),
            (&b""[..], Protocol::Opaque), // server-first: the client says nothing
        ] {
            let mut client = TcpStream::connect(addr).await.expect("connect");
            let (server, _) = listener.accept().await.expect("accept");
            if !send.is_empty() {
                tokio::io::AsyncWriteExt::write_all(&mut client, send).await.expect("write");
            }
            assert_eq!(detect(&server, Duration::from_millis(200)).await, want);
            // Peeking consumed nothing.
            let mut buf = vec![0u8; send.len()];
            if !send.is_empty() {
                let mut server = server;
                tokio::io::AsyncReadExt::read_exact(&mut server, &mut buf).await.expect("read");
                assert_eq!(buf, send);
            }
        }
    }

    #[tokio::test]
    async fn unredirected_connection_has_no_original_dst() {
        for bind in ["127.0.0.1:0", "[::1]:0"] {
            let Ok(listener) = TcpListener::bind(bind).await else {
                eprintln!("SKIPPED {bind}: not available here");
                continue;
            };
            let addr = listener.local_addr().expect("addr");
            let _client = TcpStream::connect(addr).await.expect("connect");
            let (server, _) = listener.accept().await.expect("accept");
            assert_eq!(original_dst(&server), None, "{bind}");
            // Conntrack, when it tracks loopback, reports the socket's own address, of
            // the socket's family (IP6T_SO_ORIGINAL_DST on the IPv6 socket).
            if let Some(orig) = conntrack_original_dst(&server) {
                assert_eq!(orig, addr, "{bind}");
            }
        }
    }

    #[test]
    fn redirection_is_a_changed_destination() {
        let local: SocketAddr = "[fd52:5452:1::5]:15001".parse().expect("addr");
        let app: SocketAddr = "[fd52:5452:1::7]:8080".parse().expect("addr");
        assert_eq!(redirected(Some(app), local), Some(app));
        assert_eq!(redirected(Some(local), local), None);
        assert_eq!(redirected(None, local), None);
    }

    #[test]
    fn inbound_goes_only_to_the_original_destination() {
        let local: SocketAddr = "10.252.7.3:15006".parse().expect("addr");
        let app: SocketAddr = "10.252.7.3:8080".parse().expect("addr");
        assert_eq!(inbound_destination(Some(app), local), Ok(app));
        // podIP:15006 from another pod: redirected to itself.
        assert_eq!(inbound_destination(Some(local), local), Err(InboundRefusal::ProxyPort));
        // The same port on another address of the pod (REDIRECT picks the interface's
        // primary address) is still the proxy's port.
        let other: SocketAddr = "10.252.7.99:15006".parse().expect("addr");
        assert_eq!(inbound_destination(Some(other), local), Err(InboundRefusal::ProxyPort));
        let local6: SocketAddr = "[fd52:5452:7::3]:15006".parse().expect("addr");
        assert_eq!(inbound_destination(Some(local6), local6), Err(InboundRefusal::ProxyPort));
        let app6: SocketAddr = "[fd52:5452:7::3]:7000".parse().expect("addr");
        assert_eq!(inbound_destination(Some(app6), local6), Ok(app6));
        assert_eq!(inbound_destination(None, local), Err(InboundRefusal::Untracked));
    }
}
