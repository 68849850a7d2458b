//! The programs on `sched:sched_process_fork` and `sched:sched_process_exec`: with
//! `FOLLOW_FORKS`, the children of targets become targets at once (before they can connect); a
//! process whose new name matches `COMM_FILTER` becomes a target at exec. Userspace hears of both
//! to name the processes and watch them exit (and to drop the threads among the children).

use aya_ebpf::{helpers::bpf_get_current_comm, macros::tracepoint, programs::TracePointContext};
use probe_common::{Counter, ProcessEvent, ProcessEventKind};

use crate::{
    COMM_FILTER, FOLLOW_FORKS, FORK_LAYOUT, PROCESS_EVENTS, TARGETS, count, count_failure,
    current_tgid, is_target, read,
};

#[tracepoint(category = "sched", name = "sched_process_fork")]
pub fn sched_process_fork(ctx: TracePointContext) -> u32 {
    count_failure(on_fork(&ctx));
    0
}

#[tracepoint(category = "sched", name = "sched_process_exec")]
pub fn sched_process_exec(_ctx: TracePointContext) -> u32 {
    on_exec();
    0
}

fn on_fork(ctx: &TracePointContext) -> Result<(), i64> {
    if FOLLOW_FORKS.load() == 0 {
        return Ok(());
    }
    // Fork runs in the parent: the current process is the one that forks.
    let parent = current_tgid();
    if !is_target(parent) {
        return Ok(());
    }
    let layout = FORK_LAYOUT.load();
    let child: i32 = read(ctx, layout.child_pid)?;
    let child = child as u32;
    if TARGETS.insert(child, 1, 0).is_err() {
        count(Counter::TargetMapFull);
        return Ok(());
    }
    emit(ProcessEventKind::Fork, child, parent);
    Ok(())
}

fn on_exec() {
    let pid = current_tgid();
    if is_target(pid) {
        emit(ProcessEventKind::Exec, pid, pid);
        return;
    }
    let filter = COMM_FILTER.load();
    if filter[0] == 0 || bpf_get_current_comm().ok() != Some(filter) {
        return;
    }
    if TARGETS.insert(pid, 1, 0).is_err() {
        count(Counter::TargetMapFull);
        return;
    }
    emit(ProcessEventKind::Exec, pid, pid);
}

fn emit(kind: ProcessEventKind, pid: u32, parent: u32) {
    let Some(mut entry) = PROCESS_EVENTS.reserve::<ProcessEvent>(0) else {
        count(Counter::ProcessEventsFull);
        return;
    };
    entry.write(ProcessEvent {
        kind: kind as u32,
        pid,
        parent,
        _pad: 0,
        comm: bpf_get_current_comm().unwrap_or([0; 16]),
    });
    entry.submit(0);
}
