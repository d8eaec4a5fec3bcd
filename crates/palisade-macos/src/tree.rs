//! The selection of a run's processes, so that palisade can kill all of them when the command
//! ends, times out or hits a limit.
//!
//! macOS has no PID namespace, cgroup or job object. A process that calls `setsid` leaves the
//! run's process group, and one whose parent exits is adopted by launchd, which cuts the chain
//! of parents back to the command. palisade therefore takes the union of three tests on a
//! snapshot of the process table:
//!
//! - descent from the command by parent links;
//! - membership of the command's process group;
//! - the run's marker in the process's sandbox ([`crate::marker`]), which no process of the run
//!   can shed.
//!
//! [`kill_rounds`] repeats snapshot, stop and kill until a snapshot finds no member. It sends
//! SIGKILL to the command and its process group in every round, also when the process table
//! cannot be read, so that a failed listing never leaves the command running.

use std::time::Duration;

/// One process of a snapshot of the process table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcessInfo {
    pub pid: i32,
    pub parent: i32,
    pub group: i32,
}

/// Returns the processes of a run, sorted: `root` (the command's first process, which leads its
/// own process group), its descendants in `snapshot`, the members of its process group, and
/// every process `is_marked` recognises. `exclude` (palisade itself) and pids 0 and 1 never
/// count.
pub fn run_members(snapshot: &[ProcessInfo], root: i32, exclude: i32, is_marked: &mut dyn FnMut(i32) -> bool) -> Vec<i32> {
    let mut members: Vec<i32> = Vec::new();
    let mut frontier = vec![root];
    while let Some(parent) = frontier.pop() {
        if members.contains(&parent) {
            continue;
        }
        members.push(parent);
        frontier.extend(snapshot.iter().filter(|process| process.parent == parent).map(|process| process.pid));
    }
    for process in snapshot {
        if !members.contains(&process.pid) && (process.group == root || is_marked(process.pid)) {
            members.push(process.pid);
        }
    }
    members.retain(|pid| *pid > 1 && *pid != exclude);
    if !snapshot.iter().any(|process| process.pid == root) {
        members.retain(|pid| *pid != root);
    }
    members.sort_unstable();
    members
}

/// The calls [`kill_rounds`] makes on the system, so that its order of steps can be tested
/// without processes.
pub trait ProcessTable {
    /// Reads a snapshot of the process table.
    fn list(&mut self) -> std::io::Result<Vec<ProcessInfo>>;
    /// Returns whether process `pid` carries the run's marker.
    fn is_marked(&mut self, pid: i32) -> bool;
    /// Sends `signal` to `target`: a process id, or the negated id of a process group. A
    /// target that is gone is ignored.
    fn signal(&mut self, target: i32, signal: Signal);
    /// Waits between two rounds.
    fn pause(&mut self, duration: Duration);
}

/// The two signals of a kill round.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    Stop,
    Kill,
}

/// The result of killing a run's processes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KillReport {
    /// Processes sent SIGKILL after a snapshot found them.
    pub killed: Vec<i32>,
    /// Processes still found after the last round.
    pub survivors: Vec<i32>,
    /// The reason the process table could not be read. The command and its process group were sent
    /// SIGKILL anyway, but processes that left the group, and the survivors, are unknown.
    pub listing_error: Option<String>,
}

/// Kills every process of the run that `root` started, in at most `rounds` rounds `pause`
/// apart. Each round sends SIGKILL to `root` and its process group first, whatever the
/// snapshot returns. Then it stops every member of the snapshot, so that none can fork between
/// the snapshot and the kill, and kills them. It ends when a snapshot finds no member, or at
/// the first snapshot that fails. `exclude` is palisade itself.
///
/// `root` must not be reaped yet: its process id, and so its process group's id, then stay
/// taken, and the signals cannot reach an unrelated process that reused them.
pub fn kill_rounds(table: &mut dyn ProcessTable, root: i32, exclude: i32, rounds: usize, pause: Duration) -> KillReport {
    let mut report = KillReport::default();
    for round in 0..=rounds {
        // The command leads its process group once the stage called setsid. Before that, no
        // group has its id and the first signal fails harmlessly.
        table.signal(-root, Signal::Kill);
        table.signal(root, Signal::Kill);
        let snapshot = match table.list() {
            Ok(snapshot) => snapshot,
            Err(error) => {
                report.listing_error = Some(error.to_string());
                return report;
            }
        };
        let members = run_members(&snapshot, root, exclude, &mut |pid| table.is_marked(pid));
        if members.is_empty() || round == rounds {
            report.survivors = members;
            return report;
        }
        for pid in &members {
            table.signal(*pid, Signal::Stop);
        }
        for pid in &members {
            table.signal(*pid, Signal::Kill);
            if !report.killed.contains(pid) {
                report.killed.push(*pid);
            }
        }
        table.pause(pause);
    }
    report
}

#[cfg(test)]
mod tests {
    use super::*;

    fn process(pid: i32, parent: i32, group: i32) -> ProcessInfo {
        ProcessInfo { pid, parent, group }
    }

    #[test]
    fn descendants_group_and_marked_are_members() {
        let snapshot = [
            process(1, 0, 1),
            process(500, 1, 500),   // palisade
            process(600, 500, 600), // the command, leader of its own group
            process(601, 600, 600), // a child
            process(602, 601, 602), // a grandchild that called setsid
            process(700, 1, 600),   // orphaned, adopted by launchd, still in the group
            process(800, 1, 800),   // orphaned after setsid: only the marker finds it
            process(900, 1, 900),   // unrelated
        ];
        let members = run_members(&snapshot, 600, 500, &mut |pid| pid == 800);
        assert_eq!(members, vec![600, 601, 602, 700, 800]);
    }

    #[test]
    fn palisade_init_and_missing_root_are_never_members() {
        let snapshot = [process(1, 0, 1), process(500, 1, 600), process(601, 1, 600)];
        let members = run_members(&snapshot, 600, 500, &mut |pid| pid == 1);
        assert_eq!(members, vec![601]);
    }

    /// A process table that records the signals it is sent. Each listing returns the next
    /// entry of `listings`, and a process sent SIGKILL, itself or through its group, leaves
    /// the later ones unless it is in `unkillable`.
    struct FakeTable {
        listings: Vec<Result<Vec<ProcessInfo>, String>>,
        unkillable: Vec<i32>,
        killed: Vec<i32>,
        signals: Vec<(i32, Signal)>,
    }

    impl FakeTable {
        fn new(listings: Vec<Result<Vec<ProcessInfo>, String>>) -> FakeTable {
            FakeTable { listings, unkillable: Vec::new(), killed: Vec::new(), signals: Vec::new() }
        }
    }

    impl ProcessTable for FakeTable {
        fn list(&mut self) -> std::io::Result<Vec<ProcessInfo>> {
            let listing = if self.listings.len() > 1 { self.listings.remove(0) } else { self.listings[0].clone() };
            let gone = |process: &ProcessInfo| self.killed.contains(&process.pid) || (self.killed.contains(&-process.group) && !self.unkillable.contains(&process.pid));
            listing.map_err(std::io::Error::other).map(|processes| processes.into_iter().filter(|process| !gone(process)).collect())
        }

        fn is_marked(&mut self, _pid: i32) -> bool {
            false
        }

        fn signal(&mut self, target: i32, signal: Signal) {
            self.signals.push((target, signal));
            if signal == Signal::Kill && !self.unkillable.contains(&target) {
                self.killed.push(target);
            }
        }

        fn pause(&mut self, _duration: Duration) {}
    }

    #[test]
    fn failed_listing_still_kills_command_and_group() {
        let mut table = FakeTable::new(vec![Err("proc_listallpids failed".into())]);
        let report = kill_rounds(&mut table, 600, 500, 20, Duration::ZERO);
        assert_eq!(table.signals, [(-600, Signal::Kill), (600, Signal::Kill)]);
        assert_eq!(report.listing_error.as_deref(), Some("proc_listallpids failed"));
        assert!(report.survivors.is_empty());
    }

    #[test]
    fn rounds_stop_then_kill_until_none_left() {
        let snapshot = vec![process(1, 0, 1), process(500, 1, 500), process(600, 500, 600), process(601, 600, 600), process(800, 1, 800)];
        let mut table = FakeTable::new(vec![Ok(snapshot)]);
        let report = kill_rounds(&mut table, 600, 500, 20, Duration::ZERO);
        assert_eq!(report, KillReport::default(), "the first kill of the command and its group ends a run of two processes");

        let snapshot = vec![process(600, 500, 600), process(700, 1, 700)];
        let mut table = FakeTable::new(vec![Ok(snapshot)]);
        let report = kill_rounds(&mut table, 600, 500, 20, Duration::ZERO);
        assert!(report.survivors.is_empty());
        assert!(report.listing_error.is_none());
    }

    #[test]
    fn survivors_are_listed_after_last_round() {
        // 601 left the group but descends from the command, and ignores SIGKILL (a process in
        // an uninterruptible wait).
        let snapshot = vec![process(600, 500, 600), process(601, 600, 601)];
        let mut table = FakeTable::new(vec![Ok(snapshot)]);
        table.unkillable = vec![600, 601];
        let report = kill_rounds(&mut table, 600, 500, 3, Duration::ZERO);
        assert_eq!(report.survivors, [600, 601]);
        assert_eq!(report.killed, [600, 601]);
        assert_eq!(&table.signals[..4], [(-600, Signal::Kill), (600, Signal::Kill), (600, Signal::Stop), (601, Signal::Stop)]);
        assert_eq!(table.signals.iter().filter(|(target, signal)| *target == -600 && *signal == Signal::Kill).count(), 4);
    }
}
