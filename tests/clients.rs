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
    let p = w.spawn_with(
        &config,
        &[
            ("EXACT_CLIENT_ID", "demo-client"),
            ("EXACT_CLIENT_SECRET", "demo-secret"),
            ("EXACT_REFRESH_TOKEN", "demo-refresh-0"),
        ],
    );
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

harness!(
    Needs::Python("dlt") => dlt_rest_api_pages_exact_online_with_the_shipped_config,
);
