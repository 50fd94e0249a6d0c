//! The benchmark backend: `strait.test.v1.Echo` (the demo protos) on tonic, with
//! TCP_NODELAY on accepted connections.
//!
//! Why not `strait-demo-server`: `strait_demo::serve_backend` serves
//! `TcpIncoming::from(listener)`, which leaves Nagle's algorithm on; a response's
//! trailers then wait for the client's next packet or its delayed ACK, so a direct call
//! measured ~1/rate (2.05 ms p50 at 500 rps, 1.03 ms at 1000 rps) with 40 ms tails —
//! the generator and the proxies would be measuring Nagle, not themselves.
use std::pin::Pin;
use strait_demo::pb::echo_v1::echo_server::{Echo, EchoServer};
use strait_demo::{Answer, Probe};
use tonic::{Request, Response, Status, Streaming};

type AnswerStream = Pin<Box<dyn futures::Stream<Item = Result<Answer, Status>> + Send + 'static>>;

#[derive(Clone, Default)]
struct Bench;

fn answer(method: &str, payload: String, seq: u32) -> Answer {
    Answer {
        backend: "bench".into(),
        service: "strait.test.v1.Echo".into(),
        method: method.into(),
        headers: Default::default(),
        payload,
        seq,
    }
}

#[tonic::async_trait]
impl Echo for Bench {
    async fn unary(&self, req: Request<Probe>) -> Result<Response<Answer>, Status> {
        Ok(Response::new(answer("Unary", req.into_inner().payload, 0)))
    }
    type ServerStreamStream = AnswerStream;
    async fn server_stream(&self, req: Request<Probe>) -> Result<Response<AnswerStream>, Status> {
        let p = req.into_inner();
        let n = p.stream_count.min(100_000);
        let items: Vec<Result<Answer, Status>> =
            (0..n).map(|seq| Ok(answer("ServerStream", p.payload.clone(), seq))).collect();
        Ok(Response::new(Box::pin(futures::stream::iter(items))))
    }
    async fn client_stream(&self, req: Request<Streaming<Probe>>) -> Result<Response<Answer>, Status> {
        let mut s = req.into_inner();
        let mut count = 0;
        while s.message().await?.is_some() {
            count += 1;
        }
        Ok(Response::new(answer("ClientStream", String::new(), count)))
    }
    type BidiStreamStream = AnswerStream;
    async fn bidi_stream(&self, _req: Request<Streaming<Probe>>) -> Result<Response<AnswerStream>, Status> {
        Err(Status::unimplemented("not used by the benchmark"))
    }
}

/// Serves until killed. Runs its own multi-threaded runtime (one worker per CPU it may
/// use: one when pinned to one core, like the demo server).
pub fn serve(addr: std::net::SocketAddr) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    rt.block_on(async move {
        let incoming = tonic::transport::server::TcpIncoming::bind(addr)
            .map_err(|e| anyhow::anyhow!("bind {addr}: {e}"))?
            .with_nodelay(Some(true));
        serve_incoming(incoming).await
    })
}

/// Serves the Echo service on `incoming` on the current runtime.
pub async fn serve_incoming(incoming: tonic::transport::server::TcpIncoming) -> anyhow::Result<()> {
    tonic::transport::Server::builder().add_service(EchoServer::new(Bench)).serve_with_incoming(incoming).await?;
    Ok(())
}
