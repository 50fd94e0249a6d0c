//! End-to-end Strait demo.
//!
//! Spawns in-process demo backends, writes a local config directory (the
//! example manifests plus generated EndpointSlices), starts the proxy binary
//! against it and drives the GRPCRoute scenarios through the proxy, printing
//! which backend answered each kind of request. Exits non-zero when a result
//! contradicts the routes in `deploy/examples`.

#![forbid(unsafe_code)]

use std::collections::{BTreeMap, VecDeque};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{ExitCode, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use clap::Parser;
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::{Child, Command};
use tonic::transport::Channel;
use tonic::{Code, Request};

use strait_demo::pb::order_v1::order_service_client::OrderServiceClient;
use strait_demo::pb::payment_v1::payment_service_client::PaymentServiceClient;
use strait_demo::pb::recommendation_v1::recommendation_service_client::RecommendationServiceClient;
use strait_demo::pb::user_v1::user_service_client::UserServiceClient;
use strait_demo::{Answer, BackendHandle, Probe, channel_via_proxy, endpoint_slice_yaml, spawn_backend};

const NAMESPACE: &str = "app";
const SERVICE_PORT: u16 = 50051;
/// Backend Services and how many replicas to run; order-service tracks get
/// two replicas each so the output also shows per-endpoint load balancing.
const BACKENDS: &[(&str, usize)] = &[
    ("user-service-reader", 1),
    ("user-service-writer", 1),
    ("recommendation-v1", 1),
    ("recommendation-v2", 1),
    ("order-service-stable", 2),
    ("order-service-canary", 2),
    ("payment-service", 1),
];
const READY_TIMEOUT: Duration = Duration::from_secs(15);
const LOG_TAIL_LINES: usize = 40;

#[derive(Parser, Debug)]
#[command(name = "strait-demo", about = "Run the Strait GRPCRoute demo against a proxy binary")]
struct Args {
    /// Path to the Strait proxy binary.
    #[arg(long)]
    proxy_bin: PathBuf,
    /// Directory with the example manifests (*.yaml).
    #[arg(long, default_value = "deploy/examples")]
    examples: PathBuf,
    /// Request budget; scenarios derive their request counts from it.
    #[arg(long, default_value_t = 400)]
    requests: usize,
}

/// A spawned backend and the Service it belongs to.
struct Replica {
    service: &'static str,
    handle: BackendHandle,
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    match run(args).await {
        Ok(code) => code,
        Err(e) => {
            // Alternate Display prints the context chain without the
            // backtrace that `Debug` would add when RUST_BACKTRACE is set.
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> Result<ExitCode> {
    if args.requests < 4 {
        bail!("--requests must be at least 4");
    }

    let replicas = spawn_backends().await?;
    let config_dir = write_config_dir(&args.examples, &replicas)?;
    println!("config dir: {}", config_dir.path().display());

    let outbound = free_port()?;
    let inbound = free_port()?;
    let admin = free_port()?;
    let mut proxy = Proxy::start(&args.proxy_bin, config_dir.path(), outbound, inbound, admin)?;
    proxy.wait_ready(admin).await?;
    println!("proxy ready: outbound {outbound}, admin {admin}\n");

    let service_of: BTreeMap<String, &'static str> =
        replicas.iter().map(|r| (r.handle.name().to_owned(), r.service)).collect();
    let mut report = Report::new(service_of);
    let run = run_scenarios(outbound, args.requests, &mut report).await;

    // /routes is printed even when a scenario errored: it is the first thing
    // one wants to see when routing looks wrong.
    match http_get(admin, "/routes").await {
        Ok((200, body)) => {
            let pretty = serde_json::from_str::<serde_json::Value>(&body)
                .ok()
                .and_then(|v| serde_json::to_string_pretty(&v).ok())
                .unwrap_or(body);
            println!("== GET /routes ==\n{pretty}\n");
        }
        Ok((status, body)) => report.fail(format!("GET /routes returned {status}: {body}")),
        Err(e) => report.fail(format!("GET /routes failed: {e:#}")),
    }
    if let Err(e) = run {
        report.fail(format!("scenario run aborted: {e:#}"));
    }

    let failed = !report.failures.is_empty();
    if failed {
        eprintln!("proxy output (tail):\n{}", proxy.tail());
    }
    proxy.stop().await;
    for replica in replicas {
        // Bounded: a backend must not keep the demo from exiting.
        let _ = tokio::time::timeout(Duration::from_secs(5), replica.handle.shutdown()).await;
    }

    if failed {
        println!("RESULT: {} check(s) FAILED", report.failures.len());
        for f in &report.failures {
            println!("  - {f}");
        }
        Ok(ExitCode::FAILURE)
    } else {
        println!("RESULT: all scenarios behaved as the routes specify");
        Ok(ExitCode::SUCCESS)
    }
}

async fn spawn_backends() -> Result<Vec<Replica>> {
    let mut replicas = Vec::new();
    for &(service, count) in BACKENDS {
        for i in 0..count {
            // Single-replica backends report the bare Service name.
            let name = if count == 1 { service.to_owned() } else { format!("{service}-{i}") };
            let handle = spawn_backend(&name).await.with_context(|| format!("spawning backend {name}"))?;
            replicas.push(Replica { service, handle });
        }
    }
    Ok(replicas)
}

fn write_config_dir(examples: &Path, replicas: &[Replica]) -> Result<tempfile::TempDir> {
    let dir = tempfile::Builder::new().prefix("strait-demo-").tempdir().context("creating temp config dir")?;
    let mut copied = 0;
    for entry in std::fs::read_dir(examples).with_context(|| format!("reading examples dir {}", examples.display()))? {
        let path = entry?.path();
        let is_yaml = path.extension().is_some_and(|e| e == "yaml" || e == "yml");
        if is_yaml && let Some(file_name) = path.file_name() {
            std::fs::copy(&path, dir.path().join(file_name)).with_context(|| format!("copying {}", path.display()))?;
            copied += 1;
        }
    }
    if copied == 0 {
        bail!("no *.yaml files found in {}", examples.display());
    }

    let mut endpoints = String::from("# Generated by strait-demo: in-process backends.\n");
    for &(service, _) in BACKENDS {
        let addrs: Vec<SocketAddr> =
            replicas.iter().filter(|r| r.service == service).map(|r| r.handle.addr()).collect();
        endpoints.push_str(&endpoint_slice_yaml(NAMESPACE, service, "grpc", &addrs));
    }
    std::fs::write(dir.path().join("endpoints.yaml"), endpoints).context("writing endpoints.yaml")?;
    Ok(dir)
}

/// Reserves a free loopback port by binding and releasing it. Racy in theory,
/// but the proxy binds it right away and this is a demo.
fn free_port() -> Result<SocketAddr> {
    let listener = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).context("binding free port")?;
    Ok(listener.local_addr()?)
}

/// The proxy child process plus a rolling tail of its output for diagnostics.
struct Proxy {
    child: Child,
    log: Arc<Mutex<VecDeque<String>>>,
}

impl Proxy {
    fn start(
        bin: &Path,
        config_dir: &Path,
        outbound: SocketAddr,
        inbound: SocketAddr,
        admin: SocketAddr,
    ) -> Result<Self> {
        let mut child = Command::new(bin)
            .arg("--config-dir")
            .arg(config_dir)
            .args(["--outbound-addr", &outbound.to_string()])
            .args(["--inbound-addr", &inbound.to_string()])
            .args(["--admin-addr", &admin.to_string()])
            .args(["--namespace", NAMESPACE, "--log-level", "warn"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting proxy {}", bin.display()))?;
        let log = Arc::new(Mutex::new(VecDeque::new()));
        if let Some(out) = child.stdout.take() {
            collect_lines(out, log.clone());
        }
        if let Some(err) = child.stderr.take() {
            collect_lines(err, log.clone());
        }
        Ok(Self { child, log })
    }

    fn tail(&self) -> String {
        match self.log.lock() {
            Ok(lines) if !lines.is_empty() => lines.iter().map(|l| format!("  | {l}\n")).collect(),
            _ => "  | (no output)\n".to_owned(),
        }
    }

    async fn wait_ready(&mut self, admin: SocketAddr) -> Result<()> {
        let deadline = Instant::now() + READY_TIMEOUT;
        let mut last = String::from("no attempt");
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait()? {
                // Give the reader tasks a moment to drain the final lines.
                tokio::time::sleep(Duration::from_millis(100)).await;
                bail!("proxy exited early with {status}; output tail:\n{}", self.tail());
            }
            match http_get(admin, "/ready").await {
                Ok((200, _)) => return Ok(()),
                Ok((status, body)) => last = format!("HTTP {status}: {}", body.trim()),
                Err(e) => last = format!("{e:#}"),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Err(anyhow!(
            "proxy not ready after {}s (last /ready: {last}); output tail:\n{}",
            READY_TIMEOUT.as_secs(),
            self.tail()
        ))
    }

    async fn stop(mut self) {
        let _ = self.child.kill().await;
    }
}

fn collect_lines(stream: impl AsyncRead + Unpin + Send + 'static, log: Arc<Mutex<VecDeque<String>>>) {
    tokio::spawn(async move {
        let mut lines = BufReader::new(stream).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            if let Ok(mut log) = log.lock() {
                if log.len() == LOG_TAIL_LINES {
                    log.pop_front();
                }
                log.push_back(line);
            }
        }
    });
}

/// Minimal HTTP/1.1 GET for the admin endpoint; returns (status, body).
async fn http_get(addr: SocketAddr, path: &str) -> Result<(u16, String)> {
    Ok(strait_demo::http1_get(addr, path, Duration::from_secs(3)).await?)
}

fn authority(service: &str) -> String {
    format!("{service}.{NAMESPACE}.svc.cluster.local:{SERVICE_PORT}")
}

/// Which backend answered how often, plus errors by gRPC code.
#[derive(Default)]
struct Tally {
    backends: BTreeMap<String, usize>,
    errors: BTreeMap<String, usize>,
}

impl Tally {
    fn record(&mut self, result: Result<Answer, tonic::Status>) -> Option<Answer> {
        match result {
            Ok(answer) => {
                *self.backends.entry(answer.backend.clone()).or_default() += 1;
                Some(answer)
            }
            Err(status) => {
                *self.errors.entry(format!("ERROR {:?}", status.code())).or_default() += 1;
                None
            }
        }
    }

    fn total(&self) -> usize {
        self.backends.values().sum::<usize>() + self.errors.values().sum::<usize>()
    }

    fn only_from(&self, backend: &str) -> bool {
        self.errors.is_empty() && self.backends.len() == 1 && self.backends.contains_key(backend)
    }

    fn describe(&self) -> String {
        self.backends.iter().chain(self.errors.iter()).map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(", ")
    }
}

struct Report {
    service_of: BTreeMap<String, &'static str>,
    failures: Vec<String>,
}

impl Report {
    fn new(service_of: BTreeMap<String, &'static str>) -> Self {
        Self { service_of, failures: Vec::new() }
    }

    fn fail(&mut self, msg: String) {
        println!("  !! {msg}");
        self.failures.push(msg);
    }

    /// Records a failure unless every request of `request` went to `expected`.
    fn expect_only(&mut self, scenario: &str, request: &str, tally: &Tally, expected: &str) {
        if !tally.only_from(expected) {
            self.fail(format!("{scenario}: {request} should be answered only by {expected}, got {}", tally.describe()));
        }
    }

    fn table(&self, title: &str, svc: &str, rows: &[(&str, &Tally)]) {
        println!("== {title} (authority {}) ==", authority(svc));
        println!("  {:<34} {:<26} {:>6} {:>7}", "request", "answered by", "count", "share");
        for (request, tally) in rows {
            let total = tally.total().max(1);
            for (who, count) in tally.backends.iter().chain(tally.errors.iter()) {
                println!("  {:<34} {:<26} {:>6} {:>6.1}%", request, who, count, 100.0 * *count as f64 / total as f64);
            }
        }
        println!();
    }
}

async fn connect(proxy: SocketAddr, svc: &str) -> Result<Channel> {
    channel_via_proxy(proxy, &authority(svc)).await.with_context(|| format!("connecting to proxy {proxy} for {svc}"))
}

fn probe(payload: &str) -> Probe {
    Probe { payload: payload.to_owned(), ..Probe::default() }
}

async fn run_scenarios(proxy: SocketAddr, n: usize, report: &mut Report) -> Result<()> {
    method_split(proxy, n, report).await?;
    header_ab(proxy, n, report).await?;
    canary(proxy, n, report).await?;
    header_modifier(proxy, report).await?;
    unmatched(proxy, report).await?;
    Ok(())
}

async fn method_split(proxy: SocketAddr, n: usize, report: &mut Report) -> Result<()> {
    const NAME: &str = "method split";
    let mut client = UserServiceClient::new(connect(proxy, "user-service").await?);
    let (mut get, mut create, mut list) = (Tally::default(), Tally::default(), Tally::default());
    for i in 0..n / 4 {
        get.record(client.get_user(probe(&format!("get-{i}"))).await.map(|r| r.into_inner()));
        create.record(client.create_user(probe(&format!("create-{i}"))).await.map(|r| r.into_inner()));
    }
    let stream = client.list_users(Probe { stream_count: 3, ..probe("list") }).await;
    match stream {
        Ok(resp) => {
            let mut stream = resp.into_inner();
            loop {
                match stream.message().await {
                    Ok(Some(answer)) => {
                        list.record(Ok(answer));
                    }
                    Ok(None) => break,
                    Err(status) => {
                        list.record(Err(status));
                        break;
                    }
                }
            }
        }
        Err(status) => {
            list.record(Err(status));
        }
    }
    report.table(
        "Scenario: method split",
        "user-service",
        &[("GetUser (unary)", &get), ("CreateUser (unary)", &create), ("ListUsers (server stream x3)", &list)],
    );
    report.expect_only(NAME, "GetUser", &get, "user-service-reader");
    report.expect_only(NAME, "CreateUser", &create, "user-service-writer");
    report.expect_only(NAME, "ListUsers", &list, "user-service-reader");
    if list.total() != 3 {
        report.fail(format!("{NAME}: ListUsers should yield 3 messages, got {}", list.total()));
    }
    Ok(())
}

async fn header_ab(proxy: SocketAddr, n: usize, report: &mut Report) -> Result<()> {
    const NAME: &str = "header A/B";
    let mut client = RecommendationServiceClient::new(connect(proxy, "recommendation-service").await?);
    let (mut treated, mut plain) = (Tally::default(), Tally::default());
    for i in 0..n / 4 {
        let mut req = Request::new(probe(&format!("rec-{i}")));
        req.metadata_mut().insert("x-experiment-group", tonic::metadata::MetadataValue::from_static("treatment-a"));
        treated.record(client.recommend(req).await.map(|r| r.into_inner()));
        plain.record(client.recommend(probe(&format!("rec-{i}"))).await.map(|r| r.into_inner()));
    }
    report.table(
        "Scenario: header A/B",
        "recommendation-service",
        &[("Recommend + x-experiment-group", &treated), ("Recommend (no header)", &plain)],
    );
    report.expect_only(NAME, "Recommend with header", &treated, "recommendation-v2");
    report.expect_only(NAME, "Recommend without header", &plain, "recommendation-v1");
    Ok(())
}

async fn canary(proxy: SocketAddr, n: usize, report: &mut Report) -> Result<()> {
    const NAME: &str = "canary";
    let mut client = OrderServiceClient::new(connect(proxy, "order-service").await?);
    let mut tally = Tally::default();
    for i in 0..n {
        tally.record(client.get_order(probe(&format!("order-{i}"))).await.map(|r| r.into_inner()));
    }
    report.table("Scenario: weighted canary (90/10)", "order-service", &[("GetOrder (unary)", &tally)]);

    let mut per_service: BTreeMap<&str, usize> = BTreeMap::new();
    for (backend, count) in &tally.backends {
        let svc = report.service_of.get(backend).copied().unwrap_or("<unknown>");
        *per_service.entry(svc).or_default() += count;
    }
    let answered: usize = per_service.values().sum();
    let stable = per_service.get("order-service-stable").copied().unwrap_or(0);
    let canary = per_service.get("order-service-canary").copied().unwrap_or(0);
    let share = |c: usize| 100.0 * c as f64 / answered.max(1) as f64;
    println!(
        "  by Service: order-service-stable {stable} ({:.1}%), order-service-canary {canary} ({:.1}%)\n",
        share(stable),
        share(canary)
    );

    if !tally.errors.is_empty() {
        report.fail(format!("{NAME}: errors: {}", tally.describe()));
    }
    if stable + canary != answered {
        report.fail(format!("{NAME}: answers from outside the route: {}", tally.describe()));
    }
    // With few requests the share is too noisy to judge (the default 400
    // gives a comfortable margin around 90%).
    if n >= 100 {
        let s = share(stable);
        if !(80.0..=97.0).contains(&s) {
            report.fail(format!("{NAME}: stable share {s:.1}% outside 80-97%"));
        }
    } else {
        println!("  (share check skipped: fewer than 100 requests)\n");
    }
    Ok(())
}

async fn header_modifier(proxy: SocketAddr, report: &mut Report) -> Result<()> {
    const NAME: &str = "header modifier";
    let mut client = PaymentServiceClient::new(connect(proxy, "payment-service").await?);
    let mut tally = Tally::default();
    let mut seen = Vec::new();
    for i in 0..5 {
        if let Some(answer) =
            tally.record(client.process_payment(probe(&format!("pay-{i}"))).await.map(|r| r.into_inner()))
        {
            seen.push(answer.headers.get("x-request-priority").cloned());
        }
    }
    report.table("Scenario: header modifier", "payment-service", &[("ProcessPayment (unary)", &tally)]);
    for (i, value) in seen.iter().enumerate() {
        println!("  request {i}: backend saw x-request-priority = {}", value.as_deref().unwrap_or("<missing>"));
    }
    println!();
    report.expect_only(NAME, "ProcessPayment", &tally, "payment-service");
    if seen.iter().any(|v| v.as_deref() != Some("high")) {
        report.fail(format!("{NAME}: backend did not see x-request-priority: high ({seen:?})"));
    }
    Ok(())
}

async fn unmatched(proxy: SocketAddr, report: &mut Report) -> Result<()> {
    const NAME: &str = "unmatched method";
    // user.v1.UserService is not routed for order-service: canary-route only
    // matches order.v1.OrderService, so the proxy must refuse it itself.
    let mut client = UserServiceClient::new(connect(proxy, "order-service").await?);
    println!("== Scenario: unmatched method (authority {}) ==", authority("order-service"));
    match client.get_user(probe("stray")).await {
        Ok(resp) => {
            let answer = resp.into_inner();
            println!("  user.v1.UserService/GetUser -> answered by {}\n", answer.backend);
            report.fail(format!("{NAME}: expected UNIMPLEMENTED, but {} answered", answer.backend));
        }
        Err(status) => {
            println!(
                "  user.v1.UserService/GetUser -> code {:?} ({}), message: {:?}\n",
                status.code(),
                status.code() as i32,
                status.message()
            );
            if status.code() != Code::Unimplemented {
                report.fail(format!("{NAME}: expected UNIMPLEMENTED, got {:?}", status.code()));
            }
        }
    }
    Ok(())
}
