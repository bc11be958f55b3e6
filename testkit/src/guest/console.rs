//! The guest's serial console (a file libvirt writes): the dirtier's status lines, and what they
//! say about the guest's memory after a migration.

use std::fs;
use std::path::Path;
use std::time::Duration;

use crate::LabError;

/// Wait until the guest's serial console (a file under the host's private log directory) shows
/// a dirtier status line; returns the last line.
pub fn wait_running(serial: &Path, timeout: Duration) -> Result<String, LabError> {
    let mut line = None;
    crate::prom::poll_until(timeout, || {
        line = fs::read_to_string(serial).ok().and_then(|text| {
            text.lines()
                .rev()
                .find(|l| l.starts_with("dirtier: t="))
                .map(str::to_string)
        });
        line.is_some()
    });
    line.ok_or_else(|| {
        LabError::Guest(format!(
            "no dirtier status on {} within {timeout:?} (boot failed?)",
            serial.display()
        ))
    })
}

/// What the guest's console says about its memory after a migration.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Integrity {
    Ok,
    Corrupt,
    Oops,
    NoStatus,
}

impl Integrity {
    pub fn as_str(self) -> String {
        match self {
            Integrity::Ok => "ok",
            Integrity::Corrupt => "CORRUPT",
            Integrity::Oops => "oops",
            Integrity::NoStatus => "no status",
        }
        .to_string()
    }
}

const STATUS_PREFIX: &str = "dirtier: t=";

/// Status lines the dirtier has printed on this console so far.
pub fn status_lines(serial: &Path) -> usize {
    std::fs::read_to_string(serial)
        .map(|t| t.lines().filter(|l| l.starts_with(STATUS_PREFIX)).count())
        .unwrap_or(0)
}

/// The dirtier's latest status line.
pub fn last_status(serial: &Path) -> Option<String> {
    std::fs::read_to_string(serial).ok().and_then(|t| {
        t.lines()
            .rev()
            .find(|l| l.starts_with(STATUS_PREFIX))
            .map(str::to_string)
    })
}

/// Waits (up to `wait`) for a status line beyond the first `seen` on the console, then judges:
/// its `ref=` (the 16 MiB reference pattern written at boot) and any kernel oops or panic.
pub fn integrity_after(serial: &Path, seen: usize, wait: Duration) -> Integrity {
    let fresh = |t: &str| t.lines().filter(|l| l.starts_with(STATUS_PREFIX)).count() > seen;
    crate::prom::poll_until(wait, || {
        std::fs::read_to_string(serial).is_ok_and(|t| fresh(&t))
    });
    let text = std::fs::read_to_string(serial).unwrap_or_default();
    judge_console(&text, seen)
}

fn judge_console(text: &str, seen: usize) -> Integrity {
    if text
        .lines()
        .any(|l| l.contains("BUG:") || l.contains("Oops") || l.contains("Kernel panic"))
    {
        return Integrity::Oops;
    }
    let mut statuses = text.lines().filter(|l| l.starts_with(STATUS_PREFIX));
    match statuses.nth(seen) {
        None => Integrity::NoStatus,
        Some(_)
            if text
                .lines()
                .filter(|l| l.starts_with(STATUS_PREFIX))
                .skip(seen)
                .all(|l| l.ends_with("ref=ok")) =>
        {
            Integrity::Ok
        }
        Some(_) => Integrity::Corrupt,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn console_judged_after_the_migration() {
        let line =
            |r: &str| format!("dirtier: t=5s dirtied=1MiB rate=1MiB/s pattern=seq ref={r}\n");
        let before = line("ok");
        assert_eq!(judge_console(&before, 1), Integrity::NoStatus);
        assert_eq!(
            judge_console(&(before.clone() + &line("ok")), 1),
            Integrity::Ok
        );
        assert_eq!(
            judge_console(&(before.clone() + &line("CORRUPT")), 1),
            Integrity::Corrupt
        );
        let oops = "[    9.1] BUG: kernel NULL pointer dereference\n";
        assert_eq!(
            judge_console(&(before + oops + &line("ok")), 1),
            Integrity::Oops
        );
    }
}
