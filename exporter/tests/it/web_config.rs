//! `--web.config.file`: TLS and basic auth in the exporter-toolkit format, with a self-signed
//! certificate made for the test; bad files are exit-2 configuration errors.

use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::support::{Exporter, BIN};

struct Tls {
    dir: tempfile::TempDir,
    ca_pem: String,
}

fn tls_files() -> Tls {
    let dir = tempfile::tempdir().expect("tempdir");
    let cert =
        rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string(), "localhost".to_string()])
            .expect("self-signed certificate");
    std::fs::write(dir.path().join("tls.crt"), cert.cert.pem()).expect("write cert");
    std::fs::write(dir.path().join("tls.key"), cert.key_pair.serialize_pem()).expect("write key");
    Tls {
        ca_pem: cert.cert.pem(),
        dir,
    }
}

fn write_config(t: &Tls, body: &str) -> String {
    let p = t.dir.path().join("web.yml");
    std::fs::write(&p, body).expect("write web config");
    p.to_string_lossy().into_owned()
}

#[test]
fn tls_with_basic_auth_serves_only_authenticated_https() {
    let t = tls_files();
    let hash = bcrypt::hash("s3cret", 4).expect("bcrypt");
    let cfg = write_config(
        &t,
        &format!(
            "tls_server_config:\n  cert_file: {d}/tls.crt\n  key_file: {d}/tls.key\n  min_version: TLS12\nbasic_auth_users:\n  prometheus: {hash}\n",
            d = t.dir.path().display()
        ),
    );
    let e = Exporter::start(
        BIN,
        &[
            "--libvirt.uri",
            "test:///default",
            "--web.config.file",
            &cfg,
        ],
    );
    assert!(
        e.log()
            .iter()
            .any(|l| l.contains("tls=true") && l.contains("basic_auth=true")),
        "{:?}",
        e.log()
    );
    let client = reqwest::blocking::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(t.ca_pem.as_bytes()).expect("ca"))
        .timeout(Duration::from_secs(10))
        .build()
        .expect("client");
    let url = format!("https://127.0.0.1:{}/metrics", e.addr.port());

    let ok = client
        .get(&url)
        .basic_auth("prometheus", Some("s3cret"))
        .send()
        .expect("https request");
    assert_eq!(ok.status().as_u16(), 200);
    assert!(ok.text().expect("body").contains("vm_migration_libvirt_up"));

    let anon = client.get(&url).send().expect("request");
    assert_eq!(anon.status().as_u16(), 401);
    assert!(anon.headers().get("www-authenticate").is_some());
    let wrong = client
        .get(&url)
        .basic_auth("prometheus", Some("guess"))
        .send()
        .expect("request");
    assert_eq!(wrong.status().as_u16(), 401);
    let stranger = client
        .get(&url)
        .basic_auth("mallory", Some("s3cret"))
        .send()
        .expect("request");
    assert_eq!(stranger.status().as_u16(), 401);

    // Plain HTTP to the TLS port gets no metrics.
    let plain = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .expect("client")
        .get(format!("http://127.0.0.1:{}/metrics", e.addr.port()))
        .basic_auth("prometheus", Some("s3cret"))
        .send();
    assert!(
        plain.map(|r| !r.status().is_success()).unwrap_or(true),
        "plain HTTP must not be served"
    );
}

#[test]
fn bad_web_config_files_exit_2_naming_the_problem() {
    let t = tls_files();
    let d = t.dir.path().display().to_string();
    let cases = [
        ("tls_server_config:\n  cert_file: /nonexistent.crt\n  key_file: /nonexistent.key\n".to_string(), "cert_file"),
        (format!("tls_server_config:\n  cert_file: {d}/tls.crt\n  key_file: {d}/tls.key\n  client_auth_type: RequireAndVerifyClientCert\n"), "client_auth_type"),
        ("basic_auth_users:\n  prometheus: plaintext-password\n".to_string(), "bcrypt"),
        (format!("tls_server_config:\n  cert_file: {d}/tls.key\n  key_file: {d}/tls.key\n"), "cert_file"),
    ];
    for (body, names) in cases {
        let cfg = write_config(&t, &body);
        let out = Command::new(BIN)
            .args([
                "--libvirt.uri",
                "test:///default",
                "--storage.path",
                "",
                "--web.listen-address",
                "127.0.0.1:0",
            ])
            .args(["--web.config.file", &cfg])
            .output()
            .expect("run");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{body}: {err}");
        assert!(
            err.contains(&cfg) && err.contains(names),
            "{body}: should name {names}: {err}"
        );
    }
}

/// Clients sending wrong passwords must not use every core nor hold up a good scrape: with one
/// bcrypt at a time and cached results, a flood (loopback, 32 clients, 4 s) costs at
/// most about one core and an authenticated scrape still answers at once.
#[test]
fn wrong_password_flood_costs_one_core_and_good_scrapes_answer() {
    let t = tls_files();
    // Cost 8: about as slow in this debug build as the usual cost 10 in a release build.
    let hash = bcrypt::hash("s3cret", 8).expect("bcrypt");
    let cfg = write_config(&t, &format!("basic_auth_users:\n  prometheus: {hash}\n"));
    let e = Exporter::start(
        BIN,
        &[
            "--libvirt.uri",
            "test:///default",
            "--web.config.file",
            &cfg,
        ],
    );
    let url = e.url("/metrics");
    let client = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("client");
    let good = || {
        let t0 = Instant::now();
        let r = client
            .get(&url)
            .header(
                "Authorization",
                format!("basic {}", b64("prometheus:s3cret")),
            )
            .send()
            .expect("good scrape");
        (r.status().as_u16(), t0.elapsed())
    };
    assert_eq!(good().0, 200, "lower-case scheme accepted");

    let flood_for = Duration::from_secs(4);
    let sent = Arc::new(AtomicU64::new(0));
    let cpu0 = e.cpu_seconds();
    let t0 = Instant::now();
    let flood: Vec<_> = (0..32)
        .map(|c| {
            let (url, sent) = (url.clone(), sent.clone());
            std::thread::spawn(move || {
                let client = reqwest::blocking::Client::builder()
                    .timeout(Duration::from_secs(30))
                    .build()
                    .expect("client");
                let mut n = 0;
                while t0.elapsed() < flood_for {
                    // A new password each time: no cache can answer it.
                    let user = if n % 2 == 0 { "prometheus" } else { "mallory" };
                    let r = client
                        .get(&url)
                        .basic_auth(user, Some(format!("guess-{c}-{n}")))
                        .send();
                    if let Ok(r) = r {
                        assert_eq!(r.status().as_u16(), 401);
                    }
                    n += 1;
                    sent.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    let mut slowest = Duration::ZERO;
    let mut scrapes = 0;
    while t0.elapsed() < flood_for {
        let (status, took) = good();
        assert_eq!(status, 200);
        slowest = slowest.max(took);
        scrapes += 1;
        std::thread::sleep(Duration::from_millis(100)); // scrape pacing, not synchronisation
    }
    for f in flood {
        f.join().expect("flood thread");
    }
    let wall = t0.elapsed().as_secs_f64();
    let cores = (e.cpu_seconds() - cpu0) / wall;
    eprintln!(
        "flood: {} wrong requests, {cores:.2} cores over {wall:.1} s; {scrapes} good scrapes, slowest {slowest:?}",
        sent.load(Ordering::Relaxed)
    );
    assert!(cores <= 1.3, "the flood cost {cores:.2} cores");
    assert!(
        slowest < Duration::from_secs(1),
        "a good scrape took {slowest:?}"
    );
}

fn b64(s: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(s)
}
