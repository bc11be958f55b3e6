//! ICMP echo over a datagram ("ping") socket when `net.ipv4.ping_group_range` allows our group,
//! else a raw socket (root or CAP_NET_RAW), connected to the peer so the kernel filters replies
//! by source.
//!
//! RTT is measured as `ping` measures it: the wall clock just before `send`, against the
//! kernel's receive timestamp of the reply (SO_TIMESTAMPNS). Taking the receive time in user
//! space instead would add the task's wake-up latency (80–260 µs measured here) to every RTT.

use std::io::IoSliceMut;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsRawFd, RawFd};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use nix::sys::socket::{recvmsg, setsockopt, sockopt, ControlMessageOwned, MsgFlags};
use socket2::{Domain, Protocol, Socket, Type};
use tokio::io::Interest;

use super::ProbeError;

#[derive(Debug)]
pub struct IcmpSocket {
    /// The ICMP socket wrapped as a tokio `UdpSocket`: a plain fd with send and readiness.
    sock: tokio::net::UdpSocket,
    raw: bool,
    v6: bool,
    ident: u16,
    seq: u16,
    token: [u8; 8],
}

fn is_permission(e: &std::io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EPERM) | Some(libc::EACCES))
}

/// Which kind of socket [`IcmpSocket::open`] got.
pub fn kind_label(raw: bool) -> &'static str {
    if raw {
        "raw"
    } else {
        "datagram"
    }
}

/// Receive one datagram into `buf`; its length and the kernel's receive time (since the epoch).
fn recv_stamped(fd: RawFd, buf: &mut [u8]) -> std::io::Result<(usize, Option<Duration>)> {
    let mut cmsg = nix::cmsg_space!(nix::sys::time::TimeSpec);
    let mut iov = [IoSliceMut::new(buf)];
    let msg = recvmsg::<()>(fd, &mut iov, Some(&mut cmsg), MsgFlags::MSG_DONTWAIT)
        .map_err(std::io::Error::from)?;
    let mut at = None;
    for c in msg.cmsgs().map_err(std::io::Error::from)? {
        if let ControlMessageOwned::ScmTimestampns(ts) = c {
            at = u64::try_from(ts.tv_sec())
                .ok()
                .zip(u32::try_from(ts.tv_nsec()).ok())
                .map(|(s, n)| Duration::new(s, n));
        }
    }
    Ok((msg.bytes, at))
}

fn since_epoch(t: SystemTime) -> Duration {
    t.duration_since(UNIX_EPOCH).unwrap_or_default()
}

impl IcmpSocket {
    /// Open and connect a socket for echo to `addr`. Must be called inside a tokio runtime.
    pub fn open(addr: IpAddr) -> Result<Self, ProbeError> {
        let v6 = addr.is_ipv6();
        let (domain, proto) = if v6 {
            (Domain::IPV6, Protocol::ICMPV6)
        } else {
            (Domain::IPV4, Protocol::ICMPV4)
        };
        let (sock, raw) = match Socket::new(domain, Type::DGRAM, Some(proto)) {
            Ok(s) => (s, false),
            Err(dgram) => match Socket::new(domain, Type::RAW, Some(proto)) {
                Ok(s) => (s, true),
                Err(raw) if is_permission(&raw) => {
                    return Err(ProbeError::IcmpPermission {
                        dgram: dgram.to_string(),
                        raw: raw.to_string(),
                        gid: current_gid(),
                    });
                }
                Err(raw) => return Err(ProbeError::Io(raw)),
            },
        };
        sock.set_nonblocking(true).map_err(ProbeError::Io)?;
        sock.connect(&SocketAddr::new(addr, 0).into())
            .map_err(ProbeError::Io)?;
        setsockopt(&sock, sockopt::ReceiveTimestampns, &true)
            .map_err(|e| ProbeError::Io(e.into()))?;
        let std: std::net::UdpSocket = sock.into();
        let sock = tokio::net::UdpSocket::from_std(std).map_err(ProbeError::Io)?;
        let seed = since_epoch(SystemTime::now()).as_nanos() as u64
            ^ u64::from(std::process::id()).rotate_left(32);
        Ok(IcmpSocket {
            sock,
            raw,
            v6,
            ident: (seed as u16) ^ (std::process::id() as u16),
            seq: (seed >> 16) as u16,
            token: seed.to_le_bytes(),
        })
    }

    pub fn is_raw(&self) -> bool {
        self.raw
    }

    /// One echo request; waits for its reply (the caller applies the timeout).
    pub async fn ping(&mut self) -> Result<Duration, ProbeError> {
        self.seq = self.seq.wrapping_add(1);
        let pkt = echo_request(self.v6, self.ident, self.seq, &self.token);
        let mut buf = [0u8; 1500];
        let sent_wall = since_epoch(SystemTime::now());
        let sent = Instant::now();
        self.sock.send(&pkt).await.map_err(ProbeError::Io)?;
        let fd = self.sock.as_raw_fd();
        loop {
            let (n, stamp) = self
                .sock
                .async_io(Interest::READABLE, || recv_stamped(fd, &mut buf))
                .await
                .map_err(ProbeError::Io)?;
            let user = sent.elapsed();
            let Some(data) = buf.get(..n) else { continue };
            if self.is_our_reply(data) {
                // A clock step between send and receive could make the kernel figure
                // absurd: then fall back to the monotonic user-space time.
                return Ok(stamp
                    .and_then(|at| at.checked_sub(sent_wall))
                    .filter(|rtt| *rtt <= user)
                    .unwrap_or(user));
            }
        }
    }

    fn is_our_reply(&self, data: &[u8]) -> bool {
        // Raw IPv4 sockets deliver the IP header too.
        let icmp = if self.raw && !self.v6 {
            let ihl = usize::from(data.first().map_or(0, |b| b & 0x0f)) * 4;
            match data.get(ihl..) {
                Some(d) => d,
                None => return false,
            }
        } else {
            data
        };
        let reply_type = if self.v6 { 129 } else { 0 };
        if icmp.len() < 16 || icmp[0] != reply_type || icmp[1] != 0 {
            return false;
        }
        // A datagram socket's identifier is chosen by the kernel; it demultiplexes for us.
        let ident_ok = !self.raw || u16::from_be_bytes([icmp[4], icmp[5]]) == self.ident;
        ident_ok && u16::from_be_bytes([icmp[6], icmp[7]]) == self.seq && icmp[8..16] == self.token
    }
}

fn current_gid() -> String {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Gid:"))
                .and_then(|g| g.split_whitespace().nth(1).map(str::to_string))
        })
        .unwrap_or_else(|| "?".into())
}

/// Echo request: type, code, checksum, identifier, sequence, 8-byte token, 8 bytes padding.
pub fn echo_request(v6: bool, ident: u16, seq: u16, token: &[u8; 8]) -> Vec<u8> {
    let mut p = vec![if v6 { 128 } else { 8 }, 0, 0, 0];
    p.extend_from_slice(&ident.to_be_bytes());
    p.extend_from_slice(&seq.to_be_bytes());
    p.extend_from_slice(token);
    p.extend_from_slice(&[0u8; 8]);
    if !v6 {
        // ICMPv6 checksums cover a pseudo-header; the kernel fills them in.
        let c = checksum(&p);
        p[2..4].copy_from_slice(&c.to_be_bytes());
    }
    p
}

/// The Internet checksum (RFC 1071).
pub fn checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = data
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], c.get(1).copied().unwrap_or(0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksum_of_packet_with_its_checksum_is_zero() {
        let p = echo_request(false, 0x1234, 7, b"abcdefgh");
        assert_eq!(checksum(&p), 0);
        assert_eq!(&p[4..8], &[0x12, 0x34, 0, 7]);
    }

    #[test]
    fn rfc1071_example() {
        // RFC 1071 section 3 example: sum 0xddf2 → checksum 0x220d.
        assert_eq!(
            checksum(&[0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7]),
            0x220d
        );
    }
}
