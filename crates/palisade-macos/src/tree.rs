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
}
