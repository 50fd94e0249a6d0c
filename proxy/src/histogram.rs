//! Latency histograms with fixed buckets: a call is recorded with two atomic adds, and
//! `/metrics` renders them in the Prometheus text format beside the exporter's counters.
//!
//! Why not the exporter's histograms: they keep every sample (value and timestamp, in
//! 1 KiB blocks allocated as they fill) until an upkeep folds them into buckets. On a
//! current-thread sidecar that upkeep ran on the data-plane thread, so its pause and the
//! samples it held both grew with the request rate (two histograms per call). Buckets
//! counted as calls end cost the same at any rate and hold no samples.
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, RwLock};
use std::time::Duration;

/// Upper bounds (inclusive, as Prometheus' `le`): sub-millisecond to tens of seconds,
/// in nanoseconds and as rendered.
const BUCKETS: [(u64, &str); 15] = [
    (500_000, "0.0005"),
    (1_000_000, "0.001"),
    (2_500_000, "0.0025"),
    (5_000_000, "0.005"),
    (10_000_000, "0.01"),
    (25_000_000, "0.025"),
    (50_000_000, "0.05"),
    (100_000_000, "0.1"),
    (250_000_000, "0.25"),
    (500_000_000, "0.5"),
    (1_000_000_000, "1"),
    (2_500_000_000, "2.5"),
    (5_000_000_000, "5"),
    (10_000_000_000, "10"),
    (30_000_000_000, "30"),
];

/// One latency histogram (one label set).
#[derive(Debug, Default)]
pub struct Histogram {
    /// Calls per bucket, not cumulative; the last counts calls above every bound.
    counts: [AtomicU64; BUCKETS.len() + 1],
    sum_nanos: AtomicU64,
}

impl Histogram {
    pub fn record(&self, elapsed: Duration) {
        let nanos = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        let bucket = BUCKETS.iter().position(|(bound, _)| nanos <= *bound).unwrap_or(BUCKETS.len());
        self.counts[bucket].fetch_add(1, Ordering::Relaxed);
        self.sum_nanos.fetch_add(nanos, Ordering::Relaxed);
    }

    /// Appends the `_bucket`, `_sum` and `_count` lines. `labels` is rendered already
    /// (`a="x",b="y"`, possibly empty). The count is the sum of the buckets read, so
    /// `_count` always equals the `+Inf` bucket even while calls are being recorded.
    fn render(&self, name: &str, labels: &str, out: &mut String) {
        let sep = if labels.is_empty() { "" } else { "," };
        let mut cumulative = 0u64;
        for (i, (_, le)) in BUCKETS.iter().enumerate() {
            cumulative += self.counts[i].load(Ordering::Relaxed);
            let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"{le}\"}} {cumulative}");
        }
        cumulative += self.counts[BUCKETS.len()].load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {cumulative}");
        let sum = self.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9;
        let braces = |l: &str| if l.is_empty() { String::new() } else { format!("{{{l}}}") };
        let _ = writeln!(out, "{name}_sum{} {sum}", braces(labels));
        let _ = writeln!(out, "{name}_count{} {cumulative}", braces(labels));
    }
}

/// Every histogram of the process by name and label set: asking again for the same
/// ones returns the same histogram (the metric caches are rebuilt on each configuration
/// change; their series continue).
#[derive(Default)]
pub struct Registry {
    series: RwLock<BTreeMap<(&'static str, String), Arc<Histogram>>>,
}

impl Registry {
    pub fn histogram(&self, name: &'static str, labels: &[(&str, &str)]) -> Arc<Histogram> {
        let key = (name, render_labels(labels));
        if let Some(h) = self.series.read().ok().and_then(|m| m.get(&key).cloned()) {
            return h;
        }
        match self.series.write() {
            Ok(mut m) => m.entry(key).or_default().clone(),
            // A poisoned map (a panic elsewhere while it was held) still gets calls
            // recorded, just not rendered.
            Err(_) => Arc::default(),
        }
    }

    /// The Prometheus text format of every series, a `# TYPE` line per name.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let Ok(series) = self.series.read() else {
            return out;
        };
        let mut last_name = None;
        for ((name, labels), h) in series.iter() {
            if last_name != Some(*name) {
                let _ = writeln!(out, "# TYPE {name} histogram");
                last_name = Some(*name);
            }
            h.render(name, labels, &mut out);
        }
        out
    }
}

/// The process' latency histograms (like the `metrics` recorder, one per process).
pub static LATENCY: LazyLock<Registry> = LazyLock::new(Registry::default);

fn render_labels(labels: &[(&str, &str)]) -> String {
    let mut out = String::new();
    for (i, (k, v)) in labels.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(k);
        out.push_str("=\"");
        // The text format's escapes; values can come from request paths.
        for c in v.chars() {
            match c {
                '\\' => out.push_str("\\\\"),
                '"' => out.push_str("\\\""),
                '\n' => out.push_str("\\n"),
                c => out.push(c),
            }
        }
        out.push('"');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line<'a>(text: &'a str, prefix: &str) -> &'a str {
        text.lines().find(|l| l.starts_with(prefix)).unwrap_or_else(|| panic!("no {prefix} in\n{text}"))
    }

    #[test]
    fn buckets_are_cumulative_and_count_equals_the_inf_bucket() {
        let registry = Registry::default();
        let h = registry.histogram("t_seconds", &[("grpc_method", "Get")]);
        for ms in [0.2, 0.5, 0.7, 3.0, 40_000.0] {
            h.record(Duration::from_secs_f64(ms / 1000.0));
        }
        let text = registry.render();
        assert_eq!(text.lines().next(), Some("# TYPE t_seconds histogram"));
        // 0.5 ms is on the bound, and `le` is inclusive.
        assert!(text.contains("t_seconds_bucket{grpc_method=\"Get\",le=\"0.0005\"} 2\n"), "{text}");
        assert!(text.contains("t_seconds_bucket{grpc_method=\"Get\",le=\"0.001\"} 3\n"), "{text}");
        assert!(text.contains("t_seconds_bucket{grpc_method=\"Get\",le=\"0.005\"} 4\n"), "{text}");
        assert!(text.contains("t_seconds_bucket{grpc_method=\"Get\",le=\"30\"} 4\n"), "{text}");
        assert!(text.contains("t_seconds_bucket{grpc_method=\"Get\",le=\"+Inf\"} 5\n"), "{text}");
        assert_eq!(line(&text, "t_seconds_count"), "t_seconds_count{grpc_method=\"Get\"} 5");
        let sum: f64 = line(&text, "t_seconds_sum").rsplit(' ').next().and_then(|v| v.parse().ok()).expect("sum");
        assert!((sum - 40.0044).abs() < 1e-6, "{sum}");
    }

    #[test]
    fn the_same_name_and_labels_give_the_same_series() {
        let registry = Registry::default();
        registry.histogram("t_seconds", &[("route", "a")]).record(Duration::from_millis(1));
        registry.histogram("t_seconds", &[("route", "a")]).record(Duration::from_millis(1));
        registry.histogram("t_seconds", &[("route", "b")]).record(Duration::from_millis(1));
        registry.histogram("u_seconds", &[]).record(Duration::from_millis(1));
        let text = registry.render();
        assert_eq!(line(&text, "t_seconds_count{route=\"a\"}"), "t_seconds_count{route=\"a\"} 2");
        assert_eq!(line(&text, "t_seconds_count{route=\"b\"}"), "t_seconds_count{route=\"b\"} 1");
        assert_eq!(text.matches("# TYPE t_seconds histogram").count(), 1);
        // No labels: no braces on _sum and _count, `le` alone on the buckets.
        assert_eq!(line(&text, "u_seconds_count"), "u_seconds_count 1");
        assert!(text.contains("u_seconds_bucket{le=\"+Inf\"} 1\n"), "{text}");
    }

    #[test]
    fn label_values_are_escaped() {
        let registry = Registry::default();
        registry.histogram("t_seconds", &[("grpc_method", "a\"b\\c\nd")]).record(Duration::ZERO);
        let text = registry.render();
        assert!(text.contains(r#"t_seconds_count{grpc_method="a\"b\\c\nd"} 1"#), "{text}");
    }
}
