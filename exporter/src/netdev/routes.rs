//! Which device carries traffic to an address: longest-prefix match over the main routing
//! table as `/proc/net/route` and `/proc/net/ipv6_route` show it.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::Path;

#[derive(Clone, Debug, PartialEq)]
pub struct Route {
    pub device: String,
    pub dest: IpAddr,
    pub prefix: u8,
    pub metric: u32,
}

/// `/proc/net/route`: destination and mask are hex of the address bytes in host (little
/// endian) order.
pub fn parse_ipv4(text: &str) -> Vec<Route> {
    text.lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            if f.len() < 8 {
                return None;
            }
            let dest = u32::from_str_radix(f[1], 16).ok()?;
            let mask = u32::from_str_radix(f[7], 16).ok()?;
            let flags = u16::from_str_radix(f[3], 16).ok()?;
            if flags & 1 == 0 {
                return None; // RTF_UP unset
            }
            Some(Route {
                device: f[0].to_string(),
                dest: IpAddr::V4(Ipv4Addr::from(dest.to_le_bytes())),
                prefix: u32::from_be_bytes(mask.to_le_bytes()).leading_ones() as u8,
                metric: f[6].parse().ok()?,
            })
        })
        .collect()
}

/// `/proc/net/ipv6_route`: addresses in network order, prefix length and metric in hex.
pub fn parse_ipv6(text: &str) -> Vec<Route> {
    text.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            if f.len() < 10 || f[0].len() != 32 {
                return None;
            }
            let dest = u128::from_str_radix(f[0], 16).ok()?;
            Some(Route {
                device: f[9].to_string(),
                dest: IpAddr::V6(Ipv6Addr::from(dest)),
                prefix: u8::from_str_radix(f[1], 16).ok()?,
                metric: u32::from_str_radix(f[5], 16).ok()?,
            })
        })
        .collect()
}

fn contains(r: &Route, a: IpAddr) -> bool {
    match (r.dest, a) {
        (IpAddr::V4(d), IpAddr::V4(a)) => {
            let m = u32::MAX.checked_shl(32 - u32::from(r.prefix)).unwrap_or(0);
            u32::from(d) & m == u32::from(a) & m
        }
        (IpAddr::V6(d), IpAddr::V6(a)) => {
            let m = u128::MAX
                .checked_shl(128 - u32::from(r.prefix))
                .unwrap_or(0);
            u128::from(d) & m == u128::from(a) & m
        }
        _ => false,
    }
}

/// The route that wins for `a`: longest prefix, then lowest metric.
pub fn lookup(routes: &[Route], a: IpAddr) -> Option<&Route> {
    routes
        .iter()
        .filter(|r| contains(r, a) && r.device != "lo")
        .min_by_key(|r| (std::cmp::Reverse(r.prefix), r.metric))
}

/// The device for `a` under `procfs`; loopback addresses are `lo` (they live in the local
/// table, which these files do not show).
pub fn device_for(procfs: &Path, a: IpAddr) -> Option<String> {
    let a = match a {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(a, IpAddr::V4),
        v4 => v4,
    };
    if a.is_loopback() {
        return Some("lo".into());
    }
    let routes = match a {
        IpAddr::V4(_) => parse_ipv4(&std::fs::read_to_string(procfs.join("net/route")).ok()?),
        IpAddr::V6(_) => parse_ipv6(&std::fs::read_to_string(procfs.join("net/ipv6_route")).ok()?),
    };
    lookup(&routes, a).map(|r| r.device.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    const V4: &str =
        "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT
eth0\t00000000\t010200C0\t0003\t0\t0\t0\t00000000\t0\t0\t0
vmig0\t00004D0A\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0
host0\t02004D0A\t00000000\t0005\t0\t0\t0\tFFFFFFFF\t0\t0\t0
down0\t00005D0A\t00000000\t0000\t0\t0\t0\t00FFFFFF\t0\t0\t0
";
    const V6: &str = "fd000000000000000000000000000000 40 00000000000000000000000000000000 00 00000000000000000000000000000000 00000100 00000001 00000000 00000001 vmig6
00000000000000000000000000000000 00 00000000000000000000000000000000 00 fe800000000000000000000000000001 00000400 00000001 00000000 00000003 eth0
";

    #[test]
    fn ipv4_longest_prefix_wins() {
        let r = parse_ipv4(V4);
        assert_eq!(r.len(), 3, "the route without RTF_UP is skipped");
        assert_eq!(r[1].prefix, 24);
        assert_eq!(r[1].dest, "10.77.0.0".parse::<IpAddr>().expect("ip"));
        let dev = |a: &str| lookup(&r, a.parse().expect("ip")).map(|r| r.device.as_str());
        assert_eq!(dev("10.77.0.2"), Some("host0"));
        assert_eq!(dev("10.77.0.9"), Some("vmig0"));
        assert_eq!(dev("8.8.8.8"), Some("eth0"));
        assert_eq!(dev("10.93.0.1"), Some("eth0"));
    }

    #[test]
    fn ipv6_routes() {
        let r = parse_ipv6(V6);
        let dev = |a: &str| lookup(&r, a.parse().expect("ip")).map(|r| r.device.as_str());
        assert_eq!(dev("fd00::2"), Some("vmig6"));
        assert_eq!(dev("2001:db8::1"), Some("eth0"));
    }

    #[test]
    fn loopback_is_lo_without_tables() {
        let p = Path::new("/nonexistent");
        assert_eq!(
            device_for(p, "127.0.0.1".parse().expect("ip")).as_deref(),
            Some("lo")
        );
        assert_eq!(
            device_for(p, "::1".parse().expect("ip")).as_deref(),
            Some("lo")
        );
        assert_eq!(device_for(p, "10.0.0.1".parse().expect("ip")), None);
    }
}
