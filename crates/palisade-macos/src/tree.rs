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
//! [`kill_rounds`] repeats stop, snapshot, stop and kill until a snapshot finds no member.
//! Each round stops the command and its process group before it reads the process table, and
//! kills nothing until every member of the snapshot is stopped. A process killed first would
//! hand its children to launchd, so a child in another process group would then be neither a
//! descendant nor a group member. Only when the process table cannot be read does a round
//! send SIGKILL to the command and its group at once.

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
    /// Processes found by the last snapshot of the last round. They were sent SIGKILL too,
    /// but no later snapshot shows that they are gone.
    pub survivors: Vec<i32>,
    /// The reason the process table could not be read. The command, its process group and
    /// the members found before the failure were sent SIGKILL, but processes that left the
    /// group, and the survivors, are unknown.
    pub listing_error: Option<String>,
}

impl KillReport {
    /// Returns whether the last snapshot was read and found no process of the run.
    pub fn all_killed(&self) -> bool {
        self.listing_error.is_none() && self.survivors.is_empty()
    }
}

/// Snapshots taken in one round while new members keep appearing, before the round kills
/// what it has found.
const SNAPSHOTS_PER_ROUND: usize = 4;

/// Kills every process of the run that `root` started, in at most `rounds` rounds `pause`
/// apart. `exclude` is palisade itself.
///
/// Each round sends SIGSTOP to `root`'s process group and to `root`, then reads the process
/// table and stops every member it finds. A stopped process cannot fork, so the round reads
/// the table again until a snapshot finds no new member (at most [`SNAPSHOTS_PER_ROUND`]
/// times), and only then sends SIGKILL to the members, the group and `root`. Killing before
/// the snapshot would let launchd adopt the children of a killed process, and a child that
/// left the group would escape the walk down from `root`. The rounds end when a snapshot
/// finds no member. When a snapshot fails, the round kills `root`, its group and the members
/// found so far at once, and the report records the failure.
///
/// `root` must not be reaped yet: its process id, and so its process group's id, then stay
/// taken, and the signals cannot reach an unrelated process that reused them.
pub fn kill_rounds(table: &mut dyn ProcessTable, root: i32, exclude: i32, rounds: usize, pause: Duration) -> KillReport {
    let mut report = KillReport::default();
    for round in 0..=rounds {
        // The command leads its process group once the stage called setsid. Before that, no
        // group has its id and the group's signals fail harmlessly.
        table.signal(-root, Signal::Stop);
        table.signal(root, Signal::Stop);
        let (members, listing_error) = stop_members(table, root, exclude, &report.killed);
        for pid in &members {
            table.signal(*pid, Signal::Kill);
            if !report.killed.contains(pid) {
                report.killed.push(*pid);
            }
        }
        table.signal(-root, Signal::Kill);
        table.signal(root, Signal::Kill);
        if listing_error.is_some() {
            report.listing_error = listing_error;
            return report;
        }
        if members.is_empty() || round == rounds {
            report.survivors = members;
            return report;
        }
        table.pause(pause);
    }
    report
}

/// Reads the process table and stops the run's members until a snapshot finds no new one.
/// A process in `killed` (sent SIGKILL in an earlier round) stays a member, so one that
/// survived it is found again after launchd adopted it. Returns the members found, and the
/// listing error that ended the search early, if any.
fn stop_members(table: &mut dyn ProcessTable, root: i32, exclude: i32, killed: &[i32]) -> (Vec<i32>, Option<String>) {
    let mut stopped: Vec<i32> = Vec::new();
    for _ in 0..SNAPSHOTS_PER_ROUND {
        let snapshot = match table.list() {
            Ok(snapshot) => snapshot,
            Err(error) => return (stopped, Some(error.to_string())),
        };
        let members = run_members(&snapshot, root, exclude, &mut |pid| killed.contains(&pid) || table.is_marked(pid));
        let new: Vec<i32> = members.iter().copied().filter(|pid| !stopped.contains(pid)).collect();
        for pid in &new {
            table.signal(*pid, Signal::Stop);
        }
        // Members of an earlier snapshot that this one lacks have exited.
        let settled = new.is_empty();
        stopped = members;
        if settled {
            break;
        }
    }
    (stopped, None)
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

    /// A live process table that records the signals it is sent. A process sent SIGKILL,
    /// itself or through its group, leaves the table unless it is in `unkillable`, and its
    /// children are adopted by launchd (pid 1), as on macOS. Each listing fails while
    /// `failing_listings` is above 0.
    struct FakeTable {
        processes: Vec<ProcessInfo>,
        marked: Vec<i32>,
        unkillable: Vec<i32>,
        failing_listings: usize,
        signals: Vec<(i32, Signal)>,
    }

    impl FakeTable {
        fn new(processes: Vec<ProcessInfo>) -> FakeTable {
            FakeTable { processes, marked: Vec::new(), unkillable: Vec::new(), failing_listings: 0, signals: Vec::new() }
        }

        fn alive(&self, pid: i32) -> bool {
            self.processes.iter().any(|process| process.pid == pid)
        }

        fn kill(&mut self, target: i32) {
            let dying: Vec<i32> = self
                .processes
                .iter()
                .filter(|process| (process.pid == target || -process.group == target) && !self.unkillable.contains(&process.pid))
                .map(|process| process.pid)
                .collect();
            self.processes.retain(|process| !dying.contains(&process.pid));
            for process in &mut self.processes {
                if dying.contains(&process.parent) {
                    process.parent = 1;
                }
            }
        }
    }

    impl ProcessTable for FakeTable {
        fn list(&mut self) -> std::io::Result<Vec<ProcessInfo>> {
            if self.failing_listings > 0 {
                self.failing_listings -= 1;
                return Err(std::io::Error::other("proc_listallpids failed"));
            }
            Ok(self.processes.clone())
        }

        fn is_marked(&mut self, pid: i32) -> bool {
            self.marked.contains(&pid)
        }

        fn signal(&mut self, target: i32, signal: Signal) {
            self.signals.push((target, signal));
            if signal == Signal::Kill {
                self.kill(target);
            }
        }

        fn pause(&mut self, _duration: Duration) {}
    }

    #[test]
    fn fake_table_reparents_children_of_killed_process() {
        let mut table = FakeTable::new(vec![process(1, 0, 1), process(600, 500, 600), process(601, 600, 601)]);
        table.signal(-600, Signal::Kill);
        assert_eq!(table.processes, [process(1, 0, 1), process(601, 1, 601)]);
    }

    #[test]
    fn failed_listing_kills_command_and_group_at_once() {
        let mut table = FakeTable::new(vec![process(1, 0, 1), process(600, 500, 600), process(601, 600, 600)]);
        table.failing_listings = 1;
        let report = kill_rounds(&mut table, 600, 500, 20, Duration::ZERO);
        assert_eq!(table.signals, [(-600, Signal::Stop), (600, Signal::Stop), (-600, Signal::Kill), (600, Signal::Kill)]);
        assert_eq!(report.listing_error.as_deref(), Some("proc_listallpids failed"));
        assert!(report.survivors.is_empty());
        assert!(!report.all_killed());
        assert!(!table.alive(600));
        assert!(!table.alive(601));
    }

    #[test]
    fn descendant_in_other_group_is_found_and_killed() {
        // A job-control shell (600) put its job (601) in a group of its own, and the job
        // started 602. Killing 600 first would hand 601 to launchd before the snapshot.
        let processes = vec![process(1, 0, 1), process(500, 1, 500), process(600, 500, 600), process(601, 600, 601), process(602, 601, 601), process(900, 1, 900)];
        let mut table = FakeTable::new(processes);
        let report = kill_rounds(&mut table, 600, 500, 20, Duration::ZERO);
        assert_eq!(report.killed, [600, 601, 602]);
        assert!(report.survivors.is_empty());
        assert!(report.listing_error.is_none());
        assert!(report.all_killed());
        assert!(!table.alive(601));
        assert!(!table.alive(602));
        assert!(table.alive(900), "an unrelated process was killed");
        assert!(table.alive(500), "palisade itself was killed");
    }

    #[test]
    fn nothing_is_killed_before_every_member_is_stopped() {
        let processes = vec![process(1, 0, 1), process(600, 500, 600), process(601, 600, 601), process(602, 601, 602)];
        let mut table = FakeTable::new(processes);
        kill_rounds(&mut table, 600, 500, 20, Duration::ZERO);
        let first_kill = table.signals.iter().position(|(_, signal)| *signal == Signal::Kill).expect("a SIGKILL was sent");
        for pid in [600, 601, 602] {
            let stop = table.signals.iter().position(|entry| *entry == (pid, Signal::Stop));
            assert!(stop.is_some_and(|stop| stop < first_kill), "{pid} was not stopped before the first SIGKILL: {:?}", table.signals);
        }
    }

    #[test]
    fn marked_orphan_is_killed() {
        let processes = vec![process(1, 0, 1), process(600, 500, 600), process(800, 1, 800)];
        let mut table = FakeTable::new(processes);
        table.marked = vec![800];
        let report = kill_rounds(&mut table, 600, 500, 20, Duration::ZERO);
        assert_eq!(report.killed, [600, 800]);
        assert!(!table.alive(800));
    }

    #[test]
    fn survivor_in_other_group_is_reported() {
        // 601 left the group but descends from the command, and ignores SIGKILL (a process in
        // an uninterruptible wait).
        let processes = vec![process(1, 0, 1), process(600, 500, 600), process(601, 600, 601)];
        let mut table = FakeTable::new(processes);
        table.unkillable = vec![601];
        let report = kill_rounds(&mut table, 600, 500, 3, Duration::ZERO);
        assert_eq!(report.survivors, [601]);
        assert_eq!(report.killed, [600, 601]);
        assert!(report.listing_error.is_none());
        assert!(!report.all_killed());
        let group_kills = table.signals.iter().filter(|entry| **entry == (-600, Signal::Kill)).count();
        assert_eq!(group_kills, 4, "one group kill per round");
    }
}
