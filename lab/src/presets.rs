//! Named scenario sets. Bandwidth is set with QEMU's own cap (`virsh migrate --bandwidth`),
//! which is what decides convergence in the `ci` runs; latency comes from the lab's TUN delay
//! link.

use std::time::Duration;

use crate::guest::Pattern;
use crate::scenario::{Mode, Scenario};

/// Host port of the guest's HTTP service in the presets (the lab's guests serve on the provider
/// network at port 80; setting it gives the guest its service).
pub const CI_APP_PORT: u16 = 18480;

/// A first run: an idle guest serving HTTP, migrated by pre-copy while the exporter probes its
/// service, so libvirt's downtime and the outage the service's users saw come side by side.
pub fn smoke() -> Vec<Scenario> {
    let mut s = Scenario::idle("smoke-idle");
    s.guest.app_port = Some(CI_APP_PORT);
    vec![s]
}

/// Whether a preset grades the project against its own goals (the forecast against the
/// outcomes, in `forecast.md`): every preset but `smoke`, which shows what the exporter is for.
pub fn evaluates(name: &str) -> bool {
    name != "smoke"
}

/// The system-test set.
pub fn ci() -> Vec<Scenario> {
    let mut idle = Scenario::idle("ci-idle-precopy");
    // With the guest's HTTP service: it must answer on the destination after the migration.
    idle.guest.app_port = Some(CI_APP_PORT);
    // A loaded guest that still converges: 10 MiB/s of sequential writes against 30 MiB/s.
    let loaded = Scenario::stressed("ci-loaded-precopy", 10, Pattern::Seq, 30);
    // 150 MiB/s dirtied against 30 MiB/s sent over a metro-like 10 ms path: never converges;
    // aborted at the deadline.
    let mut stressed = Scenario::stressed("ci-stressed-precopy", 150, Pattern::Random, 30);
    stressed.deadline = Duration::from_secs(45);
    stressed.rtt_ms = Some(RTT_METRO_MS);
    // The same, rescued by a 12 s max downtime after 25 s.
    let mut raised = Scenario::stressed("ci-stressed-raised-downtime", 150, Pattern::Random, 30);
    raised.raise_max_downtime = Some((Duration::from_secs(25), 12_000));
    raised.deadline = Duration::from_secs(90);
    // Post-copy switched on after 8 s of capped pre-copy.
    let mut post = Scenario::stressed("ci-postcopy", 150, Pattern::Random, 30);
    post.mode = Mode::Postcopy;
    post.postcopy_after = Some(Duration::from_secs(8));
    post.deadline = Duration::from_secs(90);
    // The source libvirtd restarted in the middle of a capped migration.
    let mut restart = Scenario::stressed("ci-libvirtd-restart", 150, Pattern::Random, 30);
    restart.restart_source_libvirtd_after = Some(Duration::from_secs(10));
    restart.deadline = Duration::from_secs(60);
    vec![idle, loaded, stressed, raised, post, restart]
}

/// Round-trip times standing in for the paper's paths: a metro link like Northern Ireland –
/// Dublin, and a transatlantic one like Northern Ireland – Halifax.
pub const RTT_METRO_MS: u32 = 10;
pub const RTT_TRANSATLANTIC_MS: u32 = 80;

/// The matrix behind the paper's three findings: pre-copy of a heavily written memory over
/// longer paths (finding 1), post-copy against the write pattern (finding 2), and how bandwidth
/// and latency move time and downtime (finding 3).
pub fn paper() -> Vec<Scenario> {
    let mut out = vec![Scenario::idle("paper-idle")];
    // Converges slowly (λ ≈ 0.67, many passes): long enough for the ETA to be judged.
    let mut slow = Scenario::stressed("paper-pre-20mbps-seq-cap30-slow", 20, Pattern::Seq, 30);
    slow.guest.dirty_mb = 400;
    slow.deadline = Duration::from_secs(120);
    out.push(slow);
    for rtt in [None, Some(RTT_METRO_MS), Some(RTT_TRANSATLANTIC_MS)] {
        let path = rtt
            .map(|r| format!("rtt{r}"))
            .unwrap_or_else(|| "rtt0".into());
        for (mode, mbps, pattern) in [
            (Mode::Precopy, 50u32, Pattern::Seq),
            (Mode::Precopy, 150, Pattern::Random),
            (Mode::Postcopy, 150, Pattern::Random),
        ] {
            let name = format!(
                "paper-{}-{mbps}mbps-{}-cap100-{path}",
                if mode == Mode::Precopy { "pre" } else { "post" },
                pattern.as_str()
            );
            let mut s = Scenario::stressed(&name, mbps, pattern, 100);
            s.mode = mode;
            s.rtt_ms = rtt;
            s.deadline = Duration::from_secs(60);
            if mode == Mode::Postcopy {
                s.postcopy_after = Some(Duration::from_secs(10));
            }
            out.push(s);
        }
    }
    // Auto-converge throttles the guest's vCPUs until it dirties less.
    let mut auto = Scenario::stressed(
        "paper-pre-150mbps-random-cap30-autoconverge",
        150,
        Pattern::Random,
        30,
    );
    auto.auto_converge = true;
    auto.deadline = Duration::from_secs(60);
    out.push(auto);
    // Post-copy switched by progress rather than time: after the third memory pass.
    let mut by_pass = Scenario::stressed(
        "paper-post-150mbps-random-cap30-after-pass3",
        150,
        Pattern::Random,
        30,
    );
    by_pass.mode = Mode::Postcopy;
    by_pass.postcopy_after_iterations = Some(3);
    by_pass.deadline = Duration::from_secs(90);
    out.push(by_pass);
    for pattern in [Pattern::Seq, Pattern::Random, Pattern::Hot] {
        let mut s = Scenario::stressed(
            &format!("paper-post-150mbps-{}-cap30", pattern.as_str()),
            150,
            pattern,
            30,
        );
        s.mode = Mode::Postcopy;
        s.postcopy_after = Some(Duration::from_secs(10));
        s.deadline = Duration::from_secs(60);
        out.push(s);
    }
    out
}

/// The convergence model's test bench (docs/convergence.md): guests that write several times
/// faster than their capped link can send, with different rates, patterns and caps (they never
/// converge: the alert must fire), guests that converge slowly over many passes (the ETA is
/// judged on them), and auto-converge, which throttles a stuck guest until it converges.
pub fn convergence() -> Vec<Scenario> {
    let mut out = Vec::new();
    for (mbps, pattern, cap, ws, rtt) in [
        (150u32, Pattern::Random, 30u32, 256u32, None),
        (100, Pattern::Seq, 40, 384, None),
        (200, Pattern::Hot, 50, 256, None),
        (120, Pattern::Random, 25, 192, Some(RTT_METRO_MS)),
    ] {
        let name = format!(
            "conv-stuck-{mbps}mbps-{}-ws{ws}-cap{cap}{}",
            pattern.as_str(),
            rtt.map(|r| format!("-rtt{r}")).unwrap_or_default()
        );
        let mut s = Scenario::stressed(&name, mbps, pattern, cap);
        s.guest.dirty_mb = ws;
        s.rtt_ms = rtt;
        s.deadline = Duration::from_secs(90);
        out.push(s);
    }
    for (mbps, pattern, cap, ws) in [
        (20u32, Pattern::Seq, 30u32, 400u32),
        (15, Pattern::Random, 30, 300),
        (25, Pattern::Seq, 40, 380),
        (12, Pattern::Seq, 20, 350),
    ] {
        let mut s = Scenario::stressed(
            &format!("conv-slow-{mbps}mbps-{}-ws{ws}-cap{cap}", pattern.as_str()),
            mbps,
            pattern,
            cap,
        );
        s.guest.dirty_mb = ws;
        s.deadline = Duration::from_secs(150);
        out.push(s);
    }
    for (mbps, pattern, cap) in [(150u32, Pattern::Random, 30u32), (80, Pattern::Seq, 30)] {
        let mut s = Scenario::stressed(
            &format!("conv-autoconverge-{mbps}mbps-{}-cap{cap}", pattern.as_str()),
            mbps,
            pattern,
            cap,
        );
        s.auto_converge = true;
        s.deadline = Duration::from_secs(120);
        out.push(s);
    }
    out
}

/// The application's view of migrations (docs/lab.md, "Finding 2 with the application's view"):
/// post-copy switched at once on a 30 MiB/s link, so the guest runs on the destination while
/// most of its memory is still on the source, for the three write patterns at 0, 10 and 80 ms;
/// and pre-copy of an idle and a lightly loaded guest at the same paths. Every guest serves HTTP
/// on the provider network and the exporter probes it every 20 ms through the migration.
pub fn app() -> Vec<Scenario> {
    let mut out = Vec::new();
    for rtt in [None, Some(RTT_METRO_MS), Some(RTT_TRANSATLANTIC_MS)] {
        let path = rtt
            .map(|r| format!("rtt{r}"))
            .unwrap_or_else(|| "rtt0".into());
        for pattern in [Pattern::Seq, Pattern::Random, Pattern::Hot] {
            let mut s = Scenario::stressed(
                &format!("app-post-early-150mbps-{}-cap30-{path}", pattern.as_str()),
                150,
                pattern,
                30,
            );
            s.mode = Mode::Postcopy;
            s.postcopy_after = Some(Duration::ZERO);
            s.rtt_ms = rtt;
            s.deadline = Duration::from_secs(120);
            s.guest.app_port = Some(CI_APP_PORT);
            out.push(s);
        }
        let mut idle = Scenario::idle(&format!("app-pre-idle-{path}"));
        idle.rtt_ms = rtt;
        idle.guest.app_port = Some(CI_APP_PORT);
        out.push(idle);
    }
    let mut loaded = Scenario::stressed("app-pre-10mbps-seq-cap30-rtt0", 10, Pattern::Seq, 30);
    loaded.guest.app_port = Some(CI_APP_PORT);
    out.push(loaded);
    out
}

pub fn by_name(name: &str) -> Option<Vec<Scenario>> {
    match name {
        "app" => Some(app()),
        "smoke" => Some(smoke()),
        "ci" => Some(ci()),
        "paper" => Some(paper()),
        "convergence" => Some(convergence()),
        _ => None,
    }
}
