//! The delay link adds the round-trip time it is set to, as `ping` measures it across the
//! namespaces (needs root, like the lab).

use std::time::Duration;

use migration_lab::{delay, Lab};
use system_tests::{exporter_bin, lab_dir, one_lab_at_a_time};

#[test]
fn delay_link_adds_the_rtt_ping_measures() {
    let _one = one_lab_at_a_time();
    let lab = Lab::up(&lab_dir(), Some(&exporter_bin!()), &|m| {
        eprintln!("lab: {m}")
    })
    .expect("lab up");
    let base = delay::ping_rtt_ms().expect("ping answers over the delayed path");
    lab.delay.set_rtt(Duration::from_millis(80));
    let delayed = delay::ping_rtt_ms().expect("ping answers with the delay");
    lab.delay.set_rtt(Duration::from_millis(10));
    let metro = delay::ping_rtt_ms().expect("ping answers");
    println!("delay link: ping {base:.2} ms with no delay, {metro:.2} ms at 10 ms, {delayed:.2} ms at 80 ms");
    // Every packet is held half the RTT each way: never less than set; well under double
    // (a relay delaying twice, or not at all, fails).
    assert!((80.0..160.0).contains(&delayed), "{delayed} ms for 80 ms");
    assert!((10.0..20.0).contains(&metro), "{metro} ms for 10 ms");
    assert!(base < 10.0, "{base} ms with no delay");
}
