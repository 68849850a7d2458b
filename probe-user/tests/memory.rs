//! What the connection table costs per open connection, counted by the allocator (no root, no
//! kernel): 120,000 connections (just past a doubling of the table's index: its worst case),
//! each opened, established, waiting for its stuck deadline and sampled by tcp_info, as probe
//! holds them during an incident. The target is under 200 bytes per connection.
// The test runner reads what the tests say on stderr (it is no terminal that can go away).
#![allow(clippy::disallowed_macros)]

use std::{
    alloc::{GlobalAlloc, Layout, System},
    sync::atomic::{AtomicIsize, Ordering},
    time::Duration,
};

use probe_common::{Attribution, TcpState};
use probe_user::track::{
    Activity, Endpoints, ExistingSocket, Family, NoCodePaths, Thresholds, Timestamp, Tracker,
    Transition,
};

/// The system allocator, counting the bytes currently allocated.
struct Counting;

static ALLOCATED: AtomicIsize = AtomicIsize::new(0);

// SAFETY: forwards to the system allocator unchanged; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATED.fetch_add(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: same layout, as the caller promised.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        ALLOCATED.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: `ptr` came from `alloc` with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATED.fetch_add(
            new_size as isize - layout.size() as isize,
            Ordering::Relaxed,
        );
        // SAFETY: as for `realloc` itself.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

const CONNECTIONS: u64 = 120_000;

fn endpoints(n: u64) -> Endpoints {
    let port = 10_000 + (n % 50_000) as u16;
    let server = 1 + (n / 50_000) as u8;
    Endpoints {
        family: Family::Ipv4,
        local: format!("10.0.0.1:{port}").parse().unwrap(),
        remote: format!("10.0.1.{server}:443").parse().unwrap(),
    }
}

#[test]
fn an_open_connection_costs_under_200_bytes() {
    let mut tracker = Tracker::new(Thresholds::default());
    tracker.register_process(42, "client");
    let before = ALLOCATED.load(Ordering::Relaxed);
    let mut samples = Vec::new();
    for n in 0..CONNECTIONS {
        for (old, new, at) in [
            (TcpState::Close, TcpState::SynSent, n),
            (TcpState::SynSent, TcpState::Established, n + 1),
        ] {
            tracker.apply(&Transition {
                sock_id: 0xffff_8880_0000_0000 + n * 4096,
                cookie: None,
                pid: 42,
                at: Timestamp::from_nanos(at * 1_000),
                endpoints: endpoints(n),
                old,
                new,
                attribution: Attribution::Known,
                stack: None,
                requested: None,
            });
        }
        samples.push(ExistingSocket {
            pid: 42,
            inode: 1_000_000 + n,
            cookie: 0,
            state: TcpState::Established,
            endpoints: endpoints(n),
            activity: Some(Activity {
                sampled_at: Timestamp::from_nanos(1_000_000_000),
                last_data_sent: Duration::from_millis(10),
                last_data_received: Duration::from_millis(20),
                bytes_acked: 100,
                bytes_received: 200,
                unacked: 0,
                retransmits: 0,
            }),
            last_ack_received: None,
            queues: Default::default(),
        });
    }
    tracker.refresh_activity(&samples, Timestamp::from_nanos(1));
    drop(samples);
    // Held open: the deadlines of their handshakes are dropped once they settle (SYN_SENT is
    // over), and any come due by 11 s are looked at; what is left is what each open
    // connection keeps.
    let later = Timestamp::from_nanos(11_000_000_000);
    while tracker.next_deadline().is_some_and(|due| due <= later) {
        assert!(tracker.due_stuck(later, &NoCodePaths).is_empty());
    }
    let after = ALLOCATED.load(Ordering::Relaxed);
    assert_eq!(tracker.open_count(), CONNECTIONS as usize);
    let per_connection = (after - before) as f64 / CONNECTIONS as f64;
    eprintln!(
        "{per_connection:.0} bytes per open connection ({} KiB for {CONNECTIONS})",
        (after - before) / 1024
    );
    assert!(
        per_connection < 200.0,
        "{per_connection:.0} bytes per open connection"
    );
}
