//! Unit tests of `crate::proxy::upstream`.

use super::*;

#[test]
fn host_leaves_out_the_default_port_only() {
    let host = |s: Scheme, a: &str| host_value(&s, &a.parse().unwrap());
    assert_eq!(host(Scheme::HTTPS, "api.example.com"), "api.example.com");
    assert_eq!(
        host(Scheme::HTTPS, "api.example.com:443"),
        "api.example.com"
    );
    assert_eq!(
        host(Scheme::HTTPS, "api.example.com:80"),
        "api.example.com:80"
    );
    assert_eq!(host(Scheme::HTTP, "127.0.0.1:80"), "127.0.0.1");
    assert_eq!(host(Scheme::HTTP, "127.0.0.1:8080"), "127.0.0.1:8080");
}

#[test]
fn uri_forms() {
    let mut uri: Uri = "https://api.example.com/v1/items?page=2".parse().unwrap();
    origin_form(&mut uri);
    assert_eq!(uri, "/v1/items?page=2");
    absolute_form(&mut uri, Scheme::HTTPS, "api.example.com".parse().unwrap());
    assert_eq!(uri, "https://api.example.com/v1/items?page=2");
}
