//! Unit tests of `crate::intercept`.

use super::*;

/// One leaf per host until half its life has passed, then a new one.
#[test]
fn a_leaf_is_cached_per_host_and_renewed_at_half_life() {
    let (cert, key) = ca::create(&["a.example".into(), "b.example".into()]).unwrap();
    let i = Interceptor::new(
        Ca::load(&cert, key.expose()).unwrap(),
        Arc::new(Metrics::new()),
    )
    .unwrap();
    let t0 = SystemTime::now();
    let first = i.tls_config_at("a.example", t0).unwrap();
    let hour = std::time::Duration::from_secs(3600);
    let later = i.tls_config_at("a.example", t0 + hour).unwrap();
    assert!(Arc::ptr_eq(&first, &later), "cached");
    let other = i.tls_config_at("b.example", t0 + hour).unwrap();
    assert!(!Arc::ptr_eq(&first, &other), "one leaf per host");
    let renewed = i
        .tls_config_at("a.example", t0 + ca::LEAF_LIFETIME / 2 + hour)
        .unwrap();
    assert!(!Arc::ptr_eq(&first, &renewed), "renewed past half-life");
    assert_eq!(i.leaves.lock().unwrap().len(), 2, "bounded by the hosts");
}
