//! An operator's own scenarios (`migration-lab run --scenario FILE`): YAML or JSON, a list under
//! `scenarios:`, with the field names of [`Scenario`]. Every field but `name` is optional:
//!
//! | field | default |
//! |---|---|
//! | `guest.memory_mb` | 512 |
//! | `guest.dirty_mbps` | 0 (an idle guest) |
//! | `guest.dirty_mb` | 256 (working set the dirtier writes; at most `memory_mb` − 96) |
//! | `guest.pattern` | `seq` (`seq`, `random`, `hot`) |
//! | `guest.hot_mb` | 32 (the hot set of `pattern: hot`) |
//! | `mode` | `precopy` (`precopy`, `postcopy`) |
//! | `bandwidth_mibs` | none: QEMU's cap, `virsh migrate --bandwidth` (MiB/s; post-copy runs also `--postcopy-bandwidth`) |
//! | `link_mbit` | none: a token-bucket cap on the link (Mbit/s) |
//! | `rtt_ms` | none: added round-trip time over the lab's delay link |
//! | `auto_converge` | false |
//! | `postcopy_after` | none: switch to post-copy after this long (`10s`; needs `mode: postcopy`) |
//! | `postcopy_after_iterations` | none: ... or at this memory pass (needs `mode: postcopy`) |
//! | `deadline` | `120s`: abort the migration if it still runs then |
//! | `app` | false: the guest serves HTTP, asked before and after the migration |
//!
//! Unknown fields are errors, and every error names the scenario and the key.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;

use crate::guest::Pattern;
use crate::presets::CI_APP_PORT;
use crate::scenario::{Mode, Scenario};
use crate::LabError;

/// Memory the guest's kernel and initramfs need beside the dirtier's working set.
const GUEST_OVERHEAD_MB: u32 = 96;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    scenarios: Vec<Entry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Entry {
    name: String,
    #[serde(default)]
    guest: GuestEntry,
    mode: Option<Mode>,
    bandwidth_mibs: Option<u32>,
    link_mbit: Option<u32>,
    rtt_ms: Option<u32>,
    auto_converge: Option<bool>,
    #[serde(default, with = "humantime_serde")]
    postcopy_after: Option<Duration>,
    postcopy_after_iterations: Option<u32>,
    #[serde(default, with = "humantime_serde")]
    deadline: Option<Duration>,
    app: Option<bool>,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct GuestEntry {
    memory_mb: Option<u32>,
    dirty_mbps: Option<u32>,
    dirty_mb: Option<u32>,
    pattern: Option<Pattern>,
    hot_mb: Option<u32>,
}

/// Reads `path` into scenarios, or an error naming the file, the scenario and the key.
pub fn load(path: &Path) -> Result<Vec<Scenario>, LabError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| LabError::Setup(format!("--scenario {}: {e}", path.display())))?;
    parse(&text).map_err(|e| LabError::Setup(format!("--scenario {}: {e}", path.display())))
}

/// YAML (JSON is YAML too) → scenarios.
pub fn parse(text: &str) -> Result<Vec<Scenario>, String> {
    let file: File = serde_saphyr::from_str(text).map_err(|e| parse_error(&e.to_string(), text))?;
    if file.scenarios.is_empty() {
        return Err("scenarios: the list is empty; give at least one `- name: ...`".into());
    }
    let mut names = BTreeSet::new();
    file.scenarios
        .into_iter()
        .enumerate()
        .map(|(i, e)| {
            let at = format!("scenarios[{i}] ({})", e.name);
            if !names.insert(e.name.clone()) {
                return Err(format!("{at}.name: used twice; names must be unique"));
            }
            scenario(e).map_err(|m| format!("{at}.{m}"))
        })
        .collect()
}

/// The parser's first line names the position and the problem (the rest is a source snippet);
/// the key on that line is added when the message does not name it.
fn parse_error(err: &str, text: &str) -> String {
    let first = err
        .lines()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("invalid YAML");
    let first = first.trim().trim_start_matches("error: ");
    let key = first
        .strip_prefix("line ")
        .and_then(|r| r.split_whitespace().next()?.parse::<usize>().ok())
        .and_then(|n| text.lines().nth(n.checked_sub(1)?))
        .and_then(|l| l.split_once(':'))
        .map(|(k, _)| k.trim().trim_start_matches("- "))
        .filter(|k| !k.is_empty() && !first.contains(k));
    match key {
        Some(k) => format!("{first} (key `{k}`)"),
        None => first.to_string(),
    }
}

fn scenario(e: Entry) -> Result<Scenario, String> {
    // The name becomes a libvirt domain name and file names.
    if e.name.is_empty()
        || e.name.len() > 64
        || !e
            .name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    {
        return Err(format!(
            "name: {:?} must be 1-64 characters of letters, digits, '-', '_' or '.'",
            e.name
        ));
    }
    let mut s = Scenario::idle(&e.name);
    let g = e.guest;
    s.guest.memory_mb = g.memory_mb.unwrap_or(s.guest.memory_mb);
    s.guest.dirty_mbps = g.dirty_mbps.unwrap_or(0);
    s.guest.dirty_mb = g.dirty_mb.unwrap_or(256);
    s.guest.pattern = g.pattern.unwrap_or(Pattern::Seq);
    s.guest.hot_mb = g.hot_mb.unwrap_or(s.guest.hot_mb);
    if s.guest.memory_mb < 128 {
        return Err(format!(
            "guest.memory_mb: {} is too small; at least 128",
            s.guest.memory_mb
        ));
    }
    let room = s.guest.memory_mb - GUEST_OVERHEAD_MB;
    if s.guest.dirty_mb == 0 || s.guest.dirty_mb > room {
        return Err(format!(
            "guest.dirty_mb: {} does not fit a {} MiB guest; use 1..={room} (memory_mb − {GUEST_OVERHEAD_MB})",
            s.guest.dirty_mb, s.guest.memory_mb
        ));
    }
    if s.guest.pattern == Pattern::Hot && (s.guest.hot_mb == 0 || s.guest.hot_mb > s.guest.dirty_mb)
    {
        return Err(format!(
            "guest.hot_mb: {} must be 1..=dirty_mb ({})",
            s.guest.hot_mb, s.guest.dirty_mb
        ));
    }
    s.mode = e.mode.unwrap_or(Mode::Precopy);
    for (key, v) in [
        ("bandwidth_mibs", e.bandwidth_mibs),
        ("link_mbit", e.link_mbit),
    ] {
        if v == Some(0) {
            return Err(format!(
                "{key}: 0 would stop the migration; leave it out for no cap"
            ));
        }
    }
    s.bandwidth_mibs = e.bandwidth_mibs;
    s.link_mbit = e.link_mbit;
    s.rtt_ms = e.rtt_ms.filter(|r| *r > 0);
    s.auto_converge = e.auto_converge.unwrap_or(false);
    if s.mode != Mode::Postcopy {
        if e.postcopy_after.is_some() {
            return Err("postcopy_after: needs `mode: postcopy`".into());
        }
        if e.postcopy_after_iterations.is_some() {
            return Err("postcopy_after_iterations: needs `mode: postcopy`".into());
        }
    }
    s.postcopy_after = e.postcopy_after;
    s.postcopy_after_iterations = e.postcopy_after_iterations;
    if let Some(d) = e.deadline {
        if d.is_zero() {
            return Err("deadline: must be above 0, e.g. `90s`".into());
        }
        s.deadline = d;
    }
    if e.app.unwrap_or(false) {
        s.guest.app_port = Some(CI_APP_PORT);
    }
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn yaml_with_defaults_and_every_field() {
        let s = parse(
            "scenarios:
  - name: minimal
  - name: full
    guest: {memory_mb: 1024, dirty_mbps: 150, dirty_mb: 512, pattern: hot, hot_mb: 64}
    mode: postcopy
    bandwidth_mibs: 30
    link_mbit: 400
    rtt_ms: 80
    auto_converge: true
    postcopy_after: 2s
    postcopy_after_iterations: 2
    deadline: 90s
    app: true
",
        )
        .expect("parses");
        let m = &s[0];
        assert_eq!(
            (m.guest.memory_mb, m.guest.dirty_mbps, m.guest.dirty_mb),
            (512, 0, 256)
        );
        assert_eq!((m.mode, m.guest.pattern), (Mode::Precopy, Pattern::Seq));
        assert_eq!(m.deadline, Duration::from_secs(120));
        assert_eq!(
            (m.bandwidth_mibs, m.rtt_ms, m.guest.app_port),
            (None, None, None)
        );
        let f = &s[1];
        assert_eq!(f.guest.memory_mb, 1024);
        assert_eq!((f.guest.pattern, f.guest.hot_mb), (Pattern::Hot, 64));
        assert_eq!(f.mode, Mode::Postcopy);
        assert_eq!(
            (f.bandwidth_mibs, f.link_mbit, f.rtt_ms),
            (Some(30), Some(400), Some(80))
        );
        assert!(f.auto_converge);
        assert_eq!(f.postcopy_after, Some(Duration::from_secs(2)));
        assert_eq!(f.postcopy_after_iterations, Some(2));
        assert_eq!(f.deadline, Duration::from_secs(90));
        assert_eq!(f.guest.app_port, Some(CI_APP_PORT));
    }

    #[test]
    fn json_works_too() {
        let s = parse(
            r#"{"scenarios": [{"name": "j", "guest": {"dirty_mbps": 20}, "deadline": "1m"}]}"#,
        )
        .expect("parses");
        assert_eq!(s[0].guest.dirty_mbps, 20);
        assert_eq!(s[0].deadline, Duration::from_secs(60));
    }

    #[test]
    fn errors_name_the_scenario_and_the_key() {
        for (text, want) in [
            (
                "scenarios:\n  - name: a\n    bandwith_mibs: 3\n",
                "bandwith_mibs",
            ),
            (
                "scenarios:\n  - name: a\n    guest: {dirty_mps: 3}\n",
                "dirty_mps",
            ),
            (
                "scenarios:\n  - name: a\n    guest: {dirty_mb: 450}\n",
                "scenarios[0] (a).guest.dirty_mb",
            ),
            (
                "scenarios:\n  - name: a\n    postcopy_after: 3s\n",
                "scenarios[0] (a).postcopy_after: needs `mode: postcopy`",
            ),
            (
                "scenarios:\n  - name: a\n  - name: a\n",
                "scenarios[1] (a).name: used twice",
            ),
            ("scenarios:\n  - name: 'a b'\n", "scenarios[0] (a b).name"),
            ("scenarios:\n  - name: a\n    deadline: soon\n", "deadline"),
            (
                "scenarios:\n  - name: a\n    bandwidth_mibs: 0\n",
                "bandwidth_mibs: 0",
            ),
            ("scenarios:\n  - name: a\n    mode: precopyy\n", "precopyy"),
            ("scenarios: []\n", "empty"),
            ("other: 1\n", "other"),
        ] {
            let err = parse(text)
                .err()
                .unwrap_or_else(|| panic!("{text:?} must fail"));
            assert!(err.contains(want), "{text:?}: {err}");
            assert!(!err.contains('\n'), "one line: {err}");
        }
    }
}
