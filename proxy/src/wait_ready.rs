//! `strait-proxy wait-ready`: blocks until the proxy's admin endpoint reports ready.
//! Classic (non-native) sidecar injection runs it as the proxy container's postStart
//! hook, so the kubelet starts the application containers only after the proxy can
//! route their traffic.
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

#[derive(Debug, clap::Parser)]
#[command(name = "strait-proxy wait-ready")]
pub struct WaitReadyArgs {
    #[arg(long, default_value = "127.0.0.1:15000")]
    pub admin_addr: SocketAddr,
    #[arg(long, default_value = "60s", value_parser = crate::config::parse_duration)]
    pub timeout: Duration,
}

/// One `GET /ready`; true on HTTP 200.
pub fn probe(addr: SocketAddr) -> bool {
    let attempt = || -> std::io::Result<bool> {
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_millis(500))?;
        s.set_read_timeout(Some(Duration::from_millis(500)))?;
        s.write_all(b"GET /ready HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")?;
        let mut buf = [0u8; 16];
        let n = s.read(&mut buf)?;
        Ok(buf[..n].starts_with(b"HTTP/1.1 200"))
    };
    attempt().unwrap_or(false)
}

pub fn wait(args: &WaitReadyArgs) -> Result<Duration, String> {
    let start = Instant::now();
    while start.elapsed() < args.timeout {
        if probe(args.admin_addr) {
            return Ok(start.elapsed());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    Err(format!("strait-proxy at {} not ready after {:?}", args.admin_addr, args.timeout))
}
