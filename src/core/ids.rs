//! Ids that are never reused: a reload or a scale can remove programs and
//! instances, and a stale id must then point at nothing, never at another.

use serde::Serialize;

/// A configured program (`web`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct ProgramId(pub u32);

/// One instance of a program (`web.2`), across all its runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct InstanceId(pub u64);

/// One forked child: one run of an instance, or one spawn of `brood spawn`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct ChildId(pub u64);

/// Hands out ids of one kind, counting up from 0.
#[derive(Default, Debug)]
pub struct Counter(u64);

impl Counter {
    pub fn take(&mut self) -> u64 {
        let id = self.0;
        self.0 += 1;
        id
    }
}
