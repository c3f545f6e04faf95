//! Every deadline of the loop in one time-ordered queue: kill escalations,
//! restart backoffs, the shutdown grace, the drain limit. The loop asks for
//! the nearest one and pops what is due; no turn scans all instances.

use std::collections::{BTreeSet, HashMap};
use std::hash::Hash;
use std::time::Instant;

use super::ids::{ChildId, InstanceId};

/// What a deadline is for. At most one deadline per timer: scheduling it
/// again moves it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Timer {
    /// SIGKILL a child's group that did not stop within its grace.
    Kill(ChildId),
    /// The same for a group whose leader is already reaped (by pgid).
    KillGroup(i32),
    /// An instance's restart backoff is over.
    Backoff(InstanceId),
    /// An instance is not ready in time.
    ReadyDeadline(InstanceId),
    /// Start an instance's next probe attempt (readiness or health).
    ProbeAttempt(InstanceId),
    /// An instance's probe attempt took too long.
    ProbeTimeout(InstanceId),
    /// An instance's sd_notify watchdog ping is overdue.
    Watchdog(InstanceId),
    /// The shutdown grace is over: SIGKILL whatever is left.
    ShutdownGrace,
    /// Stop waiting for pipes held open by processes brood does not know.
    Drain,
    /// Look again whether killed groups have emptied.
    Recheck,
    /// A control client sent nothing for too long (by client number).
    ClientIdle(usize),
    /// The grace of leftovers (brood's children outside every group it
    /// knows, found at shutdown) is over: SIGKILL them.
    KillLeftovers,
}

pub struct Timers<K = Timer> {
    queue: BTreeSet<(Instant, K)>,
    at: HashMap<K, Instant>,
}

impl<K: Copy + Ord + Hash> Default for Timers<K> {
    fn default() -> Self {
        Timers {
            queue: BTreeSet::new(),
            at: HashMap::new(),
        }
    }
}

impl<K: Copy + Ord + Hash> Timers<K> {
    /// Set `timer` to fire at `when`, replacing an earlier setting.
    pub fn schedule(&mut self, timer: K, when: Instant) {
        if let Some(old) = self.at.insert(timer, when) {
            self.queue.remove(&(old, timer));
        }
        self.queue.insert((when, timer));
    }

    pub fn cancel(&mut self, timer: K) {
        if let Some(old) = self.at.remove(&timer) {
            self.queue.remove(&(old, timer));
        }
    }

    /// When `timer` fires, if it is set.
    pub fn at(&self, timer: K) -> Option<Instant> {
        self.at.get(&timer).copied()
    }

    pub fn is_set(&self, timer: K) -> bool {
        self.at.contains_key(&timer)
    }

    /// The nearest deadline.
    pub fn next(&self) -> Option<Instant> {
        self.queue.first().map(|(t, _)| *t)
    }

    /// Take the nearest timer if it is due at `now`.
    pub fn pop_due(&mut self, now: Instant) -> Option<K> {
        let &(when, timer) = self.queue.first()?;
        if when > now {
            return None;
        }
        self.queue.pop_first();
        self.at.remove(&timer);
        Some(timer)
    }

    pub fn len(&self) -> usize {
        self.queue.len()
    }

    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn pops_in_time_order_and_only_when_due() {
        let t0 = Instant::now();
        let mut t = Timers::default();
        t.schedule(Timer::Drain, t0 + Duration::from_secs(3));
        t.schedule(Timer::Kill(ChildId(1)), t0 + Duration::from_secs(1));
        t.schedule(Timer::Backoff(InstanceId(7)), t0 + Duration::from_secs(2));
        assert_eq!(t.next(), Some(t0 + Duration::from_secs(1)));
        assert_eq!(t.pop_due(t0), None);
        let now = t0 + Duration::from_secs(2);
        assert_eq!(t.pop_due(now), Some(Timer::Kill(ChildId(1))));
        assert_eq!(t.pop_due(now), Some(Timer::Backoff(InstanceId(7))));
        assert_eq!(t.pop_due(now), None);
        assert_eq!(t.len(), 1);
    }

    #[test]
    fn rescheduling_moves_and_cancel_removes() {
        let t0 = Instant::now();
        let mut t = Timers::default();
        t.schedule(Timer::ShutdownGrace, t0 + Duration::from_secs(5));
        t.schedule(Timer::ShutdownGrace, t0 + Duration::from_secs(1));
        assert_eq!(t.len(), 1);
        assert_eq!(t.next(), Some(t0 + Duration::from_secs(1)));
        t.cancel(Timer::ShutdownGrace);
        assert!(t.is_empty());
        assert!(!t.is_set(Timer::ShutdownGrace));
        assert_eq!(t.pop_due(t0 + Duration::from_secs(10)), None);
    }
}
