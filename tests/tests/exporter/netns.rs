//! Probes across a veth pair into a network namespace this test creates (and removes): a peer
//! that answers, one that does not (an address nobody has), a TCP port that refuses, a TCP
//! port that listens. Needs root (ip netns), like the rest of the test command.

use std::process::Command;
use std::time::Duration;

use testkit::exporter::{value, Exporter};
use testkit::prom::poll_until;

const NEEDS_ROOT: &str =
    "a network namespace with a veth pair (run the tests as root: sudo bash scripts/test.sh)";

/// A namespace joined to the host by a veth pair; removed on drop (deleting the namespace
/// deletes the veth too).
struct Netns {
    name: String,
}

fn ip(args: &[&str]) -> bool {
    Command::new("ip")
        .args(args)
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

impl Netns {
    /// Host side `h<tag>` 10.<n>.0.1/24, namespace side 10.<n>.0.2/24.
    fn create(tag: &str, n: u8) -> Option<Netns> {
        let name = format!("vmnet-{tag}-{}", std::process::id());
        if !ip(&["netns", "add", &name]) {
            return None;
        }
        let ns = Netns { name };
        let host = format!("vh{tag}{}", std::process::id() % 10000);
        let peer = format!("vp{tag}{}", std::process::id() % 10000);
        let ok = ip(&["link", "add", &host, "type", "veth", "peer", "name", &peer])
            && ip(&["link", "set", &peer, "netns", &ns.name])
            && ip(&["addr", "add", &format!("10.{n}.0.1/24"), "dev", &host])
            && ip(&["link", "set", &host, "up"])
            && ip(&[
                "-n",
                &ns.name,
                "addr",
                "add",
                &format!("10.{n}.0.2/24"),
                "dev",
                &peer,
            ])
            && ip(&["-n", &ns.name, "link", "set", &peer, "up"])
            && ip(&["-n", &ns.name, "link", "set", "lo", "up"]);
        ok.then_some(ns)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = ip(&["netns", "del", &self.name]);
    }
}

#[test]
fn probes_across_veth_answering_silent_and_refusing_peers() {
    let ns = Netns::create("p", 231).expect(NEEDS_ROOT);
    // A TCP listener inside the namespace on port 7001; 7002 has none (RST: refused).
    let mut listener = Command::new("ip")
        .args(["netns", "exec", &ns.name, "python3", "-c"])
        .arg("import socket,time\ns=socket.socket()\ns.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1)\ns.bind(('10.231.0.2',7001))\ns.listen(64)\nwhile True:\n  c,_=s.accept(); c.close()")
        .spawn()
        .expect("start the listener");
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = dir.path().join("c.yml");
    std::fs::write(
        &cfg,
        "probe:\n  interval: 200ms\n  timeout: 300ms\n  peers:\n    - name: up\n      address: 10.231.0.2\n      probes:\n        - type: icmp\n        - type: tcp\n          port: 7001\n    - name: refused\n      address: 10.231.0.2\n      probes:\n        - type: tcp\n          port: 7002\n    - name: silent\n      address: 10.231.0.99\n      probes:\n        - type: icmp\n",
    )
    .expect("write config");
    let cfg = cfg.display().to_string();
    let e = Exporter::start(
        crate::BIN,
        &["--libvirt.uri", "test:///default", "--config.file", &cfg],
    );
    let probes = |peer: &str, probe: &str, result: &str| {
        format!("vm_migration_peer_probes_total{{peer=\"{peer}\",probe=\"{probe}\",origin=\"config\",result=\"{result}\"}}")
    };
    let mut m = String::new();
    let ok = poll_until(Duration::from_secs(15), || {
        m = e.metrics();
        value(&m, &probes("up", "icmp", "success")).unwrap_or(0.0) >= 5.0
            && value(&m, &probes("up", "tcp", "success")).unwrap_or(0.0) >= 5.0
            && value(&m, &probes("refused", "tcp", "error")).unwrap_or(0.0) >= 3.0
            && value(&m, &probes("silent", "icmp", "timeout")).unwrap_or(0.0) >= 3.0
    });
    let _ = listener.kill();
    let _ = listener.wait();
    assert!(
        ok,
        "probe counters did not reach their expected results:\n{m}"
    );
    // The silent peer never delays the answering one: at 200 ms intervals with 300 ms
    // timeouts, `up` keeps its pace and never times out.
    assert_eq!(
        value(&m, &probes("up", "icmp", "timeout")),
        Some(0.0),
        "{m}"
    );
    assert_eq!(
        value(&m, &probes("silent", "icmp", "success")),
        Some(0.0),
        "{m}"
    );
    assert_eq!(
        value(
            &m,
            "vm_migration_peer_up{peer=\"up\",probe=\"icmp\",origin=\"config\"}"
        ),
        Some(1.0)
    );
    assert_eq!(
        value(
            &m,
            "vm_migration_peer_up{peer=\"refused\",probe=\"tcp\",origin=\"config\"}"
        ),
        Some(0.0)
    );
    // RTT across the veth: positive and well under the timeout.
    let sum = value(
        &m,
        "vm_migration_peer_rtt_seconds_sum{peer=\"up\",probe=\"icmp\",origin=\"config\"}",
    )
    .expect("sum");
    let count = value(
        &m,
        "vm_migration_peer_rtt_seconds_count{peer=\"up\",probe=\"icmp\",origin=\"config\"}",
    )
    .expect("count");
    assert!(
        count >= 5.0 && sum / count > 0.0 && sum / count < 0.05,
        "mean RTT {}",
        sum / count
    );
    // The veth shows up in the NIC collector with its counters and no link speed.
    let host_dev = format!("vhp{}", std::process::id() % 10000);
    assert!(
        value(
            &m,
            &format!("vm_migration_network_transmit_packets_total{{device=\"{host_dev}\"}}")
        )
        .is_some(),
        "{m}"
    );
    drop(ns);
}

#[test]
fn icmp_without_cap_net_raw_says_so() {
    use std::io::{BufRead, BufReader};
    // A namespace of our own, where datagram ICMP is off (ping_group_range "1 0" allows no
    // group) whatever the host says, and the exporter runs without CAP_NET_RAW.
    let ns = Netns::create("c", 232).expect(NEEDS_ROOT);
    assert!(
        ip(&[
            "netns",
            "exec",
            &ns.name,
            "sysctl",
            "-q",
            "-w",
            "net.ipv4.ping_group_range=1 0"
        ]),
        "cannot set ping_group_range in the test namespace"
    );
    let mut child = Command::new("ip")
        .args(["netns", "exec", &ns.name, "setpriv"])
        .args(["--bounding-set", "-net_raw", "--inh-caps", "-net_raw"])
        .arg(crate::BIN)
        .args([
            "--web.listen-address",
            "127.0.0.1:0",
            "--libvirt.uri",
            "test:///default",
            "--storage.path",
            "",
        ])
        .args(["--probe.peer", "lo=127.0.0.1", "--probe.interval", "100ms"])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run the exporter under setpriv (util-linux)");
    let stderr = child.stderr.take().expect("stderr");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if line.contains("cannot probe with ICMP") {
                let _ = tx.send(line);
            }
        }
    });
    let line = rx.recv_timeout(Duration::from_secs(20));
    let _ = child.kill();
    let _ = child.wait();
    drop(ns);
    let line = line.expect("an error line about ICMP");
    assert!(
        line.contains("CAP_NET_RAW") && line.contains("ping_group_range"),
        "{line}"
    );
}
