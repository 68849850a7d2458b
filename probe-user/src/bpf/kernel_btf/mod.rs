//! The kernel's BTF (`/sys/kernel/btf/vmlinux`): whether there is one, and where the socket
//! fields that the BTF tracepoint program reads sit in this kernel's `struct sock`.

mod reader;

use std::{fs, io, path::Path};

use probe_common::{FileLayout, SOCK_COMMON_BYTES, SOCK_INET_BYTES, SockLayout};
use reader::Btf;

/// Where the kernel publishes its own BTF.
pub const VMLINUX: &str = "/sys/kernel/btf/vmlinux";

/// Why the socket layout could not be read from the kernel's BTF.
#[derive(Debug, thiserror::Error)]
pub enum BtfError {
    #[error(
        "cannot read the kernel's BTF ({VMLINUX}: {0}); the BTF tracepoint needs a kernel built \
         with CONFIG_DEBUG_INFO_BTF=y: use `--attach tracepoint` on this kernel"
    )]
    Unreadable(io::Error),
    #[error("cannot parse the kernel's BTF ({0}); use `--attach tracepoint`")]
    Parse(String),
    #[error(
        "the kernel's BTF has no `{0}`; this kernel's socket layout is not supported by the BTF \
         tracepoint: use `--attach tracepoint`"
    )]
    MissingField(String),
    #[error(
        "the socket fields probe reads are spread wider than the spans it copies ({0:?}); this \
         kernel's socket layout is not supported by the BTF tracepoint: use `--attach tracepoint`"
    )]
    Spread(SockLayout),
    #[error(
        "`{path}` is {found} bytes in the kernel's BTF, probe expects {expected}; this kernel's \
         socket layout is not supported by the BTF tracepoint: use `--attach tracepoint`"
    )]
    WrongSize {
        path: String,
        expected: usize,
        found: usize,
    },
}

/// Whether the running kernel publishes its BTF.
pub fn available() -> bool {
    Path::new(VMLINUX).exists()
}

/// What `parse` makes of the running kernel's BTF.
fn from_vmlinux<T>(parse: fn(&[u8]) -> Result<T, BtfError>) -> Result<T, BtfError> {
    parse(&fs::read(VMLINUX).map_err(BtfError::Unreadable)?)
}

/// The socket layout of the running kernel.
pub fn sock_layout() -> Result<SockLayout, BtfError> {
    from_vmlinux(sock_layout_from)
}

/// The socket layout described by raw BTF `bytes`: the fields the tracepoint's own record is
/// filled from (`include/trace/events/sock.h`), each checked for its size.
pub fn sock_layout_from(bytes: &[u8]) -> Result<SockLayout, BtfError> {
    let btf = Btf::parse(bytes).map_err(BtfError::Parse)?;
    let sock = Struct::find(&btf, "sock")?;
    let inet_sock = Struct::find(&btf, "inet_sock")?;
    let in_sock = |path: &str, size: usize| field(&btf, &sock, path, size);
    let in_inet = |path: &str, size: usize| field(&btf, &inet_sock, path, size);
    // inet_sock starts with its struct sock, so its offsets are offsets into the socket too.
    let sock_size = btf
        .size(sock.id)
        .ok_or_else(|| BtfError::MissingField("the size of struct sock".into()))?;
    if in_inet("sk", sock_size)? != 0 {
        return Err(BtfError::MissingField("inet_sock.sk at offset 0".into()));
    }
    // Without CONFIG_IPV6 there are no IPv6 addresses in the socket, and every address is IPv4.
    let (saddr_v6, daddr_v6, ipv6) = match in_sock("__sk_common.skc_v6_daddr", 16) {
        Ok(daddr_v6) => (in_sock("__sk_common.skc_v6_rcv_saddr", 16)?, daddr_v6, true),
        Err(_) => (0, 0, false),
    };
    let (saddr, sport) = (in_inet("inet_saddr", 4)?, in_inet("inet_sport", 2)?);
    let inet = saddr.min(sport);
    let layout = SockLayout {
        protocol: in_sock("sk_protocol", 2)?,
        family: in_sock("__sk_common.skc_family", 2)?,
        dport: in_sock("__sk_common.skc_dport", 2)?,
        daddr: in_sock("__sk_common.skc_daddr", 4)?,
        saddr_v6,
        daddr_v6,
        inet,
        saddr: saddr - inet,
        sport: sport - inet,
        ipv6: u32::from(ipv6),
    };
    fits_the_copied_spans(&layout)?;
    Ok(layout)
}

/// Where `thread.fsbase` (a thread's FS base: where its TLS is) sits in this kernel's
/// `struct task_struct`, for the program to find a Go thread's current goroutine and a
/// CPython thread's state (x86-64 only: on arm64 the program takes Go's goroutine from its
/// register and reads no Python frames).
pub fn task_fsbase() -> Result<u32, BtfError> {
    if cfg!(target_arch = "x86_64") {
        from_vmlinux(task_fsbase_from)
    } else {
        Ok(0)
    }
}

fn task_fsbase_from(bytes: &[u8]) -> Result<u32, BtfError> {
    let btf = Btf::parse(bytes).map_err(BtfError::Parse)?;
    let task = Struct::find(&btf, "task_struct")?;
    field(&btf, &task, "thread.fsbase", 8)
}

/// Where the fields the `task_file` iterator program reads sit in this kernel's structs.
pub fn file_layout() -> Result<FileLayout, BtfError> {
    from_vmlinux(file_layout_from)
}

fn file_layout_from(bytes: &[u8]) -> Result<FileLayout, BtfError> {
    let btf = Btf::parse(bytes).map_err(BtfError::Parse)?;
    let task = Struct::find(&btf, "task_struct")?;
    let file = Struct::find(&btf, "file")?;
    let inode = Struct::find(&btf, "inode")?;
    Ok(FileLayout {
        task_tgid: field(&btf, &task, "tgid", 4)?,
        file_inode: field(&btf, &file, "f_inode", 8)?,
        inode_number: field(&btf, &inode, "i_ino", 8)?,
    })
}

/// Checks that every field the program takes from the two spans it copies lies within them.
fn fits_the_copied_spans(layout: &SockLayout) -> Result<(), BtfError> {
    let mut common = vec![(layout.family, 2), (layout.dport, 2), (layout.daddr, 4)];
    if layout.ipv6 == 1 {
        common.extend([(layout.saddr_v6, 16), (layout.daddr_v6, 16)]);
    }
    let inet = [(layout.saddr, 4), (layout.sport, 2)];
    let end = |fields: &[(u32, u32)]| fields.iter().map(|(at, len)| at + len).max();
    if end(&common) > Some(SOCK_COMMON_BYTES) || end(&inet) > Some(SOCK_INET_BYTES) {
        return Err(BtfError::Spread(*layout));
    }
    Ok(())
}

/// A struct of the kernel's BTF.
struct Struct {
    name: &'static str,
    id: u32,
}

impl Struct {
    fn find(btf: &Btf, name: &'static str) -> Result<Struct, BtfError> {
        let id = btf
            .struct_named(name)
            .ok_or_else(|| BtfError::MissingField(format!("struct {name}")))?;
        Ok(Struct { name, id })
    }
}

/// The byte offset of `path` in struct `within` (anonymous unions and structs are looked
/// through), which must be a whole field of `size` bytes.
fn field(btf: &Btf, within: &Struct, path: &str, size: usize) -> Result<u32, BtfError> {
    let name = || format!("{}.{path}", within.name);
    let member = btf
        .member(within.id, path)
        .ok_or_else(|| BtfError::MissingField(name()))?;
    if member.bitfield || member.bit_offset % 8 != 0 {
        return Err(BtfError::MissingField(format!(
            "{} as a whole field (it is a bitfield)",
            name()
        )));
    }
    let found = btf
        .size(member.type_id)
        .ok_or_else(|| BtfError::MissingField(format!("the size of {}", name())))?;
    if found != size {
        return Err(BtfError::WrongSize {
            path: name(),
            expected: size,
            found,
        });
    }
    Ok(member.bit_offset / 8)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// This kernel's BTF (every kernel probe is tested on has it).
    fn this_kernel() -> Vec<u8> {
        fs::read(VMLINUX).expect("these tests need /sys/kernel/btf/vmlinux (CONFIG_DEBUG_INFO_BTF)")
    }

    /// btfparse, an independent parser, as the oracle.
    fn oracle_offset(bytes: &[u8], ty: &str, path: &str) -> u32 {
        struct Raw<'a>(&'a [u8]);
        impl btfparse::Readable for Raw<'_> {
            fn read(&self, offset: u64, buffer: &mut [u8]) -> btfparse::Result<()> {
                let start = offset as usize;
                buffer.copy_from_slice(&self.0[start..start + buffer.len()]);
                Ok(())
            }
        }
        let types = btfparse::TypeInformation::new(&Raw(bytes)).expect("btfparse parses it");
        let id = types.id_of(ty).expect("the struct");
        match types.offset_of(id, path).expect("the member").1 {
            btfparse::Offset::ByteOffset(offset) => offset,
            other => panic!("{ty}.{path} is a bitfield: {other:?}"),
        }
    }

    #[test]
    fn reads_this_kernels_socket_layout_as_btfparse_does() {
        let bytes = this_kernel();
        let layout = sock_layout_from(&bytes).unwrap();
        assert_eq!(layout.ipv6, 1, "this kernel has IPv6");
        for (offset, ty, path) in [
            (layout.protocol, "sock", "sk_protocol"),
            (layout.family, "sock", "__sk_common.skc_family"),
            (layout.inet + layout.sport, "inet_sock", "inet_sport"),
            (layout.dport, "sock", "__sk_common.skc_dport"),
            (layout.inet + layout.saddr, "inet_sock", "inet_saddr"),
            (layout.daddr, "sock", "__sk_common.skc_daddr"),
            (layout.saddr_v6, "sock", "__sk_common.skc_v6_rcv_saddr"),
            (layout.daddr_v6, "sock", "__sk_common.skc_v6_daddr"),
        ] {
            assert_eq!(offset, oracle_offset(&bytes, ty, path), "{ty}.{path}");
        }
        // And what has not moved in struct sock_common since long before 5.8.
        assert_eq!((layout.daddr, layout.dport, layout.family), (0, 12, 16));
    }

    #[test]
    fn finds_the_fs_base_of_a_task_as_btfparse_does() {
        let bytes = this_kernel();
        assert_eq!(
            task_fsbase_from(&bytes).unwrap(),
            oracle_offset(&bytes, "task_struct", "thread.fsbase")
        );
    }

    #[test]
    fn finds_the_fields_of_open_files_as_btfparse_does() {
        let bytes = this_kernel();
        let layout = file_layout_from(&bytes).unwrap();
        assert_eq!(
            layout.task_tgid,
            oracle_offset(&bytes, "task_struct", "tgid")
        );
        assert_eq!(layout.file_inode, oracle_offset(&bytes, "file", "f_inode"));
        assert_eq!(layout.inode_number, oracle_offset(&bytes, "inode", "i_ino"));
    }

    #[test]
    fn fields_outside_the_copied_spans_are_refused() {
        let layout = sock_layout_from(&this_kernel()).unwrap();
        assert!(fits_the_copied_spans(&layout).is_ok());
        let moved = SockLayout {
            saddr_v6: SOCK_COMMON_BYTES - 8,
            ..layout
        };
        let error = fits_the_copied_spans(&moved).unwrap_err();
        assert!(matches!(error, BtfError::Spread(_)), "{error:?}");
        let spread = SockLayout {
            sport: SOCK_INET_BYTES,
            ..layout
        };
        assert!(fits_the_copied_spans(&spread).is_err());
        let without_ipv6 = SockLayout {
            ipv6: 0,
            saddr_v6: 1000,
            ..layout
        };
        assert!(fits_the_copied_spans(&without_ipv6).is_ok());
    }

    #[test]
    fn garbage_is_a_parse_error_that_says_what_to_do() {
        let error = sock_layout_from(b"not BTF at all").unwrap_err();
        assert!(matches!(error, BtfError::Parse(_)), "{error:?}");
        assert!(error.to_string().contains("--attach tracepoint"));
        let mut truncated = this_kernel();
        truncated.truncate(truncated.len() / 2);
        assert!(matches!(
            sock_layout_from(&truncated),
            Err(BtfError::Parse(_))
        ));
    }

    #[test]
    fn a_missing_or_misfit_field_is_named() {
        let bytes = this_kernel();
        let btf = Btf::parse(&bytes).unwrap();
        let sock = Struct::find(&btf, "sock").unwrap();
        let error = field(&btf, &sock, "no_such_field", 2).unwrap_err();
        assert!(error.to_string().contains("sock.no_such_field"), "{error}");
        let error = field(&btf, &sock, "sk_protocol", 4).unwrap_err();
        assert!(
            matches!(
                error,
                BtfError::WrongSize {
                    found: 2,
                    expected: 4,
                    ..
                }
            ),
            "{error:?}"
        );
        let error = Struct::find(&btf, "no_such_struct").err().unwrap();
        assert!(
            error.to_string().contains("struct no_such_struct"),
            "{error}"
        );
    }
}
