//! The proxy comparison: one backend, five paths to it, every point measured on all
//! paths side by side (interleaved per repeat, path order rotated), medians of repeats.
use crate::load::{self, Mode, RunResult, Target, Workload};
use crate::procs::{self, Proc, RssSampler};
use crate::report;
use anyhow::{Context, Result, bail};
use hdrhistogram::Histogram;
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The authority every path is called with (Strait routes on it; the others ignore it),
/// so all paths carry identical request headers.
pub const AUTHORITY: &str = "echo.bench.svc.cluster.local:50051";
const NS: &str = "bench";
/// How long each path's turn lasts in an interleaved run (every point is one).
pub const INTERLEAVE_SLICE: Duration = Duration::from_millis(200);

#[derive(Clone, Debug)]
pub struct Opts {
    pub out_dir: PathBuf,
    /// strait-bench (the backend) lives here.
    pub bin_dir: PathBuf,
    /// The strait-proxy binary of the Strait paths (`make bench`: the PGO build).
    pub proxy_bin: PathBuf,
    /// When given, one more one-hop path runs this binary (`make bench`: the plain
    /// release build), so what the PGO build buys is measured in the same run.
    pub baseline_proxy_bin: Option<PathBuf>,
    pub quick: bool,
    /// Seconds per open-loop point run.
    pub duration: Duration,
    /// Seconds per closed-loop saturation run.
    pub sat_duration: Duration,
    pub repeats: usize,
    pub concurrency: usize,
    pub conns: usize,
    /// CPU list for proxies and backend (`taskset -c`); the generator runs where this
    /// process is pinned (the Makefile pins it to the other core).
    pub server_cpus: Option<String>,
    pub gen_cpus: Option<String>,
    pub low_rate: f64,
    pub high_fraction: f64,
    /// The tail points: calls per second per path, all paths at once, taking turns
    /// call by call (`load::run_open_by_call`).
    pub tail_rate: f64,
    /// Seconds per tail point run.
    pub tail_duration: Duration,
    /// Also run the tail points with the backend and every proxy under SCHED_FIFO
    /// (`procs::FIFO_PRIORITY`), so the kernel threads that hold the servers' core for
    /// milliseconds wait for them instead.
    pub tail_fifo: bool,
}

pub struct PathDef {
    pub name: &'static str,
    pub description: &'static str,
    pub target: Target,
    /// The proxy processes of this path (empty for direct).
    pub procs: Vec<usize>,
}

/// One measured run of one path.
#[derive(Clone, Debug, Default)]
pub struct Sample {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
    pub mean: f64,
    pub ok: u64,
    pub errors: u64,
    pub rps: f64,
    pub proxy_cpu_s: f64,
    pub backend_cpu_s: f64,
    pub lag_p99: f64,
    pub first_error: Option<String>,
}

impl Sample {
    fn from(r: &RunResult, proxy_cpu_s: f64, backend_cpu_s: f64) -> Self {
        let us = |v: u64| v as f64 / 1000.0;
        let h = &r.latency;
        Sample {
            p50: us(h.value_at_quantile(0.5)),
            p90: us(h.value_at_quantile(0.9)),
            p99: us(h.value_at_quantile(0.99)),
            p999: us(h.value_at_quantile(0.999)),
            max: us(h.max()),
            mean: h.mean() / 1000.0,
            ok: r.ok,
            errors: r.errors,
            rps: r.throughput(),
            proxy_cpu_s,
            backend_cpu_s,
            lag_p99: us(r.send_lag.value_at_quantile(0.99)),
            first_error: r.first_error.clone(),
        }
    }

    pub fn json(&self) -> Value {
        json!({"p50_us": self.p50, "p90_us": self.p90, "p99_us": self.p99, "p999_us": self.p999, "max_us": self.max,
               "mean_us": self.mean, "ok": self.ok, "errors": self.errors, "rps": self.rps,
               "proxy_cpu_s": self.proxy_cpu_s, "backend_cpu_s": self.backend_cpu_s,
               "send_lag_p99_us": self.lag_p99, "first_error": self.first_error})
    }
}

/// One measurement point (workload × mode) across all paths.
pub struct Point {
    pub id: String,
    pub workload: Workload,
    pub mode: Mode,
    pub duration: Duration,
    /// samples[path][repeat]
    pub samples: Vec<Vec<Sample>>,
    /// Latency histograms merged over repeats, per path.
    pub merged: Vec<Histogram<u64>>,
    /// Call-by-call points: per path, the latency of its call in each cycle (ns, `None`
    /// if it failed), repeats one after another; aligned across paths.
    pub per_cycle: Vec<Vec<Option<u64>>>,
    /// The backend and every proxy ran under SCHED_FIFO (`procs::FIFO_PRIORITY`).
    pub servers_fifo: bool,
}

impl Point {
    pub(crate) fn new(id: String, workload: Workload, mode: Mode, duration: Duration, paths: usize) -> Self {
        Point {
            id,
            workload,
            mode,
            duration,
            samples: vec![Vec::new(); paths],
            merged: (0..paths).map(|_| Histogram::new_with_bounds(1, 100_000_000_000, 3).expect("bounds")).collect(),
            per_cycle: vec![Vec::new(); paths],
            servers_fifo: false,
        }
    }

    /// Keeps one repeat's sample and latencies of `path`, and logs the line.
    fn record(&mut self, path: usize, name: &str, rep: usize, s: Sample, r: &RunResult) {
        let _ = self.merged[path].add(&r.latency);
        self.per_cycle[path].extend_from_slice(&r.per_cycle);
        eprintln!(
            "  {:<24} rep {rep} {name:<16} p50 {:>8.1} µs  p99 {:>8.1} µs  p99.9 {:>8.1} µs  {:>8.0} rps  err {}{}",
            self.id,
            s.p50,
            s.p99,
            s.p999,
            s.rps,
            s.errors,
            s.first_error.as_deref().map(|e| format!(" ({e})")).unwrap_or_default()
        );
        self.samples[path].push(s);
    }
}

pub struct Env {
    pub procs: Vec<Proc>,
    pub backend: usize,
    pub paths: Vec<PathDef>,
    pub idle_rss: Vec<u64>,
    pub backend_idle_rss: u64,
}

impl Env {
    fn path_pids(&self, p: &PathDef) -> Vec<u32> {
        p.procs.iter().flat_map(|i| self.procs[*i].pids()).collect()
    }

    /// After a run: every process of every path (and the backend) is still up.
    fn check_all_alive(&mut self) -> Result<()> {
        for p in &mut self.procs {
            p.check_alive()?;
        }
        Ok(())
    }
}

fn write(path: &Path, text: &str) -> Result<()> {
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

pub fn strait_config(dir: &Path, endpoint: SocketAddr) -> Result<()> {
    std::fs::create_dir_all(dir)?;
    let manifests = format!(
        r#"apiVersion: v1
kind: Service
metadata: {{name: echo, namespace: {NS}}}
spec:
  ports: [{{name: grpc, port: 50051, appProtocol: kubernetes.io/grpc}}]
---
apiVersion: v1
kind: Service
metadata: {{name: echo-backend, namespace: {NS}}}
spec:
  ports: [{{name: grpc, port: 50051, appProtocol: kubernetes.io/grpc}}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: GRPCRoute
metadata: {{name: echo-route, namespace: {NS}}}
spec:
  parentRefs: [{{group: "", kind: Service, name: echo, port: 50051}}]
  rules:
    - matches: [{{method: {{service: strait.test.v1.Echo}}}}]
      backendRefs: [{{name: echo-backend, port: 50051}}]
"#
    );
    write(&dir.join("bench.yaml"), &manifests)?;
    write(&dir.join("endpoints.yaml"), &strait_demo::endpoint_slice_yaml(NS, "echo-backend", "grpc", &[endpoint]))
}

/// The Strait (file mode) and HAProxy configurations of the comparison, written for a
/// run outside it.
pub fn write_configs(dir: &Path, backend: SocketAddr, haproxy_listen: SocketAddr) -> Result<()> {
    strait_config(&dir.join("strait"), backend)?;
    write(&dir.join("haproxy.cfg"), &haproxy_conf(haproxy_listen, backend))
}

fn nginx_conf(prefix: &Path, listen: SocketAddr, backend: SocketAddr) -> String {
    let user = if is_root() { "user root;\n" } else { "" };
    let p = prefix.display();
    format!(
        r#"# Generated by strait-bench: nginx grpc_pass, one hop, one worker (pinned by taskset).
{user}worker_processes 1;
daemon off;
master_process on;
pid {p}/nginx.pid;
error_log {p}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {p}/tmp/body;
    proxy_temp_path {p}/tmp/proxy;
    fastcgi_temp_path {p}/tmp/fastcgi;
    uwsgi_temp_path {p}/tmp/uwsgi;
    scgi_temp_path {p}/tmp/scgi;
    # 16 KiB messages must stay in memory (the default buffer would spill them to disk).
    client_body_buffer_size 128k;
    http2_max_concurrent_streams 1000;
    upstream backend {{
        server {backend};
        keepalive 128;
        keepalive_requests 1000000;
    }}
    server {{
        listen {listen} http2;
        keepalive_requests 1000000;
        location / {{
            grpc_pass grpc://backend;
        }}
    }}
}}
"#
    )
}

fn haproxy_conf(listen: SocketAddr, backend: SocketAddr) -> String {
    format!(
        r#"# Generated by strait-bench: HAProxy h2 one hop, one thread (pinned by taskset).
global
    nbthread 1
    maxconn 4000
defaults
    mode http
    timeout connect 5s
    timeout client 60s
    timeout server 60s
frontend fe
    bind {listen} proto h2
    default_backend be
backend be
    # Multiplex requests of all clients on the backend h2 connections.
    http-reuse always
    server s1 {backend} proto h2
"#
    )
}

pub fn is_root() -> bool {
    std::process::Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

fn find_tool(name: &str) -> Result<PathBuf> {
    for dir in std::env::var("PATH").unwrap_or_default().split(':').chain(["/usr/sbin", "/sbin"]) {
        let p = Path::new(dir).join(name);
        if p.is_file() {
            return Ok(p);
        }
    }
    bail!("{name} not found (run scripts/bench-deps.sh)")
}

fn wait_ready(admin: SocketAddr, p: &mut Proc) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        p.check_alive()?;
        if let Ok((200, _)) = procs::http_get(admin, "/ready") {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    bail!("{} not ready; log tail:\n{}", p.name, p.log_tail(20))
}

/// Starts `strait-bench backend` (`bench_bin`) on `addr` and waits until it listens.
pub fn spawn_backend(cpus: Option<&str>, bench_bin: &Path, addr: SocketAddr, log: &Path) -> Result<Proc> {
    let mut backend =
        Proc::spawn("backend", cpus, bench_bin, &["backend".into(), "--addr".into(), addr.to_string()], log)?;
    procs::wait_port(addr, &mut backend, Duration::from_secs(10))?;
    Ok(backend)
}

/// The listen addresses of one Strait process.
#[derive(Clone, Copy, Debug)]
pub struct StraitAddrs {
    pub outbound: SocketAddr,
    pub inbound: SocketAddr,
    pub admin: SocketAddr,
}

impl StraitAddrs {
    /// Outbound, inbound and admin from three consecutive free addresses.
    pub fn from_free(a: &[SocketAddr]) -> Self {
        StraitAddrs { outbound: a[0], inbound: a[1], admin: a[2] }
    }
}

/// HAProxy h2 one hop as process `name`: its configuration `<run>/<name>.cfg`, its
/// output `<run>/<name>.log`; returns once it listens on `listen`.
fn spawn_haproxy(name: &str, cpus: Option<&str>, run: &Path, listen: SocketAddr, backend: SocketAddr) -> Result<Proc> {
    let cfg = run.join(format!("{name}.cfg"));
    write(&cfg, &haproxy_conf(listen, backend))?;
    let mut hap = Proc::spawn(
        name,
        cpus,
        &find_tool("haproxy")?,
        &["-f".into(), cfg.display().to_string(), "-db".into()],
        &run.join(format!("{name}.log")),
    )?;
    procs::wait_port(listen, &mut hap, Duration::from_secs(10))?;
    Ok(hap)
}

/// The A/A control path: HAProxy again, in its own process (see `start_env`).
pub const CONTROL_PATH: &str = "haproxy-b";

/// Starts strait-proxy `bin` in file mode on `config_dir` (inbound calls go to
/// `app`), logging to `log`, and waits until it reports ready.
pub fn spawn_strait(
    name: &str,
    cpus: Option<&str>,
    bin: &Path,
    config_dir: &Path,
    addrs: StraitAddrs,
    app: SocketAddr,
    log: &Path,
) -> Result<Proc> {
    let args: Vec<String> = [
        "--config-dir",
        &config_dir.display().to_string(),
        "--outbound-addr",
        &addrs.outbound.to_string(),
        "--inbound-addr",
        &addrs.inbound.to_string(),
        "--admin-addr",
        &addrs.admin.to_string(),
        "--inbound-app-addr",
        &app.to_string(),
        "--namespace",
        NS,
        "--log-level",
        "warn",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let mut p = Proc::spawn(name, cpus, bin, &args, log)?;
    wait_ready(addrs.admin, &mut p)?;
    Ok(p)
}

/// Starts the backend, the Strait processes (three, four with a baseline binary),
/// nginx and HAProxy (twice: the second process is the A/A control).
pub fn start_env(o: &Opts) -> Result<Env> {
    let cpus = o.server_cpus.as_deref();
    let run = o.out_dir.join("run");
    let _ = std::fs::remove_dir_all(&run);
    std::fs::create_dir_all(&run)?;
    let a = procs::free_addrs(16)?;
    let (backend_addr, nginx_addr, haproxy_addr) = (a[0], a[1], a[2]);
    let outbound = StraitAddrs::from_free(&a[3..6]);
    let mesh_client = StraitAddrs::from_free(&a[6..9]);
    let mesh_server = StraitAddrs::from_free(&a[9..12]);
    let baseline = StraitAddrs::from_free(&a[12..15]);
    let mut procs_: Vec<Proc> = Vec::new();

    procs_.push(spawn_backend(cpus, &o.bin_dir.join("strait-bench"), backend_addr, &run.join("backend.log"))?);

    strait_config(&run.join("strait-direct"), backend_addr)?;
    strait_config(&run.join("strait-mesh"), mesh_server.inbound)?;
    let strait = |name: &str, bin: &Path, dir: &str, addrs: StraitAddrs| -> Result<Proc> {
        spawn_strait(name, cpus, bin, &run.join(dir), addrs, backend_addr, &run.join(format!("{name}.log")))
    };
    let t = |addr: SocketAddr| Target { addr, authority: AUTHORITY.to_owned() };
    let mut paths =
        vec![PathDef { name: "direct", description: "client → backend", target: t(backend_addr), procs: vec![] }];
    procs_.push(strait("strait-outbound", &o.proxy_bin, "strait-direct", outbound)?);
    paths.push(PathDef {
        name: "strait-outbound",
        description: "client → Strait outbound (authority routing) → backend",
        target: t(outbound.outbound),
        procs: vec![procs_.len() - 1],
    });
    if let Some(bin) = &o.baseline_proxy_bin {
        procs_.push(strait("strait-outbound-plain", bin, "strait-direct", baseline)?);
        paths.push(PathDef {
            name: "strait-outbound-plain",
            description: "the same one hop, strait-proxy built without PGO (plain release)",
            target: t(baseline.outbound),
            procs: vec![procs_.len() - 1],
        });
    }
    procs_.push(strait("strait-mesh-client", &o.proxy_bin, "strait-mesh", mesh_client)?);
    procs_.push(strait("strait-mesh-server", &o.proxy_bin, "strait-direct", mesh_server)?);
    paths.push(PathDef {
        name: "strait-mesh",
        description: "client → Strait outbound → Strait inbound (2nd process) → backend",
        target: t(mesh_client.outbound),
        procs: vec![procs_.len() - 2, procs_.len() - 1],
    });

    let nginx_dir = run.join("nginx");
    std::fs::create_dir_all(nginx_dir.join("tmp"))?;
    write(&nginx_dir.join("nginx.conf"), &nginx_conf(&nginx_dir, nginx_addr, backend_addr))?;
    let mut nginx = Proc::spawn(
        "nginx",
        cpus,
        &find_tool("nginx")?,
        &[
            "-p".into(),
            nginx_dir.display().to_string(),
            "-c".into(),
            nginx_dir.join("nginx.conf").display().to_string(),
            "-e".into(),
            nginx_dir.join("error.log").display().to_string(),
        ],
        &run.join("nginx.log"),
    )?;
    procs::wait_port(nginx_addr, &mut nginx, Duration::from_secs(10))?;
    procs_.push(nginx);
    let nginx_proc = procs_.len() - 1;

    procs_.push(spawn_haproxy("haproxy", cpus, &run, haproxy_addr, backend_addr)?);
    let haproxy_proc = procs_.len() - 1;

    paths.push(PathDef {
        name: "nginx",
        description: "client → nginx grpc_pass → backend",
        target: t(nginx_addr),
        procs: vec![nginx_proc],
    });
    paths.push(PathDef {
        name: "haproxy",
        description: "client → HAProxy (h2 both sides) → backend",
        target: t(haproxy_addr),
        procs: vec![haproxy_proc],
    });

    // The A/A control: a second HAProxy process with the same configuration. The two
    // differ only by the machine's noise, so the spread between them is the smallest
    // difference between any two paths this run can resolve.
    let control_addr = a[15];
    procs_.push(spawn_haproxy(CONTROL_PATH, cpus, &run, control_addr, backend_addr)?);
    paths.push(PathDef {
        name: CONTROL_PATH,
        description: "a second HAProxy process, same configuration: the A/A control (what differs from haproxy is noise)",
        target: t(control_addr),
        procs: vec![procs_.len() - 1],
    });
    let mut env = Env { procs: procs_, backend: 0, paths, idle_rss: vec![], backend_idle_rss: 0 };
    // Idle RSS: started and ready, before any traffic.
    std::thread::sleep(Duration::from_millis(300));
    env.idle_rss = env.paths.iter().map(|p| procs::rss_all(&env.path_pids(p))).collect();
    env.backend_idle_rss = procs::rss_all(&env.procs[0].pids());
    Ok(env)
}

/// One point, every path side by side: per repeat, all paths in one run taking turns in
/// `INTERLEAVE_SLICE` stretches (open loop: one constant-rate schedule,
/// `load::run_open`; closed loop: `concurrency` calls in flight against one path at a
/// time, `load::run_closed_turns`), with the order rotated per repeat. Only one path
/// carries load at any moment, so they never compete; run one after another, paths met
/// different moments of a noisy machine (added latencies of ~100 µs moved by tens of µs
/// between rounds, saturation by a third).
async fn run_point(env: &mut Env, o: &Opts, id: String, w: Workload, mode: Mode, d: Duration) -> Result<Point> {
    let n = env.paths.len();
    let mut point = Point::new(id, w.clone(), mode, d, n);
    for rep in 0..o.repeats {
        let order: Vec<usize> = (0..n).map(|k| (k + rep) % n).collect();
        let targets: Vec<Target> = order.iter().map(|&p| env.paths[p].target.clone()).collect();
        let pids: Vec<Vec<u32>> = order.iter().map(|&p| env.path_pids(&env.paths[p])).collect();
        let bpids = env.procs[env.backend].pids();
        let c0: Vec<f64> = pids.iter().map(|p| procs::cpu_seconds_all(p)).collect();
        let b0 = procs::cpu_seconds_all(&bpids);
        // Call by call: a new shuffle of the call order in every repeat.
        let results = load::run_turns(&targets, &w, mode, d, INTERLEAVE_SLICE, o.conns, rep as u64 + 1).await?;
        let c1: Vec<f64> = pids.iter().map(|p| procs::cpu_seconds_all(p)).collect();
        let b1 = procs::cpu_seconds_all(&bpids);
        env.check_all_alive()?;
        let total_ok: u64 = results.iter().map(|r| r.ok).sum::<u64>().max(1);
        for (k, r) in results.iter().enumerate() {
            let path = order[k];
            // The backend served every path of this run: its CPU is shared out by calls.
            let backend_share = (b1 - b0) * r.ok as f64 / total_ok as f64;
            let s = Sample::from(r, c1[k] - c0[k], backend_share);
            point.record(path, env.paths[path].name, rep, s, r);
        }
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    Ok(point)
}

/// h2load against the direct backend, side by side with our closed loop at the same
/// connections × concurrency. Returns JSON with both.
async fn h2load_check(env: &mut Env, o: &Opts) -> Result<Value> {
    let h2load = match find_tool("h2load") {
        Ok(p) => p,
        Err(e) => return Ok(json!({"skipped": e.to_string()})),
    };
    let w = Workload::unary_100b();
    let body = o.out_dir.join("run/h2load-body.bin");
    std::fs::write(&body, &w.frame)?;
    let target = &env.paths[0].target;
    // h2load -D takes whole seconds.
    let secs = o.sat_duration.as_secs_f64().ceil().max(1.0);
    let mut ours = Vec::new();
    let mut theirs = Vec::new();
    let mut raw = Vec::new();
    for _rep in 0..o.repeats {
        let r = load::run(target, &w, Mode::Closed { concurrency: o.concurrency }, Duration::from_secs_f64(secs), 1)
            .await?;
        ours.push((r.throughput(), r.latency.mean() / 1000.0));
        let mut cmd = std::process::Command::new("taskset");
        if let Some(c) = &o.gen_cpus {
            cmd.args(["-c", c]);
        } else {
            cmd.args(["-c", "0-1023"]);
        }
        let out = cmd
            .arg(&h2load)
            .args(["-D", &format!("{secs}"), "-c", "1", "-m", &o.concurrency.to_string(), "-t", "1"])
            .arg("-d")
            .arg(&body)
            .args(["-H", "content-type: application/grpc", "-H", "te: trailers"])
            .arg(format!("http://{}{}", target.addr, w.path))
            .output()
            .context("running h2load")?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let rps = text
            .lines()
            .find(|l| l.starts_with("finished in"))
            .and_then(|l| l.split(',').nth(1))
            .and_then(|s| s.split_whitespace().next())
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0);
        let mean_us = text
            .lines()
            .find(|l| l.starts_with("time for request:"))
            .and_then(|l| l.split_whitespace().nth(5))
            .map(parse_h2load_time)
            .unwrap_or(0.0);
        let succeeded = text.lines().find(|l| l.starts_with("requests:")).unwrap_or("").to_owned();
        let codes = text.lines().find(|l| l.starts_with("status codes:")).unwrap_or("").to_owned();
        eprintln!(
            "  h2load: {rps:.0} rps mean {mean_us:.0} µs | strait-bench: {:.0} rps mean {:.0} µs",
            ours.last().map_or(0.0, |x| x.0),
            ours.last().map_or(0.0, |x| x.1)
        );
        raw.push(json!({"requests": succeeded, "status_codes": codes}));
        theirs.push((rps, mean_us));
    }
    let med = |v: &[(f64, f64)], f: fn(&(f64, f64)) -> f64| report::median(&v.iter().map(f).collect::<Vec<_>>());
    Ok(json!({
        "target": "direct backend",
        "workload": "unary_100B",
        "connections": 1,
        "in_flight": o.concurrency,
        "seconds_per_run": secs,
        "strait_bench_rps": ours.iter().map(|x| x.0).collect::<Vec<_>>(),
        "strait_bench_mean_us": ours.iter().map(|x| x.1).collect::<Vec<_>>(),
        "h2load_rps": theirs.iter().map(|x| x.0).collect::<Vec<_>>(),
        "h2load_mean_us": theirs.iter().map(|x| x.1).collect::<Vec<_>>(),
        "strait_bench_rps_median": med(&ours, |x| x.0),
        "h2load_rps_median": med(&theirs, |x| x.0),
        "strait_bench_mean_us_median": med(&ours, |x| x.1),
        "h2load_mean_us_median": med(&theirs, |x| x.1),
        "h2load_raw": raw,
    }))
}

fn parse_h2load_time(s: &str) -> f64 {
    let num = |suffix: &str| s.strip_suffix(suffix).and_then(|v| v.parse::<f64>().ok());
    if let Some(v) = num("us") {
        v
    } else if let Some(v) = num("ms") {
        v * 1000.0
    } else if let Some(v) = num("s") {
        v * 1e6
    } else {
        0.0
    }
}

/// The call-by-call tail points, one per workload: every path at `tail_rate` at once.
async fn tail_points(env: &mut Env, o: &Opts, servers_fifo: bool) -> Result<Vec<Point>> {
    let mut points = Vec::new();
    for w in Workload::all() {
        let sched = if servers_fifo { "-fifo" } else { "" };
        let id = format!("{}@{}rps-per-path-by-call{sched}", w.name, o.tail_rate as u64);
        eprintln!(
            "== {id} (open loop, {} × {:?}, every path at {} rps at once, calls taking turns one by one{})",
            o.repeats,
            o.tail_duration,
            o.tail_rate,
            if servers_fifo { ", servers under SCHED_FIFO" } else { "" }
        );
        let mut pt = run_point(env, o, id, w, Mode::OpenByCall { rate: o.tail_rate }, o.tail_duration).await?;
        pt.servers_fifo = servers_fifo;
        points.push(pt);
    }
    Ok(points)
}

/// The backend and every proxy under SCHED_FIFO while this lives, SCHED_OTHER again
/// when it is dropped (also when a tail point fails half way).
struct FifoServers {
    pids: Vec<u32>,
}

impl FifoServers {
    fn enter(pids: Vec<u32>) -> Result<Self> {
        if let Err(e) = procs::set_sched(&pids, Some(procs::FIFO_PRIORITY)) {
            // Some may have moved before the one that failed.
            let _ = procs::set_sched(&pids, None);
            return Err(e);
        }
        let fifo = FifoServers { pids };
        // chrt succeeded; /proc confirms it before any call is measured as FIFO.
        if let Some(pid) = fifo.pids.iter().find(|&&p| procs::sched_policy(p) != Some(1)) {
            bail!("pid {pid} is not under SCHED_FIFO after chrt (policy {:?})", procs::sched_policy(*pid));
        }
        Ok(fifo)
    }
}

impl Drop for FifoServers {
    fn drop(&mut self) {
        if let Err(e) = procs::set_sched(&self.pids, None) {
            eprintln!("strait-bench: servers not returned to SCHED_OTHER: {e:#}");
        }
    }
}

pub async fn run(o: Opts) -> Result<Value> {
    let t0 = Instant::now();
    std::fs::create_dir_all(&o.out_dir)?;
    let mut env = start_env(&o)?;
    eprintln!(
        "== started: backend, {} × strait-proxy, nginx, 2 × haproxy (server cpus {:?})",
        env.procs.len() - 4,
        o.server_cpus
    );
    // Warm-up: connections, pools, caches; any failing path aborts the benchmark.
    let warm = Workload::unary_100b();
    for i in 0..env.paths.len() {
        let r = load::run(
            &env.paths[i].target,
            &warm,
            Mode::Closed { concurrency: 8 },
            Duration::from_millis(700),
            o.conns,
        )
        .await?;
        if r.ok == 0 || r.errors > 0 {
            bail!(
                "warm-up of {} failed: {} ok, {} errors, first error {:?}",
                env.paths[i].name,
                r.ok,
                r.errors,
                r.first_error
            );
        }
    }
    let groups: Vec<Vec<u32>> =
        env.paths.iter().map(|p| env.path_pids(p)).chain(std::iter::once(env.procs[0].pids())).collect();
    let sampler = RssSampler::start(groups);

    eprintln!(
        "== saturation (closed loop, {} in flight, {} conn, paths taking {:?} turns)",
        o.concurrency, o.conns, INTERLEAVE_SLICE
    );
    let sat = run_point(
        &mut env,
        &o,
        format!("saturation_c{}", o.concurrency),
        Workload::unary_100b(),
        Mode::Closed { concurrency: o.concurrency },
        o.sat_duration,
    )
    .await?;
    let sat_medians: Vec<f64> =
        sat.samples.iter().map(|s| report::median(&s.iter().map(|x| x.rps).collect::<Vec<_>>())).collect();
    let slowest = sat_medians.iter().copied().fold(f64::INFINITY, f64::min);
    let planned_high = (slowest * o.high_fraction / 100.0).floor() * 100.0;
    eprintln!("== slowest saturation {slowest:.0} rps → high rate {planned_high:.0} rps");
    let (high, high_probes) = high_rate_the_generator_keeps(&env, &o, planned_high).await?;

    let mut points = vec![sat];
    let specs: Vec<(Workload, f64)> = vec![
        (Workload::unary_100b(), o.low_rate),
        (Workload::unary_100b(), high),
        (Workload::unary("unary_16KiB", 16 * 1024), o.low_rate),
        (Workload::stream("stream_10x100B", 100, 10), o.low_rate),
    ];
    for (w, rate) in specs {
        let id = format!("{}@{}rps", w.name, rate as u64);
        eprintln!(
            "== {id} (open loop, {} × {:?} per path, paths taking {:?} turns)",
            o.repeats, o.duration, INTERLEAVE_SLICE
        );
        points.push(run_point(&mut env, &o, id, w, Mode::Open { rate }, o.duration).await?);
    }
    points.extend(tail_points(&mut env, &o, false).await?);
    // The same tail points with the servers' core under SCHED_FIFO: what is left of
    // the p99 when the kernel threads that take the core for milliseconds wait for
    // the proxies (all paths alike, the direct one included).
    let mut tail_fifo_skipped = None;
    if o.tail_fifo {
        let pids: Vec<u32> = env.procs.iter().flat_map(Proc::pids).collect();
        match FifoServers::enter(pids) {
            Ok(fifo) => {
                let pts = tail_points(&mut env, &o, true).await;
                drop(fifo);
                points.extend(pts?);
            }
            Err(e) => {
                eprintln!("== tail points under SCHED_FIFO skipped: {e:#}");
                tail_fifo_skipped = Some(format!("{e:#}"));
            }
        }
    }
    eprintln!("== h2load cross-check (direct backend)");
    let h2 = h2load_check(&mut env, &o).await?;
    let peaks = sampler.finish();
    let total = t0.elapsed();
    let mut results = report::build_json(&o, &env, &points, &peaks, h2, high, total);
    if let Some(why) = tail_fifo_skipped {
        results["tail_fifo_skipped"] = json!(why);
    }
    results["settings"]["high_rate_planned_rps"] = json!(planned_high);
    results["high_rate_probes"] = json!(high_probes);
    Ok(results)
}

/// A probe kept to its schedule when it sent at least this share of the planned calls
/// and its sends left no later than [`PACE_KEPT_LAG`] (p99).
const PACE_KEPT_SHARE: f64 = 0.97;
const PACE_KEPT_LAG: Duration = Duration::from_millis(1);
const PACE_PROBE_DURATION: Duration = Duration::from_secs(2);
const PACE_PROBES: usize = 5;

/// After a probe of the direct path at `planned` rps: `None` if the generator kept
/// pace, else the rate to try next: 80% of what it did send, or of `planned` if the
/// sends were late rather than missing, in hundreds (100 at the least).
fn high_rate_after_probe(planned: f64, sent_rps: f64, lag_p99: Duration) -> Option<f64> {
    if sent_rps >= planned * PACE_KEPT_SHARE && lag_p99 <= PACE_KEPT_LAG {
        return None;
    }
    let next = (sent_rps.min(planned) * 0.8 / 100.0).floor() * 100.0;
    Some(next.max(100.0))
}

/// The high rate, lowered until the generator can send it open loop. A fraction of the
/// slowest path's saturation can be more than one generator thread sends at a constant
/// rate (2026-11-27: 19.4k planned, 17.3k sent): every path, the direct one too, then
/// queues behind the generator and the point compares nothing. Probed on the direct
/// path, which costs the generator what any path does. Returns the rate and the probes.
async fn high_rate_the_generator_keeps(env: &Env, o: &Opts, planned: f64) -> Result<(f64, Vec<Value>)> {
    let direct = &env.paths[0].target;
    let w = Workload::unary_100b();
    let mut rate = planned;
    let mut probes = Vec::new();
    for _ in 0..PACE_PROBES {
        let r = load::run(direct, &w, Mode::Open { rate }, PACE_PROBE_DURATION, o.conns).await?;
        let lag = Duration::from_nanos(r.send_lag.value_at_quantile(0.99));
        let sent = r.throughput();
        probes.push(json!({"rate_rps": rate, "sent_rps": sent, "send_lag_p99_us": lag.as_secs_f64() * 1e6}));
        match high_rate_after_probe(rate, sent, lag) {
            None => return Ok((rate, probes)),
            Some(lower) => {
                eprintln!(
                    "== the generator sent {sent:.0} of {rate:.0} rps (send lag p99 {lag:?}): high rate {lower:.0} rps"
                );
                rate = lower;
            }
        }
    }
    Ok((rate, probes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_high_rate_the_generator_keeps_stands() {
        assert_eq!(high_rate_after_probe(19_400.0, 19_390.0, Duration::from_micros(40)), None);
    }

    #[test]
    fn a_high_rate_the_generator_cannot_send_is_lowered_below_what_it_sent() {
        // Run 7: 19.4k planned, 17.3k sent.
        assert_eq!(high_rate_after_probe(19_400.0, 17_280.0, Duration::from_millis(400)), Some(13_800.0));
        // Every call sent, but late: the schedule was not kept either.
        let lowered = high_rate_after_probe(10_000.0, 9_990.0, Duration::from_millis(5)).expect("lowered");
        assert!(lowered < 10_000.0, "{lowered}");
        // Late sends lower from the rate planned, not from a count that overshot it.
        assert_eq!(high_rate_after_probe(20_000.0, 30_000.0, Duration::from_millis(2)), Some(16_000.0));
        // Never below 100 rps.
        assert_eq!(high_rate_after_probe(150.0, 10.0, Duration::from_secs(1)), Some(100.0));
    }
}
