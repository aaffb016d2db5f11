//! ETL tools as a team runs them, through the shipped configurations: dlt's
//! `rest_api` source pages an Exact Online-shaped API (OData v2: `d.results`,
//! `d.__next`, each record's `__metadata.uri`) with `config/exact-online.toml`, in
//! the base-URL and `HTTP_PROXY` modes, and loads every page with the records'
//! data as the provider wrote it.

mod support;

use std::path::Path;
use std::process::Command;

use support::harness::Needs;
use support::*;

/// `config/exact-online.toml` as shipped, pointed at the local provider: its token
/// URL, its API (the route keeps `start.exactonline.nl` as its host, for
/// `HTTP_PROXY` clients), ephemeral ports and the world's state directory.
fn shipped_exact_config(w: &World) -> String {
    let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/exact-online.toml");
    let text = std::fs::read_to_string(shipped).unwrap();
    let text = text
        .replace("\"127.0.0.1:8080\"", "\"127.0.0.1:0\"")
        .replace("\"127.0.0.1:9090\"", "\"127.0.0.1:0\"")
        .replace("./tokenproxy-state", &w.state_dir().display().to_string())
        .replace(
            "region = \"nl\"",
            &format!("region = \"nl\"\ntoken_url = \"{}\"", w.provider.token_url),
        )
        .replace(
            "upstream = \"https://start.exactonline.nl/api/\"",
            &format!(
                "upstream = \"{}\"\nhost = \"start.exactonline.nl\"",
                w.provider.api_url
            ),
        );
    assert!(
        text.contains(&w.provider.api_url) && text.contains(&w.provider.token_url),
        "config/exact-online.toml changed shape:\n{text}"
    );
    text
}

/// Runs dlt's `rest_api` source over `base_url` (with `proxy` as `HTTP_PROXY`, if
/// any) and returns what it loaded: the row count and each row's `__metadata.uri`.
fn dlt_pages(p: &Proxy, base_url: &str, proxy: Option<&str>) -> (u64, Vec<String>) {
    let script = format!(
        r#"
import json
from dlt.sources.rest_api import rest_api_source
source = rest_api_source({{
    "client": {{"base_url": "{base_url}"}},
    "resources": [{{
        "name": "accounts",
        "endpoint": {{
            "path": "pages",
            "params": {{"style": "exact", "last": 10}},
            "data_selector": "d.results",
            "paginator": {{"type": "json_link", "next_url_path": "d.__next"}},
        }},
    }}],
}})
rows = list(source.resources["accounts"])
print(json.dumps({{"rows": len(rows), "uris": [r["__metadata"]["uri"] for r in rows]}}))
"#
    );
    let home = tempfile::tempdir().unwrap();
    let mut cmd = Command::new(support::harness::python());
    cmd.args(["-c", &script])
        .env("HOME", home.path())
        .env("RUNTIME__LOG_LEVEL", "WARNING")
        .env_remove("HTTP_PROXY")
        .env_remove("http_proxy")
        .env_remove("NO_PROXY")
        .env_remove("no_proxy");
    if let Some(proxy) = proxy {
        cmd.env("HTTP_PROXY", proxy).env("http_proxy", proxy);
    }
    let out = cmd.output().expect("python runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        p.log()
    );
    let v = json(stdout.lines().last().unwrap_or_default());
    let uris = v["uris"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u.as_str().unwrap().to_owned())
        .collect();
    (v["rows"].as_u64().unwrap(), uris)
}

/// Ten pages of ten accounts, in the base-URL mode and through `HTTP_PROXY` with
/// the provider's own (http://) URLs: page 2 onwards comes through tokenproxy
/// because `__next` was rewritten, and every `__metadata.uri` is the provider's.
async fn dlt_rest_api_pages_exact_online_with_the_shipped_config() {
    let w = World::default().await;
    let config = shipped_exact_config(&w);
    let p = w.spawn_with(&config, &EXACT_ENV);
    let up = w.provider.api_url.clone();
    for (base, proxy) in [
        (p.url("/exact/"), None),
        (
            "http://start.exactonline.nl/api/".to_owned(),
            Some(format!("http://{}", p.addr)),
        ),
    ] {
        let before = w.provider.api_requests();
        let (rows, uris) = dlt_pages(&p, &base, proxy.as_deref());
        assert_eq!(rows, 100, "{base}: ten pages of ten");
        assert_eq!(w.provider.api_requests() - before, 10, "{base}");
        assert!(
            uris.iter()
                .all(|u| u.starts_with(&format!("{up}crm/Accounts(guid'"))),
            "{base}: data as the provider wrote it: {uris:?}"
        );
    }
    assert_eq!(w.provider.reuse_detected(), 0);
}

/// The shipped configuration's secrets, as the local provider knows them.
const EXACT_ENV: [(&str, &str); 3] = [
    ("EXACT_CLIENT_ID", "demo-client"),
    ("EXACT_CLIENT_SECRET", "demo-secret"),
    ("EXACT_REFRESH_TOKEN", "demo-refresh-0"),
];

/// The code block after `<!-- snippet: NAME -->` in docs/guides.md: the guide's
/// own text is what runs.
fn guide_snippet(name: &str) -> String {
    let guides =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/guides.md")).unwrap();
    let marker = format!("<!-- snippet: {name} -->");
    let after = &guides[guides.find(&marker).expect("the snippet's marker") + marker.len()..];
    let fence = after.find("```").expect("a code block");
    let body = &after[fence..];
    let start = body.find('\n').unwrap() + 1;
    let end = body[start..].find("```").unwrap();
    body[start..start + end].to_owned()
}

/// The shipped Exact Online configuration as a token service: TLS on the proxy
/// listener (a certificate for `localhost` from `pki`), a caller key, vending, and
/// `extra` lines in `[tokens.exact]`.
fn exact_service(w: &World, pki: &support::pki::Pki, key: &str, extra: &str) -> String {
    let tls = support::pki::listen_tls(pki, w.dir.path());
    let key_file = w.dir.path().join("caller-key");
    std::fs::write(&key_file, key).unwrap();
    let text = shipped_exact_config(w)
        .replacen("[listen]", &format!("[listen]\n{tls}"), 1)
        .replacen(
            "region = \"nl\"",
            &format!("region = \"nl\"\nvend = true\n{extra}"),
            1,
        );
    format!(
        "{text}\n[[callers]]\nname = \"matillion\"\nkey = {{ file = {key_file:?} }}\ntokens = [\"exact\"]\n"
    )
}

/// docs/guides.md's Matillion Python Script, with a stand-in for Matillion's
/// `context`: the token it puts in the job variable is the one the API accepts.
async fn matillion_python_script_reads_the_vended_token() {
    let w = World::default().await;
    let pki = support::pki::Pki::new();
    let key = "matillion-caller-key-0123456789";
    let p = w.spawn_with(&exact_service(&w, &pki, key, ""), &EXACT_ENV);
    let ca = w.dir.path().join("ca.pem");
    std::fs::write(&ca, &pki.ca_pem).unwrap();
    let script = guide_snippet("matillion-vend").replace(
        "https://tokenproxy.internal:8443",
        &format!("https://localhost:{}", p.addr.port()),
    );
    let stand_in = "import json\nclass Context:\n    def updateVariable(self, name, value):\n        print(json.dumps({name: value}))\ncontext = Context()\n";
    let out = Command::new(support::harness::python())
        .args(["-c", &format!("{stand_in}{script}")])
        .env("TOKENPROXY_CALLER_KEY", key)
        .env("SSL_CERT_FILE", &ca)
        .env_remove("HTTPS_PROXY")
        .env_remove("https_proxy")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let token = json(stdout.trim())["access_token"]
        .as_str()
        .unwrap()
        .to_owned();
    let r = client()
        .get(format!("{}v1/current/Me", w.provider.api_url))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // A wrong key fails the script, loudly.
    let out = Command::new(support::harness::python())
        .args(["-c", &format!("{stand_in}{script}")])
        .env("TOKENPROXY_CALLER_KEY", "not-the-key-0123456789")
        .env("SSL_CERT_FILE", &ca)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("407"));
}

/// The sinks of docs/guides.md: a tokenproxy with the guide's two sinks, and the
/// guide's curl and Python snippets reading them, as written.
async fn sink_world() -> (World, Proxy, std::path::PathBuf) {
    let w = World::default().await;
    let dir = w.dir.path().join("run");
    let sinks = format!(
        "[[tokens.exact.sinks]]\npath = {:?}\nformat = \"header\"\nmode = \"0640\"\n[[tokens.exact.sinks]]\npath = {:?}\nmode = \"0640\"\n",
        dir.join("exact.header"),
        dir.join("exact.token")
    );
    // Array tables end [tokens.exact]: they go last in it, before [[routes]].
    let config =
        shipped_exact_config(&w).replacen("[[routes]]", &format!("{sinks}\n[[routes]]"), 1);
    let p = w.spawn_with(&config, &EXACT_ENV);
    p.wait_ready(200, std::time::Duration::from_secs(20)).await;
    let until = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !dir.join("exact.token").exists() {
        assert!(std::time::Instant::now() < until, "no sink file");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    (w, p, dir)
}

fn for_here(snippet: &str, w: &World, dir: &Path) -> String {
    snippet
        .replace("/run/tokenproxy", dir.to_str().unwrap())
        .replace("https://start.exactonline.nl/api/", &w.provider.api_url)
}

async fn a_shell_script_reads_the_header_sink_with_curl() {
    let (w, _p, dir) = sink_world().await;
    let script = for_here(&guide_snippet("sink-curl"), &w, &dir);
    let out = Command::new("sh").args(["-c", &script]).output().unwrap();
    assert!(
        out.status.success(),
        "{script}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        json(&String::from_utf8_lossy(&out.stdout))["path"],
        "/v1/current/Me"
    );
}

async fn a_python_job_reads_the_token_sink() {
    let (w, _p, dir) = sink_world().await;
    let script = for_here(&guide_snippet("sink-python"), &w, &dir);
    let out = Command::new(support::harness::python())
        .args(["-c", &script])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "200");
}

/// A tool on another host with `HTTP_PROXY=https://NAME:KEY@tokenproxy:8443` and the
/// API's http:// URLs: curl speaks TLS to the proxy listener (an HTTPS proxy),
/// presents its caller key as the proxy password, and gets the API's answer.
async fn curl_uses_the_tls_listener_as_an_https_proxy_with_a_caller_key() {
    let w = World::default().await;
    let pki = support::pki::Pki::new();
    let key = "matillion-caller-key-0123456789";
    let p = w.spawn_with(&exact_service(&w, &pki, key, ""), &EXACT_ENV);
    let ca = w.dir.path().join("ca.pem");
    std::fs::write(&ca, &pki.ca_pem).unwrap();
    let curl = |user: &str| {
        Command::new("curl")
            .args(["-sS", "--max-time", "20", "-w", "\n%{http_code}"])
            .args(["--proxy", &format!("https://localhost:{}", p.addr.port())])
            .args(["--proxy-cacert", ca.to_str().unwrap(), "--proxy-user", user])
            .arg("http://start.exactonline.nl/api/v1/current/Me")
            .output()
            .unwrap()
    };
    let out = curl(&format!("matillion:{key}"));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.ends_with("\n200"),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("/v1/current/Me"), "{text}");
    let out = curl("matillion:wrong-key-0123456789");
    assert!(String::from_utf8_lossy(&out.stdout).ends_with("\n407"));
}

harness!(
    Needs::Program("curl") => curl_uses_the_tls_listener_as_an_https_proxy_with_a_caller_key,
    Needs::Python("dlt") => dlt_rest_api_pages_exact_online_with_the_shipped_config,
    Needs::Python("json") => matillion_python_script_reads_the_vended_token,
    Needs::Program("curl") => a_shell_script_reads_the_header_sink_with_curl,
    Needs::Python("json") => a_python_job_reads_the_token_sink,
);
