//! Restart decisions as data: what follows an exit brood did not ask for,
//! decided by one function that needs no processes to test.

use std::time::{Duration, Instant};

use crate::config::{RestartPolicy, RunProgram};
use crate::reaper::ExitStatus;

/// What decides an instance's life beyond its goal: the restart policy, and
/// whether it has a readiness check and a health threshold.
#[derive(Clone, Debug)]
pub struct Policy {
    pub restart: RestartPolicy,
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
    pub max_restarts: u32,
    pub window: Duration,
    /// It has a readiness check: spawned is not yet ready.
    pub ready_check: bool,
    /// It has health checks (`health = {...}`).
    pub health_check: bool,
    /// Health failures in a row that make it unhealthy.
    pub health_failures: u32,
}

impl Policy {
    pub fn of(p: &RunProgram) -> Policy {
        Policy {
            restart: p.restart,
            backoff_initial: p.backoff_initial,
            backoff_max: p.backoff_max,
            max_restarts: p.max_restarts,
            window: p.restart_window,
            ready_check: p.ready.is_some(),
            health_check: p.health.is_some(),
            // Without health checks, a missed sd_notify watchdog ping is
            // the only health failure, and one is enough (as in systemd).
            health_failures: p.health.as_ref().map_or(1, |h| h.failures),
        }
    }
}

/// How an instance has been failing.
#[derive(Clone, Debug, Default)]
pub struct Budget {
    /// Restarts in a row without a run that lasted the window: the backoff
    /// exponent, and what `max_restarts` bounds.
    pub attempt: u32,
    /// Restarts over the whole run, for `l` and `status`.
    pub restarts: u32,
}

impl Budget {
    /// A fresh start (`r`, `ctl start`): no backoff carried over.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    Restart { delay: Duration, attempt: u32 },
    StayDown,
    Fatal { reason: String },
}

/// Decide what follows an exit that brood did not ask for (or a stop for a
/// failed readiness or health check: `failed` forced). `jitter` in [0, 1)
/// spreads restarts of many instances (±10% of the delay).
///
/// The budget counts what users mean by a crash loop: restarts in a row, a
/// run that stays up for the whole window starting the count again (pm2's
/// `min_uptime`, supervisord's `startsecs`). `max_restarts = 3` allows 3
/// restarts (4 runs); the next failure is fatal, however long the backoff
/// has grown (a count of restarts *within* the window could never be
/// reached once the delays outgrow it).
pub fn on_unrequested_exit(
    slot: &mut Budget,
    policy: &Policy,
    status: Option<ExitStatus>,
    failed: bool,
    ran_for: Duration,
    _now: Instant,
    jitter: f64,
) -> Decision {
    let failed = failed || status.is_none_or(|s| !s.success());
    // An instance that stayed up past the window earned a fresh start.
    if ran_for >= policy.window {
        slot.attempt = 0;
    }
    let wanted = match policy.restart {
        RestartPolicy::Always => true,
        RestartPolicy::OnFailure => failed,
        RestartPolicy::Never => false,
    };
    if !wanted {
        slot.attempt = 0;
        return Decision::StayDown;
    }
    if slot.attempt >= policy.max_restarts {
        let what = match status {
            Some(s) => s.describe(),
            None => "could not start".to_string(),
        };
        return Decision::Fatal {
            reason: format!(
                "{what}; {} restarts in a row, none up for {}s",
                slot.attempt,
                policy.window.as_secs_f64()
            ),
        };
    }
    slot.attempt += 1;
    slot.restarts += 1;
    let exp = (slot.attempt - 1).min(30) as i32;
    let base = policy.backoff_initial.as_secs_f64() * 2f64.powi(exp);
    let jittered = base * (0.9 + 0.2 * jitter.clamp(0.0, 1.0));
    let delay = Duration::from_secs_f64(jittered.min(policy.backoff_max.as_secs_f64()));
    Decision::Restart {
        delay,
        attempt: slot.attempt,
    }
}

/// A small xorshift generator for jitter: no crate needed for this.
pub struct Jitter(u64);

impl Jitter {
    pub fn seeded() -> Jitter {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1);
        Jitter(t ^ (u64::from(std::process::id()) << 32) | 1)
    }

    pub fn sample(&mut self) -> f64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 11) as f64 / (1u64 << 53) as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(restart: RestartPolicy, max_restarts: u32) -> Policy {
        Policy {
            restart,
            backoff_initial: Duration::from_millis(100),
            backoff_max: Duration::from_secs(1),
            max_restarts,
            window: Duration::from_secs(60),
            ready_check: false,
            health_check: false,
            health_failures: 3,
        }
    }

    fn slot() -> Budget {
        Budget::default()
    }

    const FAIL: Option<ExitStatus> = Some(ExitStatus::Code(1));
    const OK: Option<ExitStatus> = Some(ExitStatus::Code(0));

    #[test]
    fn on_failure_restarts_with_growing_delays_then_fatal() {
        let p = policy(RestartPolicy::OnFailure, 3);
        let mut s = slot();
        let now = Instant::now();
        let mut delays = Vec::new();
        for i in 0..3 {
            match on_unrequested_exit(&mut s, &p, FAIL, false, Duration::ZERO, now, 0.5) {
                Decision::Restart { delay, attempt } => {
                    assert_eq!(attempt, i + 1);
                    delays.push(delay);
                }
                d => panic!("run {i}: {d:?}"),
            }
        }
        assert_eq!(delays, [100, 200, 400].map(Duration::from_millis));
        assert!(matches!(
            on_unrequested_exit(&mut s, &p, FAIL, false, Duration::ZERO, now, 0.5),
            Decision::Fatal { .. }
        ));
    }

    #[test]
    fn on_failure_leaves_a_clean_exit_down() {
        let mut s = slot();
        let d = on_unrequested_exit(
            &mut s,
            &policy(RestartPolicy::OnFailure, 3),
            OK,
            false,
            Duration::ZERO,
            Instant::now(),
            0.0,
        );
        assert_eq!(d, Decision::StayDown);
    }

    #[test]
    fn always_restarts_a_clean_exit_and_never_never_does() {
        let now = Instant::now();
        let mut s = slot();
        let d = on_unrequested_exit(
            &mut s,
            &policy(RestartPolicy::Always, 3),
            OK,
            false,
            Duration::ZERO,
            now,
            0.0,
        );
        assert!(matches!(d, Decision::Restart { .. }));
        let mut s = slot();
        let d = on_unrequested_exit(
            &mut s,
            &policy(RestartPolicy::Never, 3),
            FAIL,
            false,
            Duration::ZERO,
            now,
            0.0,
        );
        assert_eq!(d, Decision::StayDown);
    }

    #[test]
    fn delay_is_capped_and_jittered_within_ten_percent() {
        let p = policy(RestartPolicy::Always, 100);
        let mut s = slot();
        let now = Instant::now();
        let mut last = Duration::ZERO;
        for _ in 0..10 {
            if let Decision::Restart { delay, .. } =
                on_unrequested_exit(&mut s, &p, FAIL, false, Duration::ZERO, now, 0.99)
            {
                assert!(delay <= Duration::from_secs(1));
                assert!(delay >= last.min(Duration::from_millis(900)));
                last = delay;
            }
        }
        assert_eq!(last, Duration::from_secs(1));
    }

    #[test]
    fn a_long_run_resets_the_backoff() {
        let p = policy(RestartPolicy::OnFailure, 2);
        let mut s = slot();
        let now = Instant::now();
        on_unrequested_exit(&mut s, &p, FAIL, false, Duration::ZERO, now, 0.5);
        on_unrequested_exit(&mut s, &p, FAIL, false, Duration::ZERO, now, 0.5);
        let d = on_unrequested_exit(&mut s, &p, FAIL, false, Duration::from_secs(61), now, 0.5);
        assert_eq!(
            d,
            Decision::Restart {
                delay: Duration::from_millis(100),
                attempt: 1
            }
        );
    }

    #[test]
    fn a_crash_loop_goes_fatal_with_the_default_budget_within_about_a_minute() {
        let p = Policy {
            restart: RestartPolicy::OnFailure,
            backoff_initial: crate::config::DEFAULT_BACKOFF_INITIAL,
            backoff_max: crate::config::DEFAULT_BACKOFF_MAX,
            max_restarts: crate::config::DEFAULT_MAX_RESTARTS,
            window: crate::config::DEFAULT_RESTART_WINDOW,
            ready_check: false,
            health_check: false,
            health_failures: 3,
        };
        let mut s = slot();
        let now = Instant::now();
        let mut waited = Duration::ZERO;
        let mut runs = 0;
        loop {
            runs += 1;
            match on_unrequested_exit(&mut s, &p, FAIL, false, Duration::ZERO, now, 0.5) {
                Decision::Restart { delay, .. } => waited += delay,
                Decision::Fatal { reason } => {
                    assert!(reason.contains("10 restarts in a row"), "{reason}");
                    break;
                }
                d => panic!("{d:?}"),
            }
            assert!(runs < 100, "never fatal");
        }
        assert_eq!(runs, 11, "10 restarts, then fatal");
        assert!(
            waited < Duration::from_secs(90),
            "fatal after {waited:?} of backoff"
        );
    }

    #[test]
    fn a_forced_failure_restarts_under_on_failure_even_after_a_clean_exit() {
        let mut s = slot();
        let d = on_unrequested_exit(
            &mut s,
            &policy(RestartPolicy::OnFailure, 3),
            OK,
            true,
            Duration::ZERO,
            Instant::now(),
            0.0,
        );
        assert!(matches!(d, Decision::Restart { .. }), "{d:?}");
    }

    #[test]
    fn max_restarts_zero_is_fatal_at_first_failure() {
        let mut s = slot();
        let d = on_unrequested_exit(
            &mut s,
            &policy(RestartPolicy::OnFailure, 0),
            FAIL,
            false,
            Duration::ZERO,
            Instant::now(),
            0.5,
        );
        assert!(matches!(d, Decision::Fatal { .. }));
    }
}
