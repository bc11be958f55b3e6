//! The other side of `scripts/bench-app.sh`: HTTP services to probe, and a driver that makes
//! blackbox_exporter (the reference) probe them at the same rate as the exporter does.
//!
//! `app_bench_peer serve N`: N loopback HTTP services answering 200; prints their ports, one per
//! line, then serves until stdin closes.
//! `app_bench_peer drive BLACKBOX_ADDR SECONDS INTERVAL_MS PORT...`: one loop per port asking
//! blackbox_exporter for `/probe?module=http_2xx&target=127.0.0.1:PORT` every INTERVAL_MS (at
//! most one request in flight per port, like the exporter's probes); prints the number of probes
//! that succeeded and failed.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn usage() -> ! {
    eprintln!("usage: app_bench_peer serve N | drive BLACKBOX_ADDR SECONDS INTERVAL_MS PORT...");
    std::process::exit(2)
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("serve") => {
            let n: usize = args
                .get(1)
                .and_then(|n| n.parse().ok())
                .unwrap_or_else(|| usage());
            serve(n).await
        }
        Some("drive") if args.len() >= 5 => {
            let secs: u64 = args[2].parse().unwrap_or_else(|_| usage());
            let interval: u64 = args[3].parse().unwrap_or_else(|_| usage());
            let ports: Vec<u16> = args[4..]
                .iter()
                .map(|p| p.parse().unwrap_or_else(|_| usage()))
                .collect();
            drive(&args[1], secs, interval, ports).await
        }
        _ => usage(),
    }
}

async fn serve(n: usize) {
    for _ in 0..n {
        let l = match tokio::net::TcpListener::bind("127.0.0.1:0").await {
            Ok(l) => l,
            Err(e) => {
                eprintln!("bind: {e}");
                std::process::exit(1)
            }
        };
        println!("{}", l.local_addr().map(|a| a.port()).unwrap_or(0));
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                tokio::spawn(async move {
                    let mut buf = [0u8; 2048];
                    let _ = s.read(&mut buf).await;
                    let _ = s
                        .write_all(
                            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok",
                        )
                        .await;
                });
            }
        });
    }
    // Serve until the script closes our stdin.
    let _ = tokio::task::spawn_blocking(|| {
        use std::io::Read;
        let mut buf = [0u8; 64];
        while matches!(std::io::stdin().read(&mut buf), Ok(n) if n > 0) {}
    })
    .await;
}

async fn drive(blackbox: &str, secs: u64, interval_ms: u64, ports: Vec<u16>) {
    let client = match reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
    {
        Ok(c) => c,
        Err(e) => {
            eprintln!("client: {e}");
            std::process::exit(1)
        }
    };
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let end = tokio::time::Instant::now() + Duration::from_secs(secs);
    let mut loops = Vec::new();
    for port in ports {
        let (client, ok, failed) = (client.clone(), ok.clone(), failed.clone());
        let url = format!("http://{blackbox}/probe?module=http_2xx&target=127.0.0.1:{port}");
        loops.push(tokio::spawn(async move {
            while tokio::time::Instant::now() < end {
                let next = tokio::time::Instant::now() + Duration::from_millis(interval_ms);
                let good = match client.get(&url).send().await {
                    Ok(r) => r.text().await.is_ok_and(|b| b.contains("probe_success 1")),
                    Err(_) => false,
                };
                if good { &ok } else { &failed }.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep_until(next).await;
            }
        }));
    }
    for l in loops {
        let _ = l.await;
    }
    println!(
        "{} {}",
        ok.load(Ordering::Relaxed),
        failed.load(Ordering::Relaxed)
    );
}
