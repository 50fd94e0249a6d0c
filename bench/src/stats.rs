//! Percentiles of call-interleaved runs and paired block-bootstrap intervals for the
//! differences between paths (how sure a run is that one path's p99 is below
//! another's).
//!
//! The series are aligned by cycle: `series[path][cycle]` is that path's call in that
//! cycle (`None` if it failed), and the calls of one cycle went out within a few
//! milliseconds of each other ([`crate::load::run_open_by_call`]). The machine's noise
//! comes in stalls of milliseconds, which hit consecutive calls of every path. So the
//! bootstrap draws *blocks* of consecutive cycles, with replacement, and uses the same
//! draw for every path: a resample that holds a stall holds it for all of them, and
//! the interval measures how much the difference itself moves.

/// Nearest-rank quantile `q` (0–1] of `v`, reordered in place; `None` when `v` is empty.
pub fn quantile(v: &mut [u64], q: f64) -> Option<u64> {
    if v.is_empty() {
        return None;
    }
    let rank = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len());
    let (_, x, _) = v.select_nth_unstable(rank - 1);
    Some(*x)
}

/// A difference between two paths with its 95% bootstrap interval (same unit as the
/// series).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Interval {
    /// From all calls.
    pub estimate: f64,
    pub lo: f64,
    pub hi: f64,
}

impl Interval {
    /// Whether the interval leaves out zero: the run resolves the sign.
    pub fn resolved(&self) -> bool {
        self.lo > 0.0 || self.hi < 0.0
    }
}

/// Quantiles `qs` of every path, from all calls and from `iters` block resamples: one
/// draw of blocks per resample serves every quantile.
pub struct Bootstrap {
    /// `full[path][k]`: quantile `qs[k]` over all calls (`None`: no successful call).
    pub full: Vec<Vec<Option<u64>>>,
    /// `draws[i][path][k]`: quantile `qs[k]` in resample `i` (`None`: no successful
    /// call in it).
    pub draws: Vec<Vec<Vec<Option<u64>>>>,
}

impl Bootstrap {
    /// Series of unequal length are cut to the shortest; a `block` of 0 counts as 1.
    pub fn run(series: &[Vec<Option<u64>>], qs: &[f64], block: usize, iters: usize, seed: u64) -> Self {
        let cycles = series.iter().map(Vec::len).min().unwrap_or(0);
        let block = block.max(1);
        let blocks = cycles.div_ceil(block);
        let mut scratch: Vec<u64> = Vec::with_capacity(cycles);
        let mut quantiles_of = |path: &[Option<u64>], starts: &mut dyn Iterator<Item = usize>| -> Vec<Option<u64>> {
            scratch.clear();
            for start in starts {
                scratch.extend(path[start..(start + block).min(cycles)].iter().flatten());
            }
            // `quantile` only reorders: the next quantile of the same calls stays right.
            qs.iter().map(|q| quantile(&mut scratch, *q)).collect()
        };
        let full = series.iter().map(|p| quantiles_of(p, &mut (0..blocks).map(|b| b * block))).collect();
        let mut rng = fastrand::Rng::with_seed(seed);
        let mut draws = Vec::with_capacity(iters);
        let mut starts = Vec::with_capacity(blocks);
        for _ in 0..iters {
            if blocks == 0 {
                break;
            }
            starts.clear();
            starts.extend((0..blocks).map(|_| rng.usize(0..blocks) * block));
            draws.push(series.iter().map(|p| quantiles_of(p, &mut starts.iter().copied())).collect());
        }
        Bootstrap { full, draws }
    }

    /// Quantile `qs[k]` of path `p` over all calls (`None`: no such path or quantile,
    /// or no successful call).
    pub fn all_calls(&self, k: usize, p: usize) -> Option<u64> {
        at(&self.full, k, p)
    }

    /// At quantile `qs[k]`: path `a` − path `b` with the 2.5th and 97.5th percentiles of
    /// the resampled differences; `None` when either path has no successful call.
    pub fn difference(&self, k: usize, a: usize, b: usize) -> Option<Interval> {
        let (fa, fb) = (self.all_calls(k, a)?, self.all_calls(k, b)?);
        let mut d: Vec<f64> =
            self.draws.iter().filter_map(|row| Some(at(row, k, a)? as f64 - at(row, k, b)? as f64)).collect();
        let estimate = fa as f64 - fb as f64;
        if d.is_empty() {
            return Some(Interval { estimate, lo: estimate, hi: estimate });
        }
        d.sort_by(f64::total_cmp);
        let pct = |p: f64| d[((p * (d.len() - 1) as f64).round() as usize).min(d.len() - 1)];
        Some(Interval { estimate, lo: pct(0.025), hi: pct(0.975) })
    }
}

/// `row[p][k]`: quantile `k` of path `p` in one row of `full` or `draws`.
fn at(row: &[Vec<Option<u64>>], k: usize, p: usize) -> Option<u64> {
    row.get(p).and_then(|qs| qs.get(k)).copied().flatten()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn noisy(rng: &mut fastrand::Rng, cycles: usize, base: u64, tail_every: usize, tail: u64) -> Vec<Option<u64>> {
        (0..cycles)
            .map(|c| {
                let jitter = rng.u64(0..base / 2);
                Some(
                    base + jitter
                        + if rng.usize(0..tail_every) == 0 { tail + rng.u64(0..tail) } else { 0 }
                        + c as u64 % 3,
                )
            })
            .collect()
    }

    #[test]
    fn quantile_is_nearest_rank() {
        let mut v: Vec<u64> = (1..=100).rev().collect();
        assert_eq!(quantile(&mut v, 0.99), Some(99));
        assert_eq!(quantile(&mut v, 0.5), Some(50));
        assert_eq!(quantile(&mut v, 1.0), Some(100));
        assert_eq!(quantile(&mut [7], 0.99), Some(7));
        assert_eq!(quantile(&mut [], 0.99), None);
    }

    #[test]
    fn a_stall_shared_by_both_paths_leaves_the_difference_exact() {
        let mut rng = fastrand::Rng::with_seed(1);
        let mut a = noisy(&mut rng, 4000, 200_000, 50, 300_000);
        // A 40-cycle stall of 20 ms that hit both paths.
        for x in &mut a[1000..1040] {
            *x = x.map(|v| v + 20_000_000);
        }
        let b: Vec<Option<u64>> = a.iter().map(|x| x.map(|v| v + 30_000)).collect();
        let boot = Bootstrap::run(&[a, b], &[0.99], 100, 500, 9);
        let d = boot.difference(0, 1, 0).expect("both paths have calls");
        // Every resample holds the stall (or not) for both: b − a is 30 µs in each.
        assert_eq!(d, Interval { estimate: 30_000.0, lo: 30_000.0, hi: 30_000.0 });
        assert!(d.resolved());
    }

    #[test]
    fn two_paths_of_one_distribution_are_not_told_apart() {
        let mut rng = fastrand::Rng::with_seed(2);
        let a = noisy(&mut rng, 10_000, 200_000, 40, 400_000);
        let b = noisy(&mut rng, 10_000, 200_000, 40, 400_000);
        let d = Bootstrap::run(&[a, b], &[0.99], 100, 1000, 3).difference(0, 0, 1).expect("calls");
        assert!(d.lo < 0.0 && d.hi > 0.0, "{d:?}");
        assert!(!d.resolved());
    }

    #[test]
    fn a_heavier_tail_is_resolved() {
        let mut rng = fastrand::Rng::with_seed(4);
        let a = noisy(&mut rng, 10_000, 200_000, 40, 400_000);
        // The same body, a tail 1.5 times as long.
        let b = noisy(&mut rng, 10_000, 200_000, 40, 600_000);
        let d = Bootstrap::run(&[a, b], &[0.99], 100, 1000, 5).difference(0, 1, 0).expect("calls");
        assert!(d.resolved() && d.lo > 0.0, "{d:?}");
        assert!(d.lo <= d.estimate && d.estimate <= d.hi, "{d:?}");
    }

    #[test]
    fn failed_calls_are_left_out_and_a_path_without_calls_has_no_difference() {
        let a = vec![Some(100), None, Some(300), None];
        let b = vec![None; 4];
        let boot = Bootstrap::run(&[a, b], &[0.99], 1, 50, 1);
        assert_eq!(boot.full, vec![vec![Some(300)], vec![None]]);
        assert_eq!(boot.difference(0, 0, 1), None);
        assert_eq!(boot.difference(0, 0, 7), None);
        assert_eq!(boot.difference(1, 0, 0), None, "no second quantile was asked for");
        // No cycles: no draws, no panic.
        let empty = Bootstrap::run(&[vec![], vec![]], &[0.5], 10, 10, 1);
        assert!(empty.draws.is_empty());
        assert_eq!(empty.difference(0, 0, 1), None);
    }

    #[test]
    fn one_draw_serves_every_quantile() {
        let series: Vec<Option<u64>> = (1..=1000).rev().map(Some).collect();
        let boot = Bootstrap::run(&[series], &[0.99, 0.5, 0.9], 10, 20, 1);
        // Asked in any order, each quantile of all calls is the one `quantile` gives.
        assert_eq!(boot.full, vec![vec![Some(990), Some(500), Some(900)]]);
        assert!(boot.draws.iter().all(|d| d[0].len() == 3));
    }
}
