//! Micro-benchmarks of what every request pays (route match, upstream URL, token
//! read, header insert) and of the single-flight refresh under 1,000 waiters.
//!
//!     cargo bench --bench hot_path

use std::sync::Arc;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use http::{HeaderMap, Uri};
use tokenproxy::config::{Config, Credential, RouteUpstream};
use tokenproxy::demo::{Provider, ProviderOptions};
use tokenproxy::metrics::Metrics;
use tokenproxy::proxy::{Router, upstream_uri};
use tokenproxy::store::FileStore;
use tokenproxy::token::{TokenHttp, TokenSource, Trigger};

fn config(token_url: &str, state: &std::path::Path) -> Config {
    let text = format!(
        r#"
[store]
path = "{}"
[tokens.t]
grant = "client_credentials"
token_url = "{token_url}"
client_id = "demo-client"
client_secret = "demo-secret"
[[routes]]
prefix = "/exact/"
upstream = "http://127.0.0.1:9/api/"
token = "t"
[[routes]]
prefix = "/graph/"
upstream = "http://127.0.0.1:9/"
token = "t"
[[routes]]
prefix = "/zoho/"
upstream = "http://127.0.0.1:9/crm/v6/"
token = "t"
inject = "Authorization: Zoho-oauthtoken {{token}}"
"#,
        state.display()
    );
    Config::parse(&text, "bench.toml".as_ref()).expect("config")
}

/// A token source holding a valid token from the in-process provider.
async fn source(provider: &Provider, config: &mut Config) -> Arc<TokenSource> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let tokenproxy::config::StoreConfig::File { path } = &config.store else {
        unreachable!("the bench config uses the file store")
    };
    let store = Arc::new(FileStore::open(path).expect("store"));
    let http = TokenHttp::new(
        Arc::new(rustls::RootCertStore::empty()),
        Duration::from_secs(5),
    )
    .expect("http");
    let _ = provider;
    let source = TokenSource::new(
        config.tokens.remove(0),
        store,
        http,
        Arc::new(Metrics::new()),
    );
    source.refresh(0, Trigger::Startup).await.expect("token");
    source
}

fn hot_path(c: &mut Criterion) {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let dir = tempfile::tempdir().expect("tempdir");
    let provider = rt
        .block_on(Provider::start(ProviderOptions {
            lifetime: Duration::from_secs(3600),
            ..ProviderOptions::default()
        }))
        .expect("provider");
    let mut cfg = config(&provider.token_url, dir.path());
    let routes = std::mem::take(&mut cfg.routes);
    let source = rt.block_on(source(&provider, &mut cfg));
    let router = Router::new(routes);
    let uri: Uri = "/exact/v1/123/crm/Accounts?$top=5&$skip=100"
        .parse()
        .expect("uri");

    c.bench_function("route match + upstream URL", |b| {
        b.iter(|| {
            let t = router.origin(&uri, Some("localhost:8080")).expect("route");
            let RouteUpstream::Static(up) = &router.routes()[t.route].upstream else {
                unreachable!()
            };
            upstream_uri(up, t.rest(&uri), uri.query(), None).expect("uri")
        })
    });
    c.bench_function("token read + header insert", |b| {
        let mut headers = HeaderMap::new();
        b.iter(|| {
            let state = source.current_full();
            if let Some(Credential::Header(name, value)) = state.credential(0) {
                headers.insert(name.clone(), value.clone());
            }
        })
    });
    c.bench_function("whole per-request work (no I/O)", |b| {
        let mut headers = HeaderMap::new();
        b.iter(|| {
            let t = router.origin(&uri, Some("localhost:8080")).expect("route");
            let route = &router.routes()[t.route];
            let state = source.current_full();
            if let Some(Credential::Header(name, value)) = state.credential(route.inject) {
                headers.insert(name.clone(), value.clone());
            }
            let RouteUpstream::Static(up) = &route.upstream else {
                unreachable!()
            };
            upstream_uri(up, t.rest(&uri), uri.query(), None).expect("uri")
        })
    });

    let mut group = c.benchmark_group("single flight");
    group.sample_size(20);
    group.bench_function("1,000 waiters on one refresh", |b| {
        b.to_async(&rt).iter(|| {
            let source = Arc::clone(&source);
            async move {
                let seen = source.current().generation();
                let waiters: Vec<_> = (0..1000)
                    .map(|_| {
                        let s = Arc::clone(&source);
                        tokio::spawn(
                            async move { s.refresh(seen, Trigger::Reactive).await.is_ok() },
                        )
                    })
                    .collect();
                for w in waiters {
                    assert!(w.await.expect("task"));
                }
            }
        })
    });
    group.finish();
    let requests = provider.token_requests();
    let refreshes = provider.tokens_issued();
    assert_eq!(requests, refreshes, "every token request succeeded");
}

criterion_group!(benches, hot_path);
criterion_main!(benches);
