//! Log2 latency histograms with Prometheus semantics.
//!
//! Bucket `i` counts samples `v` with `2^(i-1) < v <= 2^i` nanoseconds (bucket 0 holds
//! `v <= 1`), so its upper bound `2^i` is inclusive exactly like Prometheus' `le`. The last
//! bucket also holds everything above its bound and is exported as `+Inf`.

/// Number of buckets: upper bounds 1 ns .. 2^38 ns (~275 s), then overflow.
pub const BUCKETS: usize = 40;

/// A per-CPU histogram slot. `count` equals the sum of `buckets`; it is kept separately so a
/// reader can cross-check a snapshot, and `sum_ns` gives Prometheus' `_sum`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Histogram {
    pub buckets: [u64; BUCKETS],
    pub count: u64,
    pub sum_ns: u64,
}

impl Histogram {
    pub const ZERO: Self = Self { buckets: [0; BUCKETS], count: 0, sum_ns: 0 };

    /// Adds one sample. The caller owns the slot (per-CPU map value, no concurrency).
    #[inline(always)]
    pub fn record(&mut self, ns: u64) {
        let b = bucket(ns);
        // `bucket` never returns >= BUCKETS; the mask keeps the verifier's bounds proof simple.
        if let Some(slot) = self.buckets.get_mut(b & 63) {
            *slot += 1;
        }
        self.count += 1;
        self.sum_ns = self.sum_ns.wrapping_add(ns);
    }

    /// Adds another histogram (used to fold per-CPU slots in userspace).
    pub fn merge(&mut self, other: &Self) {
        for (a, b) in self.buckets.iter_mut().zip(other.buckets.iter()) {
            *a += *b;
        }
        self.count += other.count;
        self.sum_ns = self.sum_ns.wrapping_add(other.sum_ns);
    }
}

impl Default for Histogram {
    fn default() -> Self {
        Self::ZERO
    }
}

/// The bucket index for a latency of `ns` nanoseconds: the smallest `i` with `ns <= 2^i`,
/// capped at the overflow bucket.
#[inline(always)]
pub fn bucket(ns: u64) -> usize {
    if ns <= 1 {
        return 0;
    }
    let i = (64 - (ns - 1).leading_zeros()) as usize;
    if i >= BUCKETS { BUCKETS - 1 } else { i }
}

/// Inclusive upper bound of bucket `i` in nanoseconds; `None` for the overflow bucket.
pub fn upper_bound_ns(i: usize) -> Option<u64> {
    if i + 1 >= BUCKETS { None } else { Some(1u64 << i) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_edges_are_inclusive_upper_bounds() {
        assert_eq!(bucket(0), 0);
        assert_eq!(bucket(1), 0);
        assert_eq!(bucket(2), 1);
        assert_eq!(bucket(3), 2);
        assert_eq!(bucket(4), 2);
        assert_eq!(bucket(5), 3);
        assert_eq!(bucket(1024), 10);
        assert_eq!(bucket(1025), 11);
        for i in 1..BUCKETS - 1 {
            let ub = upper_bound_ns(i).unwrap();
            assert_eq!(bucket(ub), i, "upper bound of {i} belongs to it");
            assert_eq!(bucket(ub + 1), i + 1, "one past the bound of {i} goes up");
        }
    }

    #[test]
    fn overflow_bucket_takes_everything_large() {
        assert_eq!(bucket(u64::MAX), BUCKETS - 1);
        assert_eq!(bucket(1 << 45), BUCKETS - 1);
        assert_eq!(upper_bound_ns(BUCKETS - 1), None);
        assert_eq!(upper_bound_ns(BUCKETS - 2), Some(1 << (BUCKETS - 2)));
    }

    #[test]
    fn record_and_merge_keep_count_equal_to_bucket_sum() {
        let mut a = Histogram::ZERO;
        for ns in [0, 1, 2, 3, 1000, 1 << 50] {
            a.record(ns);
        }
        let mut b = Histogram::ZERO;
        b.record(1000);
        a.merge(&b);
        assert_eq!(a.count, 7);
        assert_eq!(a.buckets.iter().sum::<u64>(), 7);
        assert_eq!(a.buckets[bucket(1000)], 2);
        assert_eq!(a.buckets[0], 2);
        assert_eq!(a.sum_ns, 1u64 + 2 + 3 + 1000 + (1 << 50) + 1000);
    }
}
