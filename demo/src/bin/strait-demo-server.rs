//! An application container for end-to-end tests that know nothing about Strait:
//! a tonic gRPC server (all demo services) and, optionally, an HTTP/1.1 server, a
//! TCP echo server and a server-first TCP server (it speaks before the client).
#![forbid(unsafe_code)]

use anyhow::Context;
use clap::Parser;
use std::net::SocketAddr;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

#[derive(Parser)]
#[command(name = "strait-demo-server")]
struct Args {
    /// Name reported in every answer.
    #[arg(long)]
    name: String,
    #[arg(long)]
    grpc: Option<SocketAddr>,
    #[arg(long)]
    http1: Option<SocketAddr>,
    #[arg(long)]
    tcp_echo: Option<SocketAddr>,
    /// Server-first: greets with "HELLO <name>\n", then echoes.
    #[arg(long)]
    tcp_greeting: Option<SocketAddr>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let mut tasks = Vec::new();
    if let Some(addr) = args.grpc {
        let l = TcpListener::bind(addr).await.with_context(|| format!("bind {addr}"))?;
        let name = args.name.clone();
        tasks.push(tokio::spawn(async move {
            if let Err(e) = strait_demo::serve_backend(name, l, std::future::pending()).await {
                eprintln!("grpc server: {e}");
            }
        }));
    }
    if let Some(addr) = args.http1 {
        let l = TcpListener::bind(addr).await.with_context(|| format!("bind {addr}"))?;
        let name = args.name.clone();
        tasks.push(tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                let name = name.clone();
                tokio::spawn(async move {
                    // Serves keep-alive requests until the client closes.
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 4096];
                    loop {
                        let Ok(n) = s.read(&mut chunk).await else { return };
                        if n == 0 {
                            return;
                        }
                        buf.extend_from_slice(&chunk[..n]);
                        while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            buf.drain(..end + 4);
                            let body = format!("hello from {name}\n");
                            let resp = format!(
                                "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nx-backend: {name}\r\n\r\n{body}",
                                body.len()
                            );
                            if s.write_all(resp.as_bytes()).await.is_err() {
                                return;
                            }
                        }
                    }
                });
            }
        }));
    }
    for (addr, greet) in [(args.tcp_echo, false), (args.tcp_greeting, true)] {
        let Some(addr) = addr else { continue };
        let l = TcpListener::bind(addr).await.with_context(|| format!("bind {addr}"))?;
        let name = args.name.clone();
        tasks.push(tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                let name = name.clone();
                tokio::spawn(async move {
                    if greet && s.write_all(format!("HELLO {name}\n").as_bytes()).await.is_err() {
                        return;
                    }
                    let mut buf = [0u8; 4096];
                    while let Ok(n) = s.read(&mut buf).await {
                        if n == 0 || s.write_all(&buf[..n]).await.is_err() {
                            return;
                        }
                    }
                });
            }
        }));
    }
    if tasks.is_empty() {
        anyhow::bail!("nothing to serve: give --grpc, --http1, --tcp-echo or --tcp-greeting");
    }
    eprintln!("strait-demo-server {} ready", args.name);
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    Ok(())
}
