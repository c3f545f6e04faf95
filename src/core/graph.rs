//! How programs relate (SPEC 13-14): the dependency conditions, the start
//! order they give, cycles, the restart strategies and the exit policy.
//! Pure functions over names and indices.

use std::fmt;

use serde::Serialize;

/// What a program waits for in each of its dependencies.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Condition {
    /// Every instance has exec'd.
    Started,
    /// Every instance has passed its readiness check (or started, without one).
    Ready,
    /// Every instance has ended for good, with any status.
    Exited,
    /// Every instance has ended for good with status 0.
    Succeeded,
}

impl Condition {
    pub fn parse(text: &str) -> Option<Condition> {
        Some(match text {
            "started" => Condition::Started,
            "ready" => Condition::Ready,
            "exited" => Condition::Exited,
            "succeeded" => Condition::Succeeded,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Condition::Started => "started",
            Condition::Ready => "ready",
            Condition::Exited => "exited",
            Condition::Succeeded => "succeeded",
        }
    }
}

/// When a program's end ends the whole run (SPEC 14).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum ShutdownOn {
    #[default]
    Never,
    /// Once it has ended for good, whatever its status.
    Exit,
    /// Once it has ended for good unsuccessfully.
    Failure,
}

impl ShutdownOn {
    pub fn parse(text: &str) -> Option<ShutdownOn> {
        Some(match text {
            "never" => ShutdownOn::Never,
            "exit" => ShutdownOn::Exit,
            "failure" => ShutdownOn::Failure,
            _ => return None,
        })
    }
}

/// What else restarts when an instance fails (Erlang/OTP's strategies).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Strategy {
    /// Only the failed instance.
    #[default]
    OneForOne,
    /// Every program, stopped dependents first and started again in order.
    OneForAll,
    /// The failed program and every program after it in start order.
    RestForOne,
}

impl Strategy {
    pub fn parse(text: &str) -> Option<Strategy> {
        Some(match text {
            "one_for_one" => Strategy::OneForOne,
            "one_for_all" => Strategy::OneForAll,
            "rest_for_one" => Strategy::RestForOne,
            _ => return None,
        })
    }
}

impl fmt::Display for Strategy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Strategy::OneForOne => "one_for_one",
            Strategy::OneForAll => "one_for_all",
            Strategy::RestForOne => "rest_for_one",
        })
    }
}

/// The start order: every program after its dependencies, otherwise in
/// file order. `deps[i]` lists the indices program `i` depends on. A cycle
/// is returned as the names along it, first name repeated at the end
/// (`web -> cache -> web`).
pub fn start_order(names: &[String], deps: &[Vec<usize>]) -> Result<Vec<usize>, Vec<String>> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        New,
        Visiting,
        Done,
    }
    fn visit(
        i: usize,
        names: &[String],
        deps: &[Vec<usize>],
        marks: &mut [Mark],
        path: &mut Vec<usize>,
        order: &mut Vec<usize>,
    ) -> Result<(), Vec<String>> {
        match marks[i] {
            Mark::Done => return Ok(()),
            Mark::Visiting => {
                let from = path.iter().position(|&p| p == i).unwrap_or(0);
                let mut cycle: Vec<String> = path[from..].iter().map(|&p| names[p].clone()).collect();
                cycle.push(names[i].clone());
                return Err(cycle);
            }
            Mark::New => {}
        }
        marks[i] = Mark::Visiting;
        path.push(i);
        for &d in &deps[i] {
            visit(d, names, deps, marks, path, order)?;
        }
        path.pop();
        marks[i] = Mark::Done;
        order.push(i);
        Ok(())
    }
    let mut marks = vec![Mark::New; names.len()];
    let mut order = Vec::with_capacity(names.len());
    let mut path = Vec::new();
    for i in 0..names.len() {
        visit(i, names, deps, &mut marks, &mut path, &mut order)?;
    }
    Ok(order)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(n: &[&str]) -> Vec<String> {
        n.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn dependencies_come_first_and_file_order_otherwise() {
        // test -> web -> {db, migrate}, migrate -> db, cache alone
        let n = names(&["test", "web", "cache", "migrate", "db"]);
        let deps = vec![vec![1], vec![4, 3], vec![], vec![4], vec![]];
        let order = start_order(&n, &deps).unwrap();
        let pos = |name: &str| order.iter().position(|&i| n[i] == name).unwrap();
        assert!(pos("db") < pos("migrate"));
        assert!(pos("migrate") < pos("web"));
        assert!(pos("web") < pos("test"));
        assert_eq!(order.len(), 5);
        // Without dependencies, file order.
        assert_eq!(
            start_order(&names(&["a", "b", "c"]), &[vec![], vec![], vec![]]).unwrap(),
            [0, 1, 2]
        );
    }

    #[test]
    fn a_cycle_is_named_along_its_path() {
        let n = names(&["web", "cache", "db"]);
        let deps = vec![vec![1], vec![0], vec![]];
        assert_eq!(start_order(&n, &deps).unwrap_err(), ["web", "cache", "web"]);
        let n = names(&["a", "b", "c", "d"]);
        let deps = vec![vec![1], vec![2], vec![3], vec![1]];
        assert_eq!(start_order(&n, &deps).unwrap_err(), ["b", "c", "d", "b"]);
        assert_eq!(start_order(&names(&["x"]), &[vec![0]]).unwrap_err(), ["x", "x"]);
    }

    #[test]
    fn words_parse() {
        assert_eq!(Condition::parse("ready"), Some(Condition::Ready));
        assert_eq!(Condition::parse("up"), None);
        assert_eq!(ShutdownOn::parse("failure"), Some(ShutdownOn::Failure));
        assert_eq!(Strategy::parse("rest_for_one"), Some(Strategy::RestForOne));
        assert_eq!(Strategy::OneForAll.to_string(), "one_for_all");
    }
}
