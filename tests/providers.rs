//! Each preset and grant against a local token server that answers and checks
//! requests the way that provider does; what tokenproxy sends and injects.

mod support;

use std::time::Duration;

use serde_json::json;
use support::*;
use tokenproxy::demo::{ApiAuth, ErrorStyle, ExpectAuth, ExpiresIn, VerifyKey};

fn seconds_between(status: &serde_json::Value) -> u64 {
    let t = |k: &str| humantime::parse_rfc3339(status[k].as_str().unwrap()).unwrap();
    t("expires_at")
        .duration_since(t("issued_at"))
        .unwrap()
        .as_secs()
}

const SECRET_CLIENT: &str = r#"client_id = "demo-client"
client_secret = { env = "DEMO_CLIENT_SECRET" }"#;

/// Where a token request carries the client secret.
#[derive(Clone, Copy, Debug, PartialEq)]
enum SecretIn {
    /// `client_secret` in the form, no `Authorization`.
    Form,
    /// HTTP Basic, and not in the form.
    Basic,
}

/// One provider preset as a row: how its token server behaves, the `[tokens.p]`
/// and route a user writes for it, a first request, and what that must do.
struct Row {
    preset: &'static str,
    provider: ProviderOptions,
    /// `[tokens.p]`, with `{token_url}`.
    token: String,
    env: &'static [(&'static str, &'static str)],
    /// The route's prefix and upstream (`{api}`, `{token.FIELD}`).
    prefix: &'static str,
    upstream: &'static str,
    /// `headers = { … }` of the route, if any.
    route_headers: &'static str,
    get: &'static str,
    /// The path the API sees.
    api_path: &'static str,
    grant_type: &'static str,
    secret_in: SecretIn,
    /// Seconds between `issued_at` and `expires_at` in `/status`.
    lifetime: u64,
}

fn refresh_token_of(preset: &str) -> String {
    format!(
        "preset = \"{preset}\"\ntoken_url = \"{{token_url}}\"\n{SECRET_CLIENT}\nrefresh_token = {{ env = \"DEMO_REFRESH_TOKEN\" }}"
    )
}

fn extra(v: serde_json::Value) -> serde_json::Map<String, serde_json::Value> {
    v.as_object().unwrap().clone()
}

/// The presets, each as its provider answers: string or absent `expires_in`,
/// rotation or not, an echoed refresh token, its own error shape, Basic or form.
fn row(preset: &str) -> Row {
    let base = Row {
        preset: "",
        provider: ProviderOptions::default(),
        token: String::new(),
        env: &[],
        prefix: "",
        upstream: "",
        route_headers: "",
        get: "",
        api_path: "",
        grant_type: "refresh_token",
        secret_in: SecretIn::Form,
        // The fake provider's default expires_in.
        lifetime: 30,
    };
    match preset {
        "exact-online" => Row {
            preset: "exact-online",
            provider: ProviderOptions {
                lifetime: Duration::from_secs(600),
                expires_in: ExpiresIn::String,
                expect_auth: ExpectAuth::Post,
                min_interval: Duration::from_secs(570),
                ..ProviderOptions::default()
            },
            token: refresh_token_of("exact-online"),
            prefix: "/exact/",
            upstream: "{api}/api/",
            get: "/exact/v1/123/crm/Accounts?$top=5",
            api_path: "/api/v1/123/crm/Accounts",
            // "600", a string, read as 600 s.
            lifetime: 600,
            ..base
        },
        "salesforce" => Row {
            preset: "salesforce",
            provider: ProviderOptions {
                expires_in: ExpiresIn::Absent,
                rotate: false,
                extra: extra(
                    json!({"instance_url": "{api}", "issued_at": "1700000000000", "id": "https://login.salesforce.com/id/00D/005", "signature": "sig"}),
                ),
                ..ProviderOptions::default()
            },
            token: refresh_token_of("salesforce"),
            prefix: "/sf/",
            upstream: "{token.instance_url}/services/data/",
            get: "/sf/v59.0/sobjects/Account?fields=Id",
            api_path: "/services/data/v59.0/sobjects/Account",
            // No expires_in: the preset's lifetime.
            lifetime: 3600,
            ..base
        },
        "hubspot" => Row {
            preset: "hubspot",
            provider: ProviderOptions {
                expires_in: ExpiresIn::Number,
                lifetime: Duration::from_secs(1800),
                rotate: false,
                echo_refresh_token: true,
                error_style: ErrorStyle::HubSpot,
                ..ProviderOptions::default()
            },
            token: refresh_token_of("hubspot"),
            prefix: "/hs/",
            upstream: "{api}/",
            get: "/hs/crm/v3/objects/contacts",
            api_path: "/crm/v3/objects/contacts",
            lifetime: 1800,
            ..base
        },
        "xero" => Row {
            preset: "xero",
            provider: ProviderOptions {
                expect_auth: ExpectAuth::Basic,
                ..ProviderOptions::default()
            },
            token: refresh_token_of("xero"),
            prefix: "/xero/",
            upstream: "{api}/api.xro/2.0/",
            route_headers: "headers = { \"Xero-Tenant-Id\" = \"tenant-123\" }",
            get: "/xero/Invoices",
            api_path: "/api.xro/2.0/Invoices",
            secret_in: SecretIn::Basic,
            ..base
        },
        "quickbooks" => Row {
            preset: "quickbooks",
            provider: ProviderOptions {
                expect_auth: ExpectAuth::Basic,
                expires_in: ExpiresIn::Number,
                extra: extra(json!({"x_refresh_token_expires_in": 8726400})),
                client_secret: "s3cr+t:with%odd&chars".into(),
                ..ProviderOptions::default()
            },
            // A secret with + : % & survives Basic encoding.
            token: "preset = \"quickbooks\"\ntoken_url = \"{token_url}\"\nclient_id = \"demo-client\"\nclient_secret = { env = \"QB_SECRET\" }\nrefresh_token = { env = \"DEMO_REFRESH_TOKEN\" }".into(),
            env: &[("QB_SECRET", "s3cr+t:with%odd&chars")],
            prefix: "/qb/",
            upstream: "{api}/v3/company/",
            get: "/qb/4620816365/query",
            api_path: "/v3/company/4620816365/query",
            secret_in: SecretIn::Basic,
            ..base
        },
        "microsoft-entra" => Row {
            preset: "microsoft-entra",
            provider: ProviderOptions {
                expect_auth: ExpectAuth::Post,
                expires_in: ExpiresIn::Number,
                lifetime: Duration::from_secs(3599),
                require: vec![(
                    "scope".into(),
                    "https://graph.microsoft.com/.default".into(),
                )],
                ..ProviderOptions::default()
            },
            token: format!(
                "preset = \"microsoft-entra\"\ntenant = \"contoso.onmicrosoft.com\"\ntoken_url = \"{{token_url}}\"\n{SECRET_CLIENT}\nscope = \"https://graph.microsoft.com/.default\""
            ),
            prefix: "/graph/",
            upstream: "{api}/",
            get: "/graph/v1.0/users",
            api_path: "/v1.0/users",
            grant_type: "client_credentials",
            lifetime: 3599,
            ..base
        },
        "zoho" => Row {
            preset: "zoho",
            provider: ProviderOptions {
                rotate: false,
                error_style: ErrorStyle::OkStatus,
                api_auth: ApiAuth::Header {
                    name: "authorization".into(),
                    prefix: "Zoho-oauthtoken ".into(),
                },
                extra: extra(json!({"api_domain": "{api}"})),
                ..ProviderOptions::default()
            },
            token: format!(
                "preset = \"zoho\"\nregion = \"eu\"\ntoken_url = \"{{token_url}}\"\n{SECRET_CLIENT}\nrefresh_token = {{ env = \"DEMO_REFRESH_TOKEN\" }}"
            ),
            prefix: "/zoho/",
            upstream: "{token.api_domain}/crm/v6/",
            get: "/zoho/Leads?per_page=5",
            api_path: "/crm/v6/Leads",
            ..base
        },
        other => panic!("no row for preset {other}"),
    }
}

/// Starts tokenproxy with `row`'s configuration against its provider, sends the
/// first request and checks what every preset must do: served, on the right
/// path, with the token request its provider expects, the lifetime read right.
async fn first_request(row: Row) -> (World, Proxy) {
    let name = row.preset;
    let w = World::new(row.provider).await;
    let routes = format!(
        "[[routes]]\nprefix = \"{}\"\nupstream = \"{}\"\ntoken = \"p\"\n{}",
        row.prefix, row.upstream, row.route_headers
    );
    let p = w.spawn_with(&w.provider_config("", &row.token, &routes), row.env);
    let (status, body) = get(&p.url(row.get)).await;
    assert_eq!(status, 200, "{name}: {body}\n{}", p.log());
    assert_eq!(json(&body)["path"], row.api_path, "{name}");
    let sent = w.provider.last_request().unwrap();
    assert_eq!(sent.field("grant_type"), Some(row.grant_type), "{name}");
    if row.grant_type == "refresh_token" {
        assert_eq!(
            sent.field("refresh_token"),
            Some("demo-refresh-0"),
            "{name}"
        );
    }
    let basic = sent
        .headers
        .get("authorization")
        .is_some_and(|v| v.as_bytes().starts_with(b"Basic "));
    match row.secret_in {
        SecretIn::Form => {
            assert!(sent.field("client_secret").is_some(), "{name}: in the form");
            assert!(!sent.headers.contains_key("authorization"), "{name}");
        }
        SecretIn::Basic => {
            assert!(basic, "{name}: HTTP Basic");
            assert_eq!(
                sent.field("client_secret"),
                None,
                "{name}: never two methods"
            );
        }
    }
    assert_eq!(
        seconds_between(&token_status(&p, "p").await),
        row.lifetime,
        "{name}"
    );
    (w, p)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exact_online_string_expiry_rotation_and_no_early_refresh() {
    let (w, p) = first_request(row("exact-online")).await;
    // A 401 within 570 s of issue: Exact would refuse the refresh and count the
    // error, so tokenproxy does not ask; the 401 goes back.
    w.provider.revoke_access();
    assert_eq!(get(&p.url("/exact/v1/123/crm/Accounts")).await.0, 401);
    assert_eq!(w.provider.token_requests(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn salesforce_without_expiry_routes_to_instance_url() {
    let (w, p) = first_request(row("salesforce")).await;
    // No refresh token in the answer: the stored one is kept and used again.
    w.provider.revoke_access();
    assert_eq!(get(&p.url("/sf/v59.0/sobjects")).await.0, 200);
    assert_eq!(
        w.provider.last_request().unwrap().field("refresh_token"),
        Some("demo-refresh-0")
    );
    let stored = std::fs::read_to_string(w.state_dir().join("p.json")).unwrap();
    assert!(stored.contains("instance_url") && stored.contains("1700000000000"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hubspot_echoed_refresh_token_and_its_own_error_shape() {
    let (w, p) = first_request(row("hubspot")).await;
    w.provider.revoke_access();
    assert_eq!(
        get(&p.url("/hs/crm/v3/objects/contacts")).await.0,
        200,
        "the echoed refresh token is not an error"
    );
    w.provider.set_mode(Mode::InvalidGrant);
    let r = force_refresh(&p, "p").await;
    assert_eq!(r.status(), 502);
    let t = token_status(&p, "p").await;
    assert_eq!(
        t["state"], "needs_login",
        "BAD_REFRESH_TOKEN is terminal: {t}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn xero_basic_auth_rotation_and_tenant_header() {
    let (w, p) = first_request(row("xero")).await;
    let (_, body) = get(&p.url("/xero/Invoices")).await;
    assert_eq!(json(&body)["headers"]["xero-tenant-id"], "tenant-123");
    w.provider.revoke_access();
    assert_eq!(get(&p.url("/xero/Invoices")).await.0, 200);
    assert_eq!(w.provider.reuse_detected(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quickbooks_basic_auth_keeps_provider_fields() {
    let (w, _p) = first_request(row("quickbooks")).await;
    let stored = std::fs::read_to_string(w.state_dir().join("p.json")).unwrap();
    assert!(stored.contains("x_refresh_token_expires_in"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn microsoft_entra_client_credentials_with_scope() {
    first_request(row("microsoft-entra")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zoho_header_format_api_domain_and_errors_with_200() {
    let (w, p) = first_request(row("zoho")).await;
    w.provider.set_mode(Mode::InvalidGrant);
    assert_eq!(force_refresh(&p, "p").await.status(), 502);
    assert_eq!(
        token_status(&p, "p").await["state"],
        "needs_login",
        "an error with HTTP 200 is still an error"
    );
}

/// A P-256 key as PKCS#8 PEM and the matching verifier.
fn ec_key() -> (String, VerifyKey) {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let verify = VerifyKey {
        alg: &ring::signature::ECDSA_P256_SHA256_FIXED,
        public_key: key.public_key_raw().to_vec(),
    };
    (key.serialize_pem(), verify)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn google_service_account_signs_a_verified_assertion() {
    let (pem, verify) = ec_key();
    let w = World::new(ProviderOptions {
        expect_auth: ExpectAuth::Nothing,
        expires_in: ExpiresIn::Number,
        verify_key: Some(verify),
        ..ProviderOptions::default()
    })
    .await;
    let sa = w.dir.path().join("sa.json");
    std::fs::write(
        &sa,
        json!({
            "type": "service_account",
            "client_email": "etl@project.iam.gserviceaccount.com",
            "private_key_id": "key-1",
            "private_key": pem,
            "token_uri": w.provider.token_url,
        })
        .to_string(),
    )
    .unwrap();
    let token = format!(
        "preset = \"google-service-account\"\ntoken_url = \"{{token_url}}\"\nservice_account = {{ file = \"{}\" }}\nscope = \"https://www.googleapis.com/auth/bigquery.readonly\"",
        sa.display()
    );
    let p = w.spawn(&w.provider_config(
        "",
        &token,
        "[[routes]]\nprefix = \"/bq/\"\nupstream = \"{api}/bigquery/v2/\"\ntoken = \"p\"",
    ));
    let (status, body) = get(&p.url("/bq/projects/x/datasets")).await;
    assert_eq!(status, 200, "{body}\n{}", p.log());
    let sent = w.provider.last_request().unwrap();
    assert_eq!(
        sent.field("grant_type"),
        Some("urn:ietf:params:oauth:grant-type:jwt-bearer")
    );
    assert_eq!(
        sent.field("scope"),
        None,
        "Google takes the scope in the assertion"
    );
    assert_eq!(sent.field("client_id"), None);
    let claims = sent.claims.expect("a verified assertion");
    assert_eq!(claims["iss"], "etl@project.iam.gserviceaccount.com");
    assert_eq!(claims["aud"], w.provider.token_url.as_str());
    assert_eq!(
        claims["scope"],
        "https://www.googleapis.com/auth/bigquery.readonly"
    );
    assert!(claims["exp"].as_u64().unwrap() - claims["iat"].as_u64().unwrap() <= 3600);
    assert!(claims["jti"].as_str().is_some_and(|j| j.len() >= 16));
    // No refresh token: a new assertion each time.
    w.provider.revoke_access();
    assert_eq!(get(&p.url("/bq/projects/x/datasets")).await.0, 200);
    let again = w.provider.last_request().unwrap().claims.unwrap();
    assert_ne!(again["jti"], claims["jti"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn salesforce_jwt_flow_with_an_rsa_key() {
    let pem = include_str!("fixtures/test-rsa-key.pem");
    use rustls::pki_types::pem::PemObject;
    let der = rustls::pki_types::PrivateKeyDer::from_pem_slice(pem.as_bytes()).unwrap();
    let pair = ring::signature::RsaKeyPair::from_pkcs8(der.secret_der()).unwrap();
    let verify = VerifyKey {
        alg: &ring::signature::RSA_PKCS1_2048_8192_SHA256,
        public_key: ring::signature::KeyPair::public_key(&pair)
            .as_ref()
            .to_vec(),
    };
    let w = World::new(ProviderOptions {
        expect_auth: ExpectAuth::Nothing,
        verify_key: Some(verify),
        ..ProviderOptions::default()
    })
    .await;
    let key = w.dir.path().join("sf.pem");
    std::fs::write(&key, pem).unwrap();
    let token = format!(
        "preset = \"salesforce\"\ngrant = \"jwt_bearer\"\ntoken_url = \"{{token_url}}\"\nclient_id = \"consumer-key\"\nprivate_key = {{ file = \"{}\" }}\njwt_subject = \"etl@example.com\"\njwt_audience = \"https://login.salesforce.com\"",
        key.display()
    );
    let p = w.spawn(&w.provider_config(
        "",
        &token,
        "[[routes]]\nprefix = \"/sf/\"\nupstream = \"{api}/services/data/\"\ntoken = \"p\"",
    ));
    let (status, body) = get(&p.url("/sf/v59.0/limits")).await;
    assert_eq!(status, 200, "{body}\n{}", p.log());
    let claims = w.provider.last_request().unwrap().claims.unwrap();
    assert_eq!(claims["iss"], "consumer-key");
    assert_eq!(claims["sub"], "etl@example.com");
    assert_eq!(claims["aud"], "https://login.salesforce.com");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn private_key_jwt_client_authentication() {
    let (pem, verify) = ec_key();
    let w = World::new(ProviderOptions {
        expect_auth: ExpectAuth::PrivateKeyJwt,
        verify_key: Some(verify),
        ..ProviderOptions::default()
    })
    .await;
    let key = w.dir.path().join("client.pem");
    std::fs::write(&key, pem).unwrap();
    let token = format!(
        "grant = \"client_credentials\"\ntoken_url = \"{{token_url}}\"\nclient_id = \"demo-client\"\nclient_auth = \"private_key_jwt\"\nprivate_key = {{ file = \"{}\" }}\nkey_id = \"k1\"",
        key.display()
    );
    let p = w.spawn(&w.provider_config(
        "",
        &token,
        "[[routes]]\nprefix = \"/api/\"\nupstream = \"{api}/\"\ntoken = \"p\"",
    ));
    let (status, body) = get(&p.url("/api/x")).await;
    assert_eq!(status, 200, "{body}\n{}", p.log());
    let sent = w.provider.last_request().unwrap();
    let claims = sent.claims.clone().unwrap();
    assert_eq!(
        (claims["iss"].as_str(), claims["sub"].as_str()),
        (Some("demo-client"), Some("demo-client"))
    );
    assert_eq!(claims["aud"], w.provider.token_url.as_str());
    assert_eq!(sent.field("client_secret"), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn password_grant() {
    let w = World::new(ProviderOptions {
        expect_auth: ExpectAuth::Post,
        ..ProviderOptions::default()
    })
    .await;
    let token = format!(
        "grant = \"password\"\ntoken_url = \"{{token_url}}\"\n{SECRET_CLIENT}\nusername = \"demo-user\"\npassword = {{ env = \"PW\" }}"
    );
    let config = w.provider_config(
        "",
        &token,
        "[[routes]]\nprefix = \"/legacy/\"\nupstream = \"{api}/\"\ntoken = \"p\"",
    );
    let p = w.spawn_with(&config, &[("PW", "demo-password")]);
    assert_eq!(get(&p.url("/legacy/x")).await.0, 200, "{}", p.log());
    let sent = w.provider.last_request().unwrap();
    assert_eq!(
        (sent.field("username"), sent.field("password")),
        (Some("demo-user"), Some("demo-password"))
    );
    let (_, log) = tokio::task::spawn_blocking(move || p.stop_and_log())
        .await
        .unwrap();
    assert!(!log.contains("demo-password"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discovery_finds_the_endpoint_and_the_auth_method() {
    let w = World::new(ProviderOptions {
        expect_auth: ExpectAuth::Basic,
        ..ProviderOptions::default()
    })
    .await;
    let token = format!("grant = \"client_credentials\"\nissuer = \"{{issuer}}\"\n{SECRET_CLIENT}");
    let p = w.spawn(&w.provider_config(
        "",
        &token,
        "[[routes]]\nprefix = \"/api/\"\nupstream = \"{api}/\"\ntoken = \"p\"",
    ));
    let (status, body) = get(&p.url("/api/x")).await;
    assert_eq!(
        status,
        200,
        "metadata advertises only client_secret_basic: {body}\n{}",
        p.log()
    );
    assert!(
        w.provider
            .last_request()
            .unwrap()
            .headers
            .contains_key("authorization")
    );

    // An issuer whose metadata names another issuer is refused.
    let other = World::default().await;
    let token = format!(
        "grant = \"client_credentials\"\nissuer = \"{}/tenant\"\n{SECRET_CLIENT}",
        other.provider.issuer
    );
    // (Its own world: the first one's store holds a valid token for `p`.)
    let q = other.spawn(&other.provider_config(
        "",
        &token,
        "[[routes]]\nprefix = \"/api/\"\nupstream = \"{api}/\"\ntoken = \"p\"",
    ));
    assert_eq!(get(&q.url("/api/x")).await.0, 503);
    assert!(
        token_status(&q, "p").await["last_error"]
            .as_str()
            .unwrap()
            .contains("discovery"),
        "{}",
        q.log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn query_parameter_and_custom_header_injection() {
    let w = World::new(ProviderOptions {
        api_auth: ApiAuth::Query {
            param: "access_token".into(),
        },
        ..ProviderOptions::default()
    })
    .await;
    let token = format!(
        "grant = \"refresh_token\"\ntoken_url = \"{{token_url}}\"\n{SECRET_CLIENT}\nrefresh_token = {{ env = \"DEMO_REFRESH_TOKEN\" }}"
    );
    let p = w.spawn(&w.provider_config("", &token, "[[routes]]\nprefix = \"/q/\"\nupstream = \"{api}/\"\ntoken = \"p\"\ninject = \"?access_token={token}\""));
    let (status, body) = get(&p.url("/q/items?access_token=client-value&page=2")).await;
    assert_eq!(status, 200, "{body}");
    let query = json(&body)["query"].as_str().unwrap().to_owned();
    assert!(query.starts_with("page=2&access_token=demo-at-"), "{query}");
    assert!(!query.contains("client-value"));
    let (_, log) = tokio::task::spawn_blocking(move || p.stop_and_log())
        .await
        .unwrap();
    assert!(log.contains("request"), "{log}");
    assert!(
        !log.contains("demo-at-"),
        "the query string is never logged"
    );

    let w = World::new(ProviderOptions {
        api_auth: ApiAuth::Header {
            name: "x-shopify-access-token".into(),
            prefix: String::new(),
        },
        ..ProviderOptions::default()
    })
    .await;
    let p = w.spawn(&w.provider_config("", &token, "[[routes]]\nprefix = \"/shop/\"\nupstream = \"{api}/admin/api/\"\ntoken = \"p\"\ninject = \"X-Shopify-Access-Token: {token}\""));
    assert_eq!(get(&p.url("/shop/2026-10/orders.json")).await.0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limit_retry_after_is_honoured() {
    let w = World::default().await;
    let p = w.spawn(&w.config("", ""));
    assert_eq!(get(&p.url("/demo/a")).await.0, 200);
    w.provider.set_mode(Mode::RateLimited(120));
    assert_eq!(force_refresh(&p, "demo").await.status(), 502);
    let t = token_status(&p, "demo").await;
    assert!(t["next_attempt_in_s"].as_u64().unwrap() >= 115, "{t}");
    assert_eq!(t["state"], "valid", "the current token keeps serving");
    assert!(t["last_error"].as_str().unwrap().contains("slow_down"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn required_params_audience_and_scope_not_sent_on_refresh() {
    let w = World::new(ProviderOptions {
        require: vec![
            ("audience".into(), "https://api.example.com".into()),
            ("resource".into(), "urn:x".into()),
        ],
        ..ProviderOptions::default()
    })
    .await;
    let token = format!(
        "grant = \"refresh_token\"\ntoken_url = \"{{token_url}}\"\n{SECRET_CLIENT}\nrefresh_token = {{ env = \"DEMO_REFRESH_TOKEN\" }}\naudience = \"https://api.example.com\"\nresource = \"urn:x\"\nscope = \"read write\"\nscope_on_refresh = false\nheaders = {{ \"X-Api-Key\" = \"key-1\" }}"
    );
    let p = w.spawn(&w.provider_config(
        "",
        &token,
        "[[routes]]\nprefix = \"/a/\"\nupstream = \"{api}/\"\ntoken = \"p\"",
    ));
    assert_eq!(get(&p.url("/a/x")).await.0, 200, "{}", p.log());
    let sent = w.provider.last_request().unwrap();
    assert_eq!(sent.field("scope"), None);
    assert_eq!(sent.headers["x-api-key"], "key-1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_client_authentication_at_the_token_endpoint() {
    let pki = support::pki::Pki::new();
    let w = World::new(ProviderOptions {
        expect_auth: ExpectAuth::Nothing,
        tls: Some(pki.server("localhost", &[b"http/1.1"], false)),
        token_tls: Some(pki.server("localhost", &[b"http/1.1"], true)),
        ..ProviderOptions::default()
    })
    .await;
    let file = |name: &str, text: &str| {
        let path = w.dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path.display().to_string()
    };
    let (client_cert, client_key) = pki.client("demo-client");
    let (ca, cert, key) = (
        file("ca.pem", &pki.ca_pem),
        file("client.pem", &client_cert),
        file("client.key", &client_key),
    );
    let top = format!("[tls]\nca_file = \"{ca}\"");
    let token = format!(
        "grant = \"client_credentials\"\ntoken_url = \"{{token_url}}\"\nclient_id = \"demo-client\"\nclient_auth = \"tls_client_auth\"\nclient_cert = {{ file = \"{cert}\" }}\nclient_cert_key = {{ file = \"{key}\" }}"
    );
    let routes = "[[routes]]\nprefix = \"/api/\"\nupstream = \"{api}/\"\ntoken = \"p\"";
    let p = w.spawn(&w.provider_config(&top, &token, routes));
    let (status, body) = get(&p.url("/api/x")).await;
    assert_eq!(status, 200, "{body}\n{}", p.log());
    assert_eq!(
        w.provider.last_request().unwrap().field("client_id"),
        Some("demo-client")
    );
    drop(p);

    // Without the certificate the handshake is refused: no token.
    let _ = std::fs::remove_dir_all(w.state_dir());
    let token = "grant = \"refresh_token\"\ntoken_url = \"{token_url}\"\nclient_id = \"demo-client\"\nclient_auth = \"none\"\nrefresh_token = \"demo-refresh-0\"";
    let p = w.spawn(&w.provider_config(&top, token, routes));
    assert_eq!(get(&p.url("/api/x")).await.0, 503);
    assert!(
        token_status(&p, "p").await["last_error"]
            .as_str()
            .unwrap()
            .contains("unreachable"),
        "{}",
        p.log()
    );
}
