//! The training run of the profile-guided-optimisation (PGO) build: `strait-bench
//! pgo-train --proxy <instrumented strait-proxy>`, driven by `scripts/pgo-build.sh`.
//!
//! The profile should weigh code the way a sidecar's traffic does, so the run sends the
//! benchmark's own calls (unary 100 B and 16 KiB, a 10-message server stream; one at a
//! time and 64 in flight) through both of a sidecar's directions: an outbound hop to the
//! backend, and a mesh pair whose second process takes the calls on its inbound
//! listener. Every call must succeed and every proxy must exit cleanly on SIGTERM: an
//! instrumented process writes its profile as it exits, and a profile of failing calls
//! would optimise the error paths.
use crate::compare::{self, StraitAddrs};
use crate::load::{self, Mode, Target, Workload};
use crate::procs;
use anyhow::{Result, bail};
use std::path::PathBuf;
use std::time::Duration;

pub struct Opts {
    /// The instrumented strait-proxy (built with `-Cprofile-generate`).
    pub proxy_bin: PathBuf,
    /// strait-bench itself, started again as the backend.
    pub bench_bin: PathBuf,
    /// Configs and logs.
    pub out_dir: PathBuf,
    /// How long each workload runs on each path.
    pub per_workload: Duration,
}

/// The open-loop rate of the one-call-at-a-time runs (the benchmark's low rate).
const LOW_RATE: f64 = 500.0;
/// Calls in flight in the closed-loop runs (the benchmark's saturation point).
const IN_FLIGHT: usize = 64;

/// Calls that succeeded, per (path, workload) run.
pub type Summary = Vec<(&'static str, &'static str, u64)>;

pub async fn run(o: &Opts) -> Result<Summary> {
    let _ = std::fs::remove_dir_all(&o.out_dir);
    std::fs::create_dir_all(&o.out_dir)?;
    let a = procs::free_addrs(7)?;
    let backend_addr = a[0];
    let hop = StraitAddrs::from_free(&a[1..4]);
    let mesh_client = StraitAddrs::from_free(&a[4..7]);

    let backend = compare::spawn_backend(None, &o.bench_bin, backend_addr, &o.out_dir.join("backend.log"))?;
    // `hop` is both the outbound hop and the mesh's server side: its inbound listener
    // hands calls to the backend.
    let hop_cfg = o.out_dir.join("hop");
    let mesh_cfg = o.out_dir.join("mesh-client");
    compare::strait_config(&hop_cfg, backend_addr)?;
    compare::strait_config(&mesh_cfg, hop.inbound)?;
    let log = |name: &str| o.out_dir.join(format!("{name}.log"));
    let hop_proc = compare::spawn_strait("hop", None, &o.proxy_bin, &hop_cfg, hop, backend_addr, &log("hop"))?;
    let mesh_proc = compare::spawn_strait(
        "mesh-client",
        None,
        &o.proxy_bin,
        &mesh_cfg,
        mesh_client,
        backend_addr,
        &log("mesh-client"),
    )?;

    let mut summary = Summary::new();
    for (path, addr) in [("outbound", hop.outbound), ("mesh", mesh_client.outbound)] {
        let target = Target { addr, authority: compare::AUTHORITY.to_owned() };
        let runs = Workload::all()
            .into_iter()
            .map(|w| (w, Mode::Open { rate: LOW_RATE }))
            .chain(std::iter::once((Workload::unary_100b(), Mode::Closed { concurrency: IN_FLIGHT })));
        for (w, mode) in runs {
            let r = load::run(&target, &w, mode, o.per_workload, 1).await?;
            eprintln!("pgo-train: {path} {} {mode:?}: {} calls, {} errors", w.name, r.ok, r.errors);
            if r.ok == 0 || r.errors > 0 {
                bail!(
                    "pgo-train: {path} {} failed: {} ok, {} errors, first error {:?}",
                    w.name,
                    r.ok,
                    r.errors,
                    r.first_error
                );
            }
            summary.push((path, w.name, r.ok));
        }
    }
    // The mesh client first: it holds a connection to the hop's inbound listener.
    mesh_proc.stop(Duration::from_secs(30))?;
    hop_proc.stop(Duration::from_secs(30))?;
    drop(backend);
    let calls: u64 = summary.iter().map(|r| r.2).sum();
    eprintln!("pgo-train: {calls} calls, both proxies exited cleanly");
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The trainer's contract with `scripts/pgo-build.sh`, on the debug build of the
    /// proxy: every workload goes through both directions and both proxies exit on
    /// SIGTERM by themselves (a failure here would leave the PGO build without a profile).
    #[tokio::test(flavor = "current_thread")]
    async fn training_sends_every_workload_both_ways_and_the_proxies_exit_cleanly() {
        let proxy_bin = strait_e2e::proxy_bin().expect("strait-proxy binary (make build)");
        let bench_bin = strait_e2e::target_bin("strait-bench", "STRAIT_BENCH_BIN").expect("strait-bench binary");
        let out_dir = std::env::temp_dir().join(format!("strait-pgo-train-test-{}", std::process::id()));
        let o = Opts { proxy_bin, bench_bin, out_dir: out_dir.clone(), per_workload: Duration::from_millis(300) };
        let summary = run(&o).await.expect("training run");
        let _ = std::fs::remove_dir_all(&out_dir);
        for path in ["outbound", "mesh"] {
            for w in Workload::all() {
                assert!(
                    summary.iter().any(|(p, name, calls)| *p == path && *name == w.name && *calls > 0),
                    "no {} calls through {path}: {summary:?}",
                    w.name
                );
            }
        }
        // Closed loop too: the 100 B workload ran twice per path.
        assert_eq!(summary.iter().filter(|(p, name, _)| *p == "mesh" && *name == "unary_100B").count(), 2);
    }
}
