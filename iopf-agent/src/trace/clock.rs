//! Event times are `bpf_ktime_get_ns` (CLOCK_MONOTONIC): to wall-clock time by the offset
//! between the two clocks, taken once at start (a clock step later shifts it; NTP slewing
//! keeps it within microseconds).

/// CLOCK_REALTIME minus CLOCK_MONOTONIC, in nanoseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WallClock {
    offset_ns: i128,
}

fn now_ns(clock: libc::clockid_t) -> i128 {
    let mut t = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes the timespec we own; both clocks exist on every Linux.
    unsafe { libc::clock_gettime(clock, &mut t) };
    i128::from(t.tv_sec) * 1_000_000_000 + i128::from(t.tv_nsec)
}

impl WallClock {
    pub fn now() -> Self {
        WallClock { offset_ns: now_ns(libc::CLOCK_REALTIME) - now_ns(libc::CLOCK_MONOTONIC) }
    }

    /// CLOCK_REALTIME - CLOCK_MONOTONIC in ns.
    pub fn offset_ns(&self) -> i128 {
        self.offset_ns
    }

    /// A fixed offset (tests, and replays of a recording).
    pub fn with_offset(offset_ns: i128) -> Self {
        WallClock { offset_ns }
    }

    /// RFC 3339 UTC with nanoseconds for a monotonic timestamp.
    pub fn rfc3339(&self, mono_ns: u64) -> String {
        let t = i128::from(mono_ns) + self.offset_ns;
        let (secs, nanos) = (t.div_euclid(1_000_000_000) as i64, t.rem_euclid(1_000_000_000) as u32);
        let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
        let (y, m, d) = civil(days);
        format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{nanos:09}Z", rem / 3600, rem / 60 % 60, rem % 60)
    }

    /// `HH:MM:SS.mmmmmm` UTC, for columns.
    pub fn time_of_day(&self, mono_ns: u64) -> String {
        let s = self.rfc3339(mono_ns);
        s[11..26].to_owned()
    }
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian (Howard Hinnant's
/// civil_from_days algorithm).
pub fn civil(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_instants_render_exactly() {
        let c = WallClock::with_offset(0);
        assert_eq!(c.rfc3339(0), "1970-01-01T00:00:00.000000000Z");
        // 2026-12-02T04:46:10.5Z = 1796186770.5 s after the epoch.
        let c = WallClock::with_offset(1_796_186_770_000_000_000);
        assert_eq!(c.rfc3339(500_000_001), "2026-12-02T04:46:10.500000001Z");
        assert_eq!(c.time_of_day(500_000_001), "04:46:10.500000");
        // A leap day.
        let c = WallClock::with_offset(951_782_400_000_000_000);
        assert_eq!(c.rfc3339(0), "2000-02-29T00:00:00.000000000Z");
    }

    #[test]
    fn now_is_close_to_the_system_time() {
        let mono = now_ns(libc::CLOCK_MONOTONIC) as u64;
        let s = WallClock::now().rfc3339(mono);
        let sys = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
        let year = 1970 + sys / 31_556_952;
        assert!(s.starts_with(&year.to_string()), "{s}");
    }
}
