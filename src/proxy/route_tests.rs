//! Unit tests of `crate::proxy::route`.

use super::*;

#[test]
fn same_host_agrees_with_normalise_host() {
    let routes = [
        "api.example.com",
        "api.example.com:8443",
        "127.0.0.1:8080",
        "[::1]",
        "[::1]:8080",
        "x",
    ];
    let requests = [
        "api.example.com",
        "API.Example.COM",
        "api.example.com.",
        "api.example.com:443",
        "api.example.com:80",
        "api.example.com:8443",
        "api.example.com:08443",
        "127.0.0.1:8080",
        "127.0.0.1",
        "[::1]",
        "[::1]:8080",
        "[::1]:443",
        "x",
        "x:1",
        "xx",
    ];
    for route in routes {
        for request in requests {
            let a: http::uri::Authority = request.parse().unwrap();
            for default in [80, 443] {
                let want = crate::config::normalise_host(a.host(), a.port_u16(), default) == route;
                assert_eq!(
                    same_host(route, a.host(), a.port_u16(), default),
                    want,
                    "route {route}, request {request}, default {default}"
                );
            }
        }
    }
}

#[test]
fn host_and_port_read_as_http_reads_them() {
    for text in [
        "api.example.com",
        "api.example.com:8443",
        "api.example.com:",
        "api.example.com:99999",
        "127.0.0.1:80",
        "[::1]",
        "[::1]:8080",
        "[::1]:",
        "[fe80::1%25eth0]:443",
        "x:0",
    ] {
        let a: http::uri::Authority = text.parse().unwrap();
        assert_eq!(
            host_and_port(a.as_str()),
            (a.host(), a.port_u16()),
            "{text}"
        );
    }
}

#[test]
fn paths_without_escapes_are_judged_as_the_decoded_ones() {
    for path in [
        "a/b.json", "a/./b", "a/../b", "a/..;x/b", "a\\..\\b", "..", ".", "a.b/c..d", "a;b/c",
    ] {
        let decoded = percent_encoding::percent_decode_str(path).collect::<Vec<u8>>();
        assert_eq!(climbs(path), climbs_decoded(&decoded), "{path}");
    }
    assert!(climbs("a/%2e%2e/b"));
    assert!(climbs("a/%252e%252e/b"));
    assert!(!climbs("a/b%20c.json"));
}

#[test]
fn climbing_paths_are_refused_and_others_pass() {
    for path in [
        "a/./b",
        "a/../b",
        "a/..;x/b",
        "a\\..\\b",
        "..",
        ".",
        "a/.",
        "a/..",
        "./a",
        "a//b",
        "/a",
        "a/%2e%2e/b",
        "a/%2F/b",
        "a%5c..%5cb",
        "a/%00",
        "a/%ff",
        "a/.;x/b",
    ] {
        assert!(climbs(path), "{path} should be refused");
    }
    for path in [
        "",
        "a",
        "a/b.json",
        "a.b/c..d",
        "a;b/c",
        "a/b/",
        "...",
        "a/.../b",
        "a/..x/b",
        "a/x../b",
        "a/b%20c.json",
        "a\\b",
    ] {
        assert!(!climbs(path), "{path} should pass");
    }
}
use crate::config::{Config, RouteUpstream};

fn router() -> Router {
    let text = r#"
        [tokens.t]
        grant = "client_credentials"
        token_url = "https://id.example.com/token"
        client_id = "id"
        client_secret = "s"
        [[routes]]
        prefix = "/ex/"
        upstream = "https://api.example.com/api/"
        token = "t"
        [[routes]]
        prefix = "/ex/v2"
        upstream = "https://v2.example.com/"
        token = "t"
        [[routes]]
        prefix = "/other/"
        host = "proxied.example.com"
        upstream = "https://api.example.com/other"
        token = "t"
    "#;
    Router::new(Config::parse(text, "t.toml".as_ref()).unwrap().routes)
}

fn resolve(r: &Router, t: Result<Target, Miss>, uri: &Uri) -> Result<(usize, String), Miss> {
    let t = t?;
    let RouteUpstream::Static(up) = &r.routes()[t.route].upstream else {
        panic!("static")
    };
    upstream_uri(up, t.rest(uri), uri.query(), None).map(|u| (t.route, u.to_string()))
}

fn origin(r: &Router, path: &str) -> Result<(usize, String), Miss> {
    let uri: Uri = path.parse().unwrap();
    resolve(r, r.origin(&uri, Some("localhost:8080")), &uri)
}

fn absolute(r: &Router, url: &str) -> Result<(usize, String), Miss> {
    let uri: Uri = url.parse().unwrap();
    resolve(r, r.absolute(&uri, "http"), &uri)
}

#[test]
fn longest_prefix_wins_and_query_is_kept() {
    let r = router();
    assert_eq!(
        origin(&r, "/ex/v1/x?$top=5").unwrap(),
        (0, "https://api.example.com/api/v1/x?$top=5".into())
    );
    assert_eq!(
        origin(&r, "/ex/v2/y").unwrap(),
        (1, "https://v2.example.com/y".into())
    );
    assert_eq!(
        origin(&r, "/ex").unwrap(),
        (0, "https://api.example.com/api/".into())
    );
    assert_eq!(origin(&r, "/exfoo/x"), Err(Miss::NoRoute));
    assert_eq!(origin(&r, "/"), Err(Miss::NoRoute));
}

#[test]
fn absolute_form_matches_host_and_base_path() {
    let r = router();
    assert_eq!(
        absolute(&r, "http://api.example.com/api/v1/x").unwrap(),
        (0, "https://api.example.com/api/v1/x".into())
    );
    assert_eq!(
        absolute(&r, "http://API.Example.com./api/z").unwrap(),
        (0, "https://api.example.com/api/z".into())
    );
    assert_eq!(
        absolute(&r, "http://api.example.com/other/z"),
        Err(Miss::NoRoute)
    );
    assert_eq!(
        absolute(&r, "http://proxied.example.com/other/z")
            .unwrap()
            .0,
        2
    );
    // Same host, path outside every route's base.
    assert_eq!(
        absolute(&r, "http://api.example.com/admin/"),
        Err(Miss::NoRoute)
    );
    assert_eq!(
        absolute(&r, "http://169.254.169.254/latest/meta-data"),
        Err(Miss::NoRoute)
    );
    assert_eq!(
        absolute(&r, "http://api.example.com:8443/api/x"),
        Err(Miss::NoRoute)
    );
    assert_eq!(
        absolute(&r, "http://user@api.example.com/api/x"),
        Err(Miss::BadPath)
    );
}

#[test]
fn climbing_out_of_a_route_is_refused() {
    let r = router();
    for p in [
        "/ex/../other/",
        "/ex/a/%2e%2e/b",
        "/ex/.%2E/x",
        "/ex/a/..%2fb/..",
        "/ex/a%5c..%5cb",
        "/ex/./x",
        "/ex//evil.example.com/x",
        // Tomcat path parameters on a dot segment, plain and encoded.
        "/ex/..;/other",
        "/ex/a/..;jsessionid=1/b",
        "/ex/%2e%2e%3b/x",
        // NUL, plain-encoded and inside a dot segment.
        "/ex/.%00./x",
        "/ex/a%00b",
        // Double encoding and overlong UTF-8 for `.`.
        "/ex/%252e%252e/x",
        "/ex/%c0%ae%c0%ae/x",
    ] {
        assert_eq!(origin(&r, p), Err(Miss::BadPath), "{p}");
    }
    assert!(origin(&r, "/ex/file.v1..json").is_ok());
    assert!(origin(&r, "/ex/a;v=1/b%20c").is_ok());
}

#[test]
fn query_credential_replaces_the_clients_parameter() {
    let up = Upstream::parse("https://api.example.com/v1/").unwrap();
    let cred = Some(("access_token", "access_token=abc%21"));
    let uri = upstream_uri(&up, "items", Some("access_token=client&page=2"), cred).unwrap();
    assert_eq!(
        uri.to_string(),
        "https://api.example.com/v1/items?page=2&access_token=abc%21"
    );
    let uri = upstream_uri(&up, "items", None, cred).unwrap();
    assert_eq!(
        uri.to_string(),
        "https://api.example.com/v1/items?access_token=abc%21"
    );
}
