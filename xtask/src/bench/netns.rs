//! A network namespace of its own for every run of a churn workload. Each run leaves tens of
//! thousands of TIME_WAIT sockets for a minute, and in a shared namespace the next runs paid for
//! them: with fewer than `tcp_max_tw_buckets` (131,072) the kernel makes one per closed
//! connection, past it none, and the churn ran at about half the speed below the limit. Runs
//! alone and traced drifted across it at random, which looked like the machine changing speed.
//! In a namespace of its own every run starts with none, and its own go when it ends.

use std::{io, os::fd::AsRawFd, os::unix::process::CommandExt, process::Command};

use nix::{
    sched::{CloneFlags, unshare},
    sys::socket::{AddressFamily, SockFlag, SockType, socket},
};

/// Starts `command`'s process in a new network namespace whose loopback interface is up.
pub(super) fn in_own_network(command: &mut Command) {
    // SAFETY: the closure runs in the forked child before exec and makes only system calls
    // (unshare, socket, ioctl, close): it neither allocates nor takes a lock.
    unsafe { command.pre_exec(own_network) };
}

fn own_network() -> io::Result<()> {
    unshare(CloneFlags::CLONE_NEWNET)?;
    loopback_up()
}

/// Sets `lo` up, with the two ioctls `ip link set lo up` makes (nix does not wrap them, and a
/// netlink crate would be much for one flag).
fn loopback_up() -> io::Result<()> {
    let socket = socket(
        AddressFamily::Inet,
        SockType::Datagram,
        SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    // SAFETY: a plain C struct, for which all zeroes is valid.
    let mut request: libc::ifreq = unsafe { std::mem::zeroed() };
    for (to, from) in request.ifr_name.iter_mut().zip(b"lo") {
        *to = *from as libc::c_char;
    }
    // SAFETY: SIOCGIFFLAGS fills the flags of the interface the request names; the request
    // outlives the call.
    if unsafe { libc::ioctl(socket.as_raw_fd(), libc::SIOCGIFFLAGS, &mut request) } < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the union's flags, which SIOCGIFFLAGS just filled.
    unsafe { request.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short };
    // SAFETY: SIOCSIFFLAGS reads the request, which outlives the call.
    if unsafe { libc::ioctl(socket.as_raw_fd(), libc::SIOCSIFFLAGS, &request) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
