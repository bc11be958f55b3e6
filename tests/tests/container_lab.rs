//! The container image on a real migration, deployed as the Helm chart deploys it: the lab's
//! source host watched by the image built from packaging/Containerfile, run by podman with the
//! chart's DaemonSet container spec (packaging/container/podman-exporter stands in for the
//! binary: capabilities, read-only root, host network and PIDs, hostPath mounts, args), the
//! source libvirtd's socket directory in place of the chart's libvirt socket directory, mounted
//! read-only. It must see the job while it runs, discover and probe the peer, and count and
//! record the migration when it ends.
//!
//! It needs the image and the rendered chart, which `bash scripts/check-container.sh` makes
//! before it runs this test; so it is built only with the `container-lab` feature
//! (`cargo test -p system-tests --features container-lab --test container_lab`).

use std::path::PathBuf;

use migration_lab::guest::Pattern;
use migration_lab::scenario::Scenario;
use migration_lab::Lab;
use system_tests::{lab_dir, one_lab_at_a_time, scratch};

#[test]
fn containerized_exporter_sees_a_live_migration() {
    let _one = one_lab_at_a_time();
    let shim = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../packaging/container/podman-exporter")
        .canonicalize()
        .expect("packaging/container/podman-exporter");
    assert!(
        std::env::var_os("VM_MIGRATION_EXPORTER_CHART_RENDER").is_some(),
        "VM_MIGRATION_EXPORTER_CHART_RENDER (helm template output) is unset: run bash scripts/check-container.sh"
    );
    let dir = scratch("container");
    let mut lab = Lab::up(&lab_dir(), Some(&shim), &|m| eprintln!("lab: {m}")).expect("lab up");

    // A guest writing 20 MB/s over a 40 MiB/s cap: several passes, about ten seconds.
    let s = Scenario::stressed("container-watched", 20, Pattern::Seq, 40);
    let r = lab.run(&s, &dir, &|_| {}).expect("run");
    assert_eq!(r.outcome, "completed", "{}", r.virsh_output);

    assert!(
        r.observations.iter().any(|o| o.libvirt_up == Some(1.0)),
        "the containerized exporter never reached libvirt through the mounted socket directory"
    );
    let live: Vec<_> = r
        .observations
        .iter()
        .filter(|o| o.job_active && o.data_remaining.is_some())
        .collect();
    assert!(
        !live.is_empty(),
        "no live job figures while the migration ran: {:?}",
        r.observations
    );
    let record = r
        .exporter_record
        .as_ref()
        .expect("a record of the migration");
    assert_eq!(record["outcome"], "completed", "{record}");
    // Peer discovery (QEMU's /proc/<pid>/fd through the host's PIDs, CAP_SYS_PTRACE and
    // CAP_DAC_READ_SEARCH) and the ICMP probe (CAP_NET_RAW) work inside the container.
    let peer = &record["peer"];
    assert_eq!(peer["address"], migration_lab::net::DEST_ADDR, "{record}");
    assert_eq!(peer["origin"], "discovered", "{record}");
    assert_eq!(peer["probe"], "icmp", "{record}");
    assert!(
        peer["rtt_median_seconds"].as_f64().is_some_and(|r| r > 0.0),
        "ICMP probes of the discovered peer answered: {record}"
    );
    assert!(
        r.exporter_metrics.lines().any(|l| l.starts_with(
            "vm_migration_finished_total{outcome=\"completed\",mode=\"precopy\",direction=\"out\"} 1"
        )),
        "{}",
        r.exporter_metrics
    );
    println!(
        "container: {} live samples, {} passes, record {}, peer {} (median RTT {} s)",
        live.len(),
        live.iter().filter_map(|o| o.iteration).fold(0.0, f64::max),
        record["outcome"],
        peer["address"],
        peer["rtt_median_seconds"]
    );
}
