//! Finding a running migration's peer: the QEMU process of the domain (its command line
//! carries `-uuid <uuid>`), the sockets in its fd table (`/proc/<pid>/fd/* -> socket:[inode]`)
//! and those sockets' rows in `/proc/<pid>/net/tcp{,6}` (the process's network namespace).
//!
//! The migration connection is the process's established TCP socket that is not a VNC/SPICE
//! display connection (local or remote port 5900–5999); when several remain, the one with the
//! most bytes queued for sending (a migration stream keeps its send queue full), then the
//! first. QEMU's monitor and chardevs are UNIX sockets and do not appear here.
//!
//! While a domain migrates between two libvirt instances on one machine both ends' QEMU
//! processes carry its `-uuid`; the direction of the job decides which one is this side's
//! ([`find_qemu_pid`]).
//!
//! Any local user can start a process whose command line says `-uuid <uuid>` and which holds a
//! TCP connection to an address of their choosing: only processes that really are QEMU as
//! libvirt runs it ([`QemuTrust`]: the executable, and the user it runs as) are taken.

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};

use crate::record::Direction;

/// Which processes may be a domain's QEMU.
#[derive(Clone, Debug, PartialEq)]
pub struct QemuTrust {
    /// The process's real and effective uid must both be one of these (libvirt's qemu.conf
    /// `user`: root, `libvirt-qemu` on Debian, `qemu` on Red Hat).
    pub uids: Vec<u32>,
    /// Executables taken besides `qemu-system-*` and `qemu-kvm` (a domain's `<emulator>`).
    pub emulators: Vec<PathBuf>,
}

impl QemuTrust {
    /// Whether `pid` under `procfs` is QEMU run as a trusted user.
    pub fn trusts(&self, procfs: &Path, pid: u32) -> bool {
        let dir = procfs.join(pid.to_string());
        let Ok(exe) = std::fs::read_link(dir.join("exe")) else {
            return false;
        };
        // A binary replaced by an upgrade while QEMU runs reads "<path> (deleted)".
        let exe = exe.to_string_lossy();
        let exe = Path::new(exe.strip_suffix(" (deleted)").unwrap_or(&exe));
        let qemu_name = exe
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with("qemu-system-") || n == "qemu-kvm");
        if !qemu_name && !self.emulators.iter().any(|e| e == exe) {
            return false;
        }
        std::fs::read_to_string(dir.join("status"))
            .ok()
            .and_then(|st| status_uids(&st))
            .is_some_and(|(real, effective)| {
                self.uids.contains(&real) && self.uids.contains(&effective)
            })
    }
}

/// Real and effective uid from `/proc/<pid>/status` (`Uid:\treal\teffective\tsaved\tfs`).
fn status_uids(status: &str) -> Option<(u32, u32)> {
    let line = status.lines().find_map(|l| l.strip_prefix("Uid:"))?;
    let mut f = line.split_whitespace().map(|v| v.parse::<u32>().ok());
    Some((f.next()??, f.next()??))
}

/// The uid of user `name` in the passwd file `passwd` (`/etc/passwd`), or `name` itself when
/// it is a number.
pub fn resolve_user(passwd: &str, name: &str) -> Option<u32> {
    if let Ok(uid) = name.parse() {
        return Some(uid);
    }
    passwd.lines().find_map(|l| {
        let mut f = l.split(':');
        (f.next()? == name).then_some(())?;
        f.nth(1)?.parse().ok()
    })
}

/// One row of `/proc/net/tcp` or `tcp6`.
#[derive(Clone, Debug, PartialEq)]
pub struct TcpSocket {
    pub local: SocketAddr,
    pub remote: SocketAddr,
    /// Kernel TCP state; 1 is ESTABLISHED, 10 LISTEN.
    pub state: u8,
    pub tx_queue: u64,
    pub inode: u64,
}

pub const TCP_ESTABLISHED: u8 = 1;

fn parse_addr(s: &str) -> Option<SocketAddr> {
    let (ip, port) = s.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let ip = match ip.len() {
        8 => IpAddr::V4(Ipv4Addr::from(
            u32::from_str_radix(ip, 16).ok()?.to_le_bytes(),
        )),
        32 => {
            // Four 32-bit words, each in host (little-endian) order.
            let mut b = [0u8; 16];
            for (i, chunk) in b.chunks_mut(4).enumerate() {
                let w = u32::from_str_radix(ip.get(i * 8..i * 8 + 8)?, 16).ok()?;
                chunk.copy_from_slice(&w.to_le_bytes());
            }
            let v6 = Ipv6Addr::from(b);
            v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4)
        }
        _ => return None,
    };
    Some(SocketAddr::new(ip, port))
}

/// Parse `/proc/<pid>/net/tcp` or `tcp6`; malformed rows are skipped.
pub fn parse_proc_net_tcp(text: &str) -> Vec<TcpSocket> {
    text.lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            if f.len() < 10 {
                return None;
            }
            let (tx, _rx) = f[4].split_once(':')?;
            Some(TcpSocket {
                local: parse_addr(f[1])?,
                remote: parse_addr(f[2])?,
                state: u8::from_str_radix(f[3], 16).ok()?,
                tx_queue: u64::from_str_radix(tx, 16).ok()?,
                inode: f[9].parse().ok()?,
            })
        })
        .collect()
}

fn is_display(port: u16) -> bool {
    (5900..=5999).contains(&port)
}

/// The migration peer among `sockets` owned by the process (`inodes`).
pub fn pick_peer(sockets: &[TcpSocket], inodes: &HashSet<u64>) -> Option<IpAddr> {
    sockets
        .iter()
        .filter(|s| s.state == TCP_ESTABLISHED && inodes.contains(&s.inode))
        .filter(|s| !is_display(s.local.port()) && !is_display(s.remote.port()))
        .enumerate()
        .max_by_key(|(i, s)| (s.tx_queue, std::cmp::Reverse(*i)))
        .map(|(_, s)| s.remote.ip())
}

/// Socket inodes in `/proc/<pid>/fd`. Unreadable entries (closed meanwhile) are skipped.
pub fn socket_inodes(procfs: &Path, pid: u32) -> std::io::Result<HashSet<u64>> {
    let mut out = HashSet::new();
    for e in std::fs::read_dir(procfs.join(pid.to_string()).join("fd"))? {
        let Ok(e) = e else { continue };
        let Ok(target) = std::fs::read_link(e.path()) else {
            continue;
        };
        if let Some(n) = target
            .to_str()
            .and_then(|t| t.strip_prefix("socket:["))
            .and_then(|t| t.strip_suffix(']'))
            .and_then(|t| t.parse().ok())
        {
            out.insert(n);
        }
    }
    Ok(out)
}

/// The trusted QEMU process whose command line has `-uuid <uuid>` (started by libvirt) on this
/// host's side of a migration going `direction`.
///
/// Two such processes exist on one machine while a domain migrates between two libvirt
/// instances on it (the lab; a migration to the same host): the destination's QEMU, started for
/// the incoming migration, holds the other end of the migration connection, so its socket names
/// the source as the peer. The source's QEMU ran before the migration began and the
/// destination's was started for it, so the older one is the source's: the newer one for an
/// incoming job. The order of `/proc`'s listing (pid order) says nothing once pids wrap.
pub fn find_qemu_pid(
    procfs: &Path,
    uuid: &str,
    trust: &QemuTrust,
    direction: Direction,
) -> Option<u32> {
    let mut found: Vec<(Option<u64>, u32)> = Vec::new();
    for e in std::fs::read_dir(procfs).ok()?.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        if cmdline_has_uuid(procfs, pid, uuid) && trust.trusts(procfs, pid) {
            found.push((start_time(procfs, pid), pid));
        }
    }
    if found.len() > 1 {
        // One whose start time cannot be read any more has exited meanwhile.
        found.retain(|(t, _)| t.is_some());
    }
    let oldest_first = |a: &(Option<u64>, u32), b: &(Option<u64>, u32)| a.cmp(b);
    match direction {
        Direction::Out => found.into_iter().min_by(oldest_first),
        Direction::In => found.into_iter().max_by(oldest_first),
    }
    .map(|(_, pid)| pid)
}

/// When `pid` started, in clock ticks since boot (`/proc/<pid>/stat` field 22).
pub fn start_time(procfs: &Path, pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(procfs.join(pid.to_string()).join("stat")).ok()?;
    // The command name (field 2) is in parentheses and may hold spaces and ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

pub fn cmdline_has_uuid(procfs: &Path, pid: u32, uuid: &str) -> bool {
    let Ok(raw) = std::fs::read(procfs.join(pid.to_string()).join("cmdline")) else {
        return false;
    };
    let mut args = raw.split(|b| *b == 0);
    while let Some(a) = args.next() {
        if a == b"-uuid" {
            return args
                .next()
                .is_some_and(|u| u.eq_ignore_ascii_case(uuid.as_bytes()));
        }
    }
    false
}

/// A QEMU process's fd table exists but cannot be read: without CAP_SYS_PTRACE and
/// CAP_DAC_READ_SEARCH (or root) another user's `/proc/<pid>/fd` answers EACCES.
#[derive(Debug, thiserror::Error)]
#[error("cannot read {path}: {source}")]
pub struct FdTableError {
    pub path: std::path::PathBuf,
    pub source: std::io::Error,
}

/// The peer of the migration of the QEMU process `pid`, from its sockets; `Ok(None)` when it
/// has none (yet) or exited meanwhile, an error when its fd table cannot be read.
pub fn peer_of_pid(procfs: &Path, pid: u32) -> Result<Option<IpAddr>, FdTableError> {
    let inodes = match socket_inodes(procfs, pid) {
        Ok(i) => i,
        // Exited between the listing and now.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(FdTableError {
                path: procfs.join(pid.to_string()).join("fd"),
                source,
            })
        }
    };
    if inodes.is_empty() {
        return Ok(None);
    }
    let base = procfs.join(pid.to_string()).join("net");
    let mut sockets = Vec::new();
    for f in ["tcp", "tcp6"] {
        if let Ok(t) = std::fs::read_to_string(base.join(f)) {
            sockets.extend(parse_proc_net_tcp(&t));
        }
    }
    Ok(pick_peer(&sockets, &inodes))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(p: &str) -> String {
        std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("tests/fixtures/net/discovery")
                .join(p),
        )
        .expect("fixture")
    }

    #[test]
    fn parses_tcp_and_tcp6_rows() {
        let s = parse_proc_net_tcp(&fixture("tcp"));
        assert_eq!(s.len(), 4);
        assert_eq!(s[0].state, 10);
        assert_eq!(s[1].local, "10.77.0.1:45678".parse().expect("addr"));
        assert_eq!(s[1].remote, "10.77.0.2:49152".parse().expect("addr"));
        assert_eq!(s[1].tx_queue, 0x2a000);
        assert_eq!(s[1].inode, 5001);
        let s6 = parse_proc_net_tcp(&fixture("tcp6"));
        assert_eq!(s6[0].remote.ip(), "fd00::2".parse::<IpAddr>().expect("ip"));
        // v4-mapped addresses become IPv4.
        assert_eq!(
            s6[1].remote.ip(),
            "10.77.0.3".parse::<IpAddr>().expect("ip")
        );
    }

    #[test]
    fn picks_migration_socket_not_vnc_nor_foreign() {
        let s = parse_proc_net_tcp(&fixture("tcp"));
        // 5001: migration; 5002: a VNC client on local port 5900; 9999: another process.
        let inodes: HashSet<u64> = [5001, 5002].into_iter().collect();
        assert_eq!(
            pick_peer(&s, &inodes),
            Some("10.77.0.2".parse().expect("ip"))
        );
        let only_vnc: HashSet<u64> = [5002].into_iter().collect();
        assert_eq!(pick_peer(&s, &only_vnc), None);
        let none: HashSet<u64> = [1234].into_iter().collect();
        assert_eq!(pick_peer(&s, &none), None);
    }

    #[test]
    fn finds_qemu_by_uuid_on_fixture_procfs() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path();
        std::fs::create_dir_all(p.join("4242/fd")).expect("mkdir");
        std::fs::create_dir_all(p.join("4242/net")).expect("mkdir");
        std::fs::create_dir_all(p.join("17")).expect("mkdir");
        std::fs::write(p.join("17/cmdline"), b"/bin/sh\0-c\0true\0").expect("write");
        std::fs::write(
            p.join("4242/cmdline"),
            b"/usr/bin/qemu-system-x86_64\0-name\0guest=ci\0-uuid\0AB5E0000-0000-4000-8000-000000000001\0",
        )
        .expect("write");
        std::fs::write(p.join("4242/net/tcp"), fixture("tcp")).expect("write");
        std::fs::write(p.join("4242/net/tcp6"), fixture("tcp6")).expect("write");
        std::os::unix::fs::symlink("socket:[5001]", p.join("4242/fd/20")).expect("symlink");
        std::os::unix::fs::symlink("/dev/null", p.join("4242/fd/0")).expect("symlink");
        std::os::unix::fs::symlink("/usr/bin/qemu-system-x86_64", p.join("4242/exe"))
            .expect("symlink");
        std::fs::write(
            p.join("4242/status"),
            "Name:\tqemu\nUid:\t64055\t64055\t64055\t64055\n",
        )
        .expect("write");
        let trust = QemuTrust {
            uids: vec![0, 64055],
            emulators: Vec::new(),
        };
        let pid = find_qemu_pid(
            p,
            "ab5e0000-0000-4000-8000-000000000001",
            &trust,
            Direction::Out,
        );
        assert_eq!(pid, Some(4242));
        assert_eq!(
            find_qemu_pid(
                p,
                "00000000-0000-0000-0000-000000000000",
                &trust,
                Direction::Out
            ),
            None
        );
        assert_eq!(
            peer_of_pid(p, 4242).expect("readable"),
            Some("10.77.0.2".parse().expect("ip"))
        );
        // The process exited between the listing and the fd read.
        assert_eq!(peer_of_pid(p, 4243).expect("gone is not an error"), None);
    }

    /// A process as `/proc` shows it: exe link, command line and uids.
    fn process(p: &Path, pid: u32, exe: &str, uid: u32, uuid: &str) {
        let d = p.join(pid.to_string());
        std::fs::create_dir_all(&d).expect("mkdir");
        std::os::unix::fs::symlink(exe, d.join("exe")).expect("symlink");
        std::fs::write(d.join("cmdline"), format!("{exe}\0-uuid\0{uuid}\0")).expect("write");
        std::fs::write(
            d.join("status"),
            format!("Name:\tx\nUid:\t{uid}\t{uid}\t{uid}\t{uid}\nGid:\t0\t0\t0\t0\n"),
        )
        .expect("write");
    }

    /// Not every process with `-uuid <uuid>` in its command line is the domain's QEMU: else a
    /// local user could make the exporter probe an address of theirs.
    #[test]
    fn only_qemu_run_as_a_trusted_user_is_taken() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path();
        let uuid = "ab5e0000-0000-4000-8000-000000000001";
        let trust = QemuTrust {
            uids: vec![0, 64055],
            emulators: vec![PathBuf::from("/opt/kvm/bin/kvm")],
        };
        // A user's script, and a user's own copy of QEMU: impostors with lower pids.
        process(p, 100, "/usr/bin/python3.11", 1000, uuid);
        process(p, 101, "/home/mallory/qemu-system-x86_64", 1000, uuid);
        assert_eq!(find_qemu_pid(p, uuid, &trust, Direction::Out), None);
        process(
            p,
            4242,
            "/usr/bin/qemu-system-x86_64 (deleted)",
            64055,
            uuid,
        );
        assert_eq!(find_qemu_pid(p, uuid, &trust, Direction::Out), Some(4242));
        process(p, 4300, "/opt/kvm/bin/kvm", 0, "other");
        assert!(trust.trusts(p, 4300), "the configured emulator");
        // Effective uid root but started by a user (setuid): not libvirt's QEMU.
        std::fs::write(p.join("101/status"), "Uid:\t1000\t0\t0\t0\n").expect("write");
        assert!(!trust.trusts(p, 101));
        assert!(!trust.trusts(p, 999), "no such process");
    }

    /// `/proc/<pid>/stat` of a process started `ticks` after boot (its name holds a space and
    /// a parenthesis, as a thread name may).
    fn started(p: &Path, pid: u32, ticks: u64) {
        std::fs::write(
            p.join(pid.to_string()).join("stat"),
            format!("{pid} (qemu (x) 1) S 1 {pid} {pid} 0 -1 4194560 1 0 0 0 5 3 0 0 20 0 9 0 {ticks} 1000 100 18446744073709551615\n"),
        )
        .expect("write");
    }

    /// Both ends of a migration between two libvirt instances on one machine (the lab): the
    /// source's QEMU (root network namespace, its socket 10.77.0.1 -> 10.77.0.2:49152) and the
    /// destination's, started later for the incoming migration (its namespace, the accepted
    /// end 10.77.0.2:49152 -> 10.77.0.1). Whatever their pids (they wrap) and the order in
    /// which the directory lists them, the source's side is the older process and its peer is
    /// the destination, and the other way round for the incoming job.
    #[test]
    fn the_source_qemu_is_told_from_the_destination_qemu_on_one_host() {
        let uuid = "ab5e0000-0000-4000-8000-000000000001";
        let trust = QemuTrust {
            uids: vec![0],
            emulators: Vec::new(),
        };
        let header = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n";
        // 10.77.0.1:45678 -> 10.77.0.2:49152 (0xC000), and the same connection seen from the
        // other end; each namespace also has the destination's listening socket or not.
        let src_tcp = format!("{header}   0: 01004D0A:B26E 02004D0A:C000 01 0002A000:00000000 00:00000000 00000000     0        0 6001 1 0000000000000000 20 4 30 10 -1\n");
        let dst_tcp = format!("{header}   0: 02004D0A:C000 01004D0A:B26E 01 00000000:00000000 00:00000000 00000000     0        0 6002 1 0000000000000000 20 4 30 10 -1\n");
        // (source pid, destination pid): the destination's pid is the higher one, then (pids
        // wrapped) the lower one. The directories are made in the same order both times, so a
        // listing-order pick is wrong in one of the two.
        for (src, dst) in [(3000u32, 31000u32), (31000, 3000)] {
            let dir = tempfile::tempdir().expect("tempdir");
            let p = dir.path();
            for pid in [3000u32, 31000] {
                process(p, pid, "/usr/bin/qemu-system-x86_64", 0, uuid);
                std::fs::create_dir_all(p.join(format!("{pid}/fd"))).expect("mkdir");
                std::fs::create_dir_all(p.join(format!("{pid}/net"))).expect("mkdir");
            }
            started(p, src, 5_000);
            started(p, dst, 912_345);
            std::fs::write(p.join(format!("{src}/net/tcp")), &src_tcp).expect("write");
            std::fs::write(p.join(format!("{dst}/net/tcp")), &dst_tcp).expect("write");
            std::os::unix::fs::symlink("socket:[6001]", p.join(format!("{src}/fd/31")))
                .expect("symlink");
            std::os::unix::fs::symlink("socket:[6002]", p.join(format!("{dst}/fd/27")))
                .expect("symlink");

            let out = find_qemu_pid(p, uuid, &trust, Direction::Out);
            assert_eq!(out, Some(src), "source {src}, destination {dst}");
            assert_eq!(
                peer_of_pid(p, src).expect("readable"),
                Some("10.77.0.2".parse().expect("ip"))
            );
            let incoming = find_qemu_pid(p, uuid, &trust, Direction::In);
            assert_eq!(incoming, Some(dst), "source {src}, destination {dst}");
            assert_eq!(
                peer_of_pid(p, dst).expect("readable"),
                Some("10.77.0.1".parse().expect("ip"))
            );
            // Alone (a real host: the other end is elsewhere), either direction takes it.
            std::fs::remove_dir_all(p.join(dst.to_string())).expect("rm");
            assert_eq!(find_qemu_pid(p, uuid, &trust, Direction::In), Some(src));
        }
    }

    #[test]
    fn start_time_is_field_22_of_stat() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path();
        std::fs::create_dir_all(p.join("77")).expect("mkdir");
        started(p, 77, 4_242_424);
        assert_eq!(start_time(p, 77), Some(4_242_424));
        std::fs::write(p.join("77/stat"), "77 (qemu) S 1").expect("write");
        assert_eq!(start_time(p, 77), None, "truncated");
        assert_eq!(start_time(p, 78), None, "no such process");
    }

    #[test]
    fn users_resolve_from_passwd_or_as_numbers() {
        let passwd = "root:x:0:0:root:/root:/bin/bash\nlibvirt-qemu:x:64055:108:Libvirt Qemu,,,:/var/lib/libvirt:/usr/sbin/nologin\n";
        assert_eq!(resolve_user(passwd, "libvirt-qemu"), Some(64055));
        assert_eq!(resolve_user(passwd, "root"), Some(0));
        assert_eq!(resolve_user(passwd, "107"), Some(107));
        assert_eq!(resolve_user(passwd, "qemu"), None);
        assert_eq!(resolve_user(passwd, "x"), None);
    }
}
