//! The estimator, fixed before any figure is taken: a figure is a list of per-round values;
//! it is reported as their median, a 95 % percentile-bootstrap interval of that median
//! (10,000 resamples of the rounds), and the per-round minimum and maximum.

/// Resamples per interval.
pub const RESAMPLES: usize = 10_000;
/// The resampling seed: the interval is a function of the rounds alone, so a rerun of the
/// report over the same results gives the same bounds.
const SEED: u64 = 0x10_9f_0b_00_75_7a_75_11;

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Summary {
    pub median: f64,
    pub ci_low: f64,
    pub ci_high: f64,
    pub min: f64,
    pub max: f64,
    pub rounds: usize,
}

/// Median of `v` (sorted in place); NaN for no values.
pub fn median_of(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    match n {
        0 => f64::NAN,
        _ if n % 2 == 1 => v[n / 2],
        _ => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// `q`-quantile (0..=1) of sorted `v`, by linear interpolation between closest ranks.
pub fn quantile(sorted: &[f64], q: f64) -> f64 {
    let pos = q * (sorted.len() - 1) as f64;
    let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
    sorted[lo] + (sorted[hi] - sorted[lo]) * (pos - lo as f64)
}

/// Summarises per-round values. Panics on none: a figure without rounds is a bug.
pub fn summarize(rounds: &[f64]) -> Summary {
    assert!(!rounds.is_empty(), "a figure needs at least one round");
    let mut v = rounds.to_vec();
    let median = median_of(&mut v);
    let (min, max) = (v[0], v[v.len() - 1]);
    let mut rng = fastrand::Rng::with_seed(SEED);
    let mut sample = vec![0.0; v.len()];
    let mut medians: Vec<f64> = (0..RESAMPLES)
        .map(|_| {
            for s in sample.iter_mut() {
                *s = v[rng.usize(..v.len())];
            }
            median_of(&mut sample)
        })
        .collect();
    medians.sort_by(f64::total_cmp);
    Summary {
        median,
        ci_low: quantile(&medians, 0.025),
        ci_high: quantile(&medians, 0.975),
        min,
        max,
        rounds: rounds.len(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constant_rounds_give_a_point_interval() {
        let s = summarize(&[7.0; 15]);
        assert_eq!(s, Summary { median: 7.0, ci_low: 7.0, ci_high: 7.0, min: 7.0, max: 7.0, rounds: 15 });
    }

    #[test]
    fn median_and_range_are_the_rounds_own() {
        let s = summarize(&[5.0, 1.0, 4.0, 2.0, 3.0]);
        assert_eq!((s.median, s.min, s.max, s.rounds), (3.0, 1.0, 5.0, 5));
        let mut even = [4.0, 1.0, 3.0, 2.0];
        assert_eq!(median_of(&mut even), 2.5);
    }

    #[test]
    fn interval_is_inside_the_range_and_holds_the_median() {
        let rounds: Vec<f64> = (0..15).map(|i| 100.0 + (i * 37 % 15) as f64).collect();
        let s = summarize(&rounds);
        assert!(s.min <= s.ci_low && s.ci_low <= s.median && s.median <= s.ci_high && s.ci_high <= s.max, "{s:?}");
        // The median of a resample is one of the middle order statistics far more often
        // than an extreme: with 15 distinct rounds 100..114 the interval excludes both ends.
        assert!(s.ci_low > 100.0 && s.ci_high < 114.0, "{s:?}");
    }

    #[test]
    fn one_wild_round_moves_the_interval_not_the_median() {
        let mut rounds = vec![10.0; 14];
        rounds.push(1e6);
        let s = summarize(&rounds);
        assert_eq!(s.median, 10.0);
        assert_eq!(s.max, 1e6);
        // Resamples drawing the wild round 8 or more times out of 15 are the only ones whose
        // median moves: far rarer than 2.5 %.
        assert_eq!(s.ci_high, 10.0);
    }

    #[test]
    fn reproducible() {
        let rounds = [3.0, 9.0, 4.0, 1.0, 7.0, 2.0, 8.0];
        assert_eq!(summarize(&rounds), summarize(&rounds));
    }

    #[test]
    fn quantile_interpolates() {
        assert_eq!(quantile(&[0.0, 10.0], 0.25), 2.5);
        assert_eq!(quantile(&[1.0, 2.0, 3.0], 0.5), 2.0);
    }
}
