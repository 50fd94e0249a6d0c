//! An unmodified application client for end-to-end tests: dials an address (a
//! Service ClusterIP in a meshed pod) with plain tonic, HTTP/1.1 or TCP, and prints
//! one JSON line per call: {"ok", "backend", "code", "message", "headers"}.
#![forbid(unsafe_code)]

use clap::Parser;
use std::net::SocketAddr;
use std::time::Duration;
use strait_demo::pb::echo_v1::echo_client::EchoClient;
use strait_demo::pb::order_v1::order_service_client::OrderServiceClient;
use strait_demo::pb::payment_v1::payment_service_client::PaymentServiceClient;
use strait_demo::pb::recommendation_v1::recommendation_service_client::RecommendationServiceClient;
use strait_demo::pb::user_v1::user_service_client::UserServiceClient;
use strait_demo::{Answer, Probe};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[derive(Parser)]
#[command(name = "strait-demo-client")]
struct Args {
    /// Where to connect, e.g. a Service ClusterIP:port.
    #[arg(long)]
    target: SocketAddr,
    /// grpc, http1, tcp-echo, tcp-greeting.
    #[arg(long, default_value = "grpc")]
    protocol: String,
    /// For grpc: user/GetUser, user/CreateUser, user/ListUsers, order/GetOrder,
    /// recommendation/Recommend, payment/ProcessPayment, echo/Unary, echo/ServerStream.
    #[arg(long, default_value = "echo/Unary")]
    call: String,
    #[arg(long, default_value_t = 1)]
    count: u32,
    /// Extra metadata, name=value (repeatable).
    #[arg(long = "header")]
    headers: Vec<String>,
    #[arg(long, default_value_t = 0)]
    stream_count: u32,
    #[arg(long, default_value_t = 0)]
    delay_ms: u32,
    /// Pause between calls.
    #[arg(long, default_value_t = 0)]
    interval_ms: u64,
    /// Per-call deadline.
    #[arg(long, default_value_t = 10_000)]
    timeout_ms: u64,
}

fn line(ok: bool, backend: &str, code: &str, message: &str, headers: serde_json::Value) {
    println!(
        "{}",
        serde_json::json!({"ok": ok, "backend": backend, "code": code, "message": message, "headers": headers})
    );
}

fn request(args: &Args, probe: Probe) -> tonic::Request<Probe> {
    let mut r = tonic::Request::new(probe);
    r.set_timeout(Duration::from_millis(args.timeout_ms));
    for h in &args.headers {
        if let Some((k, v)) = h.split_once('=')
            && let (Ok(k), Ok(v)) = (k.parse::<tonic::metadata::MetadataKey<_>>(), v.parse())
        {
            r.metadata_mut().insert(k, v);
        }
    }
    r
}

fn report(result: Result<Answer, tonic::Status>) {
    match result {
        Ok(a) => line(true, &a.backend, "Ok", "", serde_json::to_value(&a.headers).unwrap_or_default()),
        Err(s) => line(false, "", &format!("{:?}", s.code()), s.message(), serde_json::Value::Null),
    }
}

async fn grpc(args: &Args) -> Result<(), String> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", args.target))
        .map_err(|e| e.to_string())?
        .connect_timeout(Duration::from_secs(3))
        .connect_lazy();
    for i in 0..args.count {
        let probe = Probe {
            payload: format!("call-{i}"),
            stream_count: args.stream_count,
            delay_ms: args.delay_ms,
            ..Probe::default()
        };
        let req = request(args, probe);
        let result = match args.call.as_str() {
            "user/GetUser" => UserServiceClient::new(channel.clone()).get_user(req).await.map(|r| r.into_inner()),
            "user/CreateUser" => UserServiceClient::new(channel.clone()).create_user(req).await.map(|r| r.into_inner()),
            "order/GetOrder" => OrderServiceClient::new(channel.clone()).get_order(req).await.map(|r| r.into_inner()),
            "recommendation/Recommend" => {
                RecommendationServiceClient::new(channel.clone()).recommend(req).await.map(|r| r.into_inner())
            }
            "payment/ProcessPayment" => {
                PaymentServiceClient::new(channel.clone()).process_payment(req).await.map(|r| r.into_inner())
            }
            "echo/Unary" => EchoClient::new(channel.clone()).unary(req).await.map(|r| r.into_inner()),
            "echo/ServerStream" | "user/ListUsers" => {
                let stream = if args.call == "user/ListUsers" {
                    UserServiceClient::new(channel.clone()).list_users(req).await
                } else {
                    EchoClient::new(channel.clone()).server_stream(req).await
                };
                match stream {
                    Err(s) => Err(s),
                    Ok(resp) => {
                        let mut s = resp.into_inner();
                        let mut last = Err(tonic::Status::unknown("empty stream"));
                        let mut n = 0;
                        loop {
                            match s.message().await {
                                Ok(Some(a)) => {
                                    n += 1;
                                    last = Ok(a);
                                }
                                Ok(None) => break,
                                Err(e) => {
                                    last = Err(e);
                                    break;
                                }
                            }
                        }
                        last.map(|mut a| {
                            a.seq = n;
                            a
                        })
                    }
                }
            }
            other => return Err(format!("unknown --call {other}")),
        };
        report(result);
        if args.interval_ms > 0 {
            tokio::time::sleep(Duration::from_millis(args.interval_ms)).await;
        }
    }
    Ok(())
}

async fn raw(args: &Args) -> Result<(), String> {
    for i in 0..args.count {
        let result = async {
            let mut s = tokio::net::TcpStream::connect(args.target).await.map_err(|e| e.to_string())?;
            let mut out = Vec::new();
            match args.protocol.as_str() {
                "http1" => {
                    s.write_all(
                        format!("GET /hello HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n", args.target).as_bytes(),
                    )
                    .await
                    .map_err(|e| e.to_string())?;
                    s.read_to_end(&mut out).await.map_err(|e| e.to_string())?;
                }
                "tcp-echo" | "tcp-greeting" => {
                    if args.protocol == "tcp-greeting" {
                        // Server-first: read the greeting before saying anything.
                        let mut buf = [0u8; 256];
                        let n = s.read(&mut buf).await.map_err(|e| e.to_string())?;
                        out.extend_from_slice(&buf[..n]);
                    }
                    let msg = format!("ping-{i}\n");
                    s.write_all(msg.as_bytes()).await.map_err(|e| e.to_string())?;
                    let mut buf = vec![0u8; msg.len()];
                    s.read_exact(&mut buf).await.map_err(|e| e.to_string())?;
                    out.extend_from_slice(&buf);
                }
                other => return Err(format!("unknown --protocol {other}")),
            }
            Ok::<String, String>(String::from_utf8_lossy(&out).into_owned())
        };
        match tokio::time::timeout(Duration::from_millis(args.timeout_ms), result).await {
            Ok(Ok(text)) => line(true, "", "Ok", &text, serde_json::Value::Null),
            Ok(Err(e)) => line(false, "", "Error", &e, serde_json::Value::Null),
            Err(_) => line(false, "", "Timeout", "", serde_json::Value::Null),
        }
    }
    Ok(())
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    let r = if args.protocol == "grpc" { grpc(&args).await } else { raw(&args).await };
    if let Err(e) = r {
        eprintln!("strait-demo-client: {e}");
        std::process::exit(2);
    }
}
