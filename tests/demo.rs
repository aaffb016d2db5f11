//! The README's first command, `tokenproxy demo`: it starts, prints what to try,
//! every printed `curl` answers as the text says, and Ctrl-C stops it cleanly,
//! its state directory removed.

mod support;

use std::process::Stdio;
use std::time::Duration;

use support::*;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

/// The word after `label` on the line that starts with it (the printed addresses).
fn printed(text: &str, label: &str) -> String {
    text.lines()
        .find_map(|l| l.trim_start().strip_prefix(label))
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("no `{label}` line in:\n{text}"))
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_serves_what_it_prints_and_stops_on_ctrl_c() {
    let mut child = Command::new(binary())
        .args(["demo", "--listen", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    // Its log, read as it comes (a full pipe would stall it).
    let mut stderr = child.stderr.take().unwrap();
    let log = tokio::spawn(async move {
        let mut log = String::new();
        tokio::io::AsyncReadExt::read_to_string(&mut stderr, &mut log)
            .await
            .unwrap();
        log
    });
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut text = String::new();
    let read = async {
        while let Some(line) = lines.next_line().await.unwrap() {
            text += &line;
            text.push('\n');
            if line.starts_with("Ctrl-C stops it.") {
                return;
            }
        }
        panic!("the demo stopped before printing what to try:\n{text}");
    };
    tokio::time::timeout(Duration::from_secs(60), read)
        .await
        .expect("the demo printed nothing within 60 s");

    // `proxy  http://ADDR/demo/  →  API`, `admin  http://ADDR/status`.
    let proxy = printed(&text, "proxy");
    let proxy = proxy.trim_end_matches("demo/").trim_end_matches('/');
    let status_url = printed(&text, "admin");
    let admin = status_url.trim_end_matches("/status");
    let state = printed(&text, "state");
    assert!(std::path::Path::new(&state).is_dir(), "{text}");

    let (code, body) = get(&format!("{proxy}/demo/hello?page=1")).await;
    assert_eq!(code, 200, "{body}");
    assert!(
        json(&body)["authorized"]
            .as_str()
            .is_some_and(|a| a.starts_with("yes")),
        "{body}"
    );
    let r = client()
        .get(format!("{proxy}/demo/download?bytes=10000000"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.bytes().await.unwrap().len(), 10_000_000);
    let (code, body) = get(&status_url).await;
    assert_eq!(code, 200);
    let generation = json(&body)["tokens"]["demo"]["generation"].clone();
    let r = client()
        .post(format!("{admin}/tokens/demo/refresh"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let after = json(&r.text().await.unwrap());
    assert!(
        after["generation"].as_u64() > generation.as_u64(),
        "{after} after {generation}"
    );
    assert_eq!(get(&format!("{proxy}/nowhere")).await.0, 404);

    // Ctrl-C: a clean exit, the demo's state removed.
    let ok = std::process::Command::new("kill")
        .args(["-INT", &child.id().unwrap().to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok);
    let status = tokio::time::timeout(Duration::from_secs(30), child.wait())
        .await
        .expect("the demo did not stop within 30 s of Ctrl-C")
        .unwrap();
    let err = log.await.unwrap();
    assert!(status.success(), "{status}:\n{err}");
    assert!(!std::path::Path::new(&state).exists(), "{state} is left");
    // The demo's own secrets and tokens are fake, but the rule holds: none logged.
    assert!(
        !err.contains("demo-refresh-0") && !err.contains("demo-secret"),
        "{err}"
    );
}
