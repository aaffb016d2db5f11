//! Pagination links and redirects stay on the proxy: a client that follows the
//! next-page URLs the API returns reaches every page through tokenproxy.

mod support;

use support::*;

fn config(w: &World, extra_route: &str) -> String {
    w.provider_config(
        "",
        "grant = \"refresh_token\"\ntoken_url = \"{token_url}\"\nclient_id = \"demo-client\"\nclient_secret = { env = \"DEMO_CLIENT_SECRET\" }\nrefresh_token = { env = \"DEMO_REFRESH_TOKEN\" }",
        &format!(
            "[[routes]]\nprefix = \"/api/\"\nupstream = \"{{api}}/\"\ntoken = \"p\"\nrewrite_links = true\n\n\
             [[routes]]\nprefix = \"/plain/\"\nupstream = \"{{api}}/\"\ntoken = \"p\"\n\n\
             [[routes]]\nprefix = \"/off/\"\nupstream = \"{{api}}/\"\ntoken = \"p\"\nrewrite_links = \"off\"\n\n{extra_route}"
        ),
    )
}

/// Follows next links from `start` until there are none; returns the pages' bodies.
async fn follow(
    start: String,
    next: impl Fn(&serde_json::Value, &str) -> Option<String>,
    proxy_base: &str,
) -> Vec<String> {
    let mut url = Some(start);
    let mut pages = Vec::new();
    while let Some(u) = url.take() {
        assert!(u.starts_with(proxy_base), "a link leaves the proxy: {u}");
        let r = client()
            .get(&u)
            .header("Accept-Encoding", "gzip, deflate, br")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{u}");
        let link = r
            .headers()
            .get("link")
            .map(|v| v.to_str().unwrap().to_owned());
        let body = r.text().await.unwrap();
        let v = serde_json::from_str(&body).unwrap_or(serde_json::Value::Null);
        url = next(&v, &body).or_else(|| {
            link.map(|l| {
                l.trim_start_matches('<')
                    .split('>')
                    .next()
                    .unwrap()
                    .to_owned()
            })
        });
        pages.push(body);
        assert!(pages.len() <= 10, "no end to the pages");
    }
    pages
}

fn odata(v: &serde_json::Value, _: &str) -> Option<String> {
    v["@odata.nextLink"].as_str().map(str::to_owned)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_link_style_leads_through_the_proxy_to_the_last_page() {
    let w = World::default().await;
    let p = w.spawn(&config(&w, ""));
    // `/api/` rewrites every upstream URL; `/plain/` has the default, next-page
    // links only.
    for base in [p.url("/api/"), p.url("/plain/")] {
        for style in ["plain", "escaped", "split", "gzip", "deflate", "br", "link"] {
            let pages = follow(
                format!("{base}pages?page=1&last=4&style={style}"),
                odata,
                &base,
            )
            .await;
            assert_eq!(pages.len(), 4, "{base} {style}");
            assert!(
                pages
                    .iter()
                    .all(|b| !b.contains(&w.provider.api_url) && !b.contains("localhost\\/")),
                "{style}: {pages:?}"
            );
        }
        let hubspot = |v: &serde_json::Value, _: &str| {
            v["paging"]["next"]["link"].as_str().map(str::to_owned)
        };
        assert_eq!(
            follow(format!("{base}pages?last=3&style=hubspot"), hubspot, &base)
                .await
                .len(),
            3
        );
        let atom = |_: &serde_json::Value, body: &str| {
            body.split("rel=\"next\" href=\"")
                .nth(1)
                .map(|s| s.split('"').next().unwrap().replace("&amp;", "&"))
        };
        assert_eq!(
            follow(format!("{base}pages?last=3&style=xml"), atom, &base)
                .await
                .len(),
            3
        );
    }
}

/// Exact Online's OData v2 pages: by default `__next` leads back through the proxy
/// while each record's `__metadata.uri` (and an Atom entry's links) stay as Exact
/// wrote them, so a warehouse loads the provider's URLs; `"all"` rewrites both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pagination_links_rewritten_data_left_as_written() {
    let w = World::default().await;
    let p = w.spawn(&config(&w, ""));
    let up = &w.provider.api_url;
    let base = p.url("/plain/");
    let next = |v: &serde_json::Value, _: &str| v["d"]["__next"].as_str().map(str::to_owned);
    let pages = follow(format!("{base}pages?last=3&style=exact"), next, &base).await;
    assert_eq!(pages.len(), 3);
    for page in &pages {
        let v: serde_json::Value = serde_json::from_str(page).unwrap();
        let results = v["d"]["results"].as_array().unwrap();
        assert_eq!(results.len(), 10);
        for r in results {
            let uri = r["__metadata"]["uri"].as_str().unwrap();
            assert!(uri.starts_with(&format!("{up}crm/Accounts(")), "{uri}");
        }
    }
    let (_, xml) = get(&format!("{base}pages?last=3&style=xml")).await;
    assert!(
        xml.contains(&format!(
            "<id>{up}items(1)</id><link rel=\"edit\" href=\"{up}items(1)\"/>"
        )),
        "{xml}"
    );
    assert!(
        xml.contains(&format!("rel=\"next\" href=\"{base}pages?")),
        "{xml}"
    );

    let all = p.url("/api/");
    let (_, page) = get(&format!("{all}pages?last=3&style=exact")).await;
    assert!(!page.contains(up.as_str()), "{page}");
    assert!(
        page.contains(&format!("\"uri\":\"{all}crm/Accounts(")),
        "{page}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn escaped_links_stay_escaped() {
    let w = World::default().await;
    let p = w.spawn(&config(&w, ""));
    let body = get(&p.url("/api/pages?page=1&last=2&style=escaped"))
        .await
        .1;
    let want = p.url("/api/").replace('/', "\\/");
    assert!(body.contains(&want), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn salesforce_absolute_path_links_with_the_path_kept() {
    let w = World::default().await;
    let p = w.spawn(&config(&w, "[[routes]]\nprefix = \"/services/data/\"\nupstream = \"{api}/\"\ntoken = \"p\"\nstrip_prefix = false"));
    let root = p.url("");
    let next = |v: &serde_json::Value, _: &str| {
        v["nextRecordsUrl"]
            .as_str()
            .map(|path| format!("{root}{path}"))
    };
    let pages = follow(
        p.url("/services/data/v59.0/query?q=SELECT+Id+FROM+Account"),
        next,
        &root,
    )
    .await;
    assert_eq!(pages.len(), 3);
    assert!(pages[2].contains("\"done\":true"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn off_means_off_and_other_content_types_untouched() {
    let w = World::default().await;
    let p = w.spawn(&config(&w, ""));
    let r = client()
        .get(p.url("/off/pages?page=1&last=2&style=exact"))
        .send()
        .await
        .unwrap();
    let len = r.headers()["content-length"].to_str().unwrap().to_owned();
    let body = r.text().await.unwrap();
    assert_eq!(len, body.len().to_string(), "passed through as it came");
    assert!(
        body.contains(&format!("{}pages?page=2", w.provider.api_url)),
        "rewrite_links = \"off\", no rewrite: {body}"
    );
    // Same route that rewrites JSON: a text body is passed byte for byte.
    let r = client()
        .get(p.url("/api/text-with-url"))
        .send()
        .await
        .unwrap();
    let len = r.headers()["content-length"].to_str().unwrap().to_owned();
    let text = r.text().await.unwrap();
    assert_eq!(
        text,
        format!("see {}pages?page=2 for more\n", w.provider.api_url)
    );
    assert_eq!(len, text.len().to_string());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identity_refused_means_gzip_again() {
    let w = World::default().await;
    let p = w.spawn(&config(&w, ""));
    let r = client()
        .get(p.url("/api/pages?page=1&last=2&style=gzip"))
        .header("Accept-Encoding", "gzip, identity;q=0")
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["content-encoding"], "gzip");
    assert!(!r.headers().contains_key("content-length"));
    let compressed = r.bytes().await.unwrap();
    let mut text = String::new();
    use std::io::Read;
    flate2::read::GzDecoder::new(&compressed[..])
        .read_to_string(&mut text)
        .unwrap();
    assert!(text.contains(&p.url("/api/pages?page=2")), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_200_mib_json_body_is_rewritten_with_flat_memory() {
    let w = World::default().await;
    let p = w.spawn(&config(&w, ""));
    assert_eq!(get(&p.url("/api/warm")).await.0, 200);
    let before = p.peak_rss_kib();
    let mut r = client()
        .get(p.url(&format!("/api/bigjson?bytes={}", 200u64 << 20)))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let upstream = w.provider.api_url.as_bytes().to_vec();
    let (mut total, mut tail) = (0u64, Vec::new());
    while let Some(chunk) = r.chunk().await.unwrap() {
        total += chunk.len() as u64;
        // Look across chunk edges through a small overlap.
        let mut window = std::mem::take(&mut tail);
        window.extend_from_slice(&chunk);
        assert!(
            !window.windows(upstream.len()).any(|x| x == upstream),
            "an upstream URL got through"
        );
        tail = window.split_off(window.len().saturating_sub(upstream.len() - 1));
    }
    // The body is `{"items":[` + items + `null]}`; each item's URL is rewritten.
    let item = |base: &str| format!("\"{base}items/0000000000\",").len() as u64;
    let (up, down) = (item(&w.provider.api_url), item(&p.url("/api/")));
    let per_chunk = 64 * 1024 / up;
    let items = (200u64 << 20) / (per_chunk * up) * per_chunk;
    assert_eq!(
        total,
        10 + items * down + 6,
        "every one of {items} URLs rewritten, nothing lost"
    );
    let growth = p.peak_rss_kib().saturating_sub(before);
    assert!(
        growth < 24 * 1024,
        "peak RSS grew by {growth} KiB while rewriting 200 MiB"
    );
}
