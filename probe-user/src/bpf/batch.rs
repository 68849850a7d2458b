//! Writing many entries into a hash map with one system call per batch
//! (`BPF_MAP_UPDATE_BATCH`, Linux 5.6), which aya 0.14 does not wrap. Seeding the sockets of a
//! host that holds a million took seconds as one `bpf()` call each.

use std::{
    io,
    os::fd::{AsFd, AsRawFd},
};

use aya::{
    Pod,
    maps::{HashMap, IterableMap, MapData, MapError},
    sys::SyscallError,
};
use aya_obj::generated::{bpf_attr, bpf_cmd};

use super::full_is_refused;

/// The kernel's own `ENOTSUPP` (not userspace's `ENOTSUP`), which `bpf()` returns for a map
/// type without batch operations.
const KERNEL_ENOTSUPP: i32 = 524;

/// Inserts `keys[i] -> values[i]` for every `i` (replacing what a key held), as many per
/// system call as the kernel takes; returns the indices of the entries refused because the map
/// is full. On a kernel without batch updates, inserts them one by one.
pub fn insert_all<K: Pod, V: Pod>(
    map: &mut HashMap<MapData, K, V>,
    keys: &[K],
    values: &[V],
) -> Result<Vec<usize>, MapError> {
    assert_eq!(keys.len(), values.len(), "one value per key");
    let mut refused = Vec::new();
    let mut next = 0;
    while next < keys.len() {
        match update_batch(map, &keys[next..], &values[next..]) {
            Ok(()) => break,
            Err((written, error)) => {
                let at = next + written;
                match error.raw_os_error() {
                    // The entry at `at` did not fit: the map is full.
                    Some(libc::E2BIG) => {
                        refused.push(at);
                        next = at + 1;
                    }
                    // No batch updates here (an unknown command before 5.6, a map type
                    // without them after): one by one.
                    Some(libc::EINVAL | KERNEL_ENOTSUPP) if written == 0 && next == 0 => {
                        return insert_one_by_one(map, keys, values);
                    }
                    _ => {
                        return Err(MapError::SyscallError(SyscallError {
                            call: "bpf_map_update_batch",
                            io_error: error,
                        }));
                    }
                }
            }
        }
    }
    Ok(refused)
}

/// One `BPF_MAP_UPDATE_BATCH` of every entry; on failure, how many were written before it and
/// why it stopped.
fn update_batch<K: Pod, V: Pod>(
    map: &HashMap<MapData, K, V>,
    keys: &[K],
    values: &[V],
) -> Result<(), (usize, io::Error)> {
    let count = u32::try_from(keys.len()).unwrap_or(u32::MAX);
    // SAFETY: bpf_attr is a C union of plain integers: all zeroes is valid (and what the
    // kernel wants in every field this command does not use).
    let mut attr: bpf_attr = unsafe { std::mem::zeroed() };
    // SAFETY: writing the `batch` member of the union, the one BPF_MAP_UPDATE_BATCH reads.
    let batch = unsafe { &mut attr.batch };
    batch.keys = keys.as_ptr() as u64;
    batch.values = values.as_ptr() as u64;
    batch.count = count;
    batch.map_fd = map.map().fd().as_fd().as_raw_fd() as u32;
    // SAFETY: the kernel reads `count` keys and values from the two slices, which hold at
    // least that many `Pod` values each, and writes only `attr.batch.count` back; the map fd
    // is open for as long as `map` is borrowed.
    let result = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            bpf_cmd::BPF_MAP_UPDATE_BATCH as libc::c_long,
            &mut attr as *mut bpf_attr,
            std::mem::size_of::<bpf_attr>(),
        )
    };
    if result == 0 {
        return Ok(());
    }
    let error = io::Error::last_os_error();
    // SAFETY: as above; the kernel wrote how many entries it processed.
    let written = unsafe { attr.batch.count } as usize;
    Err((written.min(keys.len()), error))
}

fn insert_one_by_one<K: Pod, V: Pod>(
    map: &mut HashMap<MapData, K, V>,
    keys: &[K],
    values: &[V],
) -> Result<Vec<usize>, MapError> {
    let mut refused = Vec::new();
    for (index, (key, value)) in keys.iter().zip(values).enumerate() {
        if !full_is_refused(map.insert(key, value, 0))? {
            refused.push(index);
        }
    }
    Ok(refused)
}
