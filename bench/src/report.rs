//! results.json, results.md (printed at the end) and latency.png.
use crate::compare::{Env, Opts, Point, Sample};
use crate::load::Mode;
use anyhow::{Context, Result};
use serde_json::{Value, json};
use std::path::Path;
use std::time::Duration;

pub fn median(v: &[f64]) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    let n = s.len();
    if n % 2 == 1 { s[n / 2] } else { (s[n / 2 - 1] + s[n / 2]) / 2.0 }
}

/// median, min, max
pub fn stats(v: &[f64]) -> (f64, f64, f64) {
    let min = v.iter().copied().fold(f64::INFINITY, f64::min);
    let max = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    (median(v), min, max)
}

fn stats_json(v: &[f64]) -> Value {
    let (m, lo, hi) = stats(v);
    json!({"median": m, "min": lo, "max": hi, "values": v})
}

pub fn machine() -> Value {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, v)| v.trim().to_owned())
        .unwrap_or_else(|| "unknown".into());
    let mhz = cpuinfo
        .lines()
        .find(|l| l.starts_with("cpu MHz"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, v)| v.trim().to_owned());
    // nproc of the machine (this process is pinned, so not available_parallelism).
    let nproc = cpuinfo.lines().filter(|l| l.starts_with("processor")).count();
    let online = std::fs::read_to_string("/sys/devices/system/cpu/online").unwrap_or_default().trim().to_owned();
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim().to_owned();
    let mem_kb = std::fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:").map(|v| v.trim().trim_end_matches(" kB").parse::<u64>().unwrap_or(0)))
        .unwrap_or(0);
    let date = std::process::Command::new("date")
        .args(["-u", "+%Y-%m-%dT%H:%M:%SZ"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default().trim().to_owned();
    json!({"date": date, "nproc": nproc, "cpus_online": online, "cpu_model": model, "cpu_mhz": mhz,
           "kernel": kernel, "mem_total_gib": mem_kb as f64 / 1048576.0, "loadavg_at_end": load})
}

fn mode_json(m: &Mode) -> Value {
    match m {
        Mode::Open { rate } => json!({"kind": "open", "rate_rps": rate}),
        Mode::Closed { concurrency } => json!({"kind": "closed", "in_flight": concurrency}),
        Mode::OpenByCall { rate } => json!({"kind": "open_by_call", "rate_rps": rate}),
    }
}

/// Bootstrap resamples per quantile of a call-by-call point.
pub const BOOTSTRAP_ITERS: usize = 2000;
/// Its blocks: this many seconds of consecutive cycles (a stall lasts milliseconds).
pub const BOOTSTRAP_BLOCK_SECONDS: f64 = 1.0;
/// Fewer blocks per path than this and the report says its intervals are unreliable.
const MIN_RELIABLE_BLOCKS: f64 = 20.0;
/// The differences a call-by-call point reports, `(a, b)` for a − b: the A/A control
/// first, then what the issue-6 targets compare, then what the optimised build buys
/// over the plain one; pairs with a missing path are skipped.
const TAIL_PAIRS: [(&str, &str); 5] = [
    (crate::compare::CONTROL_PATH, "haproxy"),
    ("strait-outbound", "haproxy"),
    ("strait-outbound", "nginx"),
    ("strait-outbound-plain", "haproxy"),
    ("strait-outbound", "strait-outbound-plain"),
];
const TAIL_QUANTILES: [(&str, f64); 4] = [("p50", 0.5), ("p90", 0.9), ("p99", 0.99), ("p99.9", 0.999)];

/// The quantiles of every path over all calls of a call-by-call point, each path's
/// added latency (path − direct) and the `TAIL_PAIRS` differences, each with its 95%
/// paired block-bootstrap interval (µs).
fn tail_json(pt: &Point, names: &[&str], rate: f64) -> Value {
    use crate::stats::{Bootstrap, Interval};
    let block = (rate * BOOTSTRAP_BLOCK_SECONDS).round().max(1.0) as usize;
    let iv = |d: Option<Interval>| match d {
        Some(d) => {
            json!({"estimate_us": d.estimate / 1e3, "lo_us": d.lo / 1e3, "hi_us": d.hi / 1e3, "resolved": d.resolved()})
        }
        None => Value::Null,
    };
    let idx = |n: &str| names.iter().position(|x| *x == n);
    let qs: Vec<f64> = TAIL_QUANTILES.iter().map(|(_, q)| *q).collect();
    let boot = Bootstrap::run(&pt.per_cycle, &qs, block, BOOTSTRAP_ITERS, 17);
    let mut out = serde_json::Map::new();
    for (k, (label, _)) in TAIL_QUANTILES.iter().enumerate() {
        let mut per_path = serde_json::Map::new();
        for (p, name) in names.iter().enumerate() {
            let added = if p == 0 { Value::Null } else { iv(boot.difference(k, p, 0)) };
            let all_calls = boot.all_calls(k, p);
            per_path
                .insert((*name).to_owned(), json!({"all_calls_us": all_calls.map(|v| v as f64 / 1e3), "added": added}));
        }
        let pairs: Vec<Value> = TAIL_PAIRS
            .iter()
            .filter_map(|(a, b)| {
                let (ia, ib) = (idx(a)?, idx(b)?);
                Some(json!({"a": a, "b": b, "difference": iv(boot.difference(k, ia, ib))}))
            })
            .collect();
        out.insert((*label).to_owned(), json!({"paths": per_path, "pairs": pairs}));
    }
    json!({"calls_per_path": pt.per_cycle.first().map_or(0, Vec::len), "block_cycles": block,
           "resamples": BOOTSTRAP_ITERS, "quantiles": out})
}

/// ", backend and proxies under SCHED_FIFO n" for a point run that way, else "".
fn fifo_note(pt: &Value) -> String {
    match pt["servers_sched"].as_str() {
        Some(s) if s.starts_with("SCHED_FIFO") => format!(", backend and proxies under {s}"),
        _ => String::new(),
    }
}

/// A point of results.json with latencies at a fixed rate (200 ms turns or call by
/// call), as opposed to the saturation point.
fn is_open_loop(p: &Value) -> bool {
    p["mode"]["kind"] == "open" || p["mode"]["kind"] == "open_by_call"
}

fn cpu_ms_per_1k(s: &Sample, cpu: f64) -> f64 {
    if s.ok == 0 { f64::NAN } else { cpu * 1e6 / s.ok as f64 }
}

pub fn build_json(
    o: &Opts,
    env: &Env,
    points: &[Point],
    peaks: &[u64],
    h2load: Value,
    high_rate: f64,
    total: Duration,
) -> Value {
    let names: Vec<&str> = env.paths.iter().map(|p| p.name).collect();
    let pts: Vec<Value> = points
        .iter()
        .map(|pt| {
            let direct = &pt.samples[0];
            let mut per_path = serde_json::Map::new();
            for (i, name) in names.iter().enumerate() {
                let s = &pt.samples[i];
                let col = |f: fn(&Sample) -> f64| s.iter().map(f).collect::<Vec<_>>();
                let added = |f: fn(&Sample) -> f64| {
                    s.iter().zip(direct.iter()).map(|(a, d)| f(a) - f(d)).collect::<Vec<_>>()
                };
                let ratio = |f: fn(&Sample) -> f64| {
                    s.iter().zip(direct.iter()).map(|(a, d)| f(a) / f(d)).collect::<Vec<_>>()
                };
                let h = &pt.merged[i];
                let q = |x: f64| h.value_at_quantile(x) as f64 / 1000.0;
                per_path.insert(
                    (*name).to_owned(),
                    json!({
                        "p50_us": stats_json(&col(|x| x.p50)),
                        "p90_us": stats_json(&col(|x| x.p90)),
                        "p99_us": stats_json(&col(|x| x.p99)),
                        "p999_us": stats_json(&col(|x| x.p999)),
                        "max_us": stats_json(&col(|x| x.max)),
                        "rps": stats_json(&col(|x| x.rps)),
                        "added_p50_us": stats_json(&added(|x| x.p50)),
                        "added_p99_us": stats_json(&added(|x| x.p99)),
                        "added_p999_us": stats_json(&added(|x| x.p999)),
                        "p50_ratio": stats_json(&ratio(|x| x.p50)),
                        "p99_ratio": stats_json(&ratio(|x| x.p99)),
                        "rps_ratio": stats_json(&ratio(|x| x.rps)),
                        "proxy_cpu_ms_per_1k": stats_json(&s.iter().map(|x| cpu_ms_per_1k(x, x.proxy_cpu_s)).collect::<Vec<_>>()),
                        "backend_cpu_ms_per_1k": stats_json(&s.iter().map(|x| cpu_ms_per_1k(x, x.backend_cpu_s)).collect::<Vec<_>>()),
                        "errors": s.iter().map(|x| x.errors).sum::<u64>(),
                        "ok": s.iter().map(|x| x.ok).sum::<u64>(),
                        "merged_percentiles_us": {"p50": q(0.5), "p75": q(0.75), "p90": q(0.9), "p95": q(0.95), "p99": q(0.99),
                                                   "p99.5": q(0.995), "p99.9": q(0.999), "p99.99": q(0.9999), "max": h.max() as f64 / 1000.0},
                        "samples": s.iter().map(Sample::json).collect::<Vec<_>>(),
                    }),
                );
            }
            let sched = if pt.servers_fifo {
                format!("SCHED_FIFO {}", crate::procs::FIFO_PRIORITY)
            } else {
                "SCHED_OTHER".to_owned()
            };
            let mut v = json!({"id": pt.id, "workload": pt.workload.name, "method": pt.workload.path,
                   "request_frame_bytes": pt.workload.frame.len(), "response_messages": pt.workload.messages,
                   "mode": mode_json(&pt.mode), "seconds_per_run": pt.duration.as_secs_f64(),
                   "servers_sched": sched, "paths": per_path});
            if let Mode::OpenByCall { rate } = pt.mode {
                v["tail"] = tail_json(pt, &names, rate);
            }
            v
        })
        .collect();
    let paths: Vec<Value> = env
        .paths
        .iter()
        .enumerate()
        .map(|(i, p)| {
            json!({"name": p.name, "description": p.description, "proxy_processes": p.procs.iter().map(|k| env.procs[*k].name.clone()).collect::<Vec<_>>(),
                   "rss_idle_bytes": env.idle_rss[i], "rss_peak_bytes": peaks.get(i).copied().unwrap_or(0)})
        })
        .collect();
    json!({
        "machine": machine(),
        "settings": {
            "quick": o.quick, "repeats": o.repeats, "open_loop_seconds": o.duration.as_secs_f64(),
            "saturation_seconds": o.sat_duration.as_secs_f64(), "saturation_in_flight": o.concurrency,
            "client_connections": o.conns, "low_rate_rps": o.low_rate, "high_rate_rps": high_rate,
            "interleave_slice_ms": crate::compare::INTERLEAVE_SLICE.as_millis() as u64,
            "tail_rate_rps_per_path": o.tail_rate, "tail_seconds": o.tail_duration.as_secs_f64(),
            "tail_fifo": o.tail_fifo,
            "high_rate_fraction_of_slowest_saturation": o.high_fraction,
            "generator_cpus": o.gen_cpus, "server_cpus": o.server_cpus,
            "strait_proxy_bin": o.proxy_bin.display().to_string(),
            "baseline_proxy_bin": o.baseline_proxy_bin.as_ref().map(|p| p.display().to_string()),
        },
        "paths": paths,
        "backend": {"rss_idle_bytes": env.backend_idle_rss, "rss_peak_bytes": peaks.last().copied().unwrap_or(0)},
        "points": pts,
        "h2load_cross_check": h2load,
        "total_seconds": total.as_secs_f64(),
    })
}

fn f(v: &Value, key: &str) -> (f64, f64, f64) {
    let g = |k: &str| v[key][k].as_f64().unwrap_or(f64::NAN);
    (g("median"), g("min"), g("max"))
}

fn fmt_spread((m, lo, hi): (f64, f64, f64), prec: usize) -> String {
    if m.is_nan() {
        return "–".into();
    }
    format!("{m:.prec$} [{lo:.prec$}–{hi:.prec$}]")
}

/// One line describing the machine.
pub fn machine_line(m: &Value) -> String {
    format!(
        "nproc {} (CPUs online {}), {}, kernel {}, {:.1} GiB RAM; load average at end: {}",
        m["nproc"],
        m["cpus_online"].as_str().unwrap_or(""),
        m["cpu_model"].as_str().unwrap_or(""),
        m["kernel"].as_str().unwrap_or(""),
        m["mem_total_gib"].as_f64().unwrap_or(0.0),
        m["loadavg_at_end"].as_str().unwrap_or(""),
    )
}

pub fn markdown(r: &Value) -> String {
    let m = &r["machine"];
    let s = &r["settings"];
    let mut out = String::new();
    out.push_str("# Strait benchmark\n\n");
    out.push_str(&format!(
        "- date: {}\n- machine: nproc {} (CPUs online {}), {}, kernel {}, {:.1} GiB RAM; load average at end: {}\n",
        m["date"].as_str().unwrap_or(""),
        m["nproc"],
        m["cpus_online"].as_str().unwrap_or(""),
        m["cpu_model"].as_str().unwrap_or(""),
        m["kernel"].as_str().unwrap_or(""),
        m["mem_total_gib"].as_f64().unwrap_or(0.0),
        m["loadavg_at_end"].as_str().unwrap_or(""),
    ));
    out.push_str(&format!(
        "- pinning: generator (this process, 1 tokio thread) on CPU {}; backend and every proxy process on CPU {} \
         (each proxy therefore runs 1 worker: strait-proxy 1 tokio worker, nginx 1 worker, HAProxy nbthread 1)\n",
        s["generator_cpus"].as_str().unwrap_or("any"),
        s["server_cpus"].as_str().unwrap_or("any"),
    ));
    out.push_str(&format!(
        "- {} repeats per point; in each repeat every path runs in one run, the paths taking turns in {} ms slices (order \
         rotated per repeat), so a slow stretch of the machine falls on every path alike and only one path carries load at \
         a time: open loop {} s per path, all paths sharing one constant-rate schedule (each turn's first call is a warm-up, \
         counted but left out of the percentiles); saturation {} s per path ({} calls in flight, rps over the path's own \
         turns); {} client HTTP/2 connection(s); cells are **median [min–max] over repeats**; \"added\" is paired per \
         repeat (path − direct in the same run); {}\n",
        s["repeats"], s["interleave_slice_ms"], s["open_loop_seconds"], s["saturation_seconds"], s["saturation_in_flight"],
        s["client_connections"],
        if s["quick"].as_bool() == Some(true) { "**BENCH_QUICK=1 (short runs, indicative only)**" } else { "full run" },
    ));
    out.push_str(&format!("- Strait paths run `{}`", s["strait_proxy_bin"].as_str().unwrap_or("")));
    match s["baseline_proxy_bin"].as_str() {
        Some(b) => out.push_str(&format!("; `strait-outbound-plain` runs `{b}` (the same one hop, the other build)\n")),
        None => out.push('\n'),
    }
    out.push_str("- latency is measured from the *intended* send time of a constant-rate schedule (coordinated omission corrected), to the end of the response (trailers)\n");
    if let (Some(planned), Some(high)) = (s["high_rate_planned_rps"].as_f64(), s["high_rate_rps"].as_f64())
        && planned != high
    {
        out.push_str(&format!(
            "- high rate: {high} rps, lowered from {planned} rps ({} of the slowest saturation), which the generator could not send open loop to the direct path (probes in results.json)\n",
            s["high_rate_fraction_of_slowest_saturation"]
        ));
    }
    out.push('\n');

    let points = r["points"].as_array().cloned().unwrap_or_default();
    let paths = r["paths"].as_array().cloned().unwrap_or_default();
    let sat = points.iter().find(|p| p["mode"]["kind"] == "closed");
    let high = points.iter().find(|p| {
        p["mode"]["kind"] == "open" && p["mode"]["rate_rps"] == s["high_rate_rps"] && p["workload"] == "unary_100B"
    });
    out.push_str(&format!(
        "## Throughput and resources (unary ~100 B)\n\nCPU per 1000 requests is the proxy process(es)' CPU time during the {} rps open-loop runs \
         (mesh: both Strait processes; nginx: master + worker), read in ns from each process's CPU-time clock; \
         the open-loop tables below give it at every rate. RSS sums the path's proxy processes \
         (idle: ready, before traffic; peak: sampled every 100 ms over the whole run).\n\n",
        s["high_rate_rps"]
    ));
    out.push_str("| path | saturation rps | × direct | proxy CPU ms / 1k req | backend CPU ms / 1k req | RSS idle MiB | RSS peak MiB |\n|---|---|---|---|---|---|---|\n");
    for p in &paths {
        let name = p["name"].as_str().unwrap_or("");
        let mib = |k: &str| p[k].as_f64().unwrap_or(0.0) / 1048576.0;
        let (sat_rps, ratio) = match sat {
            Some(pt) => {
                (fmt_spread(f(&pt["paths"][name], "rps"), 0), fmt_spread(f(&pt["paths"][name], "rps_ratio"), 2))
            }
            None => ("–".into(), "–".into()),
        };
        let (cpu, bcpu) = match high {
            Some(pt) if name != "direct" => (
                fmt_spread(f(&pt["paths"][name], "proxy_cpu_ms_per_1k"), 1),
                fmt_spread(f(&pt["paths"][name], "backend_cpu_ms_per_1k"), 1),
            ),
            Some(pt) => ("–".into(), fmt_spread(f(&pt["paths"][name], "backend_cpu_ms_per_1k"), 1)),
            None => ("–".into(), "–".into()),
        };
        let (idle, peak) = if name == "direct" {
            ("–".into(), "–".into())
        } else {
            (format!("{:.1}", mib("rss_idle_bytes")), format!("{:.1}", mib("rss_peak_bytes")))
        };
        out.push_str(&format!("| {name} | {sat_rps} | {ratio} | {cpu} | {bcpu} | {idle} | {peak} |\n"));
    }
    out.push_str(&format!(
        "\nBackend (`strait-bench backend`: tonic, demo Echo protos, TCP_NODELAY) RSS: idle {:.1} MiB, peak {:.1} MiB.\n\n",
        r["backend"]["rss_idle_bytes"].as_f64().unwrap_or(0.0) / 1048576.0,
        r["backend"]["rss_peak_bytes"].as_f64().unwrap_or(0.0) / 1048576.0
    ));
    for pt in points.iter().filter(|p| is_open_loop(p)) {
        let by_call = pt["mode"]["kind"] == "open_by_call";
        let how = if by_call {
            format!(
                "{} rps per path, all paths at once, calls taking turns one by one ({} s per repeat{})",
                pt["mode"]["rate_rps"],
                s["tail_seconds"],
                fifo_note(pt)
            )
        } else {
            format!("open loop {} rps", pt["mode"]["rate_rps"])
        };
        out.push_str(&format!(
            "## {} — {how} ({} B request frame, {} response message(s))\n\n",
            pt["workload"].as_str().unwrap_or(""),
            pt["request_frame_bytes"],
            pt["response_messages"]
        ));
        out.push_str("| path | p50 µs | p99 µs | p99.9 µs | added p50 µs | added p99 µs | added p99.9 µs | all repeats p50 / p90 / p99 / p99.9 µs | p50 × direct | proxy CPU ms / 1k req | errors |\n|---|---|---|---|---|---|---|---|---|---|---|\n");
        for p in &paths {
            let name = p["name"].as_str().unwrap_or("");
            let v = &pt["paths"][name];
            let added = |k: &str| if name == "direct" { "–".to_owned() } else { fmt_spread(f(v, k), 0) };
            // Percentiles of every call of every repeat together: a tail percentile of
            // one short repeat rests on a few dozen calls.
            let merged = &v["merged_percentiles_us"];
            let m = |k: &str| merged[k].as_f64().map(|x| format!("{x:.0}")).unwrap_or_else(|| "–".into());
            out.push_str(&format!(
                "| {name} | {} | {} | {} | {} | {} | {} | {} / {} / {} / {} | {} | {} | {} |\n",
                fmt_spread(f(v, "p50_us"), 0),
                fmt_spread(f(v, "p99_us"), 0),
                fmt_spread(f(v, "p999_us"), 0),
                added("added_p50_us"),
                added("added_p99_us"),
                added("added_p999_us"),
                m("p50"),
                m("p90"),
                m("p99"),
                m("p99.9"),
                if name == "direct" { "1".to_owned() } else { fmt_spread(f(v, "p50_ratio"), 2) },
                if name == "direct" { "–".to_owned() } else { fmt_spread(f(v, "proxy_cpu_ms_per_1k"), 1) },
                v["errors"],
            ));
        }
        out.push('\n');
        if by_call {
            out.push_str(&tail_table(pt));
        } else {
            out.push_str(&paired_table(pt));
        }
    }
    if let Some(why) = r["tail_fifo_skipped"].as_str() {
        out.push_str(&format!("**Tail points with the servers under SCHED_FIFO: skipped.** {why}\n\n"));
    }
    let h = &r["h2load_cross_check"];
    if h.get("h2load_rps_median").is_some() {
        out.push_str(&format!(
            "## Generator cross-check (h2load, direct backend, unary ~100 B, 1 connection × {} in flight, {} s per run)\n\n\
             | generator | rps median (runs) | mean latency µs median |\n|---|---|---|\n| strait-bench closed loop | {:.0} ({}) | {:.0} |\n| h2load | {:.0} ({}) | {:.0} |\n\n",
            h["in_flight"],
            h["seconds_per_run"],
            h["strait_bench_rps_median"].as_f64().unwrap_or(0.0),
            join(&h["strait_bench_rps"]),
            h["strait_bench_mean_us_median"].as_f64().unwrap_or(0.0),
            h["h2load_rps_median"].as_f64().unwrap_or(0.0),
            join(&h["h2load_rps"]),
            h["h2load_mean_us_median"].as_f64().unwrap_or(0.0),
        ));
    }
    if let Some(sc) = r.get("scale").filter(|v| !v.is_null()) {
        out.push_str(&scale_markdown(sc));
    }
    out.push_str(&format!(
        "Total benchmark time: {:.0} s. Raw numbers: results.json; chart: latency.png.\n",
        r["total_seconds"].as_f64().unwrap_or(0.0)
    ));
    out
}

/// Per-repeat values of `key` for `path` at point `pt`, in repeat order.
fn repeat_values(pt: &Value, path: &str, key: &str) -> Vec<f64> {
    pt["paths"][path][key]["values"]
        .as_array()
        .map(|v| v.iter().filter_map(Value::as_f64).collect())
        .unwrap_or_default()
}

/// `a − b` per repeat: both paths ran in the same repeat, turn about, so the machine's
/// slow stretches fell on both.
fn paired_differences(pt: &Value, a: &str, b: &str, key: &str) -> Vec<f64> {
    repeat_values(pt, a, key).iter().zip(repeat_values(pt, b, key)).map(|(x, y)| x - y).collect()
}

/// The comparisons the targets rest on, next to the A/A control (two HAProxy processes
/// with one configuration): a difference inside the control's spread is not one this
/// run resolves.
fn paired_table(pt: &Value) -> String {
    use crate::compare::CONTROL_PATH;
    let has = |p: &str| pt["paths"].get(p).is_some();
    let pairs = [
        (CONTROL_PATH, "haproxy", " (A/A control: noise)"),
        ("strait-outbound", "haproxy", ""),
        ("strait-outbound", "nginx", ""),
    ];
    let mut out = String::from(
        "| paired per repeat, median [min–max] | p50 µs | p99 µs | p99 of all repeats µs | proxy CPU ms / 1k req |\n|---|---|---|---|---|\n",
    );
    let mut rows = 0;
    for (a, b, note) in pairs {
        if !has(a) || !has(b) {
            continue;
        }
        let d = |key: &str, prec: usize| {
            let v = paired_differences(pt, a, b, key);
            if v.is_empty() { "–".to_owned() } else { fmt_spread(stats(&v), prec) }
        };
        let pooled = |p: &str| pt["paths"][p]["merged_percentiles_us"]["p99"].as_f64();
        let pooled_diff = match (pooled(a), pooled(b)) {
            (Some(x), Some(y)) => format!("{:.0}", x - y),
            _ => "–".to_owned(),
        };
        out.push_str(&format!(
            "| {a} − {b}{note} | {} | {} | {pooled_diff} | {} |\n",
            d("p50_us", 0),
            d("p99_us", 0),
            d("proxy_cpu_ms_per_1k", 1)
        ));
        rows += 1;
    }
    if rows == 0 {
        return String::new();
    }
    out.push('\n');
    out
}

fn fmt_interval(d: &Value) -> String {
    match (d["estimate_us"].as_f64(), d["lo_us"].as_f64(), d["hi_us"].as_f64()) {
        (Some(e), Some(lo), Some(hi)) => format!("{e:.0} [{lo:.0}…{hi:.0}]"),
        _ => "–".to_owned(),
    }
}

/// A call-by-call point's differences over all its calls, with 95% paired
/// block-bootstrap intervals; the last column says whether the run resolves the sign
/// of the p99 difference.
fn tail_table(pt: &Value) -> String {
    let t = &pt["tail"];
    let Some(q) = t["quantiles"].as_object() else {
        return String::new();
    };
    let mut out = format!(
        "Over all {} calls per path, 95% intervals from {} paired block-bootstrap resamples (blocks of {} cycles): \
         a stall of the machine falls on every path's calls alike, so the control's interval shows what the run resolves.\n\n\
         | difference, µs: all calls [95% interval] | p50 | p90 | p99 | p99.9 | p99 resolved? |\n|---|---|---|---|---|---|\n",
        t["calls_per_path"], t["resamples"], t["block_cycles"]
    );
    // A bootstrap over a handful of blocks understates the spread (BENCH_QUICK=1).
    let blocks = t["calls_per_path"].as_f64().unwrap_or(0.0) / t["block_cycles"].as_f64().unwrap_or(1.0).max(1.0);
    if blocks < MIN_RELIABLE_BLOCKS {
        out = format!(
            "**Only {blocks:.0} blocks per path: too few for these intervals to be reliable \
             (longer runs: BENCH_TAIL_DURATION, BENCH_REPEATS).**\n\n{out}"
        );
    }
    let labels: Vec<&str> = TAIL_QUANTILES.iter().map(|(label, _)| *label).collect();
    let verdict = |d: &Value| match (d["resolved"].as_bool(), d["estimate_us"].as_f64()) {
        (Some(true), Some(e)) if e < 0.0 => "yes: lower",
        (Some(true), Some(_)) => "yes: higher",
        (Some(false), _) => "no",
        _ => "–",
    };
    // Added latency (path − direct) for every proxied path, then the pairs.
    let paths: Vec<String> = q["p99"]["paths"]
        .as_object()
        .map(|m| m.keys().filter(|k| *k != "direct").cloned().collect())
        .unwrap_or_default();
    for name in &paths {
        let cells: Vec<String> = labels.iter().map(|l| fmt_interval(&q[*l]["paths"][name]["added"])).collect();
        out.push_str(&format!(
            "| {name} − direct (added) | {} | {} |\n",
            cells.join(" | "),
            verdict(&q["p99"]["paths"][name]["added"])
        ));
    }
    let pairs = q["p99"]["pairs"].as_array().cloned().unwrap_or_default();
    for (k, pair) in pairs.iter().enumerate() {
        let (a, b) = (pair["a"].as_str().unwrap_or(""), pair["b"].as_str().unwrap_or(""));
        let note = if a == crate::compare::CONTROL_PATH { " (A/A control: noise)" } else { "" };
        let cells: Vec<String> = labels.iter().map(|l| fmt_interval(&q[*l]["pairs"][k]["difference"])).collect();
        out.push_str(&format!("| {a} − {b}{note} | {} | {} |\n", cells.join(" | "), verdict(&pair["difference"])));
    }
    out.push('\n');
    out
}

fn join(v: &Value) -> String {
    v.as_array()
        .map(|a| a.iter().map(|x| format!("{:.0}", x.as_f64().unwrap_or(0.0))).collect::<Vec<_>>().join(", "))
        .unwrap_or_default()
}

pub fn scale_markdown(sc: &Value) -> String {
    if let Some(e) = sc.get("error") {
        return format!("## Scale (Kubernetes mode)\n\nFAILED: {e}\n\n");
    }
    let g = |k: &str| sc[k].as_f64().unwrap_or(f64::NAN);
    format!(
        "## Scale (Kubernetes mode, real kube-apiserver + etcd)\n\n\
         {} Services, {} EndpointSlices with {} endpoints, {} GRPCRoutes (created with kube-rs, {} in parallel, in {:.1} s = {:.0} objects/s).\n\n\
         | metric | value |\n|---|---|\n\
         | start-up sync (spawn → /ready 200) | {:.2} s |\n\
         | proxy CPU during start-up sync | {:.2} s |\n\
         | RSS after sync | {:.1} MiB |\n\
         | RSS after {} route changes | {:.1} MiB |\n\
         | route change → data plane (patch sent → /routes/query shows it), p50 | {:.0} ms |\n\
         | … p99 / max (n = {}) | {:.0} ms / {:.0} ms |\n\
         | proxy CPU per route change (recompile) | {:.0} ms |\n\n{}\n\n",
        sc["services"],
        sc["endpoint_slices"],
        sc["endpoints"],
        sc["grpc_routes"],
        sc["create_parallelism"],
        g("create_seconds"),
        g("create_objects_per_second"),
        g("sync_seconds"),
        g("sync_cpu_seconds"),
        g("rss_after_sync_bytes") / 1048576.0,
        sc["changes"],
        g("rss_after_changes_bytes") / 1048576.0,
        g("change_p50_ms"),
        sc["changes"],
        g("change_p99_ms"),
        g("change_max_ms"),
        g("cpu_ms_per_change"),
        sc["note"].as_str().unwrap_or("")
    )
}

pub fn write_png(r: &Value, path: &Path) -> Result<()> {
    use plotters::prelude::*;
    let font = ["/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf", "/usr/share/fonts/TTF/DejaVuSans.ttf"]
        .iter()
        .find_map(|p| std::fs::read(p).ok())
        .context("no DejaVuSans.ttf for the chart labels (apt-get install fonts-dejavu-core)")?;
    let font: &'static [u8] = Box::leak(font.into_boxed_slice());
    plotters::style::register_font("sans-serif", FontStyle::Normal, font)
        .map_err(|_| anyhow::anyhow!("invalid font"))?;

    let points: Vec<Value> =
        r["points"].as_array().cloned().unwrap_or_default().into_iter().filter(is_open_loop).collect();
    let paths: Vec<String> = r["paths"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|p| p["name"].as_str().unwrap_or("").to_owned())
        .collect();
    let qs: [(&str, f64); 8] = [
        ("p50", 0.5),
        ("p75", 0.75),
        ("p90", 0.9),
        ("p95", 0.95),
        ("p99", 0.99),
        ("p99.5", 0.995),
        ("p99.9", 0.999),
        ("p99.99", 0.9999),
    ];
    // One colour per path: seven paths, so no two share one (with five, HAProxy drew
    // in direct's black and its control in Strait's blue).
    let colors = [
        RGBColor(0, 0, 0),
        RGBColor(31, 119, 180),
        RGBColor(44, 160, 44),
        RGBColor(214, 39, 40),
        RGBColor(148, 103, 189),
        RGBColor(255, 127, 14),
        RGBColor(140, 86, 75),
        RGBColor(127, 127, 127),
    ];
    let cols = 2;
    let rows = points.len().div_ceil(cols).max(1);
    let root = BitMapBackend::new(path, (1600, 50 + 260 * rows as u32)).into_drawing_area();
    root.fill(&WHITE)?;
    let (title, body) = root.split_vertically(50);
    title.draw(&Text::new(
        format!(
            "Strait benchmark: latency percentiles (merged over repeats), {}",
            r["machine"]["date"].as_str().unwrap_or("")
        ),
        (20, 15),
        ("sans-serif", 24).into_font(),
    ))?;
    let areas = body.split_evenly((rows, cols));
    for (area, pt) in areas.iter().zip(points.iter()) {
        let mut series: Vec<(String, Vec<(f64, f64)>)> = Vec::new();
        let (mut lo, mut hi) = (f64::INFINITY, 0f64);
        for name in &paths {
            let pc = &pt["paths"][name.as_str()]["merged_percentiles_us"];
            let pts: Vec<(f64, f64)> = qs
                .iter()
                .enumerate()
                .filter_map(|(i, (k, _))| pc[*k].as_f64().map(|v| (i as f64, v.max(1.0))))
                .collect();
            for (_, v) in &pts {
                lo = lo.min(*v);
                hi = hi.max(*v);
            }
            series.push((name.clone(), pts));
        }
        if !lo.is_finite() {
            continue;
        }
        let caption = format!(
            "{} @ {} rps{}",
            pt["workload"].as_str().unwrap_or(""),
            pt["mode"]["rate_rps"].as_f64().unwrap_or(0.0),
            if pt["mode"]["kind"] == "open_by_call" { " per path, call by call" } else { " (open loop)" }
        ) + if fifo_note(pt).is_empty() { "" } else { ", servers SCHED_FIFO" };
        let mut chart = ChartBuilder::on(area)
            .caption(caption, ("sans-serif", 20))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(70)
            .build_cartesian_2d(-0.3f64..(qs.len() as f64 - 0.7), ((lo * 0.8)..(hi * 1.25)).log_scale())?;
        chart
            .configure_mesh()
            .x_desc("percentile (categorical)")
            .y_desc("latency µs (log)")
            .x_labels(qs.len() * 2)
            .y_labels(12)
            .x_label_formatter(&|x| {
                let i = x.round();
                if (x - i).abs() < 0.05 && i >= 0.0 {
                    qs.get(i as usize).map(|q| q.0.to_owned()).unwrap_or_default()
                } else {
                    String::new()
                }
            })
            .y_label_formatter(&|y| format!("{y:.0}"))
            .label_style(("sans-serif", 14))
            .draw()?;
        for (i, (name, pts)) in series.into_iter().enumerate() {
            let c = colors[i % colors.len()];
            chart
                .draw_series(LineSeries::new(pts.clone(), c.stroke_width(2)))?
                .label(name)
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(2)));
            chart.draw_series(pts.into_iter().map(|p| Circle::new(p, 3, c.filled())))?;
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .label_font(("sans-serif", 14))
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .draw()?;
    }
    root.present()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn path(p50: &[f64], p99: &[f64], cpu: &[f64], pooled_p99: f64) -> Value {
        json!({"p50_us": stats_json(p50), "p99_us": stats_json(p99), "proxy_cpu_ms_per_1k": stats_json(cpu),
               "merged_percentiles_us": {"p99": pooled_p99}})
    }

    #[test]
    fn paired_table_subtracts_repeat_by_repeat_beside_the_control() {
        let pt = json!({"paths": {
            "haproxy": path(&[100.0, 110.0, 120.0], &[300.0, 500.0, 400.0], &[50.0, 52.0, 54.0], 450.0),
            "haproxy-b": path(&[104.0, 108.0, 121.0], &[320.0, 470.0, 400.0], &[51.0, 52.0, 53.0], 440.0),
            "strait-outbound": path(&[80.0, 95.0, 100.0], &[290.0, 520.0, 350.0], &[45.0, 46.0, 49.0], 460.0),
        }});
        let t = paired_table(&pt);
        // Per repeat, not the difference of medians: strait's p99s are 290, 520, 350
        // against 300, 500, 400 → −10, +20, −50.
        assert!(
            t.contains("| strait-outbound − haproxy | -20 [-20–-15] | -10 [-50–20] | 10 | -5.0 [-6.0–-5.0] |"),
            "{t}"
        );
        assert!(
            t.contains("| haproxy-b − haproxy (A/A control: noise) | 1 [-2–4] | 0 [-30–20] | -10 | 0.0 [-1.0–1.0] |"),
            "{t}"
        );
        // No nginx path, no nginx row.
        assert!(!t.contains("nginx"), "{t}");
    }

    #[test]
    fn tail_point_differences_are_paired_by_cycle_and_judged_by_their_interval() {
        use crate::load::Workload;
        let names = ["direct", "haproxy", "haproxy-b", "strait-outbound"];
        let mut pt =
            Point::new("t".into(), Workload::unary_100b(), Mode::OpenByCall { rate: 100.0 }, Duration::from_secs(1), 4);
        let mut rng = fastrand::Rng::with_seed(11);
        let cycles = 3000;
        // One noisy machine: a per-cycle stall that every path's call of that cycle met.
        let stall: Vec<u64> =
            (0..cycles).map(|_| if rng.usize(0..30) == 0 { rng.u64(500_000..3_000_000) } else { 0 }).collect();
        let body = |rng: &mut fastrand::Rng, base: u64| -> Vec<Option<u64>> {
            stall.iter().map(|s| Some(base + rng.u64(0..60_000) + s)).collect()
        };
        pt.per_cycle[0] = body(&mut rng, 150_000);
        pt.per_cycle[1] = body(&mut rng, 330_000);
        pt.per_cycle[2] = body(&mut rng, 330_000);
        // Strait: HAProxy's calls, 20 µs sooner.
        pt.per_cycle[3] = pt.per_cycle[1].iter().map(|x| x.map(|v| v - 20_000)).collect();
        let tail = tail_json(&pt, &names, 100.0);
        assert_eq!(tail["calls_per_path"], 3000);
        let pairs = &tail["quantiles"]["p99"]["pairs"];
        // The pairs whose paths exist, in TAIL_PAIRS order: control, then strait − haproxy.
        assert_eq!(
            (pairs[0]["a"].as_str(), pairs[1]["a"].as_str(), pairs[1]["b"].as_str()),
            (Some("haproxy-b"), Some("strait-outbound"), Some("haproxy"))
        );
        assert_eq!(pairs.as_array().map(Vec::len), Some(2), "no nginx / plain paths, no such pairs");
        let d = &pairs[1]["difference"];
        assert_eq!(
            (d["estimate_us"].as_f64(), d["lo_us"].as_f64(), d["hi_us"].as_f64()),
            (Some(-20.0), Some(-20.0), Some(-20.0))
        );
        assert_eq!(d["resolved"], true);
        let md = tail_table(&json!({"tail": tail}));
        assert!(md.contains("| strait-outbound − haproxy | -20 [-20…-20] | -20 [-20…-20] | -20 [-20…-20] | -20 [-20…-20] | yes: lower |"), "{md}");
        assert!(md.contains("| haproxy-b − haproxy (A/A control: noise) |"), "{md}");
        // 3000 cycles in 1 s blocks of 100: 30 blocks, no warning.
        assert!(!md.contains("too few"), "{md}");
        assert!(md.contains("(blocks of 100 cycles): a stall of the machine"), "{md}");
        // Added latency has an interval too; direct has no row of its own.
        assert!(md.contains("| strait-outbound − direct (added) |") && !md.contains("| direct − direct"), "{md}");
    }

    #[test]
    fn tail_table_says_when_the_run_does_not_resolve_the_p99() {
        let iv = |e: f64, lo: f64, hi: f64| json!({"estimate_us": e, "lo_us": lo, "hi_us": hi, "resolved": lo > 0.0 || hi < 0.0});
        let q = json!({"paths": {"direct": {"added": null}}, "pairs": [{"a": "strait-outbound", "b": "nginx", "difference": iv(30.0, -100.0, 150.0)}]});
        let higher = json!({"paths": {"direct": {"added": null}}, "pairs": [{"a": "strait-outbound", "b": "nginx", "difference": iv(80.0, 10.0, 150.0)}]});
        let t = json!({"tail": {"calls_per_path": 10, "resamples": 5, "block_cycles": 2,
                                "quantiles": {"p50": higher, "p90": q, "p99": q, "p99.9": q}}});
        let md = tail_table(&t);
        assert!(
            md.contains(
                "| strait-outbound − nginx | 80 [10…150] | 30 [-100…150] | 30 [-100…150] | 30 [-100…150] | no |"
            ),
            "{md}"
        );
        // 10 calls in blocks of 2: 5 blocks, and the table says so.
        assert!(md.starts_with("**Only 5 blocks per path: too few"), "{md}");
    }

    /// A tail point run with the servers under SCHED_FIFO says so in its heading; one
    /// run as usual, or an older results.json without the field, adds nothing.
    #[test]
    fn fifo_points_are_labelled() {
        assert_eq!(fifo_note(&json!({"servers_sched": "SCHED_FIFO 10"})), ", backend and proxies under SCHED_FIFO 10");
        assert_eq!(fifo_note(&json!({"servers_sched": "SCHED_OTHER"})), "");
        assert_eq!(fifo_note(&json!({})), "");
    }

    #[test]
    fn paired_table_is_empty_without_the_paths() {
        let pt = json!({"paths": {"direct": path(&[1.0], &[2.0], &[0.0], 2.0)}});
        assert_eq!(paired_table(&pt), "");
    }
}
