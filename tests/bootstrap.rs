//! `tokenproxy login` (authorization code + PKCE against a local authorization
//! server, the test playing the browser) and `tokenproxy seed`.

mod support;

use std::process::Stdio;
use std::time::Duration;

use support::*;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, Command};

const TOKEN: &str = "grant = \"refresh_token\"\ntoken_url = \"{token_url}\"\nauthorize_url = \"{issuer}/authorize\"\nredirect_uri = \"REDIRECT\"\nclient_id = \"demo-client\"\nclient_secret = { env = \"DEMO_CLIENT_SECRET\" }\nscope = \"read write\"";
const ROUTES: &str = "[[routes]]\nprefix = \"/api/\"\nupstream = \"{api}/\"\ntoken = \"p\"";

fn config_file(w: &World, redirect: &str) -> std::path::PathBuf {
    let path = w
        .dir
        .path()
        .join(format!("login-{}.toml", fastrand::u32(..)));
    std::fs::write(
        &path,
        w.provider_config("", &TOKEN.replace("REDIRECT", redirect), ROUTES),
    )
    .unwrap();
    path
}

fn login(config: &std::path::Path, extra: &[&str]) -> Child {
    Command::new(binary())
        .args(["login", "p", "--no-browser", "--timeout", "20s", "-c"])
        .arg(config)
        .args(extra)
        .env("DEMO_CLIENT_SECRET", "demo-secret")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap()
}

/// The authorization URL the command prints.
async fn printed_url(child: &mut Child) -> String {
    let mut lines = BufReader::new(child.stdout.as_mut().unwrap()).lines();
    while let Some(line) = lines.next_line().await.unwrap() {
        if let Some(url) = line.trim().strip_prefix("http") {
            return format!("http{url}");
        }
    }
    panic!("no URL printed");
}

/// Plays the browser: the authorization server answers with a redirect.
async fn authorize(url: &str) -> String {
    let r = client().get(url).send().await.unwrap();
    assert_eq!(r.status(), 302, "{}", r.text().await.unwrap());
    r.headers()["location"].to_str().unwrap().to_owned()
}

async fn finish(child: Child) -> (Option<i32>, String) {
    let out = tokio::time::timeout(Duration::from_secs(20), child.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.code(), text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_stores_the_first_refresh_token_and_the_proxy_uses_it() {
    let w = World::default().await;
    let config = config_file(&w, "http://127.0.0.1:0/callback");
    let mut child = login(&config, &[]);
    let url = printed_url(&mut child).await;
    assert!(
        url.contains("code_challenge_method=S256")
            && url.contains("state=")
            && url.contains("scope=read+write"),
        "{url}"
    );
    let back = authorize(&url).await;
    let page = client().get(&back).send().await.unwrap();
    assert_eq!(page.status(), 200);
    assert!(page.text().await.unwrap().contains("close this window"));
    let (code, out) = finish(child).await;
    assert_eq!(code, Some(0), "{out}");
    assert!(
        out.contains("stored token `p`")
            && out.contains("refresh token stored")
            && out.contains("scopes: read write"),
        "{out}"
    );
    assert!(out.contains("tokenproxy run -c"), "{out}");
    for t in w.provider.all_tokens() {
        assert!(!out.contains(&t), "login printed a token");
    }
    let sent = w.provider.last_request().unwrap();
    assert_eq!(sent.field("grant_type"), Some("authorization_code"));
    assert!(sent.field("code_verifier").is_some_and(|v| v.len() >= 43));

    // The proxy needs no configured refresh token: the store has one.
    let p = w.spawn(&std::fs::read_to_string(&config).unwrap());
    assert_eq!(get(&p.url("/api/x")).await.0, 200);
    assert_eq!(
        w.provider.token_requests(),
        1,
        "the stored access token is used"
    );
    w.provider.revoke_access();
    assert_eq!(
        get(&p.url("/api/y")).await.0,
        200,
        "the logged-in refresh token works"
    );
    assert_eq!(w.provider.reuse_detected(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_denied_stores_nothing() {
    let w = World::default().await;
    w.provider.set_consent(false);
    let config = config_file(&w, "http://127.0.0.1:0/callback");
    let mut child = login(&config, &[]);
    let back = authorize(&printed_url(&mut child).await).await;
    assert!(back.contains("error=access_denied"));
    let _ = client().get(&back).send().await.unwrap();
    let (code, out) = finish(child).await;
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains("refused the authorization: access_denied (The user denied access)"),
        "{out}"
    );
    assert!(!w.state_dir().join("p.json").exists());
    assert_eq!(w.provider.token_requests(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_state_stores_nothing() {
    let w = World::default().await;
    let config = config_file(&w, "http://127.0.0.1:0/callback");
    let mut child = login(&config, &[]);
    let back = authorize(&printed_url(&mut child).await).await;
    let forged = back.split("&state=").next().unwrap().to_owned() + "&state=forged";
    let _ = client().get(&forged).send().await.unwrap();
    let (code, out) = finish(child).await;
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("state does not match"), "{out}");
    assert!(!w.state_dir().join("p.json").exists());
    assert_eq!(w.provider.token_requests(), 0, "the code was not exchanged");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manual_mode_takes_the_pasted_redirect() {
    let w = World::default().await;
    let config = config_file(&w, "https://app.example.com/oauth/callback");
    let mut child = login(&config, &["--manual"]);
    let back = authorize(&printed_url(&mut child).await).await;
    assert!(back.starts_with("https://app.example.com/oauth/callback?code="));
    let mut stdin = child.stdin.take().unwrap();
    stdin
        .write_all(format!("{back}\n").as_bytes())
        .await
        .unwrap();
    drop(stdin);
    let (code, out) = finish(child).await;
    assert_eq!(code, Some(0), "{out}");
    assert!(w.state_dir().join("p.json").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxy_waiting_for_login_resumes_without_restart() {
    let w = World::default().await;
    let config = config_file(&w, "http://127.0.0.1:0/callback");
    let p = w.spawn(&std::fs::read_to_string(&config).unwrap());
    p.wait_token("p", "needs_login", Duration::from_secs(5))
        .await;
    assert_eq!(get(&p.admin_url("/readyz")).await.0, 503);
    assert_eq!(
        w.provider.token_requests(),
        0,
        "no refresh token: nothing to ask for"
    );

    let mut child = login(&config, &[]);
    let back = authorize(&printed_url(&mut child).await).await;
    let _ = client().get(&back).send().await.unwrap();
    assert_eq!(finish(child).await.0, Some(0));
    p.wait_ready(200, Duration::from_secs(10)).await;
    assert_eq!(get(&p.url("/api/x")).await.0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_without_verification_makes_no_token_request() {
    let w = World::default().await;
    let config = config_file(&w, "http://127.0.0.1:0/callback");
    let mut child = Command::new(binary())
        .args(["seed", "p", "--no-verify", "-c"])
        .arg(&config)
        .env("DEMO_CLIENT_SECRET", "demo-secret")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"demo-refresh-0\n")
        .await
        .unwrap();
    let (code, out) = finish(child).await;
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("not verified"), "{out}");
    assert_eq!(w.provider.token_requests(), 0);
    let p = w.spawn(&std::fs::read_to_string(&config).unwrap());
    assert_eq!(get(&p.url("/api/x")).await.0, 200);
    assert_eq!(
        w.provider.last_request().unwrap().field("refresh_token"),
        Some("demo-refresh-0")
    );
}
