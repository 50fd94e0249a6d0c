//! `strait-bench`: the benchmark behind `make bench` / `make bench-scale`.
//!
//! - `all`: the proxy comparison (direct, Strait outbound, Strait mesh, nginx, HAProxy)
//!   and, unless `--quick`, the Kubernetes-mode scale test; writes results.json,
//!   results.md and latency.png into `--out`, prints the Markdown.
//! - `scale`: only the scale test (scale.json, scale.md).
//! - `pgo-train`: the training run of the PGO build (`scripts/pgo-build.sh`).
//! - `load`: one ad-hoc generator run against any h2c gRPC address (demo Echo service).
//!
//! The generator runs on this process's single-threaded runtime; pin this process to a
//! core (`taskset -c 0`) and pass the other core(s) as `--server-cpus`.
#![forbid(unsafe_code)]

mod backend;
mod compare;
mod load;
mod procs;
mod report;
mod scale;
mod stats;
mod train;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::time::Duration;

#[derive(Parser)]
#[command(name = "strait-bench", about = "Strait benchmark: proxy comparison and Kubernetes-mode scale")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(clap::Args, Clone)]
struct Common {
    /// Output directory (results.json, results.md, latency.png, run/ with configs and logs).
    #[arg(long, default_value = "target/bench")]
    out: PathBuf,
    /// Directory holding strait-proxy and strait-demo-server (release build).
    #[arg(long, default_value = "target/release")]
    bin_dir: PathBuf,
    /// The strait-proxy measured (default: `--bin-dir`/strait-proxy; `make bench`: the
    /// PGO build).
    #[arg(long, env = "BENCH_PROXY_BIN")]
    proxy_bin: Option<PathBuf>,
}

impl Common {
    /// nginx resolves relative paths against its prefix: make them absolute.
    fn absolute(self) -> Self {
        Common {
            out: absolute(&self.out),
            bin_dir: absolute(&self.bin_dir),
            proxy_bin: self.proxy_bin.as_deref().map(absolute),
        }
    }

    fn proxy_bin(&self) -> PathBuf {
        self.proxy_bin.clone().unwrap_or_else(|| self.bin_dir.join("strait-proxy"))
    }
}

#[derive(clap::Args, Clone)]
struct CompareArgs {
    /// A second strait-proxy build measured as one more one-hop path in the same run
    /// (`make bench`: the plain release build beside the PGO build).
    #[arg(long, env = "BENCH_BASELINE_PROXY_BIN")]
    baseline_proxy_bin: Option<PathBuf>,
    /// ~1 minute: short runs, 2 repeats, no scale test.
    #[arg(long, env = "BENCH_QUICK", value_parser = clap::builder::BoolishValueParser::new(), default_value = "false")]
    quick: bool,
    /// Seconds per open-loop run (default 6, quick 1.2).
    #[arg(long, env = "BENCH_DURATION")]
    duration: Option<f64>,
    /// Seconds per saturation run (default 4, quick 1.2).
    #[arg(long, env = "BENCH_SAT_DURATION")]
    sat_duration: Option<f64>,
    /// Repeats per point (default 3, quick 2).
    #[arg(long, env = "BENCH_REPEATS")]
    repeats: Option<usize>,
    /// Calls in flight for the saturation (closed-loop) runs.
    #[arg(long, env = "BENCH_CONCURRENCY", default_value_t = 64)]
    concurrency: usize,
    /// Client HTTP/2 connections (a gRPC channel uses one).
    #[arg(long, env = "BENCH_CONNS", default_value_t = 1)]
    conns: usize,
    /// `taskset -c` list for backend and proxies (empty: not pinned).
    #[arg(long, env = "BENCH_SERVER_CPUS")]
    server_cpus: Option<String>,
    /// CPU list this process (the generator) is pinned to, for the report and h2load.
    #[arg(long, env = "BENCH_GEN_CPUS")]
    gen_cpus: Option<String>,
    #[arg(long, env = "BENCH_LOW_RATE", default_value_t = 500.0)]
    low_rate: f64,
    /// The high open-loop rate as a fraction of the slowest path's saturation.
    #[arg(long, env = "BENCH_HIGH_FRACTION", default_value_t = 0.7)]
    high_fraction: f64,
    /// Tail points: calls per second per path, all paths at once, taking turns call by
    /// call (their p99 differences come with bootstrap intervals).
    #[arg(long, env = "BENCH_TAIL_RATE", default_value_t = 100.0)]
    tail_rate: f64,
    /// Seconds per tail point run (default 20, quick 2).
    #[arg(long, env = "BENCH_TAIL_DURATION")]
    tail_duration: Option<f64>,
    /// Run the tail points a second time with the backend and proxies under
    /// SCHED_FIFO (needs CAP_SYS_NICE; skipped with a note in the report without it).
    #[arg(long, env = "BENCH_TAIL_FIFO", value_parser = clap::builder::BoolishValueParser::new(), default_value = "true")]
    tail_fifo: bool,
}

#[derive(clap::Args, Clone)]
struct ScaleArgs {
    #[arg(long, env = "BENCH_SCALE_SERVICES", default_value_t = 10_000)]
    services: usize,
    #[arg(long, env = "BENCH_SCALE_ENDPOINTS_PER_SERVICE", default_value_t = 5)]
    endpoints_per_service: usize,
    #[arg(long, env = "BENCH_SCALE_ROUTES", default_value_t = 1_000)]
    routes: usize,
    #[arg(long, default_value_t = 10)]
    namespaces: usize,
    /// Concurrent create requests.
    #[arg(long, env = "BENCH_SCALE_PARALLELISM", default_value_t = 48)]
    parallelism: usize,
    #[arg(long, env = "BENCH_SCALE_CHANGES", default_value_t = 20)]
    changes: usize,
    /// Upper bound for creating all objects (seconds).
    #[arg(long, env = "BENCH_SCALE_CREATE_TIMEOUT", default_value_t = 900)]
    create_timeout: u64,
}

#[derive(Subcommand)]
enum Cmd {
    All {
        #[command(flatten)]
        common: Common,
        #[command(flatten)]
        compare: CompareArgs,
        #[command(flatten)]
        scale: ScaleArgs,
    },
    Scale {
        #[command(flatten)]
        common: Common,
        #[command(flatten)]
        scale: ScaleArgs,
    },
    /// The benchmark backend (Echo service, TCP_NODELAY); runs until killed.
    Backend {
        #[arg(long)]
        addr: std::net::SocketAddr,
    },
    /// Writes the Strait config directory (`<dir>/strait`) and `<dir>/haproxy.cfg` the
    /// comparison uses, for runs outside it (`make bench-instructions`).
    Configs {
        #[arg(long)]
        dir: PathBuf,
        /// The backend both proxies send to.
        #[arg(long)]
        backend: std::net::SocketAddr,
        /// HAProxy's listen address.
        #[arg(long)]
        haproxy_listen: std::net::SocketAddr,
    },
    /// The profile-guided-optimisation training run (`scripts/pgo-build.sh`): starts
    /// `--proxy` (an instrumented build) as an outbound hop and as a mesh pair, sends the
    /// benchmark's workloads through both, and stops them with SIGTERM so each writes
    /// its profile (to `LLVM_PROFILE_FILE`). Fails if any call fails or a proxy does not
    /// exit cleanly.
    PgoTrain {
        #[arg(long)]
        proxy: PathBuf,
        /// Configs and logs of the run.
        #[arg(long, default_value = "target/pgo/train")]
        out: PathBuf,
        /// Seconds per workload and path.
        #[arg(long, default_value_t = 2.0)]
        seconds: f64,
    },
    /// One generator run (demo Echo service) against `--addr`; several `--addr`s take
    /// turns in `--slice-ms` stretches, one line each (open loop: of one schedule, each
    /// turn's first call warming its path up, left out of the percentiles; closed loop:
    /// rps over the target's own turns), or call by call with `--by-call`.
    Load {
        #[arg(long, required = true)]
        addr: Vec<std::net::SocketAddr>,
        #[arg(long, default_value = compare::AUTHORITY)]
        authority: String,
        /// unary_100B | unary_16KiB | stream_10x100B
        #[arg(long, default_value = "unary_100B")]
        workload: String,
        /// Open loop at this rate; without it, closed loop with --concurrency.
        #[arg(long)]
        rate: Option<f64>,
        #[arg(long, default_value_t = 64)]
        concurrency: usize,
        #[arg(long, default_value_t = 5.0)]
        duration: f64,
        #[arg(long, default_value_t = 1)]
        conns: usize,
        /// With several `--addr`s: how long each one's turn lasts.
        #[arg(long, default_value_t = 200)]
        slice_ms: u64,
        /// With `--rate`: every `--addr` at that rate at once, taking turns call by call
        /// (the tail points of `make bench`) instead of in `--slice-ms` turns.
        #[arg(long, requires = "rate")]
        by_call: bool,
    },
}

fn compare_opts(common: &Common, c: &CompareArgs) -> compare::Opts {
    let q = c.quick;
    compare::Opts {
        out_dir: common.out.clone(),
        bin_dir: common.bin_dir.clone(),
        proxy_bin: common.proxy_bin(),
        baseline_proxy_bin: c.baseline_proxy_bin.as_deref().map(absolute),
        quick: q,
        duration: Duration::from_secs_f64(c.duration.unwrap_or(if q { 1.2 } else { 6.0 })),
        sat_duration: Duration::from_secs_f64(c.sat_duration.unwrap_or(if q { 1.2 } else { 4.0 })),
        repeats: c.repeats.unwrap_or(if q { 2 } else { 3 }).max(1),
        concurrency: c.concurrency,
        conns: c.conns,
        server_cpus: c.server_cpus.clone().filter(|s| !s.is_empty()),
        gen_cpus: c.gen_cpus.clone().filter(|s| !s.is_empty()),
        low_rate: c.low_rate,
        high_fraction: c.high_fraction,
        tail_rate: c.tail_rate,
        tail_duration: Duration::from_secs_f64(c.tail_duration.unwrap_or(if q { 2.0 } else { 20.0 })),
        tail_fifo: c.tail_fifo,
    }
}

fn scale_opts(common: &Common, s: &ScaleArgs) -> scale::ScaleOpts {
    scale::ScaleOpts {
        proxy_bin: common.proxy_bin(),
        out_dir: common.out.clone(),
        services: s.services,
        endpoints_per_service: s.endpoints_per_service,
        routes: s.routes.min(s.services / 3).max(1),
        namespaces: s.namespaces.max(1),
        parallelism: s.parallelism.max(1),
        changes: s.changes.max(1),
        create_timeout: Duration::from_secs(s.create_timeout),
    }
}

fn write_outputs(out: &std::path::Path, results: &serde_json::Value) -> Result<String> {
    std::fs::create_dir_all(out)?;
    std::fs::write(out.join("results.json"), serde_json::to_string_pretty(results)?)?;
    let md = report::markdown(results);
    std::fs::write(out.join("results.md"), &md)?;
    if let Err(e) = report::write_png(results, &out.join("latency.png")) {
        eprintln!("latency.png not written: {e:#}");
    }
    Ok(md)
}

fn absolute(p: &std::path::Path) -> PathBuf {
    std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf())
}

fn main() {
    if let Ok(Cli { cmd: Cmd::Backend { addr } }) = Cli::try_parse() {
        if let Err(e) = backend::serve(addr) {
            eprintln!("strait-bench backend: {e:#}");
            std::process::exit(1);
        }
        return;
    }
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("tokio runtime");
    if let Err(e) = runtime.block_on(run(Cli::parse())) {
        // One readable chain, no backtrace wall (RUST_BACKTRACE may be set by the caller).
        eprintln!("strait-bench: error: {e:#}");
        std::process::exit(1);
    }
}

async fn run(cli: Cli) -> Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cmd = match cli.cmd {
        Cmd::All { common, compare, scale } => Cmd::All { common: common.absolute(), compare, scale },
        Cmd::Scale { common, scale } => Cmd::Scale { common: common.absolute(), scale },
        other => other,
    };
    match cmd {
        Cmd::All { common, compare, scale } => {
            let o = compare_opts(&common, &compare);
            let mut results = compare::run(o.clone()).await?;
            // Partial output first: the scale part takes minutes.
            write_outputs(&common.out, &results)?;
            if !o.quick {
                let sc = match scale::run(&scale_opts(&common, &scale)).await {
                    Ok(v) => v,
                    Err(e) => serde_json::json!({"error": format!("{e:#}")}),
                };
                results["scale"] = sc;
            }
            let md = write_outputs(&common.out, &results)?;
            println!("{md}");
            println!("(written: {0}/results.md, {0}/results.json, {0}/latency.png)", common.out.display());
        }
        Cmd::Scale { common, scale } => {
            std::fs::create_dir_all(&common.out)?;
            let sc = scale::run(&scale_opts(&common, &scale)).await?;
            std::fs::write(common.out.join("scale.json"), serde_json::to_string_pretty(&sc)?)?;
            let m = report::machine();
            let md = format!(
                "- date: {}\n- machine: {}\n\n{}",
                m["date"].as_str().unwrap_or(""),
                report::machine_line(&m),
                report::scale_markdown(&sc)
            );
            std::fs::write(common.out.join("scale.md"), &md)?;
            println!("{md}");
        }
        Cmd::Backend { .. } => unreachable!("handled in main"),
        Cmd::PgoTrain { proxy, out, seconds } => {
            let o = train::Opts {
                proxy_bin: absolute(&proxy),
                bench_bin: std::env::current_exe().context("locating strait-bench")?,
                out_dir: absolute(&out),
                per_workload: Duration::from_secs_f64(seconds.max(0.1)),
            };
            train::run(&o).await?;
        }
        Cmd::Configs { dir, backend, haproxy_listen } => compare::write_configs(&dir, backend, haproxy_listen)?,
        Cmd::Load { addr, authority, workload, rate, concurrency, duration, conns, slice_ms, by_call } => {
            let w = load::Workload::by_name(&workload).with_context(|| {
                let names: Vec<&str> = load::Workload::all().iter().map(|w| w.name).collect();
                format!("unknown workload {workload} (one of: {})", names.join(", "))
            })?;
            let duration = Duration::from_secs_f64(duration);
            let targets: Vec<load::Target> =
                addr.into_iter().map(|addr| load::Target { addr, authority: authority.clone() }).collect();
            // One target runs in one piece.
            let slice = if targets.len() > 1 { Duration::from_millis(slice_ms.max(1)) } else { duration };
            let mode = match rate {
                Some(rate) if by_call => load::Mode::OpenByCall { rate },
                Some(rate) => load::Mode::Open { rate },
                None => load::Mode::Closed { concurrency },
            };
            let results = load::run_turns(&targets, &w, mode, duration, slice, conns, 0).await.context("load run")?;
            for (target, r) in targets.iter().zip(results) {
                let h = &r.latency;
                println!(
                    "{}ok {} errors {} rps {:.0} | p50 {:.1} p90 {:.1} p99 {:.1} p99.9 {:.1} max {:.1} µs | send lag p99 {:.1} µs{}",
                    if targets.len() > 1 { format!("{} ", target.addr) } else { String::new() },
                    r.ok,
                    r.errors,
                    r.throughput(),
                    h.value_at_quantile(0.5) as f64 / 1e3,
                    h.value_at_quantile(0.9) as f64 / 1e3,
                    h.value_at_quantile(0.99) as f64 / 1e3,
                    h.value_at_quantile(0.999) as f64 / 1e3,
                    h.max() as f64 / 1e3,
                    r.send_lag.value_at_quantile(0.99) as f64 / 1e3,
                    r.first_error.map(|e| format!(" | first error: {e}")).unwrap_or_default()
                );
            }
        }
    }
    Ok(())
}
