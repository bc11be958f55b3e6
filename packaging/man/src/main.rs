//! Writes the vm-migration-exporter(1) man page (roff) to stdout, from the same clap definition
//! the exporter parses its flags with, so the page never drifts from `--help`. Used by
//! scripts/check-deb.sh to put the page in the .deb; kept out of the exporter's dependencies.

#![forbid(unsafe_code)]

use std::io::Write;

use clap::CommandFactory;
use vm_migration_exporter::settings::flags::{with_collector_flags, Cli};

const FILES: &str =
    "/etc/default/vm-migration-exporter: ARGS, the flags the systemd unit passes.\n\
/var/lib/vm-migration-exporter/migrations.jsonl: the migration records (--storage.path).";

const ENVIRONMENT: &str = "Every flag can also be set through the environment variable shown \
next to it (VM_MIGRATION_EXPORTER_...). Precedence: flag, environment, --config.file, default.";

const EXIT_STATUS: &str = "0 after SIGINT or SIGTERM; 2 for a bad flag, configuration file or \
storage directory (one line on stderr names it); 1 for any other failure.";

fn main() -> std::io::Result<()> {
    // The --collector.<name> flags are generated from the collector registry, as at run time.
    let cmd = with_collector_flags(Cli::command());
    let man = clap_mangen::Man::new(cmd);
    let mut out = Vec::new();
    man.render_title(&mut out)?;
    man.render_name_section(&mut out)?;
    man.render_synopsis_section(&mut out)?;
    man.render_description_section(&mut out)?;
    man.render_options_section(&mut out)?;
    for (title, body) in [
        ("ENVIRONMENT", ENVIRONMENT),
        ("FILES", FILES),
        ("EXIT STATUS", EXIT_STATUS),
    ] {
        writeln!(out, ".SH \"{title}\"")?;
        for line in body.lines() {
            writeln!(out, ".PP\n{}", line.replace('-', "\\-"))?;
        }
    }
    man.render_version_section(&mut out)?;
    std::io::stdout().write_all(&out)
}
