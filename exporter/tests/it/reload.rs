//! SIGHUP reloads `--config.file` and `--web.config.file`: a rotated certificate, a
//! changed password and changed configured peers apply without a restart; a bad file keeps the
//! previous configuration, costs one log line naming it, and shows in
//! `vm_migration_exporter_config_last_reload_successful`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::support::poll_until;
use crate::support::{value, Exporter, BIN};

const WAIT: Duration = Duration::from_secs(20);

/// A self-signed certificate for 127.0.0.1 written to `dir/<name>.crt|key`; its PEM (the CA a
/// client must trust).
fn certificate(dir: &Path, name: &str) -> String {
    let c = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string()]).expect("cert");
    std::fs::write(dir.join(format!("{name}.crt")), c.cert.pem()).expect("write cert");
    std::fs::write(dir.join(format!("{name}.key")), c.key_pair.serialize_pem()).expect("write key");
    c.cert.pem()
}

fn web_config(dir: &Path, cert: &str, password: &str) -> String {
    let hash = bcrypt::hash(password, 4).expect("bcrypt");
    format!(
        "tls_server_config:\n  cert_file: {d}/{cert}.crt\n  key_file: {d}/{cert}.key\nbasic_auth_users:\n  prometheus: {hash}\n",
        d = dir.display()
    )
}

/// A config file probing one configured peer `name` (TCP to `port` on loopback, every 100 ms).
fn config(name: &str, port: u16) -> String {
    format!(
        "probe:\n  peers:\n    - name: {name}\n      address: 127.0.0.1\n      probes: [{{type: tcp, port: {port}, interval: 100ms, timeout: 500ms}}]\n"
    )
}

/// Replace `path` whole (write a temporary file, rename), as configuration management does.
fn replace(path: &Path, body: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, body).expect("write");
    std::fs::rename(&tmp, path).expect("rename");
}

struct Files {
    _dir: tempfile::TempDir,
    web: PathBuf,
    config: PathBuf,
}

fn files(web: &str, cfg: &str) -> Files {
    let dir = tempfile::tempdir().expect("tempdir");
    let (w, c) = (dir.path().join("web.yml"), dir.path().join("config.yml"));
    std::fs::write(&w, web).expect("write");
    std::fs::write(&c, cfg).expect("write");
    Files {
        _dir: dir,
        web: w,
        config: c,
    }
}

fn start(f: &Files) -> Exporter {
    Exporter::start(
        BIN,
        &[
            "--libvirt.uri",
            "test:///default",
            "--probe.discovery=false",
            "--config.file",
            &f.config.to_string_lossy(),
            "--web.config.file",
            &f.web.to_string_lossy(),
        ],
    )
}

/// GET /metrics over a new TLS connection trusting only `ca`: the status, and the body when it
/// was 200; `None` when no TLS session could be made with that trust.
fn scrape(e: &Exporter, ca: &str, password: &str) -> Option<(u16, String)> {
    let client = reqwest::blocking::Client::builder()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(ca.as_bytes()).expect("ca"))
        .pool_max_idle_per_host(0)
        .timeout(Duration::from_secs(10))
        .build()
        .expect("client");
    let r = client
        .get(format!("https://127.0.0.1:{}/metrics", e.addr.port()))
        .basic_auth("prometheus", Some(password))
        .send()
        .ok()?;
    let status = r.status().as_u16();
    Some((status, r.text().unwrap_or_default()))
}

fn peer_series(metrics: &str, name: &str) -> bool {
    metrics
        .lines()
        .any(|l| l.starts_with("vm_migration_peer_up{") && l.contains(&format!("peer=\"{name}\"")))
}

#[test]
fn sighup_rotates_the_certificate_changes_users_and_peers() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("listen");
    let port = listener.local_addr().expect("addr").port();
    let dir = tempfile::tempdir().expect("tempdir");
    let old_ca = certificate(dir.path(), "old");
    let f = files(
        &web_config(dir.path(), "old", "first"),
        &config("alpha", port),
    );
    let e = start(&f);
    let mut body = String::new();
    assert!(
        poll_until(WAIT, || {
            body = scrape(&e, &old_ca, "first")
                .map(|r| r.1)
                .unwrap_or_default();
            peer_series(&body, "alpha")
        }),
        "{body}"
    );
    let (_, started_at) = reload_status(&body);

    let new_ca = certificate(dir.path(), "new");
    replace(&f.web, &web_config(dir.path(), "new", "second"));
    replace(&f.config, &config("beta", port));
    e.hangup();
    assert!(
        poll_until(WAIT, || scrape(&e, &new_ca, "second")
            .is_some_and(|r| r.0 == 200)),
        "the new certificate and password are not in force: {:#?}",
        e.log()
    );
    assert_eq!(
        scrape(&e, &new_ca, "first").map(|r| r.0),
        Some(401),
        "the old password is refused"
    );
    assert_eq!(
        scrape(&e, &old_ca, "second").map(|r| r.0),
        None,
        "a client trusting only the old certificate cannot connect"
    );
    assert!(
        poll_until(WAIT, || {
            body = scrape(&e, &new_ca, "second")
                .map(|r| r.1)
                .unwrap_or_default();
            peer_series(&body, "beta") && !peer_series(&body, "alpha")
        }),
        "configured peers follow the file: {body}"
    );
    let (ok, at) = reload_status(&body);
    assert_eq!(ok, 1.0);
    assert!(
        at > started_at,
        "success time {at} after the start's {started_at}"
    );
    assert!(
        e.log().iter().any(|l| l.contains("configuration reloaded")),
        "{:#?}",
        e.log()
    );
}

fn reload_status(metrics: &str) -> (f64, f64) {
    (
        value(
            metrics,
            "vm_migration_exporter_config_last_reload_successful",
        )
        .unwrap_or(-1.0),
        value(
            metrics,
            "vm_migration_exporter_config_last_reload_success_timestamp_seconds",
        )
        .unwrap_or(-1.0),
    )
}

#[test]
fn a_bad_file_on_reload_keeps_the_previous_configuration() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("listen");
    let port = listener.local_addr().expect("addr").port();
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = certificate(dir.path(), "c");
    let good_web = web_config(dir.path(), "c", "pw");
    let f = files(&good_web, &config("alpha", port));
    let e = start(&f);
    assert!(poll_until(WAIT, || scrape(&e, &ca, "pw").is_some_and(|r| r.0 == 200)));

    // Each bad file: the reload fails with one line naming the file and the problem, and the
    // exporter goes on with what it had.
    let web = f.web.to_string_lossy().into_owned();
    let cfg = f.config.to_string_lossy().into_owned();
    let cases = [
        (&f.web, "basic_auth_users:\n  prometheus: plaintext\n".to_string(), web.as_str(), "bcrypt"),
        (&f.web, format!("tls_server_config:\n  cert_file: {d}/missing.crt\n  key_file: {d}/c.key\n", d = dir.path().display()), web.as_str(), "cert_file"),
        (&f.config, "probe:\n  peers:\n    - name: x\n      address: nowhere\n      probes: [{type: icmp}]\n".to_string(), cfg.as_str(), "probe.peers[0].address"),
        (&f.config, "sample:\n  intervall: 1s\n".to_string(), cfg.as_str(), "intervall"),
    ];
    for (i, (path, body, names, problem)) in cases.iter().enumerate() {
        let good = std::fs::read_to_string(path).expect("read");
        replace(path, body);
        e.hangup();
        let failed = |l: &String| l.contains("reload failed");
        assert!(
            poll_until(WAIT, || e.log().iter().filter(|l| failed(l)).count()
                == i + 1),
            "{:#?}",
            e.log()
        );
        let log = e.log();
        let line = log.iter().filter(|l| failed(l)).nth(i).expect("line");
        assert!(
            line.contains(names) && line.contains(problem),
            "{line} should name {names} and {problem}"
        );
        let (status, body) = scrape(&e, &ca, "pw").expect("still served with the old TLS");
        assert_eq!(status, 200, "the old password still works");
        assert_eq!(reload_status(&body).0, 0.0, "{body}");
        assert!(
            peer_series(&body, "alpha"),
            "the old peers are still probed"
        );
        replace(path, &good);
    }
    // Both good again: the next reload succeeds.
    e.hangup();
    assert!(
        poll_until(WAIT, || scrape(&e, &ca, "pw")
            .is_some_and(|r| reload_status(&r.1).0 == 1.0)),
        "{:#?}",
        e.log()
    );
    assert_eq!(
        e.log()
            .iter()
            .filter(|l| l.contains("reload failed"))
            .count(),
        cases.len(),
        "one line per failed reload"
    );
}
