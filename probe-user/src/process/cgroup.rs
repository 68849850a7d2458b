//! cgroups: where a process runs (its container and pod, read from `/proc/PID/cgroup`), and the
//! cgroup v2 directories `--cgroup` and `--container` name.
//!
//! Container runtimes name their cgroups in a handful of well-known ways, parsed here by hand (a
//! path split on `/`, prefixes and suffixes stripped): docker (`docker-<id>.scope`,
//! `/docker/<id>`), containerd (`cri-containerd-<id>.scope`), CRI-O (`crio-<id>.scope`), podman
//! (`libpod-<id>.scope`), and Kubernetes pods (`kubepods-...-pod<uid>.slice`, `/pod<uid>/`). No
//! crate parses these; a regex engine would not make the rules clearer.

use std::{
    fs, io,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
};

use crate::track::triage::Placement;

/// `CGROUP2_SUPER_MAGIC`, the cgroup v2 filesystem's `statfs` type.
const CGROUP2_SUPER_MAGIC: i64 = 0x6367_7270;

/// Why a `--cgroup` or `--container` cannot be traced.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error(
        "no cgroup v2 hierarchy is mounted (see `grep cgroup2 /proc/self/mountinfo`); mount one \
         with `mount -t cgroup2 none /sys/fs/cgroup/unified`"
    )]
    NoHierarchy,
    #[error(
        "{} is not a cgroup v2 directory (the cgroup v2 hierarchy is mounted at {}); give a \
         directory under it, or its path as /proc/PID/cgroup shows it",
        .path.display(),
        .root.display()
    )]
    NotCgroup2 { path: PathBuf, root: PathBuf },
    #[error("cannot read the cgroup {}", .path.display())]
    Unreadable {
        path: PathBuf,
        #[source]
        error: io::Error,
    },
    #[error("no running container's id starts with `{0}` (see `docker ps` or `crictl ps` for ids)")]
    NoContainer(String),
    #[error(
        "`{prefix}` matches {} containers ({}): give more of the id",
        .ids.len(),
        .ids.join(", ")
    )]
    AmbiguousContainer { prefix: String, ids: Vec<String> },
    #[error("`{0}` is not a container id: use hexadecimal digits, e.g. --container 9f1c2ab")]
    BadContainerId(String),
}

/// A cgroup v2 directory to trace, with what the kernel program needs of it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TracedCgroup {
    /// Its directory.
    pub path: PathBuf,
    /// Its id: the directory's inode number, which is what `bpf_get_current_cgroup_id` gives.
    pub id: u64,
    /// Its depth below the hierarchy's root (the root is 0).
    pub level: u32,
}

/// The cgroup v2 hierarchy's mount point, from `/proc/self/mountinfo`.
pub fn hierarchy() -> Result<PathBuf, CgroupError> {
    let mountinfo =
        fs::read_to_string("/proc/self/mountinfo").map_err(|error| CgroupError::Unreadable {
            path: "/proc/self/mountinfo".into(),
            error,
        })?;
    cgroup2_mount(&mountinfo).ok_or(CgroupError::NoHierarchy)
}

/// The mount point of the first cgroup2 filesystem in a mountinfo text (`... - cgroup2 ...`;
/// the mount point is the fifth field).
fn cgroup2_mount(mountinfo: &str) -> Option<PathBuf> {
    mountinfo.lines().find_map(|line| {
        let (fields, filesystem) = line.split_once(" - ")?;
        (filesystem.split_whitespace().next()? == "cgroup2")
            .then(|| fields.split_whitespace().nth(4).map(PathBuf::from))
            .flatten()
    })
}

/// Resolves `--cgroup PATH`: a directory under the cgroup v2 mount, or a path as
/// `/proc/PID/cgroup` shows it (relative to that mount).
pub fn resolve(path: &Path) -> Result<TracedCgroup, CgroupError> {
    let root = hierarchy()?;
    let full = if path.starts_with(&root) {
        path.to_path_buf()
    } else {
        root.join(path.strip_prefix("/").unwrap_or(path))
    };
    let not_cgroup2 = || CgroupError::NotCgroup2 {
        path: path.to_path_buf(),
        root: root.clone(),
    };
    let meta = fs::metadata(&full).map_err(|_| not_cgroup2())?;
    if !meta.is_dir() || !is_cgroup2(&full) {
        return Err(not_cgroup2());
    }
    let relative = full.strip_prefix(&root).map_err(|_| not_cgroup2())?;
    Ok(TracedCgroup {
        level: relative.components().count() as u32,
        id: meta.ino(),
        path: full,
    })
}

fn is_cgroup2(path: &Path) -> bool {
    nix::sys::statfs::statfs(path).is_ok_and(|fs| fs.filesystem_type().0 == CGROUP2_SUPER_MAGIC)
}

/// The processes in `cgroup` and every cgroup below it.
pub fn members(cgroup: &Path) -> Vec<u32> {
    let mut pids = Vec::new();
    let mut pending = vec![cgroup.to_path_buf()];
    while let Some(dir) = pending.pop() {
        if let Ok(procs) = fs::read_to_string(dir.join("cgroup.procs")) {
            pids.extend(
                procs
                    .lines()
                    .filter_map(|line| line.trim().parse::<u32>().ok()),
            );
        }
        if let Ok(entries) = fs::read_dir(&dir) {
            pending.extend(
                entries
                    .filter_map(Result::ok)
                    .filter(|entry| entry.file_type().is_ok_and(|kind| kind.is_dir()))
                    .map(|entry| entry.path()),
            );
        }
    }
    pids.sort_unstable();
    pids.dedup();
    pids
}

/// Where process `pid` runs; nothing known when its cgroup cannot be read.
pub fn placement(pid: u32) -> Placement {
    fs::read_to_string(format!("/proc/{pid}/cgroup"))
        .map(|text| parse_placement(&text))
        .unwrap_or_default()
}

/// A `/proc/PID/cgroup` text, read: the v2 path, and the container and pod that any of the
/// lines names (cgroup v1 hierarchies carry them too, where the runtime uses v1).
pub fn parse_placement(text: &str) -> Placement {
    let cgroup = text
        .lines()
        .find_map(|line| line.strip_prefix("0::"))
        .map(str::to_string);
    let paths = cgroup
        .iter()
        .map(String::as_str)
        .chain(text.lines().filter_map(|line| line.splitn(3, ':').nth(2)));
    let mut placement = Placement {
        cgroup: cgroup.clone(),
        ..Placement::default()
    };
    for path in paths {
        for component in path.split('/') {
            if placement.container.is_none() {
                placement.container = container_id(component);
            }
            if placement.pod.is_none() {
                placement.pod = pod_uid(component);
            }
        }
    }
    placement
}

/// The container id a cgroup path component names, if any.
fn container_id(component: &str) -> Option<String> {
    let id = ["docker-", "cri-containerd-", "crio-", "libpod-"]
        .iter()
        .find_map(|prefix| component.strip_prefix(prefix))
        .map(|rest| rest.strip_suffix(".scope").unwrap_or(rest))
        .unwrap_or(component);
    (id.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit())).then(|| id.to_string())
}

/// The pod uid a cgroup path component names (`pod<uid>` with the cgroupfs driver,
/// `kubepods-<class>-pod<uid_with_underscores>.slice` with the systemd driver), if any.
fn pod_uid(component: &str) -> Option<String> {
    let name = component.strip_suffix(".slice").unwrap_or(component);
    let (before, uid) = name.rsplit_once("pod")?;
    let kubernetes = before.is_empty() || before.starts_with("kubepods");
    let uid = uid.replace('_', "-");
    let shaped = uid.len() == 36 && uid.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-');
    (kubernetes && shaped).then_some(uid)
}

/// The cgroup of the one running container whose id starts with `prefix`: where its processes
/// are (their v2 cgroup path, under the hierarchy).
pub fn container(prefix: &str) -> Result<PathBuf, CgroupError> {
    if prefix.is_empty() || !prefix.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(CgroupError::BadContainerId(prefix.to_string()));
    }
    let root = hierarchy()?;
    let mut found: Vec<(String, String)> = Vec::new();
    if let Ok(all) = procfs::process::all_processes() {
        for process in all.filter_map(Result::ok) {
            let placement = placement(process.pid as u32);
            if let (Some(id), Some(cgroup)) = (placement.container, placement.cgroup)
                && id.starts_with(&prefix.to_ascii_lowercase())
                && !found.iter().any(|(known, _)| *known == id)
            {
                found.push((id, cgroup));
            }
        }
    }
    match found.as_slice() {
        [] => Err(CgroupError::NoContainer(prefix.to_string())),
        [(_, cgroup)] => Ok(root.join(cgroup.trim_start_matches('/'))),
        many => {
            let ids: Vec<&str> = many.iter().map(|(id, _)| id.as_str()).collect();
            Err(CgroupError::AmbiguousContainer {
                prefix: prefix.to_string(),
                ids: distinguishing_prefixes(&ids),
            })
        }
    }
}

/// The ids, each cut to as many characters as tell them all apart (12 at least, as
/// `docker ps` shows them): two containers whose ids share their first 12 digits are not
/// listed as the same id.
fn distinguishing_prefixes(ids: &[&str]) -> Vec<String> {
    let shared = |a: &str, b: &str| a.bytes().zip(b.bytes()).take_while(|(x, y)| x == y).count();
    let longest_shared = ids
        .iter()
        .enumerate()
        .flat_map(|(i, a)| ids[i + 1..].iter().map(move |b| shared(a, b)))
        .max()
        .unwrap_or(0);
    let length = (longest_shared + 1).max(12);
    ids.iter()
        .map(|id| id[..length.min(id.len())].to_string())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "9f1c2ab3c4d5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f708192a3b4c5d6e7f";

    #[test]
    fn ambiguous_ids_are_shown_as_long_as_it_takes_to_tell_them_apart() {
        let a = "9f1c2ab3c4d5e6f7aaaa";
        let b = "9f1c2ab3c4d5e6f7bbbb";
        assert_eq!(
            distinguishing_prefixes(&[a, b]),
            ["9f1c2ab3c4d5e6f7a", "9f1c2ab3c4d5e6f7b"]
        );
        assert_eq!(
            distinguishing_prefixes(&["9f1c2ab3c4d5e6f7", "0123456789abcdef"]),
            ["9f1c2ab3c4d5", "0123456789ab"]
        );
    }

    #[test]
    fn containers_and_pods_of_every_runtime() {
        let systemd = format!(
            "0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1b4e28ba_2fa1_11d2_883f_0016d3cca427.slice/cri-containerd-{ID}.scope\n"
        );
        let placement = parse_placement(&systemd);
        assert_eq!(placement.container.as_deref(), Some(ID));
        assert_eq!(
            placement.pod.as_deref(),
            Some("1b4e28ba-2fa1-11d2-883f-0016d3cca427")
        );
        assert!(placement.cgroup.unwrap().ends_with(".scope"));

        let cgroupfs =
            format!("0::/kubepods/besteffort/pod1b4e28ba-2fa1-11d2-883f-0016d3cca427/{ID}\n");
        let placement = parse_placement(&cgroupfs);
        assert_eq!(placement.container.as_deref(), Some(ID));
        assert!(placement.pod.is_some());

        let docker = format!("0::/system.slice/docker-{ID}.scope\n");
        assert_eq!(parse_placement(&docker).container.as_deref(), Some(ID));
        assert_eq!(parse_placement(&docker).pod, None);

        let v1 = format!("12:memory:/docker/{ID}\n0::/\n");
        assert_eq!(parse_placement(&v1).container.as_deref(), Some(ID));
        assert_eq!(parse_placement(&v1).cgroup.as_deref(), Some("/"));

        let plain = "0::/user.slice/user-1000.slice/session-2.scope\n";
        assert_eq!(
            parse_placement(plain),
            Placement {
                cgroup: Some("/user.slice/user-1000.slice/session-2.scope".into()),
                container: None,
                pod: None,
            }
        );
        // A name that merely contains "pod" is no pod.
        assert_eq!(parse_placement("0::/my-ipod/x\n").pod, None);
    }

    #[test]
    fn the_cgroup2_mount_is_found_in_mountinfo() {
        let mountinfo = "25 1 0:23 / / rw - ext4 /dev/vda rw\n\
                         41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw\n";
        assert_eq!(
            cgroup2_mount(mountinfo),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
        assert_eq!(cgroup2_mount("25 1 0:23 / / rw - ext4 /dev/vda rw\n"), None);
    }

    #[test]
    fn a_directory_that_is_not_a_cgroup_is_refused() {
        let error = resolve(Path::new("/tmp")).unwrap_err();
        assert!(
            matches!(
                error,
                CgroupError::NotCgroup2 { .. } | CgroupError::NoHierarchy
            ),
            "{error}"
        );
        assert!(matches!(
            container("xyz"),
            Err(CgroupError::BadContainerId(_))
        ));
    }
}
