//! Retry policy: exponential backoff with jitter, `Retry-After`, attempt and time budgets.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// How transient failures are retried.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts in all, the first one included.
    pub max_attempts: u32,
    /// Delay before the first retry; it doubles with each retry.
    pub initial_backoff: Duration,
    /// Upper bound of one backoff delay.
    pub max_backoff: Duration,
    /// No retry starts later than this after the first attempt.
    pub deadline: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 6,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(5),
            deadline: Duration::from_secs(60),
        }
    }
}

impl RetryPolicy {
    /// The delay before retry number `retry` (1 for the first retry), `jitter` in `[0, 1)`:
    /// `initial * 2^(retry-1)`, capped at `max_backoff`, then scaled into `[50%, 100%]` of that.
    pub(crate) fn backoff(&self, retry: u32, jitter: f64) -> Duration {
        let exp = retry.saturating_sub(1).min(31);
        let nominal = self
            .initial_backoff
            .saturating_mul(1u32 << exp)
            .min(self.max_backoff);
        let factor = 0.5 + 0.5 * jitter.clamp(0.0, 1.0);
        Duration::try_from_secs_f64(nominal.as_secs_f64() * factor).unwrap_or(nominal)
    }

    /// Whether to retry after `attempts` failed attempts, `elapsed` since the first one, and how
    /// long to wait first. A server's `Retry-After` is honoured when it fits in the deadline
    /// (when it does not, retrying is pointless and we stop).
    pub(crate) fn next_delay(
        &self,
        attempts: u32,
        elapsed: Duration,
        retry_after: Option<Duration>,
        jitter: f64,
    ) -> Option<Duration> {
        if attempts >= self.max_attempts {
            return None;
        }
        let mut delay = self.backoff(attempts, jitter);
        if let Some(after) = retry_after {
            delay = delay.max(after);
        }
        if elapsed.saturating_add(delay) > self.deadline {
            return None;
        }
        Some(delay)
    }
}

/// The state of one sequence of attempts.
#[derive(Debug)]
pub(crate) struct Attempts {
    pub(crate) failures: u32,
    started: Instant,
}

impl Attempts {
    pub(crate) fn new() -> Self {
        Attempts {
            failures: 0,
            started: Instant::now(),
        }
    }

    /// Records a failure; returns how long to wait before the next attempt, or `None` to give up.
    pub(crate) fn failed(
        &mut self,
        policy: &RetryPolicy,
        retry_after: Option<Duration>,
    ) -> Option<Duration> {
        self.failures += 1;
        policy.next_delay(self.failures, self.started.elapsed(), retry_after, jitter())
    }
}

/// A random number in `[0, 1)`, good enough to spread retries (std's hasher keys are random).
fn jitter() -> f64 {
    let mut h = RandomState::new().build_hasher();
    h.write_u128(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    (h.finish() >> 11) as f64 / (1u64 << 53) as f64
}

/// Parses a `Retry-After` value: delay seconds, or an HTTP date (IMF-fixdate) relative to `now`.
pub(crate) fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = parse_http_date(value)?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

/// `Sun, 06 Nov 1994 08:49:37 GMT` (IMF-fixdate: a four-digit year).
fn parse_http_date(s: &str) -> Option<SystemTime> {
    let rest = s.split_once(", ")?.1;
    let mut it = rest.split(' ');
    let day: u64 = it.next()?.parse().ok()?;
    let month = match it.next()? {
        "Jan" => 1,
        "Feb" => 2,
        "Mar" => 3,
        "Apr" => 4,
        "May" => 5,
        "Jun" => 6,
        "Jul" => 7,
        "Aug" => 8,
        "Sep" => 9,
        "Oct" => 10,
        "Nov" => 11,
        "Dec" => 12,
        _ => return None,
    };
    let year: i64 = it.next()?.parse().ok()?;
    let mut hms = it.next()?.split(':').map(|x| x.parse::<u64>().ok());
    let (h, m, sec) = (hms.next()??, hms.next()??, hms.next()??);
    if it.next()? != "GMT"
        || it.next().is_some()
        || !(1..=31).contains(&day)
        || h > 23
        || m > 59
        || sec > 60
        || !(1970..=9999).contains(&year)
    {
        return None;
    }
    // Days from civil (Howard Hinnant's algorithm).
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = u64::try_from(era * 146_097 + doe - 719_468).ok()?;
    UNIX_EPOCH.checked_add(Duration::from_secs(days * 86_400 + h * 3600 + m * 60 + sec))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn backoff_schedule() {
        let p = RetryPolicy::default();
        let full: Vec<_> = (1..=8).map(|r| p.backoff(r, 1.0)).collect();
        assert_eq!(
            full,
            [
                ms(100),
                ms(200),
                ms(400),
                ms(800),
                ms(1600),
                ms(3200),
                ms(5000),
                ms(5000)
            ]
        );
        let half: Vec<_> = (1..=3).map(|r| p.backoff(r, 0.0)).collect();
        assert_eq!(half, [ms(50), ms(100), ms(200)]);
        assert_eq!(p.backoff(1000, 0.5), ms(3750));
    }

    #[test]
    fn stops_at_attempts_and_deadline() {
        let p = RetryPolicy::default();
        assert_eq!(p.next_delay(1, Duration::ZERO, None, 1.0), Some(ms(100)));
        assert_eq!(p.next_delay(5, Duration::ZERO, None, 1.0), Some(ms(1600)));
        assert_eq!(p.next_delay(6, Duration::ZERO, None, 1.0), None);
        assert_eq!(p.next_delay(2, Duration::from_secs(60), None, 1.0), None);
        assert_eq!(
            p.next_delay(2, Duration::from_millis(59_700), None, 1.0),
            Some(ms(200))
        );
        // Retry-After wins over a shorter backoff, and stops us when it ends past the deadline.
        assert_eq!(
            p.next_delay(1, Duration::ZERO, Some(Duration::from_secs(2)), 1.0),
            Some(Duration::from_secs(2))
        );
        assert_eq!(
            p.next_delay(1, Duration::ZERO, Some(Duration::from_secs(3600)), 1.0),
            None
        );
    }

    #[test]
    fn jitter_in_range() {
        for _ in 0..100 {
            let j = jitter();
            assert!((0.0..1.0).contains(&j));
        }
    }

    #[test]
    fn retry_after_values() {
        let now = UNIX_EPOCH + Duration::from_secs(784_111_777); // Sun, 06 Nov 1994 08:49:37 GMT
        assert_eq!(parse_retry_after("3", now), Some(Duration::from_secs(3)));
        assert_eq!(parse_retry_after(" 0 ", now), Some(Duration::ZERO));
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:49:47 GMT", now),
            Some(Duration::from_secs(10))
        );
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:49:00 GMT", now),
            Some(Duration::ZERO)
        );
        assert_eq!(
            parse_retry_after("Thu, 01 Jan 1970 00:00:00 GMT", UNIX_EPOCH),
            Some(Duration::ZERO)
        );
        assert_eq!(
            parse_retry_after("Tue, 29 Feb 2000 00:00:01 GMT", UNIX_EPOCH),
            Some(Duration::from_secs(951_782_401))
        );
        assert_eq!(
            parse_retry_after("Fri, 31 Dec 9999 23:59:59 GMT", UNIX_EPOCH),
            Some(Duration::from_secs(253_402_300_799))
        );
        for bad in [
            "",
            "-1",
            "soon",
            "Sun, 06 Nov 1994 08:49:37",
            "Sun, 32 Nov 1994 08:49:37 GMT",
            "Sun, 06 Foo 1994 08:49:37 GMT",
            // Years past 9999 once overflowed the date arithmetic or SystemTime (a panic on a
            // registry's header; found by fuzz/registry_auth).
            "Sun, 06 Nov 10000 08:49:37 GMT",
            "Sun, 06 Nov 300000000000 08:49:37 GMT",
            "Sun, 06 Nov 99999999999999 08:49:37 GMT",
            "Sun, 06 Nov 9223372036854775807 08:49:37 GMT",
            "Sun, 26 Jun 2320542625802778223 23:39:42 GMT",
        ] {
            assert_eq!(parse_retry_after(bad, now), None, "{bad}");
        }
    }
}
